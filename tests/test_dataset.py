"""The streaming reader: split by rank and worker, shuffling, modality mixing, exact resume."""

from __future__ import annotations

import json
from collections import Counter
from itertools import islice

import numpy as np
import pytest
import torch

from neurofm.data_shards import ShardStream
from neurofm.errors import ConfigError, ShardError


def _indices(stream, n=None):
    return [i for _, i in islice(stream.items(stream.position), n)]


def test_ranks_split_every_sample_exactly_once(corpus_shards):
    n = len(ShardStream(corpus_shards).index)
    streams = [ShardStream(corpus_shards, rank=r, world_size=3, seed=1) for r in range(3)]
    parts = [_indices(s) for s in streams]
    assert all(len(p) == -(-n // 3) for p in parts)  # equal steps per rank
    covered = Counter(i for p in parts for i in p)
    assert set(covered) == set(range(n))
    assert sum(c > 1 for c in covered.values()) == 3 * -(-n // 3) - n  # only the wrap-around padding repeats


def test_shuffle_depends_on_seed_and_epoch_only(corpus_shards):
    a = _indices(ShardStream(corpus_shards, seed=3, epochs=2))
    b = _indices(ShardStream(corpus_shards, seed=3, epochs=2))
    n = len(a) // 2
    assert a == b and sorted(a[:n]) == list(range(n)) and a[:n] != a[n:]
    assert _indices(ShardStream(corpus_shards, shuffle=False)) == list(range(n))
    assert a[:n] != _indices(ShardStream(corpus_shards, seed=4))


def test_resume_continues_the_same_stream(corpus_shards):
    full = list(islice(ShardStream(corpus_shards, seed=7, epochs=None, rank=1, world_size=2).items(), 1300))
    resumed = list(islice(ShardStream(corpus_shards, seed=7, epochs=None, rank=1, world_size=2, position=1000).items(1000), 300))
    assert resumed == full[1000:]  # crosses an epoch boundary (444 per rank per epoch)
    weights = {"eeg": 0.4, "meg": 0.3, "ieeg": 0.2, "fmri": 0.1}
    mixed = ShardStream(corpus_shards, modality_weights=weights, seed=2)
    head = list(islice(mixed.items(), 900))
    again = ShardStream(corpus_shards, modality_weights=weights, seed=2, position=600)
    assert list(islice(again.items(600), 300)) == head[600:]


def test_modality_mixing_follows_the_weights(corpus_shards):
    stream = ShardStream(corpus_shards, modality_weights={"eeg": 1, "meg": 1, "ieeg": 1, "fmri": 1}, seed=0)
    modality = stream.index.modality_of
    counts = Counter(modality[i] for i in _indices(stream, 4000))
    assert all(abs(c / 4000 - 0.25) < 0.03 for c in counts.values())  # ieeg has 20 windows, drawn ~1000 times
    with pytest.raises(ConfigError, match="holds eeg, fmri, ieeg, meg"):
        ShardStream(corpus_shards, modality_weights={"emg": 1.0})


def test_dataloader_workers_read_in_stream_order(corpus_shards):
    stream = ShardStream(corpus_shards, seed=5, position=10)
    expected = [(p, i) for p, i in islice(stream.items(10), 24)]
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)
    got = [(s["__position__"], s["__index__"]) for s in islice(iter(loader), 24)]
    assert got == expected
    sample = stream.index[expected[0][1]]
    assert sample["signal"].shape[0] == sample["sensors"].shape[0] == len(sample["meta"]["channels"])


def test_damaged_shard_is_named(corpus_shards, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(corpus_shards, copy)
    shard = copy / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[:5000])
    index = ShardStream(copy).index
    starts = np.cumsum([0] + [s["samples"] for s in json.loads((copy / "manifest.json").read_text())["shards"]])
    with pytest.raises(ShardError, match="shard-000001.tar is damaged or truncated"):
        index[int(starts[1]) + 20]  # past the first 5000 bytes
    (copy / "shard-000002.tar").unlink()
    with pytest.raises(ShardError, match="shard-000002.tar is missing"):
        index[int(starts[2])]


def test_a_pipe_url_reads_the_samples_of_the_folder_and_refuses_a_failing_command_or_changed_bytes(corpus_shards, tmp_path,
                                                                                                  monkeypatch):
    """`pipe:COMMAND` with {name}: webdataset's convention for object stores' command-line clients (here
    `cat` plays the client); files are cached locally and checked against the manifest."""
    import shutil

    from neurofm.data_shards import ShardIndex
    from neurofm.data_shards.batches import BatchStream

    monkeypatch.setenv("NEUROFM_CACHE", str(tmp_path / "cache"))
    remote = tmp_path / "bucket"
    shutil.copytree(corpus_shards, remote)
    url = f"pipe:cat {remote}/{{name}}"
    local, piped = ShardIndex(corpus_shards), ShardIndex(url)
    assert len(piped) == len(local) and piped.manifest == local.manifest
    for i in (0, len(local) // 2, len(local) - 1):
        a, b = local[i], piped[i]
        assert a["__key__"] == b["__key__"] and np.array_equal(a["signal"], b["signal"]) and a["meta"] == b["meta"]
    # a training stream over the pipe gives the batches of the folder
    batches = [BatchStream(ShardStream(s, seed=2, epochs=None), 4) for s in (corpus_shards, url)]
    for _ in range(3):
        x, y = (next(b) for b in batches)
        assert x.keys == y.keys and torch.equal(x.signal, y.signal)
    with pytest.raises(ShardError, match="no {name} placeholder"):
        ShardIndex(f"pipe:cat {remote}/manifest.json")
    with pytest.raises(ShardError, match=r"Fetching manifest.json with 'cat .*nowhere/manifest.json' failed"):
        ShardIndex(f"pipe:cat {tmp_path}/nowhere/{{name}}")
    # the remote shard's bytes changed after its manifest was written: refused, nothing cached
    name = local.shards[0]["name"]
    data = bytearray((remote / name).read_bytes())
    data[-600] ^= 0xFF
    (remote / name).write_bytes(bytes(data))
    monkeypatch.setenv("NEUROFM_CACHE", str(tmp_path / "cache2"))
    fresh = ShardIndex(url)
    with pytest.raises(ShardError, match="other bytes than its manifest records"):
        fresh[0]
    assert not [p for p in (tmp_path / "cache2").rglob("*.tar*")]


def test_npy_reader_equals_numpy_and_never_unpickles():
    import io

    from neurofm.data_shards.dataset import load_npy

    arrays = [np.random.default_rng(0).standard_normal((64, 512)).astype(np.float16), np.asfortranarray(np.ones((3, 5))),
              np.arange(6, dtype=np.int16).reshape(1, 2, 3), np.zeros((0, 12), np.float32)]
    for a in arrays:
        buffer = io.BytesIO()
        np.save(buffer, a)
        b = load_npy(buffer.getvalue())
        assert b.dtype == a.dtype and b.shape == a.shape and np.array_equal(a, b) and b.flags.writeable
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="never unpickled"):
        load_npy(buffer.getvalue())
    with pytest.raises(ValueError):
        load_npy(buffer.getvalue()[:5])
