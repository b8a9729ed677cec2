"""Reused shared-memory slots for batches handed from DataLoader workers to the training process.

A tensor a DataLoader worker returns travels in a fresh shared-memory segment: allocated, page-faulted
on both sides and handed over through a socket, for every batch (≈ 5 ms for a 4-MB batch on a CPU
core — half of what reading and collating it costs). Here each worker keeps a few segments
(**slots**) and copies each batch's tensors into a free one; only the slot's number, the tensors'
offsets and the rest of the batch are pickled. The training process maps a slot once and hands out
tensors that are views of it (no copy); the slot becomes free for the worker again when the last of
those views is gone, whoever holds them and for however long. A worker that finds no free slot (the
consumer keeps many batches) sends the batch the ordinary way, so nothing ever waits.

Use: create a :class:`SlotRing` in the training process before the DataLoader starts its workers,
call ``ring.pack(batch)`` in the worker and ``ring.unpack(item)`` on what the loader returns.
"""

from __future__ import annotations

import dataclasses
import math
import weakref

import numpy as np
import torch

_ALIGN = 64  # bytes: every tensor starts on a cache line, so any dtype's view is aligned


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
        self._mapped: dict[tuple[int, int], tuple[int, np.ndarray]] = {}  # training side: (worker, slot) → (generation, bytes)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_slots": [], "_generations": [], "_sent": {}, "_mapped": {}}

    # -- worker side -------------------------------------------------------------------------------
    def pack(self, batch):
        """``batch`` (a dataclass or dict of tensors and other values) as a :class:`_Packed` in a free
        slot of this worker; unchanged outside a worker, without tensors, or when no slot is free."""
        info = torch.utils.data.get_worker_info()
        values = batch_fields(batch)
        tensors = {k: v for k, v in values.items() if torch.is_tensor(v) and v.device.type == "cpu"}
        if info is None or not tensors:
            return batch
        layout, size = {}, 0
        for name, t in tensors.items():
            layout[name] = (size, tuple(t.shape), t.dtype)
            size += -(-t.nbytes // _ALIGN) * _ALIGN
        slot = self._free_slot(info.id, size)
        if slot is None:
            return batch
        buffer = self._slots[slot]
        for name, t in tensors.items():
            offset, shape, dtype = layout[name]
            buffer[offset : offset + t.nbytes].view(dtype).view(shape).copy_(t)
        self.busy[info.id, slot] = 1
        generation = self._generations[slot]
        storage = buffer if self._sent.get(slot) != generation else None
        self._sent[slot] = generation
        others = {k: v for k, v in values.items() if k not in layout}
        return _Packed(info.id, slot, generation, type(batch), layout, others, storage)

    def _free_slot(self, worker: int, size: int) -> int | None:
        """A free slot of at least ``size`` bytes (adding one, or replacing the smallest free one, when
        none fits), or None when every slot is held by the training process."""
        busy = self.busy[worker].tolist()
        free = [s for s in range(len(self._slots)) if not busy[s]]
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
