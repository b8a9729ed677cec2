"""Cut prepared recordings into fixed-length windows with their ``meta.json``.

Continuous recordings give every full window (stride = window × (1 − overlap)); a recording shorter
than one window, an epoch and an evoked condition each give one window. Windows shorter than the
window length are zero-padded at the end and say so in ``n_valid_samples``; an epoch longer than the
window keeps its first ``window_samples`` samples (``cropped: true``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator

import numpy as np

from neurofm.data_shards.preprocess import Prepared


def recording_id(relative_source: str) -> str:
    """A short webdataset-safe id (no dots, no slashes) for a recording path.

    Tar headers hold 100-character names and ``wids`` reads only those, so the id keeps the end of
    the path (the file name, mostly) and adds a hash of the whole path to stay unique.
    """
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", relative_source).strip("_")[-48:].lstrip("_-")
    return f"{slug}_{hashlib.sha1(relative_source.encode()).hexdigest()[:8]}"


def bids_entities(name: str) -> dict[str, str]:
    """``sub``, ``ses``, ``task``, ``acq``, ``run`` entities found in a file name, BIDS-style."""
    return dict(re.findall(r"(sub|ses|task|acq|run)-([A-Za-z0-9]+)", name))


def window_starts(n_samples: int, window_samples: int, overlap: float) -> list[int]:
    """Start sample of every full window; ``[0]`` when the signal is shorter than one window."""
    stride = max(1, int(round(window_samples * (1 - overlap))))
    if n_samples <= window_samples:
        return [0]
    return list(range(0, n_samples - window_samples + 1, stride))


def iter_windows(prepared: Prepared, *, relative_source: str, checksum: str, dataset: str) -> Iterator[tuple[str, np.ndarray, dict]]:
    """Yield ``(key, signal [channels, window_samples] float32, meta)`` for every window."""
    rec = prepared.recording
    window_samples = int(round(prepared.window_seconds * prepared.sfreq))
    rid = recording_id(relative_source)
    entities = bids_entities(rec.source.name)
    base_meta = {
        "dataset": dataset,
        "subject": entities.get("sub", rid),
        "session": entities.get("ses"),
        "run": entities.get("run"),
        "task": entities.get("task"),
        "modality": rec.modality,
        "layout": rec.layout,
        "sfreq": prepared.sfreq,
        "window_samples": window_samples,
        "channels": prepared.sensors.names,
        "kinds": prepared.sensors.kinds,
        "scale": prepared.scales,
        "source": relative_source,
        "source_sha256": checksum,
    }
    for seg_index, segment in enumerate(prepared.segments):
        n = segment.data.shape[1]
        for win_index, start in enumerate(window_starts(n, window_samples, prepared.overlap)):
            chunk = segment.data[:, start : start + window_samples]
            valid = chunk.shape[1]
            if valid < window_samples:
                chunk = np.pad(chunk, ((0, 0), (0, window_samples - valid)))
            t0, t1 = start / prepared.sfreq, (start + window_samples) / prepared.sfreq
            if rec.layout == "continuous":
                events = [
                    {**e, "onset": round(e["onset"] - t0, 6)} for e in segment.events if t0 <= e["onset"] < t1
                ]
                onset = t0
            else:  # the epoch's event sits at time 0, i.e. -onset seconds into the window
                events = [{"onset": round(-segment.onset, 6), "duration": 0.0, "label": str(next(iter(segment.labels.values()), ""))}]
                onset = segment.onset
            meta = {
                **base_meta,
                "segment": seg_index,
                "window_onset": round(onset, 6),
                "n_valid_samples": int(valid),
                "cropped": bool(n > window_samples and rec.layout != "continuous"),
                "events": events,
                "labels": segment.labels,
            }
            yield f"{rid}_{seg_index:04d}_{win_index:05d}", chunk.astype(np.float32), meta


def event_onset(meta: dict, labels: list[str] | None = None) -> float | None:
    """Seconds from a window's start to its first event (of ``labels`` when given), None without one. An
    epoch's or an evoked condition's window holds only its own event, at its time 0."""
    for event in meta.get("events") or []:
        if labels is None or event["label"] in labels:
            return float(event["onset"])
    return None
