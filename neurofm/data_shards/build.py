"""``build_shards``: recordings → signal shards + ``manifest.json`` (the entry point of the stage).

Recordings are processed in a fixed order (inputs in config order, files sorted), so the stream of
samples is deterministic. That is what makes an interrupted build resumable: the manifest records the
completed shards, and a rerun with the same settings skips every recording whose windows all lie in
them, re-reads the one that was cut, and writes from the first missing sample on.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

import neurofm
from neurofm.config import to_dict
from neurofm.data_shards.config import ShardsConfig
from neurofm.data_shards.parallel import (STAGING, Call, OrderedTasks, drop_staged, make_executor, raise_if_failed, run_recording,
                                          staged_samples)
from neurofm.data_shards.preprocess import prepare
from neurofm.data_shards.readers import expand_inputs, read_recording, source_checksum
from neurofm.data_shards.sensors import SENSOR_FEATURES, has_position
from neurofm.data_shards.windows import iter_windows
from neurofm.data_shards.writer import FORMAT_VERSION, MANIFEST, ShardWriter, encode_npy, read_manifest, write_json_atomic
from neurofm.errors import NeuroFMError, ShardError
from neurofm.outputs import output_folder, writer_lock

logger = logging.getLogger("neurofm.shards")


def sample_settings(config: ShardsConfig) -> dict:
    """The settings that make the samples (not where they are written or computed)."""
    settings = to_dict(config)
    settings.pop("cluster", None)
    return settings


#: Settings added after shard sets were first written, each with the value that makes the samples as before
#: it existed: left out of the hash at that value, so a shard set built earlier keeps its hash (it resumes,
#: and a rebuild with unchanged settings is a no-op rather than a refusal).
LATER_SETTINGS: dict[tuple[str, ...], object] = {("simulate", "fmri_epochs"): None, ("inputs", "*", "rename_events"): {}}


def _drop_later_settings(section, path: tuple[str, ...], default) -> None:
    """Delete ``path`` (``*``: every item of a list) from ``section`` where it holds ``default``."""
    key, rest = path[0], path[1:]
    if key == "*":
        for item in section if isinstance(section, list) else []:
            _drop_later_settings(item, rest, default)
    elif isinstance(section, dict) and key in section:
        if rest:
            _drop_later_settings(section[key], rest, default)
        elif section[key] == default:
            del section[key]


def settings_hash(config: ShardsConfig) -> str:
    """Hash of everything that changes the samples (the output folder excluded)."""
    settings = sample_settings(config)
    settings.pop("out")
    for path, default in LATER_SETTINGS.items():
        _drop_later_settings(settings, path, default)
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
        shutil.rmtree(out / PARCELLATIONS, ignore_errors=True)
        shutil.rmtree(out / STAGING, ignore_errors=True)
    return {
        "format_version": FORMAT_VERSION,
        "neurofm_version": neurofm.__version__,
        "complete": False,
        "settings_hash": digest,
        "settings": sample_settings(config),
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


@dataclass(frozen=True)
class Source:
    """One recording to shard: where it comes from and how to get it.

    ``name`` is its path relative to ``root`` (or the simulated recording's name); ``read`` returns
    the :class:`~neurofm.data_shards.readers.Recording`; ``checksum`` the provenance hash.
    """

    name: str
    input_index: int
    dataset: str
    read: Callable[[], object]
    checksum: Callable[[], str]


#: Folder (inside the output folder) of the per-dataset fMRI parcellations.
PARCELLATIONS = "parcellations"


def list_sources(config: ShardsConfig) -> list[Source]:
    """Every recording of the config in build order: inputs (files sorted), then simulated ones.
    fMRI runs of one dataset share one parcellation, fitted on its first run in this order."""
    root = Path(config.root)
    sources = []
    for i, spec in enumerate(config.inputs):
        for path, item_spec, bids_path in expand_inputs(spec, root):
            dataset = spec.dataset or path.parent.name
            parcellation = Path(config.out) / PARCELLATIONS / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', dataset)}.nii.gz"
            sources.append(Source(
                name=_relative(path, root),
                input_index=i,
                dataset=dataset,
                read=functools.partial(read_recording, path, item_spec, bids_path, fmri_config=config.fmri,
                                       parcellation=parcellation),
                checksum=functools.partial(source_checksum, path),
            ))
    if config.simulate is not None:
        from neurofm.data_shards.simulate import plan_recordings, simulate_recording

        for spec in plan_recordings(config.simulate):
            sources.append(Source(
                name=spec.name,
                input_index=-1,
                dataset="simulated",
                read=functools.partial(simulate_recording, spec, config.simulate),
                checksum=spec.checksum,
            ))
    return sources


def build_shards(config: ShardsConfig, *, overwrite: bool = False, progress: bool = True, workers: int = 1,
                 scheduler: str | None = None) -> dict:
    """Read, preprocess and window every input and write webdataset shards plus ``manifest.json``.

    Parameters
    ----------
    config : ShardsConfig
        Inputs, preprocessing and sharding settings.
    overwrite : bool
        Delete shards built with other settings in ``config.out`` instead of stopping.
    progress : bool
        Show a tqdm progress bar over recordings.
    workers : int
        Recordings processed at once: 1 runs them in this process; more run them in this process and
        on a local Dask cluster of ``workers - 1`` processes (:mod:`neurofm.data_shards.parallel`). The
        shards are the same.
    scheduler : str | None
        Address of a running Dask scheduler (``tcp://host:8786``) to run the recordings on instead; its
        workers must see ``config.out``.

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
    if not config.inputs and config.simulate is None:
        raise ShardError(
            "No inputs: list recordings under 'inputs' or add a 'simulate' section (see configs/demo.yaml)."
        )
    created = not Path(config.out).exists()
    out = output_folder(config.out, "--out")
    try:
        return _locked_build(config, out, overwrite, progress, workers, scheduler)
    except BaseException:
        if created and not any(out.glob("shard-*.tar")) and not any(out.glob(f"{STAGING}/*.json")):  # nothing to resume
            shutil.rmtree(out, ignore_errors=True)
        raise


def _locked_build(config: ShardsConfig, out: Path, overwrite: bool, progress: bool, workers: int, scheduler: str | None) -> dict:
    with writer_lock(out):
        manifest = _start_manifest(config, out, overwrite)
        if manifest["complete"]:
            logger.info("%s is complete (%d shards); nothing to do.", out, len(manifest["shards"]))
            return manifest
        executor = make_executor(workers, scheduler, config.cluster)
        try:
            return _build(config, out, manifest, executor, progress)
        finally:
            executor.close()


def _build(config: ShardsConfig, out: Path, manifest: dict, executor, progress: bool) -> dict:
    writer = ShardWriter(out, config.samples_per_shard, manifest)
    done = writer.samples_done
    known = {r["source"]: r for r in manifest["recordings"]}
    sources = list_sources(config)
    staging = out / STAGING
    staging.mkdir(exist_ok=True)
    packed = {i for i, s in enumerate(sources) if s.name in known and known[s.name]["first_sample"] + known[s.name]["n_windows"] <= done}
    calls, leaders = [], {}
    mne_level = logging.getLogger("mne").getEffectiveLevel()
    for i, source in enumerate(sources):  # one task per recording still to pack; a dataset's first one leads
        if i not in packed:
            calls.append(Call(i, leaders.get(source.dataset), (config, source, i, str(staging)), {"mne_log_level": mne_level}))
            leaders.setdefault(source.dataset, i)
    results = iter(OrderedTasks(run_recording, calls, executor))
    sample_index = 0
    started = time.perf_counter()
    try:
        bar = tqdm(total=len(sources), desc=f"recordings ({executor.workers} worker{'s' * (executor.workers > 1)})",
                   disable=not progress, unit="rec")
        for i, source in enumerate(sources):
            bar.update(1)
            if i in packed:
                sample_index += known[source.name]["n_windows"]
                continue
            try:
                entry = raise_if_failed(next(results)[1])
            except NeuroFMError as err:
                if config.on_error == "raise":
                    raise
                logger.warning("skipped %s: %s", source.name, err)
                if source.name not in {s["source"] for s in manifest["skipped"]}:
                    manifest["skipped"].append({"source": source.name, "error": str(err)})
                continue
            for j, (key, files) in enumerate(staged_samples(staging, i)):
                if sample_index + j >= done:
                    writer.write(key, files)
            entry = {**entry, "first_sample": sample_index}
            sample_index += entry["n_windows"]
            if source.name not in known:
                manifest["recordings"].append(entry)
                known[source.name] = entry
            drop_staged(staging, i)
            bar.set_postfix(hours=f"{sum(r['seconds'] for r in manifest['recordings']) / 3600:.2f}")
        bar.close()
        writer.close_shard()
    except BaseException:
        writer.abort()
        raise
    shutil.rmtree(staging, ignore_errors=True)
    manifest["statistics"] = _statistics(manifest["recordings"])
    logger.info("built %s in %.1f s", out, time.perf_counter() - started)  # not in the manifest: it must not depend on the run
    manifest["complete"] = True
    write_json_atomic(out / MANIFEST, manifest)
    return manifest


def recording_entry(config: ShardsConfig, source: Source, add: Callable[[str, dict[str, bytes]], None]) -> dict:
    """Read, preprocess and window one recording, handing every sample to ``add(key, files)`` in order;
    returns its manifest entry (without ``first_sample``, which the driver knows)."""
    recording = source.read()
    prepared = prepare(recording, config, source.input_index)
    checksum, dataset, rel = source.checksum(), source.dataset, source.name
    n_windows, valid_samples = 0, 0
    dtype = np.dtype(config.signal_dtype)
    sensors = prepared.sensors.features()
    unpositioned = sum(not has_position(p) for p in prepared.sensors.positions)
    for key, signal, meta in iter_windows(prepared, relative_source=rel, checksum=checksum, dataset=dataset):
        add(key, {
            "signal.npy": encode_npy(signal.astype(dtype)),
            "sensors.npy": encode_npy(sensors),
            "meta.json": json.dumps(meta).encode(),
        })
        n_windows += 1
        valid_samples += meta["n_valid_samples"]
    durations = [seg.data.shape[1] / prepared.sfreq for seg in prepared.segments]
    return {
        "source": rel,
        "sha256": checksum,
        "dataset": dataset,
        "modality": recording.modality,
        "layout": recording.layout,
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
        **({"ground_truth": recording.labels} if recording.labels else {}),
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
