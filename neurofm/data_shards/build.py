"""``build_shards``: recordings → signal shards + ``manifest.json`` (the entry point of the stage).

Recordings are processed in a fixed order (inputs in config order, files sorted), so the stream of
samples is deterministic. That is what makes an interrupted build resumable: the manifest records the
completed shards, and a rerun with the same settings skips every recording whose windows all lie in
them, re-reads the one that was cut, and writes from the first missing sample on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

import neurofm
from neurofm.config import to_dict
from neurofm.data_shards.config import ShardsConfig
from neurofm.data_shards.preprocess import prepare
from neurofm.data_shards.readers import expand_inputs, read_recording, source_checksum
from neurofm.data_shards.sensors import SENSOR_FEATURES, has_position
from neurofm.data_shards.windows import iter_windows
from neurofm.data_shards.writer import FORMAT_VERSION, MANIFEST, ShardWriter, encode_npy, read_manifest, write_json_atomic
from neurofm.errors import NeuroFMError, ShardError

logger = logging.getLogger("neurofm.shards")


def settings_hash(config: ShardsConfig) -> str:
    """Hash of everything that changes the samples (the output folder excluded)."""
    settings = to_dict(config)
    settings.pop("out")
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _start_manifest(config: ShardsConfig, out: Path, overwrite: bool) -> dict:
    digest = settings_hash(config)
    existing = read_manifest(out)
    if existing is not None and existing.get("settings_hash") == digest and not overwrite:
        return existing
    if existing is not None and not overwrite:
        raise ShardError(
            f"{out} already holds shards built with other settings (hash {existing.get('settings_hash')}, now "
            f"{digest}). Choose another --out, or pass --overwrite to delete them and rebuild."
        )
    if overwrite and out.exists():
        for f in list(out.glob("shard-*.tar*")) + [out / MANIFEST]:
            f.unlink(missing_ok=True)
    return {
        "format_version": FORMAT_VERSION,
        "neurofm_version": neurofm.__version__,
        "complete": False,
        "settings_hash": digest,
        "settings": to_dict(config),
        "sensor_features": list(SENSOR_FEATURES),
        "shards": [],
        "recordings": [],
        "skipped": [],
    }


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def build_shards(config: ShardsConfig, *, overwrite: bool = False, progress: bool = True) -> dict:
    """Read, preprocess and window every input and write webdataset shards plus ``manifest.json``.

    Parameters
    ----------
    config : ShardsConfig
        Inputs, preprocessing and sharding settings.
    overwrite : bool
        Delete shards built with other settings in ``config.out`` instead of stopping.
    progress : bool
        Show a tqdm progress bar over recordings.

    Returns
    -------
    manifest : dict
        The manifest as written to ``config.out / manifest.json``.

    Raises
    ------
    NeuroFMError
        A recording cannot be read or preprocessed (unless ``on_error: skip``), or the output folder
        holds shards of other settings. Completed shards stay valid; rerunning resumes.
    """
    if not config.inputs:
        raise ShardError("No inputs: list recordings under 'inputs' in the config (see configs/demo_shards.yaml).")
    out, root = Path(config.out), Path(config.root)
    out.mkdir(parents=True, exist_ok=True)
    manifest = _start_manifest(config, out, overwrite)
    if manifest["complete"]:
        logger.info("%s is complete (%d shards); nothing to do.", out, len(manifest["shards"]))
        return manifest
    writer = ShardWriter(out, config.samples_per_shard, manifest)
    done = writer.samples_done
    known = {r["source"]: r for r in manifest["recordings"]}
    items = [(i, *item) for i, spec in enumerate(config.inputs) for item in expand_inputs(spec, root)]
    sample_index = 0
    started = time.perf_counter()
    try:
        for input_index, path, spec, bids_path in tqdm(items, desc="recordings", disable=not progress, unit="rec"):
            rel = _relative(path, root)
            entry = known.get(rel)
            if entry is not None and sample_index + entry["n_windows"] <= done:
                sample_index += entry["n_windows"]
                continue
            try:
                entry = _write_recording(config, writer, input_index, path, spec, bids_path, rel, sample_index, done)
            except NeuroFMError as err:
                if config.on_error == "raise":
                    raise
                logger.warning("skipped %s: %s", rel, err)
                if rel not in {s["source"] for s in manifest["skipped"]}:
                    manifest["skipped"].append({"source": rel, "error": str(err)})
                continue
            sample_index += entry["n_windows"]
            if rel not in known:
                manifest["recordings"].append(entry)
                known[rel] = entry
        writer.close_shard()
    except BaseException:
        writer.abort()
        raise
    manifest["statistics"] = _statistics(manifest["recordings"])
    manifest["build_seconds"] = round(time.perf_counter() - started, 3)
    manifest["complete"] = True
    write_json_atomic(out / MANIFEST, manifest)
    return manifest


def _write_recording(config, writer, input_index, path, spec, bids_path, rel, first_sample, done) -> dict:
    recording = read_recording(path, spec, bids_path, fmri_config=config.fmri)
    prepared = prepare(recording, config, input_index)
    checksum = source_checksum(path)
    dataset = spec.dataset or path.parent.name
    n_windows, valid_samples = 0, 0
    dtype = np.dtype(config.signal_dtype)
    sensors = prepared.sensors.features()
    unpositioned = sum(not has_position(p) for p in prepared.sensors.positions)
    for key, signal, meta in iter_windows(prepared, relative_source=rel, checksum=checksum, dataset=dataset):
        if first_sample + n_windows >= done:
            writer.write(
                key,
                {
                    "signal.npy": encode_npy(signal.astype(dtype)),
                    "sensors.npy": encode_npy(sensors),
                    "meta.json": json.dumps(meta).encode(),
                },
            )
        n_windows += 1
        valid_samples += meta["n_valid_samples"]
    durations = [seg.data.shape[1] / prepared.sfreq for seg in prepared.segments]
    return {
        "source": rel,
        "sha256": checksum,
        "dataset": dataset,
        "modality": recording.modality,
        "layout": recording.layout,
        "first_sample": first_sample,
        "n_windows": n_windows,
        "n_segments": len(prepared.segments),
        "seconds": round(float(sum(durations)), 3),
        "window_seconds_valid": round(valid_samples / prepared.sfreq, 3),
        "n_channels": len(prepared.sensors),
        "kinds": dict(Counter(prepared.sensors.kinds)),
        "sensors_without_position": int(unpositioned),
        "bad_channels": prepared.bad_channels,
        "scales": prepared.scales,
        "clip_fraction": prepared.clip_fraction,
        "settings": prepared.settings,
        **recording.report,
    }


def _statistics(recordings: list[dict]) -> dict:
    """Per-modality totals and per-kind robust scales (physical units) from the recording entries."""
    stats: dict = {}
    for modality in sorted({r["modality"] for r in recordings}):
        recs = [r for r in recordings if r["modality"] == modality]
        channels = [r["n_channels"] for r in recs]
        scales: dict[str, list[float]] = {}
        for r in recs:
            for kind, value in r["scales"].items():
                scales.setdefault(kind, []).append(value)
        stats[modality] = {
            "recordings": len(recs),
            "windows": sum(r["n_windows"] for r in recs),
            "hours": round(sum(r["seconds"] for r in recs) / 3600, 6),
            "channels": {"min": min(channels), "median": float(np.median(channels)), "max": max(channels)},
            "sensors_without_position": sum(r["sensors_without_position"] for r in recs),
            "bad_channels": sum(len(r["bad_channels"]) for r in recs),
            "scale_median": {k: float(np.median(v)) for k, v in scales.items()},
            "clip_fraction": float(np.mean([r["clip_fraction"] for r in recs])),
        }
    return stats
