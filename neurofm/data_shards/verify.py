"""``neurofm shards verify`` and ``neurofm shards inspect``: check and summarise a shard folder."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from wids.wids import IndexedTarSamples

from neurofm.data_shards.dataset import decode_sample
from neurofm.data_shards.modalities import FAMILY_OF_MODALITY
from neurofm.data_shards.sensors import SENSOR_FEATURES, has_position
from neurofm.data_shards.writer import read_manifest, sha256_file
from neurofm.errors import ShardError


def _load(shards_dir: Path) -> dict:
    manifest = read_manifest(shards_dir)
    if manifest is None:
        raise ShardError(f"{shards_dir} has no manifest.json; point at a folder made by `neurofm shards build`.")
    return manifest


def _check_codes(sample: dict, tokenizer: dict) -> str | None:
    codes, sensors, meta = sample["codes"], sample["sensors"], sample["meta"]
    tokens = len(sensors) if FAMILY_OF_MODALITY[meta["modality"]] in tokenizer.get("channel_tokens", ()) else tokenizer["n_latents"]
    if codes.ndim != 3 or codes.dtype != np.int16 or codes.shape[0] != tokens or codes.shape[2] != tokenizer["levels"]:
        return f"codes {codes.shape} {codes.dtype}, expected int16 [{tokens}, patches, {tokenizer['levels']}]"
    if codes.min() < 0 or codes.max() >= tokenizer["codes_per_level"]:
        return f"codes outside [0, {tokenizer['codes_per_level']})"
    if sensors.shape[0] != len(meta["channels"]):
        return f"{sensors.shape[0]} sensor rows for {len(meta['channels'])} channels"
    return None


def _check_sample(sample: dict, manifest: dict) -> str | None:
    if "codes" in sample:
        return _check_codes(sample, manifest["tokenizer"])
    signal, sensors, meta = sample["signal"], sample["sensors"], sample["meta"]
    if signal.ndim != 2 or sensors.ndim != 2:
        return f"signal {signal.shape} / sensors {sensors.shape} are not 2-D"
    if signal.shape[0] != sensors.shape[0] or signal.shape[0] != len(meta["channels"]):
        return f"{signal.shape[0]} signal rows, {sensors.shape[0]} sensor rows, {len(meta['channels'])} channel names"
    if signal.shape[1] != meta["window_samples"]:
        return f"{signal.shape[1]} samples, meta says {meta['window_samples']}"
    if sensors.shape[1] != len(SENSOR_FEATURES):
        return f"sensors have {sensors.shape[1]} features, expected {len(SENSOR_FEATURES)}"
    if not np.isfinite(signal).all():
        return "signal holds NaN or infinite values"
    if not all(has_position(p) for p in sensors[:, :3]):
        return "a sensor has no position"
    return None


def verify_shards(shards_dir: str | Path) -> list[dict]:
    """Re-check every shard's size and sha256 and decode every sample.

    Returns
    -------
    problems : list of dict
        ``{"shard": name, "sample": key or None, "problem": text}``; empty when all is well.
    """
    shards_dir = Path(shards_dir)
    manifest = _load(shards_dir)
    problems: list[dict] = []
    if not manifest.get("complete"):
        problems.append({"shard": None, "sample": None, "problem": "build not complete; rerun `neurofm shards build`"})
    listed = {s["name"] for s in manifest["shards"]}
    for stray in sorted(p.name for p in shards_dir.glob("shard-*.tar*") if p.name not in listed):
        problems.append({"shard": stray, "sample": None, "problem": "not listed in manifest.json (left by an interrupted build?)"})
    for entry in manifest["shards"]:
        path = shards_dir / entry["name"]
        if not path.is_file():
            problems.append({"shard": entry["name"], "sample": None, "problem": "missing"})
            continue
        if path.stat().st_size != entry["bytes"]:
            problems.append({"shard": entry["name"], "sample": None, "problem": f"size {path.stat().st_size} bytes, manifest says {entry['bytes']}"})
        if sha256_file(path) != entry["sha256"]:
            problems.append({"shard": entry["name"], "sample": None, "problem": "sha256 differs from the manifest"})
        try:
            tar = IndexedTarSamples(path=str(path))
        except (AttributeError, TypeError, NameError):
            raise
        except Exception as err:  # damaged tar headers: wids raises several types
            problems.append({"shard": entry["name"], "sample": None, "problem": f"unreadable tar ({type(err).__name__}: {err})"})
            continue
        try:
            if len(tar) != entry["samples"]:
                problems.append({"shard": entry["name"], "sample": None, "problem": f"{len(tar)} samples, manifest says {entry['samples']}"})
            for i in range(len(tar)):
                raw = {"__key__": f"#{i}"}
                try:
                    raw = tar[i]
                    sample = decode_sample(raw, entry["name"])
                    problem = _check_sample(sample, manifest)
                except (ShardError, KeyError, ValueError, AssertionError) as err:
                    problem = str(err)
                if problem:
                    problems.append({"shard": entry["name"], "sample": raw.get("__key__"), "problem": problem})
        finally:
            tar.close()
    return problems


def summarize(shards_dir: str | Path) -> dict:
    """What ``neurofm shards inspect`` prints: totals per modality from the manifest."""
    shards_dir = Path(shards_dir)
    manifest = _load(shards_dir)
    stats = manifest.get("statistics", {})
    return {
        "folder": str(shards_dir),
        "complete": manifest.get("complete", False),
        "shards": len(manifest["shards"]),
        "bytes": sum(s["bytes"] for s in manifest["shards"]),
        "samples": sum(s["samples"] for s in manifest["shards"]),
        "recordings": len(manifest["recordings"]),
        "skipped": manifest.get("skipped", []),
        "modalities": stats,
        "sensors_without_position": sum(m.get("sensors_without_position", 0) for m in stats.values()),
    }


def format_summary(summary: dict) -> str:
    """Human-readable table of :func:`summarize`."""
    lines = [
        f"{summary['folder']}: {summary['shards']} shards, {summary['samples']} windows, "
        f"{summary['recordings']} recordings, {summary['bytes'] / 2**20:.1f} MiB"
        + ("" if summary["complete"] else "  (INCOMPLETE build)"),
        "",
        f"{'modality':<9}{'recordings':>11}{'windows':>9}{'hours':>9}{'channels (min/med/max)':>25}{'bad ch':>8}  kinds",
    ]
    for modality, s in summary["modalities"].items():
        ch = s["channels"]
        channels = f"{ch['min']}/{_num(ch['median'])}/{ch['max']}"
        lines.append(
            f"{modality:<9}{s['recordings']:>11}{s['windows']:>9}{s['hours']:>9.3f}"
            f"{channels:>25}{s['bad_channels']:>8}  {', '.join(s['scale_median'])}"
        )
    lines += ["", f"sensors without positions: {summary['sensors_without_position']}"]
    if summary["skipped"]:
        lines.append(f"skipped recordings: {len(summary['skipped'])}")
        lines += [f"  {s['source']}: {s['error']}" for s in summary["skipped"]]
    return "\n".join(lines)


def _num(x: float) -> str:
    return str(int(x)) if math.isclose(x, round(x)) else f"{x:.1f}"
