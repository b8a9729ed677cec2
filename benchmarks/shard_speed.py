"""Shard-build speed and streaming-reader throughput.

Build speed is seconds of recording turned into shards per wall-clock second per core (the build
runs single-threaded: OMP_NUM_THREADS=1), for a 64-channel EEG file and for a 306-channel MEG file
(MNE's sample recording is 1 s long, so it is concatenated with itself to 60 s first; the signal is
real, its length is not). Reader throughput is samples/s and MB/s of decoded signal through a
DataLoader with 0, 1 and 2 workers over the shards of every recording in ../shared/data.

Usage: OMP_NUM_THREADS=1 python benchmarks/shard_speed.py [--shared ../shared/data]
"""

from __future__ import annotations

import argparse
import os
import platform
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    args = parser.parse_args()
    shared = Path(args.shared)
    mne.set_log_level("ERROR")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
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
