"""Pretraining speed: NeuroFM's real training step against a plain-PyTorch reference encoder, and the
loader's margin, in one run on one device.

- "neurofm": ``train_pretrain`` itself (DeepSpeed, ZeRO stage and precision from the preset / flags,
  real code shards through the real loader); tokens/s from its log (signal tokens: all P·K tokens of
  each window, masked or not).
- "reference": a plain PyTorch pre-norm encoder of the same width, depth and sequence length (SDPA
  attention, AdamW), full sequence, eager and (``--compile``) compiled, on random tokens.
- "loader": windows/s and tokens/s the code-shard batch stream delivers on its own.
MFU uses PaLM's 6·N + 12·L·d·T FLOPs per token and the device's dense bf16 peak (GPU only).

Usage (GPU): python benchmarks/pretrain_speed.py --codes runs/demo/codes --synthetic 32x32 --preset large --steps 30 --compile
  (``--synthetic KxP`` writes random code shards of K latents × P patches per window, i.e. a sequence of
  K·P tokens, with the template's sensors and metadata: the demo codes' windows are only 8×8 = 64 tokens.)
Usage (CPU smoke): OMP_NUM_THREADS=2 python benchmarks/pretrain_speed.py --codes runs/demo/codes --synthetic 8x16 --preset tiny
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from neurofm.config import load_config
from neurofm.data_shards.dataset import ShardIndex, ShardStream
from neurofm.data_shards.writer import ShardWriter, encode_npy, write_json_atomic
from neurofm.pretrain.config import PretrainConfig
from neurofm.pretrain.model import Stack
from neurofm.pretrain.train import PEAK_FLOPS, collate_codes, flops_per_token
from neurofm.data_shards.batches import BatchStream

ROOT = Path(__file__).resolve().parents[1]


def synthetic_codes(template: str, out: Path, n_latents: int, patches: int, windows: int = 2048, seed: int = 0) -> str:
    """Random code shards [K, P, L] in the real format, every window an EEG window of the template."""
    index = ShardIndex(template)
    first = next(i for i in range(len(index)) if index.modality_of[i] == "eeg")
    sample = index[first]
    manifest = {**index.manifest, "shards": [], "complete": False,
                "tokenizer": {**index.manifest["tokenizer"], "n_latents": n_latents, "path": "synthetic"},
                "recordings": [{"source": "synthetic", "dataset": "synthetic", "modality": "eeg", "first_sample": 0,
                                "n_windows": windows}]}
    levels, vocab = manifest["tokenizer"]["levels"], manifest["tokenizer"]["codes_per_level"]
    out.mkdir(parents=True)
    writer = ShardWriter(out, 512, manifest)
    rng = np.random.default_rng(seed)
    for i in range(windows):
        writer.write(f"synthetic-{i:06d}", {"codes.npy": encode_npy(rng.integers(0, vocab, (n_latents, patches, levels), dtype=np.int16)),
                                            "sensors.npy": encode_npy(sample["sensors"]),
                                            "meta.json": json.dumps(sample["meta"]).encode()})
    writer.close_shard()
    manifest["complete"] = True
    write_json_atomic(out / "manifest.json", manifest)
    return str(out)


def loader_speed(codes: str, micro_batch: int, batches: int = 50) -> tuple[float, float]:
    stream = BatchStream(ShardStream(codes, epochs=None), micro_batch, collate_fn=collate_codes)
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


def plain_model_speed(cfg: PretrainConfig, patches: int, batch: int, steps: int, compile_: bool, device: str) -> float:
    """NeuroFM's own MaskedCodeModel (same masking, loss) in a bare PyTorch loop: no DeepSpeed, random
    codes already on the device. Signal tokens/s; the gap to the DeepSpeed step is the engine's cost."""
    from neurofm.pretrain.masking import make_mask, masked_tokens
    from neurofm.pretrain.model import MaskedCodeModel, masked_code_loss

    m = cfg.model
    model = MaskedCodeModel(m).to(device)
    dtype = torch.bfloat16 if cfg.precision == "bf16" and device == "cuda" else torch.float32
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    forward = torch.compile(model) if compile_ else model
    n_masked = masked_tokens(patches, m.n_latents, m.mask_ratio, m.masking)
    codes = torch.randint(0, m.codes_per_level, (batch, patches, m.n_latents, m.levels), device=device)
    modality = torch.zeros(batch, dtype=torch.long, device=device)
    generator = torch.Generator().manual_seed(0)

    def step():
        mask = make_mask(batch, patches, m.n_latents, m.mask_ratio, m.masking, generator).to(device)
        with torch.autocast(device_type=device, dtype=dtype, enabled=dtype == torch.bfloat16):
            logits = forward(codes, modality, mask, patches * m.n_latents - n_masked)
        loss, _ = masked_code_loss(logits, codes, mask, n_masked)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return batch * patches * m.n_latents * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--codes", required=True)
    parser.add_argument("--preset", default="tiny", choices=["tiny", "base", "large", "xl"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--compile", action="store_true", help="also time compiled variants (torch.compile)")
    parser.add_argument("--no-reference", action="store_true", help="time NeuroFM only")
    parser.add_argument("--only-compiled", action="store_true", help="with --compile: skip the eager variants")
    parser.add_argument("--no-deepspeed", action="store_true", help="skip NeuroFM's DeepSpeed step (time the bare-model loop only)")
    parser.add_argument("--plain-model", action="store_true", help="also time NeuroFM's model in a bare PyTorch loop (no DeepSpeed)")
    parser.add_argument("--profile", action="store_true", help="profile a few eager NeuroFM steps: top kernels by device time")
    parser.add_argument("--synthetic", metavar="KxP", help="random code shards of K latents x P patches per window")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    card = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"device: {card}, torch {torch.__version__}")
    from neurofm.pretrain.train import code_manifest, fill_model_config, train_pretrain

    with tempfile.TemporaryDirectory() as tmp:
        if args.synthetic:
            k, p = (int(v) for v in args.synthetic.lower().split("x"))
            args.codes = synthetic_codes(args.codes, Path(tmp) / "codes", k, p)
        cfg = load_config(PretrainConfig, ROOT / f"configs/pretrain_{args.preset}.yaml",
                          [f"codes={args.codes}", f"out={tmp}/run", f"steps={args.steps}", f"log_every={args.steps // 2}",
                           f"checkpoint_every={10 * args.steps}", "tensorboard=false",
                           *(["precision=fp32"] if device == "cpu" else []), *args.overrides])
        fill_model_config(cfg, code_manifest(args.codes))
        codes = ShardIndex(args.codes)[0]["codes"]
        seq = codes.shape[0] * codes.shape[1]
        windows_s, tokens_s = loader_speed(args.codes, cfg.micro_batch)
        print(f"loader: {windows_s:,.0f} windows/s, {tokens_s:,.0f} tokens/s (sequence {seq} tokens)")
        peak = next((v for k, v in PEAK_FLOPS.items() if k in card), None)
        mfu = lambda t: f"{t * flops_per_token(cfg, seq) / peak:.3f}" if peak else "n/a"  # noqa: E731
        visible = 1 - cfg.model.mask_ratio if cfg.model.asymmetric else 1.0
        # the encoder's own MFU: it runs on the visible tokens only when the model is asymmetric
        encoder_mfu = lambda t: (f"{t * visible * flops_per_token(cfg, int(seq * visible)) / peak:.3f}"  # noqa: E731
                                 if peak else "n/a")
        neurofm_tokens = 0.0
        if args.plain_model:
            for compiled in ([False, True] if args.compile else [False]):
                plain = plain_model_speed(cfg, codes.shape[1], cfg.micro_batch, args.steps, compiled, device)
                print(f"neurofm model, bare PyTorch loop ({'compiled' if compiled else 'eager'}): {plain:,.0f} signal tokens/s, "
                      f"full-sequence-equivalent MFU {mfu(plain)}, encoder MFU {encoder_mfu(plain)}", flush=True)
        variants = [] if args.no_deepspeed else ([True] if args.only_compiled else [False, True]) if args.compile else [False]
        for compiled in variants:
            cfg.compile, cfg.out = compiled, f"{tmp}/run-{int(compiled)}"
            # tokens/s of the second half of the steps: warm-up and compilation stay out
            neurofm_tokens = train_pretrain(cfg, progress=False)["tokens_per_s"]
            print(f"neurofm ({args.preset}, ZeRO-{cfg.zero_stage}, {cfg.precision}, asymmetric={cfg.model.asymmetric}, "
                  f"{'compiled' if compiled else 'eager'}, micro-batch {cfg.micro_batch}): {neurofm_tokens:,.0f} signal tokens/s, "
                  f"full-sequence-equivalent MFU {mfu(neurofm_tokens)}, encoder MFU {encoder_mfu(neurofm_tokens)}; loader margin {tokens_s / neurofm_tokens:.1f}x", flush=True)
        if args.profile:  # 3 eager steps after 3 of warm-up; the final checkpoint save stays outside
            from torch.profiler import ProfilerActivity, profile, schedule

            cfg.compile, cfg.out, cfg.steps = False, f"{tmp}/run-profile", 8
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
            with profile(activities=activities, schedule=schedule(wait=1, warmup=2, active=3, repeat=1)) as prof:
                train_pretrain(cfg, progress=False, on_step=lambda _: prof.step())
            sort = "cuda_time_total" if device == "cuda" else "cpu_time_total"
            print(prof.key_averages().table(sort_by=sort, row_limit=25, max_name_column_width=60))
        for compiled in ([False, True] if args.compile and not args.no_reference else [] if args.no_reference else [False]):
            ref = reference_speed(cfg, seq, cfg.micro_batch, args.steps, compiled, device)
            print(f"reference encoder ({'compiled' if compiled else 'eager'}, seq {seq}): {ref:,.0f} tokens/s, MFU {mfu(ref)}; "
                  f"neurofm / reference = {neurofm_tokens / ref:.2f}")


if __name__ == "__main__":
    main()
