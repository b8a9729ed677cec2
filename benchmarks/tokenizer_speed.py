"""Tokenizer encode throughput in channel-seconds of signal per second (signal → codes), on the CPU
and, when one is present, on a GPU (the card is printed).

With ``--processes 1,2``: the whole ``neurofm tokenizer encode`` command (reading, encoding, writing
code shards) under ``torchrun`` with each number of processes (one thread each), side by side: wall
time, channel-seconds per wall second, speed-up over the first, and whether the code shards are
byte-identical.

Usage: python benchmarks/tokenizer_speed.py --checkpoint runs/demo/tokenizer --shards runs/demo/shards [--processes 1,2]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from neurofm.data_shards import ShardIndex
from neurofm.tokenizers.checkpoint import load_tokenizer
from neurofm.data_shards.batches import ordered_batches


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


def encode_processes(checkpoint: str, shards: str, counts: list[int], batch_size: int) -> None:
    """Wall time of `neurofm tokenizer encode` on each number of torchrun processes."""
    index = ShardIndex(shards)
    channel_seconds = sum(r["n_channels"] * r["n_windows"] * r["settings"]["window_seconds"] for r in index.manifest["recordings"]
                          if r["modality"] != "fmri")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    code = ("import sys; from neurofm.tokenizers.encode import encode_shards; "
            f"encode_shards(sys.argv[1], sys.argv[2], sys.argv[3], batch_size={batch_size}, progress=False)")
    base, reference = None, None
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            out = Path(tmp) / str(n)
            start = time.perf_counter()
            subprocess.run([torchrun, "--standalone", f"--nproc-per-node={n}", "--no-python", sys.executable, "-c", code,
                            checkpoint, shards, str(out)], env=env, check=True, capture_output=True)
            seconds = time.perf_counter() - start
            files = {p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))} | {"manifest": (out / "manifest.json").read_bytes()}
            base, reference = base or seconds, reference or files
            print(f"encode on {n} process(es): {seconds:.1f} s wall incl. start-up, {channel_seconds / seconds:,.0f} channel-seconds / s, "
                  f"{base / seconds:.2f}x the first, byte-identical: {files == reference}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="runs/demo/tokenizer")
    parser.add_argument("--shards", default="runs/demo/shards")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--processes", help="comma-separated torchrun process counts for the whole encode command, e.g. 1,2")
    args = parser.parse_args()
    if args.processes:
        encode_processes(args.checkpoint, args.shards, [int(n) for n in args.processes.split(",")], args.batch_size)
        return
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
