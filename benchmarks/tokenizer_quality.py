"""Tokenizer reconstruction quality against a same-bitrate PCA baseline, per modality.

1. Builds signal shards from every recording in ../shared/data (configs/shared_data.yaml).
2. Trains the tiny preset (configs/tokenizer_tiny.yaml) on their training windows.
3. Evaluates both on the held-out windows (the last 20 % of each recording): the tokenizer (encode →
   codes → decode) and the same-bitrate PCA codec of :mod:`neurofm.bench.tokenizer_baseline`.
   Metrics: mean channel PCC and pooled R² over valid samples. (``neurofm bench representation``
   measures the same on recordings and devices the tokenizer never trained on.)

Usage: python benchmarks/tokenizer_quality.py [--steps N] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from neurofm.bench.tokenizer_baseline import best_pca
from neurofm.config import load_config
from neurofm.data_shards import ShardIndex, build_shards
from neurofm.data_shards.config import ShardsConfig
from neurofm.tokenizers.checkpoint import load_tokenizer
from neurofm.tokenizers.config import TokenizerTrainConfig
from neurofm.data_shards.batches import ordered_batches, split_indices
from neurofm.tokenizers.evaluate import evaluate_tokenizer
from neurofm.tokenizers.train import train_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--work", default=str(ROOT / "runs" / "bench_tokenizer"))
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the preset's)")
    parser.add_argument("overrides", nargs="*", help="more TokenizerTrainConfig overrides (dotted.key=value)")
    args = parser.parse_args()
    work = Path(args.work)
    os.chdir(ROOT)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    shards = work / "shards"
    build_shards(load_config(ShardsConfig, ROOT / "configs/shared_data.yaml", [f"root={args.shared}", f"out={shards}"]), progress=False)
    overrides = [f"shards={shards}", f"out={work / 'tokenizer'}"] + ([f"steps={args.steps}"] if args.steps else []) + args.overrides
    cfg = load_config(TokenizerTrainConfig, ROOT / "configs/tokenizer_tiny.yaml", overrides)
    start = time.perf_counter()
    train_tokenizer(cfg, progress=False)
    print(f"trained {cfg.steps} steps in {time.perf_counter() - start:.0f} s")
    metrics = evaluate_tokenizer(work / "tokenizer", shards, work / "eval")
    model = load_tokenizer(work / "tokenizer")
    index = ShardIndex(shards)
    _, held_out = split_indices(index, cfg.eval_fraction)
    windows = defaultdict(list)
    for batch in ordered_batches(index, held_out, 32):
        for i, meta in enumerate(batch.metas):
            c, t = int(batch.channel_mask[i].sum()), int(batch.time_mask[i].sum())
            windows[meta["modality"]].append((batch.signal[i, :c, :t].numpy().astype(np.float64), batch.signal.shape[2], meta))
    rows = []
    for modality, items in sorted(windows.items()):
        family = "bold" if modality == "fmri" else "electro"
        window_seconds = items[0][1] / items[0][2]["sfreq"]
        budget = model.cfg.bits_per_second(family) * window_seconds
        best = best_pca([window for window, _, _ in items], budget)
        best = (best["pcc"], best["r2"], best["rank"], best["decimation"], best["bits"]) if best else (float("nan"),) * 5
        tok = metrics["modalities"][modality]
        rows.append((modality, len(items), budget / window_seconds, tok["pcc"], tok["r2"], *best))
    print(f"\n{'modality':<8}{'windows':>8}{'bit/s':>7}{'tok PCC':>9}{'tok R2':>8}{'PCA PCC':>9}{'PCA R2':>8}  PCA (r, T/T', b)")
    for m, n, bps, tp, tr, bp, br, rank, frac, bits in rows:
        print(f"{m:<8}{n:>8}{bps:>7.0f}{tp:>9.3f}{tr:>8.3f}{bp:>9.3f}{br:>8.3f}  ({rank}, {frac}, {bits})")
    usage = metrics["codes"]["usage"]
    print(f"\ncode usage per level: {', '.join(f'{u:.0%}' for u in usage)}; perplexity "
          f"{', '.join(f'{p:.1f}' for p in metrics['codes']['perplexity'])} of {model.cfg.codes_per_level}")
    (work / "quality.json").write_text(json.dumps({"rows": rows, "tokenizer": metrics["modalities"], "codes": metrics["codes"]}, indent=1, default=float))


if __name__ == "__main__":
    main()
