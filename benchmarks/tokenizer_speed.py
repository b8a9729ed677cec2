"""Tokenizer encode throughput in channel-seconds of signal per second (signal → codes), on the CPU
and, when one is present, on a GPU (the card is printed).

Usage: python benchmarks/tokenizer_speed.py --checkpoint runs/demo/tokenizer --shards runs/demo/shards
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from neurofm.data_shards import ShardIndex
from neurofm.tokenizers.checkpoint import load_tokenizer
from neurofm.tokenizers.data import ordered_batches


def throughput(model, batches, device: str) -> float:
    model = model.to(device)
    channel_seconds, elapsed = 0.0, 0.0
    with torch.no_grad():
        for batch in batches:
            signal, sensors, mask = (t.to(device) for t in (batch.signal, batch.sensors, batch.channel_mask))
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model.quantize(model.encode(signal, sensors, mask, batch.family))
            if device == "cuda":
                torch.cuda.synchronize()
            elapsed += time.perf_counter() - start
            seconds = batch.signal.shape[2] / batch.metas[0]["sfreq"]
            channel_seconds += float(batch.channel_mask.sum()) * seconds
    return channel_seconds / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="runs/demo/tokenizer")
    parser.add_argument("--shards", default="runs/demo/shards")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    model = load_tokenizer(args.checkpoint)
    index = ShardIndex(args.shards)
    batches = list(ordered_batches(index, range(len(index)), args.batch_size))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{len(index)} windows; model d_model={model.cfg.d_model}, K={model.cfg.n_latents}, L={model.cfg.levels}")
    throughput(model, batches[:2], "cpu")  # warm-up
    print(f"cpu: {throughput(model, batches, 'cpu'):,.0f} channel-seconds / s")
    if torch.cuda.is_available():
        throughput(model, batches[:2], "cuda")
        print(f"cuda ({torch.cuda.get_device_name()}): {throughput(model, batches, 'cuda'):,.0f} channel-seconds / s")


if __name__ == "__main__":
    main()
