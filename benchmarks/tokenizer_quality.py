"""Tokenizer reconstruction quality against a same-bitrate PCA baseline, per modality.

1. Builds signal shards from every recording in ../shared/data (configs/shared_data.yaml).
2. Trains the tiny preset (configs/tokenizer_tiny.yaml) on their training windows.
3. Evaluates both on the held-out windows (the last 20 % of each recording): the tokenizer (encode →
   codes → decode) and the same-bitrate PCA codec of :mod:`neurofm.bench.tokenizer_baseline`.
   Metrics: mean channel PCC and pooled R² over valid samples. (``neurofm bench representation``
   measures the same on recordings and devices the tokenizer never trained on.)

With ``--hold-out DATASET ...`` the split is by recording instead: every input of those datasets (the
``dataset`` field of configs/shared_data.yaml, e.g. another lab's recordings) is left out of training
and the tokenizer and the PCA codec are scored on all of its windows — a lab and devices the tokenizer
never saw, which is how a released tokenizer meets a user's data.

Usage: python benchmarks/tokenizer_quality.py [--steps N] [--work DIR] [--hold-out DATASET ...]
       [--shards-override KEY=VALUE ...] [overrides ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from neurofm.bench.tokenizer_baseline import best_pca, tokenizer_vs_pca
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
    parser.add_argument("--hold-out", nargs="+", default=[], metavar="DATASET",
                        help="datasets left out of training and scored whole (default: the last 20 %% of every recording)")
    parser.add_argument("--shards-override", action="append", default=[], metavar="KEY=VALUE",
                        help="override of the training shards' config, e.g. simulate.hours=1.0 to add simulated recordings")
    parser.add_argument("overrides", nargs="*", help="more TokenizerTrainConfig overrides (dotted.key=value)")
    args = parser.parse_args()
    # --hold-out takes every word after it; dotted overrides written after it are still overrides
    args.overrides += [word for word in args.hold_out if "=" in word]
    args.hold_out = [word for word in args.hold_out if "=" not in word]
    work = Path(args.work)
    os.chdir(ROOT)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    shards_cfg = load_config(ShardsConfig, ROOT / "configs/shared_data.yaml", [f"root={args.shared}", f"out={work / 'shards'}", *args.shards_override])
    unknown = set(args.hold_out) - {item.dataset for item in shards_cfg.inputs}
    if unknown:
        parser.error(f"--hold-out {sorted(unknown)}: no such dataset in configs/shared_data.yaml")
    held_out_inputs = [item for item in shards_cfg.inputs if item.dataset in args.hold_out]
    shards = work / "shards"
    build_shards(replace(shards_cfg, inputs=[item for item in shards_cfg.inputs if item not in held_out_inputs]), progress=False)
    overrides = [f"shards={shards}", f"out={work / 'tokenizer'}"] + ([f"steps={args.steps}"] if args.steps else []) + args.overrides
    cfg = load_config(TokenizerTrainConfig, ROOT / "configs/tokenizer_tiny.yaml", overrides)
    start = time.perf_counter()
    train_tokenizer(cfg, progress=False)
    print(f"trained {cfg.steps} steps in {time.perf_counter() - start:.0f} s")
    if held_out_inputs:
        return report_held_out_datasets(replace(shards_cfg, inputs=held_out_inputs, simulate=None, out=str(work / "held_out_shards")), work)
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


def report_held_out_datasets(held_out_cfg: ShardsConfig, work: Path) -> None:
    """Score the trained tokenizer and the same-bitrate PCA codec on every window of the held-out datasets."""
    build_shards(held_out_cfg, progress=False)
    result = tokenizer_vs_pca(work / "tokenizer", held_out_cfg.out, work / "eval_held_out", max_windows=10_000)
    print(f"\nheld-out datasets: {sorted({item.dataset for item in held_out_cfg.inputs})}")
    print(f"{'modality':<8}{'windows':>8}{'bit/s':>7}{'tok PCC':>9}{'tok R2':>8}{'PCA PCC':>9}{'PCA R2':>8}  devices")
    for modality, row in result.items():
        tok, pca = row["tokenizer"], row["pca"] or {"pcc": float("nan"), "r2": float("nan")}
        print(f"{modality:<8}{tok['windows']:>8}{row['bits_per_second']:>7.0f}{tok['pcc']:>9.3f}{tok['r2']:>8.3f}"
              f"{pca['pcc']:>9.3f}{pca['r2']:>8.3f}  {', '.join(row['devices'])}")
    (work / "quality_held_out.json").write_text(json.dumps(result, indent=1, default=float))


if __name__ == "__main__":
    main()
