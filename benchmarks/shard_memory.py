"""Peak memory of building shards from one long, high-rate recording, beside what MNE alone needs to load it.

A long MEG recording is the worst case of the shard build's memory: an hour of 306 channels at 1 kHz is
8.8 GB as float64 once loaded. This script writes such a recording (a Neuromag-306 helmet from the
simulator's geometry, plus a trigger channel and EOG/ECG leads the build drops; noise at MEG amplitudes,
``--minutes`` long at ``--sfreq``) to a FIF file and measures, each in a fresh process, the peak resident
memory (VmHWM) of

- ``imports``: Python with neurofm's shard builder imported (the floor of every row below);
- ``mne load``: ``mne.io.read_raw(path, preload=True)`` — what loading the file costs a user of MNE alone;
- ``build``: ``build_shards`` of that one file, in-process (``workers=1``), default preprocessing
  (band-pass, notch, resampling to 256 Hz, bad-channel detection, scaling, 2-s windows).

``--tree LABEL=PATH`` (repeatable) runs the ``build`` row again with another checkout of neurofm first on
``PYTHONPATH`` (e.g. the commit before a change), side by side in the same run.

Usage: python benchmarks/shard_memory.py [--minutes 10] [--sfreq 1000] [--work /tmp/neurofm_shard_memory]
       [--tree before=/path/to/old/checkout]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_recording(path: Path, minutes: float, sfreq: float, seed: int = 0) -> int:
    """A ``minutes`` long Neuromag-306 FIF at ``sfreq`` (+ STI 014, EOG, ECG) at ``path``; returns its
    brain channels × samples."""
    import mne
    import numpy as np

    from neurofm.data_shards.simulate.geometry import make_head, meg_info

    meg = meg_info("neuromag306", make_head(0, seed), sfreq, seed)
    extra = mne.create_info(["STI 014", "EOG061", "ECG063"], sfreq, ["stim", "eog", "ecg"])
    info = meg.copy()
    with info._unlock():
        info["line_freq"] = 50.0
    info = mne.io.RawArray(np.zeros((len(meg.ch_names), 1)), info, verbose="error").add_channels(
        [mne.io.RawArray(np.zeros((3, 1)), extra, verbose="error")], force_update_info=True).info
    n = int(minutes * 60 * sfreq)
    rng = np.random.default_rng(seed)
    scale = np.array([1e-11 if t == "grad" else 1e-13 if t == "mag" else 0.0 if t == "stim" else 1e-4
                      for t in info.get_channel_types()])
    data = (rng.standard_normal((len(scale), n), dtype=np.float32) * scale[:, None]).astype(np.float64)
    data[scale == 0, ::int(sfreq)] = 1.0  # a trigger every second
    mne.io.RawArray(data, info, verbose="error").save(path, overwrite=True, verbose="error")
    return len(meg.ch_names) * n


def measure(what: str, path: Path, work: Path) -> dict:
    """Run one measurement in this process; return its peak RSS (GB) and wall time (s)."""
    started = time.perf_counter()
    from neurofm.data_shards import build_shards
    from neurofm.data_shards.config import InputSpec, ShardsConfig

    if what == "mne load":
        import mne

        mne.io.read_raw(path, preload=True, verbose="error")
    elif what == "build":
        build_shards(ShardsConfig(out=str(work), inputs=[InputSpec(path=str(path))]), overwrite=True, progress=False, workers=1)
    result = {"peak_gb": peak_rss_gb(), "seconds": time.perf_counter() - started}
    if what == "build":  # what was written, to tell whether two checkouts build the same shards
        digest = hashlib.sha256()
        for shard in sorted(work.glob("shard-*.tar")):
            digest.update(shard.read_bytes())
        result["shards_sha256"] = digest.hexdigest()[:16]
        shutil.rmtree(work)
    return result


def peak_rss_gb() -> float:
    """This process's peak resident memory, GB: VmHWM (``ru_maxrss`` would carry the parent's peak over
    fork and exec, and the parent held the recording it wrote)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--sfreq", type=float, default=1000.0)
    parser.add_argument("--work", default="/tmp/neurofm_shard_memory")
    parser.add_argument("--tree", action="append", default=[], metavar="LABEL=PATH",
                        help="another neurofm checkout to run the build row with, side by side")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.work)
    recording = work / f"meg_{args.minutes:g}min_{args.sfreq:g}Hz_raw.fif"
    if args.measure:
        print(json.dumps(measure(args.measure, recording, work / f"shards_{os.getpid()}")))
        return
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if recording.is_file():  # written by an earlier run with the same settings
        values = 306 * int(args.minutes * 60 * args.sfreq)
    else:
        values = write_recording(recording, args.minutes, args.sfreq)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {recording.name} "
          f"({recording.stat().st_size / 2**30:.2f} GB on disk) in {time.perf_counter() - started:.0f} s; "
          f"{values * 8 / 2**30:.2f} GB as float64 (306 MEG channels)")
    rows = [("imports", "imports", str(ROOT)), ("mne load", "mne load", str(ROOT)), ("build", "build", str(ROOT))]
    rows += [(f"build ({label})", "build", tree) for label, tree in (t.split("=", 1) for t in args.tree)]
    results = {}
    print("\n| measurement | peak RSS (GB) | wall (s) | shards (sha256) |\n|---|---|---|---|")
    for label, what, tree in rows:
        env = {**os.environ, "PYTHONPATH": tree, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        out = subprocess.run([sys.executable, __file__, "--measure", what, "--minutes", str(args.minutes), "--sfreq",
                              str(args.sfreq), "--work", str(work)], env=env, capture_output=True, text=True, check=True)
        results[label] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {label} | {results[label]['peak_gb']:.2f} | {results[label]['seconds']:.1f} | "
              f"{results[label].get('shards_sha256', '—')} |", flush=True)
    (work / "results.json").write_text(json.dumps({"settings": vars(args), "float64_gb": values * 8 / 2**30, "rows": results}, indent=1))


if __name__ == "__main__":
    main()
