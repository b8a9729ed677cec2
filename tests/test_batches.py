"""Batches planned from the manifest, read and collated in DataLoader workers, resumable exactly."""

import time

import numpy as np
import pytest
import torch

from neurofm.data_shards import ShardIndex, ShardStream
from neurofm.data_shards.batches import BatchStream, bucket_names, channel_class, family_of


def test_buckets_from_the_manifest_are_the_buckets_of_the_samples(corpus_shards):
    index = ShardIndex(corpus_shards)
    names, plain = bucket_names(index, by_channels=True), bucket_names(index)
    for i in range(0, len(index), 3):
        sample = index[i]
        rows, samples = sample["signal"].shape
        family = family_of(sample["meta"])
        if family == "bold":  # fMRI by exact parcel count, always: one token per parcel must not meet padding
            assert names[i] == plain[i] == f"bold-{samples}-n{rows}", sample["__key__"]
        else:
            assert names[i] == f"{family}-{samples}-c{channel_class(rows)}", sample["__key__"]
    assert len(set(plain)) < len(set(names))  # channel classes split the family buckets


def take(batches, n):
    out = []
    for _ in range(n):
        batch = next(batches)
        out.append((batch.keys, batch.signal.sum().item(), batches.state()))
    return out


@pytest.mark.parametrize("workers", [2])
def test_batches_in_workers_equal_batches_in_process_and_resume_exactly(corpus_shards, workers):
    def stream(position=0, **kw):
        return ShardStream(corpus_shards, seed=3, epochs=None, modality_weights={"eeg": 1.0, "meg": 1.0}, position=position)

    inline = take(BatchStream(stream(), 4, by_channels=True), 10)
    pooled = take(BatchStream(stream(), 4, by_channels=True, num_workers=workers), 10)
    assert [k for k, _, _ in pooled] == [k for k, _, _ in inline]
    assert np.allclose([s for _, s, _ in pooled], [s for _, s, _ in inline])
    assert [st for _, _, st in pooled] == [st for _, _, st in inline]
    # resumed from the state after batch 4 (queues included), on workers: batches 5 … 10 again
    state = inline[3][2]
    resumed = take(BatchStream(stream(state["position"]), 4, state["pending"], by_channels=True, num_workers=workers), 6)
    assert [k for k, _, _ in resumed] == [k for k, _, _ in inline[4:]]


def test_batches_held_by_the_consumer_are_never_overwritten_by_a_worker(corpus_shards):
    """Workers hand batches over in reused shared-memory slots: a batch kept (here more than the workers
    have slots, so some travel the ordinary way) must keep its values — and its metas, which travel in the
    slot too — while later ones arrive."""
    def stream():
        return ShardStream(corpus_shards, seed=5, epochs=None, modality_weights={"eeg": 1.0, "meg": 1.0})

    kept_count = 2 * pooled_slots() + 8
    inline = [next(b) for b in [BatchStream(stream(), 4, by_channels=True)] for _ in range(kept_count)]
    pooled_stream = BatchStream(stream(), 4, by_channels=True, num_workers=2)
    kept = [next(pooled_stream) for _ in range(kept_count)]
    for a, b in zip(inline, kept):
        assert a.keys == b.keys
        assert torch.equal(a.signal, b.signal) and torch.equal(a.sensors, b.sensors)
        assert torch.equal(a.channel_mask, b.channel_mask) and torch.equal(a.time_mask, b.time_mask)
        assert list(a.metas) == list(b.metas) and b.metas[0]["modality"] in ("eeg", "meg")
    assert any(isinstance(k, torch.Tensor) and k.untyped_storage().nbytes() > k.nbytes for k in (b.signal for b in kept)), \
        "no batch came through a slot"


def pooled_slots() -> int:
    """Slots a BatchStream's worker keeps: batches travel in groups (prefetch of 2, one filling, one consumed)."""
    from neurofm.data_shards.batches import WORKER_GROUP

    return 4 * WORKER_GROUP + 2


def test_a_dropped_batch_frees_its_slot_for_the_worker(corpus_shards):
    from neurofm.data_shards.slots import SlotRing

    batches = BatchStream(ShardStream(corpus_shards, seed=1, epochs=None), 4, by_channels=True, num_workers=1)
    ring: SlotRing = batches._ring
    for _ in range(3 * pooled_slots()):  # far more batches than slots: only possible if dropped batches free theirs
        batch = next(batches)
    time.sleep(1.0)  # the worker has filled the loader's prefetch and waits: no slot changes hands now
    held = int(ring.busy.sum())
    del batch
    assert int(ring.busy.sum()) == held - 1
    assert ring.busy.shape == (1, pooled_slots())


def test_map_tensors_keeps_the_kind_of_batch_and_its_other_values(corpus_shards):
    """The one walk over a batch's fields that pinning (GPU) and the slots share: a Batch and a dict
    batch come back of their own kind, every tensor mapped, keys and metas untouched."""
    from neurofm.data_shards.batches import Batch
    from neurofm.data_shards.slots import map_tensors

    batch = next(BatchStream(ShardStream(corpus_shards, seed=0, epochs=None), 4, by_channels=True))
    doubled = map_tensors(batch, lambda t: t * 2 if t.dtype.is_floating_point else t)
    assert isinstance(doubled, Batch) and doubled.keys == batch.keys and doubled.metas is batch.metas
    assert torch.equal(doubled.signal, batch.signal * 2) and torch.equal(doubled.channel_mask, batch.channel_mask)
    codes = {"codes": torch.arange(6).view(2, 3), "keys": ["a", "b"]}
    mapped = map_tensors(codes, torch.neg)
    assert isinstance(mapped, dict) and mapped["keys"] == ["a", "b"] and torch.equal(mapped["codes"], -codes["codes"])


class _SlotUser(torch.utils.data.IterableDataset):
    """Yields, from a DataLoader worker, batches collated into the ring's slot (``zeros``) and batches
    collated elsewhere, each with whether the packed batch's tensor is the very memory it was written to."""

    def __init__(self, ring):
        super().__init__()
        self.ring = ring

    def __iter__(self):
        from neurofm.data_shards.batches import Metas
        from neurofm.data_shards.slots import new_zeros

        for i in range(8):
            allocate = self.ring.zeros if i % 2 == 0 else new_zeros
            tensors = allocate({"x": ((3, 5), torch.float32), "mask": ((3,), torch.bool)})
            tensors["x"] += i
            tensors["mask"][: i % 3] = True
            packed = self.ring.pack({**tensors, "i": i, "metas": Metas.from_texts([b'{"i": %d}' % i, b'{"n": [1, 2]}'])})
            assert "metas" in packed.texts and "metas" not in packed.others  # the texts travel in the slot
            offset, shape, dtype = packed.layout["x"]
            in_place = self.ring._view(packed.slot, offset, shape, dtype).data_ptr() == tensors["x"].data_ptr()
            yield packed, in_place


def test_a_worker_collates_straight_into_its_slot_and_copies_only_what_was_collated_elsewhere():
    from neurofm.data_shards.slots import SlotRing

    ring = SlotRing(1, slots_per_worker=8)  # one per batch: every batch is kept below
    loader = torch.utils.data.DataLoader(_SlotUser(ring), batch_size=None, num_workers=1)
    kept = []
    for packed, in_place in loader:
        batch = ring.unpack(packed)
        i = batch["i"]
        assert in_place == (i % 2 == 0), i  # allocated by ring.zeros: no copy; fresh tensors: copied in
        assert torch.equal(batch["x"], torch.full((3, 5), float(i)))  # zeroed, then written, nothing left over
        assert batch["mask"].tolist() == [j < i % 3 for j in range(3)]
        assert list(batch["metas"]) == [{"i": i}, {"n": [1, 2]}]
        kept.append(batch)
    assert [b["x"][0, 0].item() for b in kept] == list(range(8))  # kept batches were never overwritten
