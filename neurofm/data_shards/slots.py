"""Reused shared-memory slots for batches handed from DataLoader workers to the training process.

A tensor a DataLoader worker returns travels in a fresh shared-memory segment: allocated, page-faulted
on both sides and handed over through a socket, for every batch (≈ 5 ms for a 4-MB batch on a CPU
core — half of what reading and collating it costs). Here each worker keeps a few segments
(**slots**) and collates each batch straight into a free one (its tensors are allocated there by
:meth:`SlotRing.zeros`, so nothing is copied; a batch collated elsewhere is copied in); only the
slot's number, the tensors' offsets and the rest of the batch are pickled — except lists of texts (a
batch's metas as the JSON they were read from, 2–6 kB per window), which go into the slot's spare room
behind the tensors when they fit. The training process maps
a slot once and hands out tensors that are views of it (no copy); the slot becomes free for the
worker again when the last of those views is gone, whoever holds them and for however long. A worker that finds no free slot (the
consumer keeps many batches) sends the batch the ordinary way, so nothing ever waits.

Use: create a :class:`SlotRing` in the training process before the DataLoader starts its workers;
in the worker, collate with ``zeros=ring.zeros`` and call ``ring.pack(batch)``; call
``ring.unpack(item)`` on what the loader returns.
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from collections.abc import Mapping

import numpy as np
import torch

_ALIGN = 64  # bytes: every tensor starts on a cache line, so any dtype's view is aligned

#: What a collate function is given to allocate its batch's tensors: {name: (shape, dtype)} → {name: zeroed tensor}.
TensorSpec = Mapping[str, tuple[tuple[int, ...], torch.dtype]]


def new_zeros(spec: TensorSpec) -> dict[str, torch.Tensor]:
    """Fresh zeroed tensors, one per entry of ``spec`` (the allocator outside a DataLoader worker)."""
    return {name: torch.zeros(shape, dtype=dtype) for name, (shape, dtype) in spec.items()}


def _layout(spec: TensorSpec) -> tuple[dict, int]:
    """{name: (offset in bytes, shape, dtype)} of ``spec``'s tensors packed one after another, and the bytes."""
    layout, size = {}, 0
    for name, (shape, dtype) in spec.items():
        layout[name] = (size, tuple(shape), dtype)
        size += -(-math.prod(shape) * dtype.itemsize // _ALIGN) * _ALIGN
    return layout, size


@dataclasses.dataclass
class _Packed:
    """A batch whose tensors live in slot ``slot`` of worker ``worker``: ``layout`` maps each tensor's
    name to ``(offset in bytes, shape, dtype)``, ``others`` holds the batch's other values; ``storage``
    is the slot's tensor when the training process has not mapped it yet (first use, or replaced)."""

    worker: int
    slot: int
    generation: int
    kind: type
    layout: dict
    others: dict
    storage: torch.Tensor | None
    texts: dict = dataclasses.field(default_factory=dict)  # name → (type, offset in bytes, lengths) of text lists in the slot


class SlotRing:
    """Per-worker slots of shared memory, reused once the training process has dropped a batch.

    Parameters
    ----------
    num_workers : int
        DataLoader workers.
    slots_per_worker : int
        Slots each worker may keep; a batch that finds none free (the consumer holds that many of the
        worker's batches) is sent as a fresh segment instead.
    """

    def __init__(self, num_workers: int, slots_per_worker: int = 6):
        # 1 = the training process still holds views of the slot; written by both processes
        self.busy = torch.zeros(num_workers, slots_per_worker, dtype=torch.int32).share_memory_()
        self._slots: list[torch.Tensor] = []  # worker side: this worker's slots (uint8, shared)
        self._generations: list[int] = []  # worker side: times each slot was (re)allocated
        self._sent: dict[int, int] = {}  # worker side: slot → generation the training process has mapped
        self._reserved: tuple[int, dict, dict] | None = None  # worker side: (slot, layout, views) from zeros()
        self._mapped: dict[tuple[int, int], tuple[int, np.ndarray]] = {}  # training side: (worker, slot) → (generation, bytes)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_slots": [], "_generations": [], "_sent": {}, "_mapped": {}, "_reserved": None}

    # -- worker side -------------------------------------------------------------------------------
    def zeros(self, spec: TensorSpec) -> dict[str, torch.Tensor]:
        """Zeroed tensors for the next batch, as views of a free slot of this worker, so that
        :meth:`pack` hands the batch over without a copy; fresh tensors outside a worker or when every
        slot is held."""
        info = torch.utils.data.get_worker_info()
        self._reserved = None
        if info is None:
            return new_zeros(spec)
        layout, size = _layout(spec)
        slot = self._free_slot(info.id, size)
        if slot is None:
            return new_zeros(spec)
        views = {name: self._view(slot, *layout[name]).zero_() for name in layout}
        self._reserved = (slot, layout, views)
        return views

    def _view(self, slot: int, offset: int, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
        return self._slots[slot][offset : offset + math.prod(shape) * dtype.itemsize].view(dtype).view(shape)

    def pack(self, batch):
        """``batch`` (a dataclass or dict of tensors and other values) as a :class:`_Packed` in a free
        slot of this worker — the slot its tensors were allocated in by :meth:`zeros`, or one they are
        copied into; unchanged outside a worker, without tensors, or when no slot is free."""
        info = torch.utils.data.get_worker_info()
        values = batch_fields(batch)
        tensors = {k: v for k, v in values.items() if torch.is_tensor(v) and v.device.type == "cpu"}
        reserved, self._reserved = self._reserved, None
        if info is None or not tensors:
            return batch
        if reserved is not None and reserved[2].keys() == tensors.keys() and all(tensors[k] is v for k, v in reserved[2].items()):
            slot, layout = reserved[0], reserved[1]
        else:  # collated elsewhere (or not only into the reserved views): copy into a slot other than the reserved one
            layout, size = _layout({name: (t.shape, t.dtype) for name, t in tensors.items()})
            slot = self._free_slot(info.id, size, exclude=None if reserved is None else reserved[0])
            if slot is None:
                return batch
            for name, t in tensors.items():
                self._view(slot, *layout[name]).copy_(t)
        self.busy[info.id, slot] = 1
        generation = self._generations[slot]
        storage = self._slots[slot] if self._sent.get(slot) != generation else None
        self._sent[slot] = generation
        others = {k: v for k, v in values.items() if k not in layout}
        texts = self._put_texts(slot, layout, others)
        others = {k: v for k, v in others.items() if k not in texts}
        return _Packed(info.id, slot, generation, type(batch), layout, others, storage, texts)

    def _put_texts(self, slot: int, layout: dict, values: dict) -> dict:
        """Write the text lists among ``values`` (objects with ``slot_texts()`` → list of bytes, rebuilt by
        ``from_texts``) into the slot behind the tensors, as far as they fit: {name: (type, offset, lengths)}."""
        memory = self._slots[slot].numpy()
        end = max((offset + math.prod(shape) * dtype.itemsize for offset, shape, dtype in layout.values()), default=0)
        placed = {}
        for name, value in values.items():
            texts = value.slot_texts() if hasattr(value, "slot_texts") else None
            if texts is None:
                continue
            joined = b"".join(texts)
            if end + len(joined) > memory.size:
                continue
            memory[end : end + len(joined)] = np.frombuffer(joined, dtype=np.uint8)
            placed[name] = (type(value), end, [len(t) for t in texts])
            end += len(joined)
        return placed

    def _free_slot(self, worker: int, size: int, exclude: int | None = None) -> int | None:
        """A free slot of at least ``size`` bytes (adding one, or replacing the smallest free one, when
        none fits), or None when every slot is held by the training process (or is ``exclude``)."""
        busy = self.busy[worker].tolist()
        free = [s for s in range(len(self._slots)) if not busy[s] and s != exclude]
        fitting = [s for s in free if self._slots[s].numel() >= size]
        if fitting:
            return min(fitting, key=lambda s: self._slots[s].numel())
        if len(self._slots) < len(busy):
            self._slots.append(torch.empty(0, dtype=torch.uint8))
            self._generations.append(-1)
            free.append(len(self._slots) - 1)
        if not free:
            return None
        slot = min(free, key=lambda s: self._slots[s].numel())
        self._slots[slot] = torch.empty(size + size // 4, dtype=torch.uint8).share_memory_()  # room for a few more channels
        self._generations[slot] += 1
        return slot

    # -- training side -----------------------------------------------------------------------------
    def unpack(self, item):
        """What a worker sent → the batch, its tensors views of the slot; the slot is free again once
        every view of this batch is gone."""
        if not isinstance(item, _Packed):
            return item
        key = (item.worker, item.slot)
        if item.storage is not None:
            self._mapped[key] = (item.generation, item.storage.numpy())
        generation, memory = self._mapped[key]
        if generation != item.generation:
            raise RuntimeError(f"DataLoader worker {item.worker} reused slot {item.slot} without sending it")
        owner = memory[:]  # a new array per batch; the tensor below keeps exactly this object alive
        whole = torch.from_numpy(owner)
        weakref.finalize(owner, _release, self.busy, item.worker, item.slot)
        values = dict(item.others)
        for name, (offset, shape, dtype) in item.layout.items():
            values[name] = whole[offset : offset + math.prod(shape) * dtype.itemsize].view(dtype).view(shape)
        for name, (kind, offset, lengths) in item.texts.items():
            joined = memory[offset : offset + sum(lengths)].tobytes()  # a copy: the texts outlive the slot's reuse
            starts = np.cumsum([0, *lengths])
            values[name] = kind.from_texts([joined[a:b] for a, b in zip(starts[:-1], starts[1:])])
        return item.kind(**values)


def _release(busy: torch.Tensor, worker: int, slot: int) -> None:
    busy[worker, slot] = 0


def batch_fields(batch) -> dict:
    """{name: value} of a batch that is a dataclass (:class:`~neurofm.data_shards.batches.Batch`) or a dict
    (code shards' batches); {} for anything else."""
    if dataclasses.is_dataclass(batch):
        return {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
    if isinstance(batch, dict):
        return dict(batch)
    return {}


def map_tensors(batch, fn):
    """The same kind of batch with ``fn`` applied to each of its tensors (other values kept)."""
    values = batch_fields(batch)
    if not values:
        return batch
    return type(batch)(**{k: fn(v) if torch.is_tensor(v) else v for k, v in values.items()})
