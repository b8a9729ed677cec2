"""Simulator speed: hours of 64-channel EEG (biosemi64, 512 Hz) and of 306-channel MEG (Neuromag-like,
600 Hz) simulated per minute on this machine, with gain matrices already cached (the first recording
of a head computes them; that one-off cost is reported separately). "Simulate" is making the MNE
recording (sources → sensors, nuisances); "into shards" adds MNE preprocessing and shard writing.

Usage: OMP_NUM_THREADS=1 python benchmarks/simulate_speed.py [--seconds 300]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import mne

from neurofm.config import load_config
from neurofm.data_shards import build_shards
from neurofm.data_shards.config import ShardsConfig, SimulateConfig
from neurofm.data_shards.simulate import simulate_raw
from neurofm.data_shards.simulate.recordings import SimulatedSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="length of each timed recording")
    args = parser.parse_args()
    mne.set_log_level("ERROR")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    with tempfile.TemporaryDirectory() as tmp:
        config = SimulateConfig(hours=1.0, cache_dir=str(Path(tmp) / "gains"))
        for modality, device, site in (("eeg", "biosemi64", 0), ("meg", "neuromag306", 0)):
            start = time.perf_counter()
            simulate_raw(SimulatedSpec(modality, device, site, 0, 0, 2.0, 0), config)
            first = time.perf_counter() - start
            start = time.perf_counter()
            simulate_raw(SimulatedSpec(modality, device, site, 0, 1, args.seconds, 0), config)
            elapsed = time.perf_counter() - start
            rate = args.seconds / 3600 / (elapsed / 60)
            print(f"{modality} {device}: head + gain, once: {first:.1f} s; simulate: {rate:.2f} h of recording / min")
            shards = load_config(ShardsConfig, None, [
                f"simulate={{hours: {args.seconds / 3600}, modalities: [{modality}], recording_seconds: {args.seconds},"
                f" subjects: 1, eeg_montages: [biosemi64], meg_helmets: [neuromag306], cache_dir: '{Path(tmp) / 'gains'}'}}",
                f"out={Path(tmp) / modality}",
            ])
            start = time.perf_counter()
            build_shards(shards, progress=False)
            elapsed = time.perf_counter() - start
            print(f"{modality} {device}: simulate into shards: {args.seconds / 3600 / (elapsed / 60):.2f} h of recording / min")


if __name__ == "__main__":
    main()
