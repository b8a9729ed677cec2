"""Read-out candidates (poolings) on a development set, beside raw features, for one or more releases.

The representation benchmark's probe set and continuous set are its test sets: a pooling chosen by their
scores is tuned on the test split. This script builds a **development set** instead — simulated subjects
and a simulator seed the benchmark never probes (``--first-subject``, ``--seed``; defaults: subjects 80–82,
seed 3003, against the benchmark's 50–52 / 1001 and 60–62 / 1002) — and scores each ``--poolings`` entry on it
with the benchmark's own code (:func:`neurofm.bench.embeddings.collect`, :func:`neurofm.bench.tasks.within_device`:
grouped CV over recordings within each device, layer and penalty chosen by inner CV), for every column
(release, random weights, tokenizer alone, raw features). Continuous recordings and a recording-level label
(``--key alpha_hz``, ridge R²) by default; ``--events auditory visual somatosensory`` makes event-locked
windows and a 3-way logistic probe of the condition instead. ``--cov-features 128 64 32`` scores ``cov`` at
each of these widths (:data:`neurofm.finetune.encoder.COV_MAX_FEATURES`: fewer covariance features for a ridge
fit on few recordings); ``--hours 0.245`` sizes the set like the benchmark's continuous set (22 recordings per
device).

Usage: python benchmarks/readout_development.py --releases runs/bench_win4/release runs/bench_s24/release
       --work runs/readout_dev [--poolings cov power] [--key alpha_hz] [--events ...]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

import neurofm.finetune.encoder as encoder
from neurofm.bench import tasks
from neurofm.bench.embeddings import collect
from neurofm.bench.representation import modality_rows
from neurofm.data_shards import build_shards
from neurofm.data_shards.config import EventEpochs, ShardsConfig, SimulateConfig

COLUMNS = ("release", "random", "tokenizer")


def development_set(args: argparse.Namespace, out: Path) -> SimulateConfig:
    """Build (or resume) the development set's shards in ``out``; return the simulation settings."""
    sim = SimulateConfig(hours=args.hours, modalities=args.modalities, subjects=args.subjects, first_subject=args.first_subject,
                         seed=args.seed, recording_seconds=args.recording_seconds, eeg_montages=args.montages,
                         meg_helmets=args.helmets,
                         epochs=EventEpochs(events=args.events, tmin=args.tmin, tmax=args.tmax) if args.events else None)
    build_shards(ShardsConfig(out=str(out), inputs=[], simulate=sim), progress=False)
    return sim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--releases", nargs="+", required=True)
    parser.add_argument("--work", default="runs/readout_dev")
    parser.add_argument("--poolings", nargs="+", default=["cov", "power"])
    parser.add_argument("--key", default="alpha_hz", help="recording label to regress (continuous windows)")
    parser.add_argument("--events", nargs="*", default=None, help="event-locked windows and a logistic probe of these conditions")
    parser.add_argument("--tmin", type=float, default=-0.5)
    parser.add_argument("--tmax", type=float, default=1.5)
    parser.add_argument("--modalities", nargs="+", default=["eeg", "meg"])
    parser.add_argument("--montages", nargs="+", default=["biosemi64", "GSN-HydroCel-129"])
    parser.add_argument("--helmets", nargs="+", default=["neuromag306", "kit157"])
    parser.add_argument("--subjects", type=int, default=3)
    parser.add_argument("--first-subject", type=int, default=80)
    parser.add_argument("--seed", type=int, default=3003)
    parser.add_argument("--hours", type=float, default=0.6)
    parser.add_argument("--recording-seconds", type=float, default=10.0)
    parser.add_argument("--cov-features", nargs="+", type=int, default=[encoder.COV_MAX_FEATURES],
                        help="widths of 'cov' pooling to score (COV_MAX_FEATURES; default: the package's)")
    parser.add_argument("--jobs", type=int, default=-1, help="processes for the probes' outer folds")
    args = parser.parse_args()

    work = Path(args.work)
    started = time.time()
    shards = work / "shards"
    sim = development_set(args, shards)
    rows = modality_rows(shards, args.modalities)
    kind, key = ("logistic", "event") if args.events else ("ridge", args.key)
    results = []
    default_width = encoder.COV_MAX_FEATURES
    for release in args.releases:
        widths = args.cov_features if "cov" in args.poolings else [default_width]
        for width in widths:
            encoder.COV_MAX_FEATURES = width
            poolings = tuple(args.poolings) if width == widths[0] else ("cov",)  # the others do not depend on it
            windows = collect(release, shards, poolings, indices=rows, simulation=sim)
            scores = tasks.within_device(windows, kind, key, args.events or None, n_jobs=args.jobs)
            devices = sorted(scores)
            raw = float(np.mean([scores[d]["raw"]["score"] for d in devices]))
            for pooling in poolings:
                label = f"cov ({width})" if pooling == "cov" and len(args.cov_features) > 1 else pooling
                row = {"path": release, "pooling": label, "devices": devices, "raw": raw,
                       "per_device": [scores[d][f"release/{pooling}"]["score"] for d in devices]}
                row.update({c: float(np.mean([scores[d][f"{c}/{pooling}"]["score"] for d in devices])) for c in COLUMNS})
                results.append(row)
                print(json.dumps(row), flush=True)
    encoder.COV_MAX_FEATURES = default_width
    measure = "balanced accuracy" if args.events else f"{key} R²"
    print(f"\n{measure}, mean over {', '.join(results[0]['devices'])}; per device: the release")
    print("\n| release | pooling | release | random weights | tokenizer alone | raw features | per device |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['path']} | {r['pooling']} | {r['release']:.3f} | {r['random']:.3f} | {r['tokenizer']:.3f} | {r['raw']:.3f} | "
              f"{' / '.join(f'{v:.3f}' for v in r['per_device'])} |")
    summary = {"machine": platform.node(), "seconds": round(time.time() - started), "settings": vars(args), "rows": results}
    (work / "results.json").write_text(json.dumps(summary, indent=1))
    print(f"\n{round(time.time() - started)} s; {work / 'results.json'}")


if __name__ == "__main__":
    main()
