"""Signal shards → tokenizer batches: a held-out split, family bucketing and channel padding.

A batch holds windows of one modality family and one window length (their patch sizes differ), with
channels padded to the largest count in the batch and masked. Samples wait in a per-bucket queue
until their bucket fills; the queue is part of the resumable state, so a resumed run sees exactly the
batches an uninterrupted one would.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from neurofm.data_shards.dataset import ShardIndex, ShardStream
from neurofm.data_shards.slots import SlotRing, TensorSpec, map_tensors, new_zeros
from neurofm.errors import ShardError
from neurofm.data_shards.modalities import FAMILY_OF_MODALITY


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
    metas: Sequence[dict]
    indices: list[int] = field(default_factory=list)

    def pin_memory(self) -> "Batch":
        """The batch with its tensors in page-locked memory (for fast, asynchronous copies to a GPU)."""
        return map_tensors(self, torch.Tensor.pin_memory)


class Metas(Sequence):
    """The windows' meta dicts of a batch. Pickled (to leave a DataLoader worker) as the JSON text they
    were read from, and decoded again only when first read: a batch's 32 metas pickle and unpickle in
    about a millisecond as dicts, which is a tenth of what reading the batch costs, and training reads
    none of them."""

    def __init__(self, metas: list[dict] | None = None, texts: list[bytes] | None = None):
        self._metas, self._texts = metas, texts

    @classmethod
    def of(cls, samples: list[dict]) -> "Metas":
        texts = [s.get("meta_json") for s in samples]
        return cls([s["meta"] for s in samples], texts if all(t is not None for t in texts) else None)

    def slot_texts(self) -> list[bytes] | None:
        """The JSON texts (for a shared-memory slot to carry, :class:`~neurofm.data_shards.slots.SlotRing`)."""
        return self._texts

    @classmethod
    def from_texts(cls, texts: list[bytes]) -> "Metas":
        return cls(None, texts)

    def _decoded(self) -> list[dict]:
        if self._metas is None:
            self._metas = [json.loads(t) for t in self._texts]
        return self._metas

    def __getitem__(self, i):
        return self._decoded()[i]

    def __len__(self) -> int:
        return len(self._texts) if self._metas is None else len(self._metas)

    def __eq__(self, other) -> bool:
        return list(self) == list(other) if isinstance(other, Sequence) else NotImplemented

    def __repr__(self) -> str:
        return f"Metas({self._decoded()!r})"

    def __reduce__(self):
        return (Metas, (None, self._texts)) if self._texts is not None else (Metas, (self._decoded(), None))


def family_of(meta: dict) -> str:
    return FAMILY_OF_MODALITY[meta["modality"]]


def collate(samples: list[dict], zeros: Callable[[TensorSpec], dict] = new_zeros) -> Batch:
    """Pad a list of decoded samples of one family and window length into a :class:`Batch`; ``zeros``
    allocates its tensors (in a DataLoader worker: straight in a shared-memory slot)."""
    n_channels = max(s["signal"].shape[0] for s in samples)
    n_times = samples[0]["signal"].shape[1]
    b = len(samples)
    tensors = zeros({"signal": ((b, n_channels, n_times), torch.float32),
                     "sensors": ((b, n_channels, samples[0]["sensors"].shape[1]), torch.float32),
                     "channel_mask": ((b, n_channels), torch.bool), "time_mask": ((b, n_times), torch.bool)})
    signal, sensors, channel_mask, time_mask = (tensors[k] for k in ("signal", "sensors", "channel_mask", "time_mask"))
    for i, s in enumerate(samples):
        c = s["signal"].shape[0]
        signal[i, :c] = torch.from_numpy(s["signal"])  # float16 or float32 on disk; the copy casts
        sensors[i, :c] = torch.from_numpy(s["sensors"])
        channel_mask[i, :c] = True
        time_mask[i, : s["meta"].get("n_valid_samples", n_times)] = True
    return Batch(signal, sensors, channel_mask, time_mask, family_of(samples[0]["meta"]),
                 [s["__key__"] for s in samples], Metas.of(samples), [s.get("__index__", -1) for s in samples])


def channel_class(n_channels: int) -> int:
    """The power of two (at least 16) a window of ``n_channels`` rows is padded up to in its bucket."""
    return max(16, 1 << (int(n_channels) - 1).bit_length())


def bucket_names(index: ShardIndex, by_channels: bool = False) -> np.ndarray:
    """The batch bucket of every sample of ``index`` [N] (str): its family and window length, and with
    ``by_channels`` its channel class (:func:`channel_class`); fMRI windows always by their exact channel
    count (a tokenizer with channel tokens gives them one token per parcel, so a batch of fMRI codes
    holds one parcel count). Read from the manifest (each recording has one modality, one window length
    and one channel count), so batches can be planned without reading a sample; a recording the
    manifest does not describe is read once."""
    names = np.empty(len(index), dtype=object)
    for rec in index.manifest["recordings"]:
        rows = slice(rec["first_sample"], rec["first_sample"] + rec["n_windows"])
        window, n_channels = modality_window(index.manifest, rec["modality"]), rec.get("n_channels")
        if window is None or (n_channels is None and (by_channels or FAMILY_OF_MODALITY.get(rec["modality"]) == "bold")):
            sample = index[rec["first_sample"]]
            data = sample["signal"] if "signal" in sample else sample["codes"]
            window = (family_of(sample["meta"]), window[1] if window else data.shape[-2 if "codes" in sample else 1])
            n_channels = sample["sensors"].shape[0]
        if window[0] == "bold":
            names[rows] = f"{window[0]}-{window[1]}-n{n_channels}"
        else:
            names[rows] = f"{window[0]}-{window[1]}" + (f"-c{channel_class(n_channels)}" if by_channels else "")
    return names


class BatchPlanner:
    """Stream items → batches of global sample indices, by bucket, with the resume state after each.

    A sample waits in its bucket's queue until the bucket holds ``batch_size``; the queues are part of
    the state, so a run resumed from the state after batch b plans exactly the batches b + 1, … that an
    uninterrupted run would. Pure index arithmetic: nothing is read.
    """

    def __init__(self, stream: ShardStream, batch_size: int, buckets: np.ndarray, pending: dict[str, list[int]] | None = None):
        self.stream, self.batch_size, self.buckets = stream, batch_size, buckets
        self.position = stream.position
        self.queues: dict[str, list[int]] = {}
        for indices in (pending or {}).values():  # re-bucketed: names of older versions may differ
            for i in indices:
                self.queues.setdefault(buckets[int(i)], []).append(int(i))
        self._items = stream.items(stream.position)

    def state(self) -> dict:
        return {"position": self.position, "offset": self.stream.offset,
                "pending": {k: list(v) for k, v in self.queues.items() if v}}

    def __iter__(self) -> Iterator[tuple[list[int], dict]]:
        return self

    def __next__(self) -> tuple[list[int], dict]:
        while True:
            position, index = next(self._items)
            self.position = position + 1
            queue = self.queues.setdefault(self.buckets[index], [])
            queue.append(index)
            if len(queue) == self.batch_size:
                self.queues[self.buckets[index]] = []
                return queue, self.state()


class PlannedBatches(torch.utils.data.IterableDataset):
    """The planned batches, read and collated: (batch, resume state after it). In ``DataLoader``
    worker w of W, every worker plans all batches (cheap) and reads and collates batches w, w + W, …
    — the order a ``DataLoader`` returns them in, so the stream is the same for any worker count. With
    a ``ring``, a worker collates each batch straight into one of its reused shared-memory slots
    (``collate_fn(samples, zeros=ring.zeros)``) and hands it over there. Batches travel in lists of
    ``group`` consecutive ones (worker w takes groups w, w + W, …): a ``DataLoader`` item costs its
    messages and wake-ups whatever it holds."""

    def __init__(self, stream: ShardStream, batch_size: int, buckets: np.ndarray, pending: dict | None, collate_fn,
                 part: tuple[int, int] = (0, 1), ring: SlotRing | None = None, group: int = 1):
        super().__init__()
        self.stream, self.batch_size, self.buckets, self.pending, self.collate_fn = stream, batch_size, buckets, pending, collate_fn
        self.part, self.ring, self.group = part, ring, group

    def __iter__(self) -> Iterator[list[tuple[object, dict]]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        index = self.stream.index
        group = []
        for b, (indices, state) in enumerate(BatchPlanner(self.stream, self.batch_size, self.buckets, self.pending)):
            if (b // self.group) % workers == worker:
                rank, ranks = self.part
                samples = [{**index[i], "__index__": i} for i in indices[rank::ranks]]
                if self.ring is None:
                    group.append((self.collate_fn(samples), state))
                else:
                    group.append((self.ring.pack(self.collate_fn(samples, zeros=self.ring.zeros)), state))
                if len(group) == self.group:
                    yield group
                    group = []
        if group:
            yield group


#: Batches per DataLoader item when workers read (:class:`PlannedBatches`).
WORKER_GROUP = 4


class BatchStream:
    """Endless batches from a shard stream, bucketed by family and window length (and with
    ``by_channels`` by channel class), read and collated in ``num_workers`` DataLoader worker
    processes (0: in this process), pinned in memory for a GPU with ``pin_memory``.

    Parameters
    ----------
    stream : ShardStream
        The sample stream (its ``position`` is where this resumes).
    batch_size : int
        Windows per batch.
    pending : dict | None
        Saved queues (bucket name → global sample indices waiting in it), from :meth:`state`.
    collate_fn : callable
        ``(samples, zeros=…) → batch`` (signal windows by default; code shards pass theirs), allocating
        the batch's tensors through ``zeros`` ({name: (shape, dtype)} → zeroed tensors), so that a worker
        can collate straight into shared memory.
    by_channels : bool
        Also group windows by channel class, so few-channel windows are not padded to many-channel ones.
    num_workers : int
        DataLoader worker processes that read and collate; the batches and :meth:`state` are the same
        for every count. Workers collate batches straight into reused shared-memory slots
        (:class:`~neurofm.data_shards.slots.SlotRing`): the tensors returned are views of a slot, which
        a worker reuses once they are all gone.
    pin_memory : bool
        Copy each batch into page-locked memory (for a GPU), in this process.
    part : (rank, ranks)
        Data parallelism: every rank plans the same global batches of ``batch_size`` and reads rows
        ``rank, rank + ranks, …`` of each (``state`` is the global one, the same on every rank).
    """

    def __init__(self, stream: ShardStream, batch_size: int, pending: dict[str, list[int]] | None = None,
                 collate_fn=None, by_channels: bool = False, num_workers: int = 0, pin_memory: bool = False,
                 part: tuple[int, int] = (0, 1)):
        buckets = bucket_names(stream.index, by_channels)
        group = WORKER_GROUP if num_workers > 0 else 1
        # slots: the DataLoader's prefetch (2 items a worker), one group being filled, one held by the consumer
        self._ring = SlotRing(num_workers, slots_per_worker=4 * group + 2) if num_workers > 0 else None
        dataset = PlannedBatches(stream, batch_size, buckets, pending, collate_fn or collate, part, self._ring, group)
        self._state = BatchPlanner(stream, batch_size, buckets, pending).state()
        if num_workers > 0:
            self._groups = iter(torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=num_workers))
        else:
            self._groups = iter(dataset)
        self._group: Iterator = iter(())
        self.pin_memory = pin_memory

    def state(self) -> dict:
        """Resume point after the last batch returned: the next stream position and the queued samples."""
        return self._state

    def __iter__(self) -> Iterator:
        return self

    def __next__(self):
        item = next(self._group, None)
        if item is None:
            self._group = iter(next(self._groups))
            item = next(self._group)
        batch, self._state = item
        if self._ring is not None:
            batch = self._ring.unpack(batch)
        return map_tensors(batch, torch.Tensor.pin_memory) if self.pin_memory else batch


def require_signal(index: ShardIndex) -> None:
    """Refuse code shards where signal shards belong."""
    if index.manifest.get("kind") == "codes":
        raise ShardError(f"{index.location} holds code shards (tokenizer output); this step reads signal shards — give the "
                         "folder made by `neurofm shards build` (the one the codes were encoded from).")


def modality_window(manifest: dict, modality: str) -> tuple[str, int] | None:
    """(family, samples per window) of ``modality``'s windows, from a shard manifest's settings (None when
    the manifest does not say, e.g. a hand-made shard set)."""
    settings = manifest.get("settings", {}).get(modality)
    if not isinstance(settings, dict) or "window_seconds" not in settings:
        return None
    per_second = 1 / settings["tr_seconds"] if modality == "fmri" else settings["sfreq"]
    return FAMILY_OF_MODALITY[modality], int(round(settings["window_seconds"] * per_second))


def batch_plan(index: ShardIndex, indices, batch_size: int) -> list[np.ndarray]:
    """The batches :func:`ordered_batches` makes of ``indices`` (a new one whenever the bucket changes or
    one is full), as index arrays, without reading the samples — so several processes can split them."""
    indices = np.asarray(indices, dtype=np.int64)
    plan, start = [], 0
    buckets = bucket_names(index)[indices]
    for i in range(1, len(indices) + 1):
        if i == len(indices) or buckets[i] != buckets[start] or i - start == batch_size:
            plan.append(indices[start:i])
            start = i
    return [b for b in plan if len(b)]


def ordered_batches(index: ShardIndex, indices, batch_size: int) -> Iterator[Batch]:
    """Batches of consecutive samples in stored order (a new batch whenever the bucket changes)."""
    require_signal(index)
    for planned in batch_plan(index, indices, batch_size):
        yield collate([{**index[int(i)], "__index__": int(i)} for i in planned])
