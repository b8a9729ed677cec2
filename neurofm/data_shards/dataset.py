"""Streaming reader of signal shards: shuffling, split by node and by worker, weighted modality mixing,
and a position it can resume from exactly.

webdataset streams tar files sequentially and cannot resume mid-epoch; ``wids`` (webdataset's indexed
companion) opens the same tar files for random access. The order of samples is therefore computed
here, from the manifest alone, as a pure function of ``(seed, epoch, rank, world_size, position)``,
and samples are fetched by index through ``IndexedTarSamples``. Resuming at ``position`` yields
exactly the samples an uninterrupted run would have yielded from there.

Order
-----
Finite streams (``epochs`` = n): every epoch is a permutation of all samples (or the stored order
when ``shuffle=False``), padded by wrapping so every rank gets ``ceil(N / world_size)`` samples; rank
``r`` takes items ``r, r + world_size, …``. Endless streams (``epochs=None``, or ``modality_weights``):
one global sequence — epoch permutations back to back, or, with ``modality_weights``, each item
drawing a modality with those weights and then the next sample of that modality's own permutation —
dealt out round-robin from a global ``offset``, so a run can continue on another number of ranks.

Workers split a rank's items round-robin (item ``t`` goes to worker ``t % num_workers``), which is
the order a ``DataLoader`` with ``batch_size=None`` reads them back in; batch after the loader
(``collate``) to keep that exactness. Every sample carries ``__position__`` (its index in the rank's
stream): save ``last position + 1`` and pass it back as ``position`` to resume.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from wids.wids import IndexedTarSamples

from neurofm.data_shards.remote import PipeFolder, is_pipe
from neurofm.data_shards.writer import read_manifest, sha256_file
from neurofm.errors import ConfigError, ShardError

_CHUNK = 1 << 16


def decode_sample(raw: dict, where: str) -> dict:
    """Decode a wids sample dict (``.signal.npy`` or ``.codes.npy``, ``.sensors.npy``, ``.meta.json``
    bytes) into arrays and a meta dict (and its JSON text, ``meta_json``, which travels between processes
    more cheaply than the dict); signal shards give ``signal``, code shards ``codes``."""
    array = "codes" if ".codes.npy" in raw or "codes.npy" in raw else "signal"
    try:
        data = load_npy(_bytes(raw, f".{array}.npy"))
        sensors = load_npy(_bytes(raw, ".sensors.npy"))
        meta_json = _bytes(raw, ".meta.json")
        meta = json.loads(meta_json)
    except (KeyError, ValueError, OSError) as err:
        raise ShardError(f"{where}: sample {raw.get('__key__')} cannot be decoded ({err}); run `neurofm shards verify`.") from None
    if array == "signal" and (data.ndim != 2 or sensors.ndim != 2 or data.shape[0] != sensors.shape[0] or data.shape[1] == 0):
        raise ShardError(f"{where}: sample {raw.get('__key__')} has a signal of shape {data.shape} for {sensors.shape[0]} sensor "
                         "rows (one row per sensor and at least one sample are needed); rebuild the shard.")
    return {"__key__": raw["__key__"], array: data, "sensors": sensors, "meta": meta, "meta_json": meta_json}


def load_npy(data: bytes) -> np.ndarray:
    """``np.load`` of one ``.npy`` file's bytes (no pickled objects), with the header parsed once per
    distinct header: numpy parses it with ``ast.literal_eval``, a quarter of what reading a 64-channel
    window costs, and every window of a recording has the same one."""
    start, length = (10, int.from_bytes(data[8:10], "little")) if data[6:7] == b"\x01" else (12, int.from_bytes(data[8:12], "little"))
    shape, fortran_order, dtype = _npy_header(data[: start + length])
    array = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=start + length)
    return array.reshape(shape, order="F" if fortran_order else "C").copy()


@functools.lru_cache(maxsize=1024)
def _npy_header(header: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    fp = io.BytesIO(header)
    major, _ = np.lib.format.read_magic(fp)
    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read(fp)
    if dtype.hasobject:
        raise ValueError("the array holds Python objects, which are never unpickled")
    return shape, fortran_order, dtype


def _bytes(raw: dict, ext: str) -> bytes:
    value = raw[ext] if ext in raw else raw[ext.lstrip(".")]
    return value.getvalue() if hasattr(value, "getvalue") else bytes(value)


VERIFY_ENV = "NEUROFM_VERIFY_SHARDS"
_verified: set[tuple[str, int, int]] = set()


def check_shard_once(path: Path, entry: dict) -> None:
    """Check a shard's size and sha256 against its manifest entry, once per process and file version.

    A shard changed or damaged since it was written is a :class:`ShardError` before any of its samples
    is used. ``NEUROFM_VERIFY_SHARDS=0`` skips the check (hashing reads each shard once more per process).
    """
    if os.environ.get(VERIFY_ENV, "1") == "0":
        return
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise ShardError(f"Shard {path} is missing; rebuild or restore it (see `neurofm shards verify`).") from None
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _verified:
        return
    if stat.st_size != entry["bytes"]:
        raise ShardError(f"Shard {path} is damaged or truncated ({stat.st_size} bytes, the manifest says {entry['bytes']}); "
                         "run `neurofm shards verify`, then rebuild or restore it.")
    if sha256_file(path) != entry["sha256"]:
        raise ShardError(f"Shard {path} changed since it was written (sha256 differs from the manifest); run "
                         "`neurofm shards verify`, then rebuild or restore it.")
    _verified.add(key)


class ShardIndex:
    """Random access to the samples of a shard folder by global index (``wids`` underneath).

    Parameters
    ----------
    shards_dir : path-like or str
        Folder with ``manifest.json`` and its shards, or a ``pipe:`` command that prints its files
        (:mod:`neurofm.data_shards.remote`: fetched into a local cache, checked by sha256).
    max_open : int
        Shards kept open at once.
    """

    def __init__(self, shards_dir: str | Path, max_open: int = 8):
        self.location = str(shards_dir)  # as given: a folder or a pipe: command (for messages and manifests)
        self.remote = PipeFolder(self.location) if is_pipe(self.location) else None
        self.dir = self.remote.dir if self.remote is not None else Path(shards_dir)
        if self.remote is not None:
            self.remote.manifest()
        manifest = read_manifest(self.dir)
        if manifest is None:
            raise ShardError(f"{self.location} has no manifest.json; build shards with `neurofm shards build` first.")
        if not manifest.get("complete"):
            raise ShardError(f"{self.location} is an unfinished build; rerun `neurofm shards build` to complete it.")
        self.manifest = manifest
        self.shards = manifest["shards"]
        self.offsets = np.cumsum([0] + [s["samples"] for s in self.shards])
        self.modality_of = np.empty(len(self), dtype=object)
        for rec in manifest["recordings"]:
            self.modality_of[rec["first_sample"] : rec["first_sample"] + rec["n_windows"]] = rec["modality"]
        self.max_open = max_open
        self._open: OrderedDict[int, IndexedTarSamples] = OrderedDict()

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _shard(self, i: int) -> IndexedTarSamples:
        if i in self._open:
            self._open.move_to_end(i)
            return self._open[i]
        entry = self.shards[i]
        path = self.remote.shard(entry["name"], entry["sha256"]) if self.remote is not None else self.dir / entry["name"]
        check_shard_once(path, entry)
        try:
            tar = IndexedTarSamples(path=str(path), expected_size=self.shards[i]["samples"])
        except FileNotFoundError:
            raise ShardError(f"Shard {path} is missing; rebuild or restore it (see `neurofm shards verify`).") from None
        except (AttributeError, TypeError, NameError):
            raise
        except Exception as err:  # wids raises AssertionError / ValueError … on damaged tars
            raise ShardError(f"Shard {path} is damaged or truncated ({type(err).__name__}: {err}); run `neurofm shards verify`.") from None
        self._open[i] = tar
        if len(self._open) > self.max_open:
            self._open.popitem(last=False)[1].close()
        return tar

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(index)
        shard = int(np.searchsorted(self.offsets, index, side="right") - 1)
        raw = self._shard(shard)[int(index - self.offsets[shard])]
        return decode_sample(raw, str(self.dir / self.shards[shard]["name"]))

    def close(self) -> None:
        for tar in self._open.values():
            tar.close()
        self._open.clear()


class ShardStream(torch.utils.data.IterableDataset):
    """Iterable over a shard folder for one rank; see the module docstring for the order.

    Parameters
    ----------
    shards_dir : path-like
        Folder with ``manifest.json``.
    rank, world_size : int
        This process's rank and the number of ranks (nodes × GPUs); default from
        ``torch.distributed`` when it is initialised, else 0 and 1.
    shuffle : bool
        Shuffle samples (per epoch, or per modality pass when mixing).
    seed : int
        Seed of every random choice.
    modality_weights : dict | None
        ``{"eeg": 0.5, "meg": 0.3, …}``: endless stream mixing modalities with these weights.
    epoch : int
        Epoch to start in (unmixed streams).
    position : int
        Items of this rank's stream already consumed (resume point).
    epochs : int | None
        Unmixed streams stop after this many epochs (``None``: endless).
    indices : sequence of int | None
        Stream only these global sample indices (e.g. a training split); default all.
    offset : int
        Endless streams: global items already dealt out before this run's ranks start (set when a run
        resumes on a different number of ranks).
    """

    def __init__(
        self,
        shards_dir: str | Path,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        modality_weights: dict[str, float] | None = None,
        epoch: int = 0,
        position: int = 0,
        epochs: int | None = 1,
        indices=None,
        offset: int = 0,
    ):
        super().__init__()
        self.index = ShardIndex(shards_dir)
        self.dir = self.index.location
        self.indices = np.arange(len(self.index)) if indices is None else np.asarray(indices, dtype=np.int64)
        if len(self.indices) == 0:
            raise ConfigError(f"No samples to stream from {self.dir} (an empty index subset).")
        dist = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.rank = rank if rank is not None else (torch.distributed.get_rank() if dist else 0)
        self.world_size = world_size if world_size is not None else (torch.distributed.get_world_size() if dist else 1)
        if not 0 <= self.rank < self.world_size:
            raise ConfigError(f"rank must be in [0, world_size={self.world_size}); got {self.rank}.")
        self.shuffle, self.seed, self.epoch, self.position, self.epochs = shuffle, seed, epoch, position, epochs
        self.offset = offset
        self.modality_weights = self._check_weights(modality_weights)

    def _check_weights(self, weights: dict[str, float] | None) -> dict[str, float] | None:
        if weights is None:
            return None
        present = sorted(set(self.index.modality_of[self.indices]))
        unknown = [m for m in weights if m not in present]
        if unknown:
            raise ConfigError(
                f"modality_weights names {', '.join(unknown)}, which {self.dir} does not hold; it holds {', '.join(present)}."
            )
        if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ConfigError(f"modality_weights must be non-negative with a positive sum; got {weights}.")
        total = sum(weights.values())
        return {m: w / total for m, w in weights.items() if w > 0}

    # --- order -------------------------------------------------------------------------------
    @property
    def per_rank(self) -> int:
        """Items per rank per epoch (unmixed streams)."""
        return -(-len(self.indices) // self.world_size)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        n = len(self.indices)
        order = self.indices[np.random.default_rng([self.seed, epoch]).permutation(n)] if self.shuffle else self.indices
        padded = np.resize(order, self.per_rank * self.world_size)  # wrap so every rank gets as many
        return padded[self.rank :: self.world_size]

    def _global_items(self, first: int) -> Iterator[tuple[int, int]]:
        """``(j, global sample index)`` of the endless global stream from global item ``first`` on.

        Unmixed: the concatenation of per-epoch permutations. Mixed: each item draws a modality with
        the weights, then the next sample of that modality's own permutation (reshuffled per pass).
        """
        if not self.modality_weights:
            n, j = len(self.indices), first
            while True:
                epoch = self.epoch + j // n
                order = self.indices[np.random.default_rng([self.seed, epoch]).permutation(n)] if self.shuffle else self.indices
                for within in range(j % n, n):
                    yield j, int(order[within])
                    j += 1
        modalities = sorted(self.modality_weights)
        probs = np.array([self.modality_weights[m] for m in modalities])
        members = [self.indices[self.index.modality_of[self.indices] == m] for m in modalities]
        cursors = np.zeros(len(modalities), dtype=np.int64)
        chunk = 0
        while True:
            choice = np.random.default_rng([self.seed, 1, chunk]).choice(len(modalities), size=_CHUNK, p=probs)
            for offset, m in enumerate(choice):
                c = cursors[m]
                cursors[m] += 1
                j = chunk * _CHUNK + offset
                if j >= first:
                    n = len(members[m])
                    perm = np.random.default_rng([self.seed, 2, m, c // n]).permutation(n) if self.shuffle else np.arange(n)
                    yield j, int(members[m][perm[c % n]])
            chunk += 1

    def items(self, start: int = 0) -> Iterator[tuple[int, int]]:
        """``(position, global sample index)`` of this rank's stream from ``start`` on (no reading).

        Endless streams (mixed, or ``epochs=None``) deal the global stream out round-robin from
        ``offset``: rank r takes global items offset + r, offset + r + world_size, …; so a run resumed
        on another number of ranks continues from ``offset + world_size × position`` (see
        :meth:`consumed`). Finite streams give each rank ``per_rank`` items per epoch.
        """
        if self.modality_weights or self.epochs is None:
            first = self.offset + self.rank + start * self.world_size
            position = start
            for j, index in self._global_items(first):
                if (j - self.offset) % self.world_size == self.rank:
                    yield position, index
                    position += 1
            return
        epoch, offset = self.epoch + start // self.per_rank, start % self.per_rank
        position = start
        while epoch < self.epoch + self.epochs:
            for index in self._epoch_order(epoch)[offset:]:
                yield position, int(index)
                position += 1
            epoch, offset = epoch + 1, 0

    def consumed(self, position: int) -> int:
        """Global items dealt out once every rank has reached ``position`` (the elastic resume offset)."""
        return self.offset + self.world_size * position

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for position, index in self.items(self.position):
            if position % workers != worker:
                continue
            sample = self.index[index]
            sample["__position__"] = position
            sample["__index__"] = index
            yield sample

    def __len__(self) -> int:
        if self.modality_weights or self.epochs is None:
            raise TypeError("an endless stream has no length")
        return self.per_rank * self.epochs - self.position
