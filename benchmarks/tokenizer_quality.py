"""Tokenizer reconstruction quality against a same-bitrate PCA baseline, per modality.

1. Builds signal shards from every recording in ../shared/data (configs/shared_data.yaml).
2. Trains the tiny preset (configs/tokenizer_tiny.yaml) on their training windows.
3. Evaluates both on the held-out windows (the last 20 % of each recording):
   - the tokenizer: encode → codes → decode;
   - the baseline: a rank-r SVD of each window (its own PCA), the spatial maps U (C × r) and the
     component time courses (decimated to T' samples) both uniformly quantized to b bits, every
     transmitted number counted: bits = r · (C + T') · b + 32 · r. For each modality the best
     (r, T', b) whose bits fit the tokenizer's bits per window is chosen on the held-out windows
     themselves (an oracle choice, in the baseline's favour).
   Metrics: mean channel PCC and pooled R² over valid samples.

Usage: python benchmarks/tokenizer_quality.py [--steps N] [--work DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from scipy import signal as sps

from neurofm.config import load_config
from neurofm.data_shards import ShardIndex, build_shards
from neurofm.data_shards.config import ShardsConfig
from neurofm.tokenizers.checkpoint import load_tokenizer
from neurofm.tokenizers.config import TokenizerTrainConfig
from neurofm.tokenizers.data import ordered_batches, split_indices
from neurofm.tokenizers.evaluate import evaluate_tokenizer
from neurofm.tokenizers.train import train_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def quantize(x: np.ndarray, bits: int) -> np.ndarray:
    """Uniform quantization of x to 2^bits levels over [-max|x|, max|x|] (the scale costs 32 bits)."""
    scale = np.abs(x).max() + 1e-12
    levels = 2 ** bits - 1
    return np.round((x / scale + 1) / 2 * levels) / levels * 2 * scale - scale


def pca_codec(window: np.ndarray, rank: int, t_prime: int, bits: int) -> np.ndarray:
    """Rank-r SVD of a window [C, T]; quantized maps and decimated, quantized time courses."""
    c, t = window.shape
    u, s, vt = np.linalg.svd(window, full_matrices=False)
    rank = min(rank, len(s))
    maps = quantize(u[:, :rank], bits)
    courses = s[:rank, None] * vt[:rank]  # [r, T]
    low = sps.resample(courses, t_prime, axis=1) if t_prime < t else courses
    courses = quantize(low, bits)
    courses = sps.resample(courses, t, axis=1) if t_prime < t else courses
    return maps @ courses


def pcc_r2(original: np.ndarray, reconstruction: np.ndarray) -> tuple[float, float, int, float, float]:
    o = original - original.mean(1, keepdims=True)
    r = reconstruction - reconstruction.mean(1, keepdims=True)
    denom = np.sqrt((o**2).sum(1) * (r**2).sum(1))
    pcc = np.where(denom > 0, (o * r).sum(1) / np.maximum(denom, 1e-12), 0.0)
    return float(pcc.sum()), len(pcc), float(((original - reconstruction) ** 2).sum()), float((o**2).sum()), 0.0


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
        best = None
        for rank, frac, bits in itertools.product((1, 2, 3, 4, 6, 8), (1, 2, 4, 8, 16), (3, 4, 6, 8)):
            total = defaultdict(float)
            fits = True
            for window, n_times, _ in items:
                c, t = window.shape
                t_prime = max(2, t // frac)
                if rank * (c + t_prime) * bits + 32 * rank > budget:
                    fits = False
                    break
                p, n, sse, sst, _ = pcc_r2(window, pca_codec(window, rank, t_prime, bits))
                total["pcc"] += p
                total["n"] += n
                total["sse"] += sse
                total["sst"] += sst
            if fits and total["n"] and (best is None or total["pcc"] / total["n"] > best[0]):
                best = (total["pcc"] / total["n"], 1 - total["sse"] / total["sst"], rank, frac, bits)
        tok = metrics["modalities"][modality]
        rows.append((modality, len(items), budget / window_seconds, tok["pcc"], tok["r2"], *(best or (float("nan"),) * 5)))
    print(f"\n{'modality':<8}{'windows':>8}{'bit/s':>7}{'tok PCC':>9}{'tok R2':>8}{'PCA PCC':>9}{'PCA R2':>8}  PCA (r, T/T', b)")
    for m, n, bps, tp, tr, bp, br, rank, frac, bits in rows:
        print(f"{m:<8}{n:>8}{bps:>7.0f}{tp:>9.3f}{tr:>8.3f}{bp:>9.3f}{br:>8.3f}  ({rank}, {frac}, {bits})")
    usage = metrics["codes"]["usage"]
    print(f"\ncode usage per level: {', '.join(f'{u:.0%}' for u in usage)}; perplexity "
          f"{', '.join(f'{p:.1f}' for p in metrics['codes']['perplexity'])} of {model.cfg.codes_per_level}")
    (work / "quality.json").write_text(json.dumps({"rows": rows, "tokenizer": metrics["modalities"], "codes": metrics["codes"]}, indent=1, default=float))


if __name__ == "__main__":
    main()
