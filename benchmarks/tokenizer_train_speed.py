"""Tokenizer training throughput with and without grouping windows by channel count, side by side.

Trains a tokenizer preset for a few steps on the EEG + MEG windows of a shard folder twice — batches
that hold one family and window length (padded to their largest window), and batches that also hold one
channel class (``bucket_by_channels``, the default) — and reports windows/s and the channel rows padded
per real one. Same preset, batch size, seed and data. With ``--eval``, each tokenizer is then scored on
the held-out windows of the same shards (the last ``eval_fraction`` of every recording): PCC, R² and
log-spectrum error per modality, so a faster batching can be checked to learn the same.

Usage: python benchmarks/tokenizer_train_speed.py --shards runs/shards [--config configs/tokenizer_base.yaml]
       [--steps 30] [--batch-size 16] [--eval]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from neurofm.config import load_config
from neurofm.data_shards import ShardStream
from neurofm.tokenizers.config import TokenizerTrainConfig
from neurofm.data_shards.batches import BatchStream
from neurofm.tokenizers.train import train_tokenizer


def padding(shards: str, batch_size: int, by_channels: bool, n: int = 40) -> float:
    """Channel rows per real channel row over ``n`` batches (1.0 = no padding)."""
    batches = BatchStream(ShardStream(shards, seed=0, epochs=None, modality_weights={"eeg": 1.0, "meg": 1.0}), batch_size,
                          by_channels=by_channels)
    rows = real = 0
    for _ in range(n):
        batch = next(batches)
        rows += batch.channel_mask.numel()
        real += int(batch.channel_mask.sum())
    return rows / real


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", required=True)
    parser.add_argument("--config", default="configs/tokenizer_base.yaml")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval", action="store_true", help="also score each tokenizer on the held-out windows")
    args = parser.parse_args()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, device {device}, torch {torch.__version__}")
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for grouped in (False, True):
            cfg = load_config(TokenizerTrainConfig, args.config, [
                f"shards={args.shards}", f"out={Path(tmp) / str(grouped)}", f"steps={args.steps}", f"batch_size={args.batch_size}",
                f"log_every={args.steps}", f"checkpoint_every={args.steps}", f"bucket_by_channels={str(grouped).lower()}",
                "modality_weights={eeg: 1.0, meg: 1.0}", "warmup_steps=1"])
            start = time.perf_counter()
            train_tokenizer(cfg, progress=False)
            seconds = time.perf_counter() - start
            log = Path(tmp) / f"{grouped}.log.jsonl"
            rate = json.loads(log.read_text().splitlines()[-1])["windows_per_s"]
            pad = padding(args.shards, args.batch_size, grouped)
            rates[grouped] = rate
            print(f"{'grouped by channel class' if grouped else 'family + length only'}: {rate:.1f} windows/s "
                  f"({args.steps} steps of {args.batch_size}, {seconds:.0f} s wall incl. start-up), "
                  f"{pad:.2f} channel rows per real row")
            if args.eval:
                from neurofm.tokenizers.evaluate import evaluate_tokenizer

                metrics = evaluate_tokenizer(Path(tmp) / str(grouped), args.shards, Path(tmp) / f"{grouped}_eval", plot=False)
                for modality, m in sorted(metrics["modalities"].items()):
                    print(f"  held-out {modality}: PCC {m['pcc']:.3f}, R² {m['r2']:.3f}, log-spectrum error "
                          f"{m['spectral_error']:.3f} decades ({m['windows']} windows)")
    print(f"speed-up from grouping: {rates[True] / rates[False]:.2f}x")


if __name__ == "__main__":
    main()
