"""Signal shards → tokenizer batches: a held-out split, family bucketing and channel padding.

A batch holds windows of one modality family and one window length (their patch sizes differ), with
channels padded to the largest count in the batch and masked. Samples wait in a per-bucket queue
until their bucket fills; the queue is part of the resumable state, so a resumed run sees exactly the
batches an uninterrupted one would.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from neurofm.data_shards.dataset import ShardIndex, ShardStream
from neurofm.errors import ShardError
from neurofm.tokenizers.config import FAMILY_OF_MODALITY


def split_indices(index: ShardIndex, eval_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Train / held-out global sample indices: the last ``eval_fraction`` of each recording's windows
    are held out, with a gap of as many windows as overlap would leak (recordings of one window train).
    """
    train, held_out = [], []
    for rec in index.manifest["recordings"]:
        first, n = rec["first_sample"], rec["n_windows"]
        windows = np.arange(first, first + n)
        if n < 2:
            train.extend(windows)
            continue
        n_eval = max(1, math.ceil(eval_fraction * n))
        overlap = rec.get("settings", {}).get("overlap", 0.0) if rec["layout"] == "continuous" else 0.0
        gap = math.ceil(overlap / (1 - overlap)) if overlap > 0 else 0
        held_out.extend(windows[n - n_eval :])
        train.extend(windows[: max(0, n - n_eval - gap)])
    return np.asarray(train, dtype=np.int64), np.asarray(held_out, dtype=np.int64)


@dataclass
class Batch:
    """A padded batch: ``signal`` [B, C, T], ``sensors`` [B, C, 12], ``channel_mask`` [B, C] (True =
    real), ``time_mask`` [B, T] (True = not padding), one ``family``, and each window's key and meta."""

    signal: torch.Tensor
    sensors: torch.Tensor
    channel_mask: torch.Tensor
    time_mask: torch.Tensor
    family: str
    keys: list[str]
    metas: list[dict]
    indices: list[int] = field(default_factory=list)


def family_of(meta: dict) -> str:
    return FAMILY_OF_MODALITY[meta["modality"]]


def collate(samples: list[dict]) -> Batch:
    """Pad a list of decoded samples of one family and window length into a :class:`Batch`."""
    n_channels = max(s["signal"].shape[0] for s in samples)
    n_times = samples[0]["signal"].shape[1]
    b = len(samples)
    signal = torch.zeros(b, n_channels, n_times)
    sensors = torch.zeros(b, n_channels, samples[0]["sensors"].shape[1])
    channel_mask = torch.zeros(b, n_channels, dtype=torch.bool)
    time_mask = torch.zeros(b, n_times, dtype=torch.bool)
    for i, s in enumerate(samples):
        c = s["signal"].shape[0]
        signal[i, :c] = torch.from_numpy(s["signal"].astype(np.float32))
        sensors[i, :c] = torch.from_numpy(s["sensors"])
        channel_mask[i, :c] = True
        time_mask[i, : s["meta"].get("n_valid_samples", n_times)] = True
    return Batch(signal, sensors, channel_mask, time_mask, family_of(samples[0]["meta"]),
                 [s["__key__"] for s in samples], [s["meta"] for s in samples], [s.get("__index__", -1) for s in samples])


def signal_bucket(sample: dict) -> str:
    """Bucket of a signal sample: its family and window length."""
    return f"{family_of(sample['meta'])}-{sample['signal'].shape[1]}"


def channel_class(n_channels: int) -> int:
    """The power of two (at least 16) a window of ``n_channels`` rows is padded up to in its bucket."""
    return max(16, 1 << (int(n_channels) - 1).bit_length())


def signal_channel_bucket(sample: dict) -> str:
    """Bucket of a signal sample: family, window length and channel class (less padding per batch)."""
    return f"{signal_bucket(sample)}-c{channel_class(sample['signal'].shape[0])}"


class BatchStream:
    """Endless batches from a shard stream, bucketed (by default by family and window length).

    Parameters
    ----------
    stream : ShardStream
        The sample stream (its ``position`` is where this resumes).
    batch_size : int
        Windows per batch.
    pending : dict | None
        Saved queue: bucket name → global sample indices waiting in it.
    collate_fn, bucket_fn : callable
        Samples → batch, and sample → bucket name (signal shards by default; code shards pass theirs).
    """

    def __init__(self, stream: ShardStream, batch_size: int, pending: dict[str, list[int]] | None = None,
                 collate_fn=None, bucket_fn=signal_bucket):
        self.stream, self.batch_size = stream, batch_size
        self.collate_fn, self.bucket_fn = collate_fn or collate, bucket_fn
        self.position = stream.position
        self.buckets: dict[str, list[dict]] = {}
        for name, indices in (pending or {}).items():
            self.buckets[name] = [{**stream.index[i], "__index__": i} for i in indices]
        self._items = stream.items(stream.position)

    def state(self) -> dict:
        """Resume point: the next stream position and the queued samples."""
        return {"position": self.position, "offset": self.stream.offset,
                "pending": {k: [s["__index__"] for s in v] for k, v in self.buckets.items()}}

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        while True:
            position, index = next(self._items)
            sample = {**self.stream.index[index], "__index__": index}
            self.position = position + 1
            bucket = self.bucket_fn(sample)
            queue = self.buckets.setdefault(bucket, [])
            queue.append(sample)
            if len(queue) == self.batch_size:
                self.buckets[bucket] = []
                return self.collate_fn(queue)


def require_signal(index: ShardIndex) -> None:
    """Refuse code shards where signal shards belong."""
    if index.manifest.get("kind") == "codes":
        raise ShardError(f"{index.dir} holds code shards (tokenizer output); this step reads signal shards — give the "
                         "folder made by `neurofm shards build` (the one the codes were encoded from).")


def modality_window(manifest: dict, modality: str) -> tuple[str, int] | None:
    """(family, samples per window) of ``modality``'s windows, from a shard manifest's settings (None when
    the manifest does not say, e.g. a hand-made shard set)."""
    settings = manifest.get("settings", {}).get(modality)
    if not isinstance(settings, dict) or "window_seconds" not in settings:
        return None
    per_second = 1 / settings["tr_seconds"] if modality == "fmri" else settings["sfreq"]
    return FAMILY_OF_MODALITY[modality], int(round(settings["window_seconds"] * per_second))


def sample_buckets(index: ShardIndex, indices: np.ndarray) -> list[tuple[str, int]]:
    """(family, window samples) of each of ``indices``, from the manifest (each recording has one
    modality and its modality one window length); read from the samples when the manifest cannot say."""
    by_index = np.empty(len(index), dtype=object)
    for rec in index.manifest["recordings"]:
        window = modality_window(index.manifest, rec["modality"])
        if window is None:
            return [(family_of(index[int(i)]["meta"]), index[int(i)]["signal"].shape[1]) for i in indices]
        by_index[rec["first_sample"] : rec["first_sample"] + rec["n_windows"]] = [window]
    return [by_index[int(i)] for i in indices]


def batch_plan(index: ShardIndex, indices, batch_size: int) -> list[np.ndarray]:
    """The batches :func:`ordered_batches` makes of ``indices`` (a new one whenever the bucket changes or
    one is full), as index arrays, without reading the samples — so several processes can split them."""
    indices = np.asarray(indices, dtype=np.int64)
    plan, start = [], 0
    buckets = sample_buckets(index, indices)
    for i in range(1, len(indices) + 1):
        if i == len(indices) or buckets[i] != buckets[start] or i - start == batch_size:
            plan.append(indices[start:i])
            start = i
    return [b for b in plan if len(b)]


def ordered_batches(index: ShardIndex, indices, batch_size: int) -> Iterator[Batch]:
    """Batches of consecutive samples in stored order (a new batch whenever the bucket changes)."""
    require_signal(index)
    current: list[dict] = []
    bucket = None
    for i in indices:
        sample = {**index[int(i)], "__index__": int(i)}
        this = (family_of(sample["meta"]), sample["signal"].shape[1])
        if current and (this != bucket or len(current) == batch_size):
            yield collate(current)
            current = []
        current.append(sample)
        bucket = this
    if current:
        yield collate(current)
