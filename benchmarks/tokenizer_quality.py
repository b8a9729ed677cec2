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
from dataclasses import replace
from pathlib import Path

import torch

from neurofm.bench.tokenizer_baseline import tokenizer_vs_pca
from neurofm.config import load_config
from neurofm.data_shards import ShardIndex, build_shards
from neurofm.data_shards.config import ShardsConfig
from neurofm.tokenizers.config import TokenizerTrainConfig
from neurofm.data_shards.batches import split_indices
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
    if held_out_inputs:  # whole datasets the tokenizer never trained on
        held_out_cfg = replace(shards_cfg, inputs=held_out_inputs, simulate=None, out=str(work / "held_out_shards"))
        build_shards(held_out_cfg, progress=False)
        print(f"\nheld-out datasets: {sorted(args.hold_out)}")
        report(tokenizer_vs_pca(work / "tokenizer", held_out_cfg.out, work / "eval", indices=range(len(ShardIndex(held_out_cfg.out)))), work)
    else:  # the last eval_fraction of every recording
        held_out = split_indices(ShardIndex(shards), cfg.eval_fraction)[1]
        report(tokenizer_vs_pca(work / "tokenizer", shards, work / "eval", indices=held_out), work)


def report(result: dict, work: Path) -> None:
    """Print the tokenizer-vs-PCA table and the code usage, and write them to ``work/quality.json``."""
    print(f"{'modality':<8}{'windows':>8}{'bit/s':>7}{'tok PCC':>9}{'tok R2':>8}{'PCA PCC':>9}{'PCA R2':>8}  PCA (r, T/T', b)  devices")
    for modality, row in result.items():
        tok, pca = row["tokenizer"], row["pca"] or dict.fromkeys(("pcc", "r2", "rank", "decimation", "bits"), float("nan"))
        print(f"{modality:<8}{tok['windows']:>8}{row['bits_per_second']:>7.0f}{tok['pcc']:>9.3f}{tok['r2']:>8.3f}{pca['pcc']:>9.3f}"
              f"{pca['r2']:>8.3f}  ({pca['rank']}, {pca['decimation']}, {pca['bits']})  {', '.join(row['devices'])}")
    codes = json.loads((work / "eval" / "metrics.json").read_text())["codes"]
    print(f"\ncode usage per level: {', '.join(f'{u:.0%}' for u in codes['usage'])}; perplexity "
          f"{', '.join(f'{p:.1f}' for p in codes['perplexity'])}")
    (work / "quality.json").write_text(json.dumps({"modalities": result, "codes": codes}, indent=1, default=float))


if __name__ == "__main__":
    main()
