"""Pretraining speed: NeuroFM's real training step against a plain-PyTorch reference encoder, and the
loader's margin, in one run on one device.

- "neurofm": ``train_pretrain`` itself (DeepSpeed, ZeRO stage and precision from the preset / flags,
  real code shards through the real loader); tokens/s from its log (signal tokens: all P·K tokens of
  each window, masked or not).
- "reference": a plain PyTorch pre-norm encoder of the same width, depth and sequence length (SDPA
  attention, AdamW), full sequence, eager and (``--compile``) compiled, on random tokens.
- "loader": windows/s and tokens/s the code-shard batch stream delivers on its own.
MFU uses PaLM's 6·N + 12·L·d·T FLOPs per token and the device's dense bf16 peak (GPU only).

Usage (GPU): python benchmarks/pretrain_speed.py --codes runs/demo/codes --preset large --steps 30 --compile
Usage (CPU smoke): OMP_NUM_THREADS=2 python benchmarks/pretrain_speed.py --codes runs/demo/codes --preset tiny
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from neurofm.config import load_config
from neurofm.data_shards.dataset import ShardStream
from neurofm.pretrain.config import PretrainConfig
from neurofm.pretrain.model import Stack
from neurofm.pretrain.train import PEAK_FLOPS, code_bucket, collate_codes, flops_per_token
from neurofm.tokenizers.data import BatchStream

ROOT = Path(__file__).resolve().parents[1]


def loader_speed(codes: str, micro_batch: int, batches: int = 50) -> tuple[float, float]:
    stream = BatchStream(ShardStream(codes, epochs=None), micro_batch, collate_fn=collate_codes, bucket_fn=code_bucket)
    next(stream)
    start, windows, tokens = time.perf_counter(), 0, 0
    for _ in range(batches):
        batch = next(stream)
        windows += batch["codes"].shape[0]
        tokens += batch["codes"][..., 0].numel()
    elapsed = time.perf_counter() - start
    return windows / elapsed, tokens / elapsed


def reference_speed(cfg: PretrainConfig, seq: int, batch: int, steps: int, compile_: bool, device: str) -> float:
    d = cfg.model.d_model
    model = nn.ModuleDict({"embed": nn.Embedding(cfg.model.codes_per_level, d),
                           "encoder": Stack(d, cfg.model.n_layers, cfg.model.n_heads, cfg.model.mlp_ratio, False),
                           "head": nn.Linear(d, cfg.model.codes_per_level * cfg.model.levels)}).to(device)
    dtype = torch.bfloat16 if cfg.precision == "bf16" and device == "cuda" else torch.float32
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")

    def step(tokens, positions):
        with torch.autocast(device_type=device, dtype=dtype, enabled=dtype == torch.bfloat16):
            out = model["head"](model["encoder"](model["embed"](tokens), positions))
            loss = out.float().logsumexp(-1).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    fn = torch.compile(step) if compile_ else step
    tokens = torch.randint(0, cfg.model.codes_per_level, (batch, seq), device=device)
    positions = torch.arange(seq, device=device)[None].expand(batch, -1)
    for _ in range(3):
        fn(tokens, positions)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn(tokens, positions)
    if device == "cuda":
        torch.cuda.synchronize()
    return batch * seq * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--codes", required=True)
    parser.add_argument("--preset", default="tiny", choices=["tiny", "base", "large", "xl"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    card = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"device: {card}, torch {torch.__version__}")
    from neurofm.pretrain.train import code_manifest, fill_model_config, train_pretrain

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(PretrainConfig, ROOT / f"configs/pretrain_{args.preset}.yaml",
                          [f"codes={args.codes}", f"out={tmp}/run", f"steps={args.steps}", f"log_every={args.steps}",
                           f"checkpoint_every={10 * args.steps}", "tensorboard=false",
                           *(["precision=fp32"] if device == "cpu" else []), *args.overrides])
        fill_model_config(cfg, code_manifest(args.codes))
        manifest = json.loads((Path(args.codes) / "manifest.json").read_text())
        patches = max(8, int(round(2.0 / manifest["tokenizer"]["patch_seconds"]["electro"])))
        seq = patches * cfg.model.n_latents
        windows_s, tokens_s = loader_speed(args.codes, cfg.micro_batch)
        print(f"loader: {windows_s:,.0f} windows/s, {tokens_s:,.0f} tokens/s")
        metrics = train_pretrain(cfg, progress=False)
        neurofm_tokens = metrics["tokens_per_s"]
        peak = next((v for k, v in PEAK_FLOPS.items() if k in card), None)
        mfu = lambda t: f"{t * flops_per_token(cfg, seq) / peak:.3f}" if peak else "n/a"  # noqa: E731
        print(f"neurofm ({args.preset}, ZeRO-{cfg.zero_stage}, {cfg.precision}, asymmetric={cfg.model.asymmetric}): "
              f"{neurofm_tokens:,.0f} tokens/s, MFU {mfu(neurofm_tokens)}; loader margin {tokens_s / neurofm_tokens:.1f}x")
        for compiled in ([False, True] if args.compile else [False]):
            ref = reference_speed(cfg, seq, cfg.micro_batch, args.steps, compiled, device)
            print(f"reference encoder ({'compiled' if compiled else 'eager'}, seq {seq}): {ref:,.0f} tokens/s, MFU {mfu(ref)}; "
                  f"neurofm / reference = {neurofm_tokens / ref:.2f}")


if __name__ == "__main__":
    main()
