"""Shard-build speed and streaming-reader throughput.

Build speed is seconds of recording turned into shards per wall-clock second per core (the build
runs single-threaded: OMP_NUM_THREADS=1), for a 64-channel EEG file and for a 306-channel MEG file
(MNE's sample recording is 1 s long, so it is concatenated with itself to 60 s first; the signal is
real, its length is not). Reader throughput is samples/s and MB/s of decoded signal through a
DataLoader with 0, 1 and 2 workers over the shards of every recording in ../shared/data.

Parallel build (``--parallel 1,2``): the same build — every recording of ../shared/data plus simulated
EEG/MEG/sEEG/ECoG/fMRI recordings — with each number of Dask workers, side by side in one run: wall
time, speed-up over one worker, and a check that the shards and manifest are byte-identical; then the
machine's ceiling for any worker scheme — as many whole one-worker builds as workers, side by side
(forked, nothing to start or import), against one alone.

Batched loading (``--loader 0,2``): training batches (32 windows of simulated 64-channel EEG, 2 s at
256 Hz) read and collated by :class:`~neurofm.data_shards.batches.BatchStream` in the process (0) or in
DataLoader workers, side by side: windows/s, speed-up over 0 workers, and a check that every worker
count gives the same batches; then the machine's ceiling for any worker scheme — as many independent
in-process readers as workers, side by side, with nothing handed between processes.

Usage: OMP_NUM_THREADS=1 python benchmarks/shard_speed.py [--shared ../shared/data] [--parallel 1,2] [--loader 0,2] [--only-extra]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from itertools import islice
from pathlib import Path

import mne
import torch

from neurofm.config import load_config
from neurofm.data_shards import ShardStream, build_shards
from neurofm.data_shards.config import ShardsConfig

ROOT = Path(__file__).resolve().parents[1]


def build_speed(path: Path, out: Path, seconds: float, repeats: int = 3) -> float:
    best = float("inf")
    for r in range(repeats):
        config = load_config(ShardsConfig, None, [f"inputs=[{{path: '{path}'}}]", f"out={out / str(r)}"])
        start = time.perf_counter()
        build_shards(config, progress=False)
        best = min(best, time.perf_counter() - start)
    return seconds / best


def read_speed(shards: Path, workers: int, n: int = 600) -> tuple[float, float]:
    stream = ShardStream(shards, seed=0, epochs=None)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers)
    it = iter(loader)
    next(it)  # start-up (worker processes, tar indexing) is not throughput
    start, nbytes = time.perf_counter(), 0
    for sample in islice(it, n):
        nbytes += sample["signal"].nbytes
    elapsed = time.perf_counter() - start
    return n / elapsed, nbytes / elapsed / 1e6


def _read_batches(out: Path, workers: int, batch_size: int, n_batches: int, seed: int = 0, result=None) -> tuple[float, list]:
    """(windows/s, keys of every batch) of ``n_batches`` BatchStream batches after a start-up of a few."""
    from neurofm.data_shards.batches import BatchStream

    batches = BatchStream(ShardStream(out, seed=seed, epochs=None), batch_size, num_workers=workers)
    keys = [next(batches).keys for _ in range(4 * max(1, workers))]  # start-up (worker processes, tar indexing) is not throughput
    start, windows = time.perf_counter(), 0
    for _ in range(n_batches):
        batch = next(batches)
        windows += len(batch.keys)
        keys.append(batch.keys)
    rate = windows / (time.perf_counter() - start)
    if result is not None:
        result.put(rate)
    return rate, keys


def loader_speed(out: Path, worker_counts: list[int], batch_size: int = 32, n_batches: int = 400) -> None:
    """Windows/s of BatchStream batches for each worker count, over simulated 64-ch EEG shards; then the
    ceiling of any worker scheme on this machine: as many independent in-process readers as the largest
    worker count, side by side (no hand-over at all), against one alone."""
    import multiprocessing

    config = load_config(ShardsConfig, None, [f"out={out}", "simulate={hours: 0.5, modalities: [eeg], eeg_montages: [biosemi64], "
                                              "recording_seconds: 60, subjects: 2}"])
    build_shards(config, progress=False, workers=1)
    base, reference = None, None
    for workers in worker_counts:
        rate, keys = _read_batches(out, workers, batch_size, n_batches)
        base, reference = base or rate, reference or keys
        n = min(len(keys), len(reference))
        print(f"batched read, {workers} worker(s): {rate:.0f} windows/s, {rate / base:.2f}x the first, "
              f"same batches as the first: {keys[:n] == reference[:n]}")
    parallel = max(worker_counts)
    if parallel > 1:
        alone, _ = _read_batches(out, 0, batch_size, n_batches)
        context, result = multiprocessing.get_context("fork"), multiprocessing.get_context("fork").Queue()
        readers = [context.Process(target=_read_batches, args=(out, 0, batch_size, n_batches, seed, result)) for seed in range(parallel)]
        for reader in readers:
            reader.start()
        together = sum(result.get() for _ in readers)
        for reader in readers:
            reader.join()
        print(f"ceiling: {parallel} independent in-process readers side by side: {together:.0f} windows/s together, "
              f"{together / alone:.2f}x one alone ({alone:.0f} windows/s)")


def parallel_speed(shared: Path, out: Path, worker_counts: list[int], sim_hours: float) -> None:
    """Wall time of one build per worker count (same folder each time, so the manifests compare)."""
    os.chdir(ROOT)
    items = [f"out={out}", f"simulate={{hours: {sim_hours}, recording_seconds: 60, subjects: 2}}"]
    config = (load_config(ShardsConfig, ROOT / "configs/shared_data.yaml", [f"root={shared}", *items]) if shared.is_dir()
              else load_config(ShardsConfig, ROOT / "configs/demo.yaml", items))
    reference, base = None, None
    for workers in worker_counts:
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        manifest = build_shards(config, progress=False, workers=workers)
        seconds = time.perf_counter() - start
        files = {s["name"]: (out / s["name"]).read_bytes() for s in manifest["shards"]}
        files["manifest.json"] = (out / "manifest.json").read_bytes()
        reference = reference or files
        base = base or seconds
        hours = sum(r["seconds"] for r in manifest["recordings"]) / 3600
        print(f"parallel build, {workers} worker(s): {len(manifest['recordings'])} recordings, {hours:.2f} h, {seconds:.1f} s "
              f"wall, {base / seconds:.2f}x one worker, byte-identical to the first: {files == reference}")
    parallel = max(worker_counts)
    if parallel > 1:  # the machine's ceiling: whole one-worker builds side by side, nothing shared, nothing to start
        alone = _forked_builds(config, out, 1)
        together = _forked_builds(config, out, parallel)
        print(f"ceiling: {parallel} independent one-worker builds side by side (forked, warm): {together:.1f} s wall for "
              f"{parallel} builds, {parallel * alone / together:.2f}x one alone ({alone:.1f} s)")


def _forked_builds(config: ShardsConfig, out: Path, n: int) -> float:
    """Wall time of ``n`` whole one-worker builds at once, each in a process forked from this one (so all
    start with the same warm imports and caches), into folders beside ``out``."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    builds = [context.Process(target=build_shards, args=(replace_out(config, out.with_name(f"{out.name}-{n}-{k}")),),
                              kwargs={"progress": False, "workers": 1}) for k in range(n)]
    start = time.perf_counter()
    for build in builds:
        build.start()
    for build in builds:
        build.join()
    return time.perf_counter() - start


def replace_out(config: ShardsConfig, out: Path) -> ShardsConfig:
    import dataclasses

    return dataclasses.replace(config, out=str(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--parallel", help="comma-separated worker counts for the parallel build, e.g. 1,2")
    parser.add_argument("--sim-hours", type=float, default=0.25, help="simulated hours added to the parallel build")
    parser.add_argument("--loader", help="comma-separated DataLoader worker counts for batched loading, e.g. 0,2")
    parser.add_argument("--only-extra", "--only-parallel", action="store_true", help="only --parallel / --loader")
    args = parser.parse_args()
    shared = Path(args.shared)
    mne.set_log_level("ERROR")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    if args.parallel:
        with tempfile.TemporaryDirectory() as tmp:
            parallel_speed(shared, Path(tmp) / "out", [int(w) for w in args.parallel.split(",")], args.sim_hours)
    if args.loader:
        with tempfile.TemporaryDirectory() as tmp:
            loader_speed(Path(tmp) / "eeg", [int(w) for w in args.loader.split(",")])
    if args.only_extra:
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        eeg = shared / "eeg/eegmmidb_S088R10.edf"
        print(f"build EEG 64 ch, 124 s ({eeg.name}): {build_speed(eeg, tmp / 'eeg', 124.0):.1f} s of recording / s / core")
        raw = mne.io.read_raw_fif(shared / "meg/sample_audvis_trunc_raw_sss.fif", preload=True)
        long = mne.concatenate_raws([raw.copy() for _ in range(60)])
        long.set_annotations(None)
        meg = tmp / "meg_60s_raw.fif"
        long.save(meg)
        seconds = long.n_times / long.info["sfreq"]
        print(f"build MEG 306 ch + 60 EEG, {seconds:.0f} s: {build_speed(meg, tmp / 'meg', seconds):.1f} s of recording / s / core")
        os.chdir(ROOT)
        config = load_config(ShardsConfig, ROOT / "configs/shared_data.yaml", [f"root={shared}", f"out={tmp / 'all'}"])
        build_shards(config, progress=False)
        for workers in (0, 1, 2):
            samples, mb = read_speed(tmp / "all", workers)
            print(f"read, {workers} workers: {samples:.0f} samples/s, {mb:.1f} MB/s")


if __name__ == "__main__":
    main()
