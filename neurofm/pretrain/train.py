"""``train_pretrain``: masked-code pretraining on DeepSpeed, one process to many nodes.

Run it in one process (``neurofm pretrain train``), under ``torchrun``, or under the ``deepspeed``
launcher (``neurofm launch pretrain`` renders those). Each rank streams its own share of the code
shards. Checkpoints are DeepSpeed's own (ZeRO-sharded), one tag per step; before DeepSpeed writes its
files every rank writes ``neurofm_state_rank{r}.json`` (step, data position and queue, masking RNG,
torch RNG) into the tag, and DeepSpeed updates ``latest`` only after the whole tag is written, so an
interrupted save leaves the previous checkpoint as the one resumed from. SIGTERM saves a checkpoint at
the next step boundary and exits. On success rank 0 writes ``DONE.json``.

Resuming on the same number of ranks continues the same trajectory exactly. Resuming on another
number converts the tag with DeepSpeed's ``ds_to_universal`` (into ``step_…_universal``) and loads it
with ``load_universal``; the data stream continues after the furthest rank of the old run (the
endless stream is dealt out round-robin from a global offset, see ``ShardStream``), old batch queues
go to rank ``r % world``, and the step count and LR schedule carry on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import time
from pathlib import Path

import numpy as np
import torch

from neurofm.config import to_dict
from neurofm.data_shards.dataset import ShardIndex, ShardStream
from neurofm.errors import NeuroFMError
from neurofm.files import read_json
from neurofm.training import MetricsLog, check_resume_settings
from neurofm.schedule import warmup_cosine
from neurofm.pretrain.config import MODALITY_IDS, PretrainConfig
from neurofm.pretrain.extension_locks import clear_stale_extension_locks
from neurofm.pretrain.masking import make_mask, masked_tokens
from neurofm.pretrain.model import MaskedCodeModel, masked_code_loss
from neurofm.outputs import output_folder, writer_lock
from neurofm.pretrain.safe_checkpoint import universal_command, weights_only_loads
from neurofm.tokenizers.data import BatchStream

logger = logging.getLogger("neurofm.pretrain")

#: Dense bf16 peak FLOP/s per device, for MFU (NVIDIA data sheets, SXM parts).
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "V100": 125e12}


def collate_codes(samples: list[dict]) -> dict:
    """Code samples of one bucket → codes [B, P, K, L] (long), modality [B] (long), keys."""
    codes = torch.stack([torch.from_numpy(s["codes"].astype(np.int64)).permute(1, 0, 2) for s in samples])
    modality = torch.tensor([MODALITY_IDS[s["meta"]["modality"]] for s in samples])
    return {"codes": codes, "modality": modality, "keys": [s["__key__"] for s in samples]}


def code_manifest(codes_dir: str | Path) -> dict:
    index = ShardIndex(codes_dir)
    if index.manifest.get("kind") != "codes":
        raise NeuroFMError(f"{codes_dir} holds signal shards, not code shards; run `neurofm tokenizer encode` first.")
    return index.manifest


def tokenizer_codebooks(manifest: dict, codes_dir: str | Path) -> torch.Tensor:
    """The codebooks [L, V, c] of the tokenizer that wrote the code shards (named by their manifest)."""
    from neurofm.tokenizers.checkpoint import load_tokenizer

    path = Path(manifest["tokenizer"]["path"])
    if not (path / "model.safetensors").is_file():
        raise NeuroFMError(
            f"The tokenizer that encoded {codes_dir} is not at {path} any more (model.code_embedding_init=tokenizer "
            "needs its codebooks); put it back, or set model.code_embedding_init=random."
        )
    return load_tokenizer(path).quantizer.residual.codebooks.detach()


def fill_model_config(cfg: PretrainConfig, manifest: dict) -> None:
    """Take K, L, V from the code shards' tokenizer; if the config names them, they must agree."""
    tok = manifest["tokenizer"]
    for name, value in (("n_latents", tok["n_latents"]), ("levels", tok["levels"]), ("codes_per_level", tok["codes_per_level"])):
        given = getattr(cfg.model, name)
        if given and given != value:
            raise NeuroFMError(
                f"model.{name}={given} but the code shards in {cfg.codes} come from a tokenizer with {name}={value} "
                f"({tok['path']}); remove model.{name} or encode with the matching tokenizer."
            )
        setattr(cfg.model, name, value)


def _setup_distributed() -> tuple[int, int, int]:
    """Initialise torch.distributed through DeepSpeed (gloo on CPU, NCCL on GPUs); rank, world, local rank."""
    import deepspeed

    if "RANK" not in os.environ:  # a plain single process: be rank 0 of 1
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    clear_stale_extension_locks()  # DeepSpeed may build an op on first use: never wait on a dead builder's lock
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo", verbose=False)
    local = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), local


def deepspeed_config(cfg: PretrainConfig) -> dict:
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch,
        "gradient_accumulation_steps": cfg.grad_accum,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "zero_allow_untested_optimizer": True,  # torch's (fused) AdamW, see the issue on FusedAdam
        "bf16": {"enabled": cfg.precision == "bf16"},
        "torch_autocast": {"enabled": cfg.precision == "autocast_bf16", "dtype": "bfloat16"},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def flops_per_token(cfg: PretrainConfig, n_tokens: int) -> float:
    """PaLM's estimate: 6·params + 12·layers·d·sequence (forward + backward, attention included)."""
    return 6 * cfg.model.parameter_count() + 12 * cfg.model.n_layers * cfg.model.d_model * n_tokens


def _peak_flops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def to_universal(tag_dir: Path, universal_dir: Path) -> None:
    """Convert a ZeRO checkpoint tag into DeepSpeed's universal form (loadable on any rank count)."""
    import subprocess

    tmp = universal_dir.with_name(universal_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    result = subprocess.run(universal_command(tag_dir, tmp), capture_output=True, text=True)
    if result.returncode != 0:
        raise NeuroFMError(f"Could not convert {tag_dir} to a universal checkpoint:\n{result.stderr[-2000:]}")
    tmp.rename(universal_dir)


def latest_tag(out: Path) -> str | None:
    path = out / "latest"
    return path.read_text().strip() if path.is_file() else None


# settings that do not change the training trajectory (where data and logs go, how often to save)
TRAJECTORY_FREE = frozenset({"codes", "out", "log_every", "checkpoint_every", "keep_checkpoints", "tensorboard", "compile",
                             "allow_changed", "num_workers"})


def _check_resume(out: Path, tag: str, cfg: PretrainConfig, manifest: dict) -> None:
    saved = read_json(out / tag / "neurofm_config.json", f"the checkpoint {out / tag} is damaged; delete {out} or restore it.")
    # settings a checkpoint of an older version does not name cannot differ from it
    diff = {k: (saved["model"][k], v) for k, v in to_dict(cfg.model).items() if k in saved["model"] and saved["model"][k] != v}
    if diff:
        raise NeuroFMError(
            f"{out}/{tag} is a checkpoint of a different model (saved vs now: {diff}); resume with the config it was "
            "made with, or use another out=…"
        )
    if saved["tokenizer_sha256"] != manifest["tokenizer"]["sha256"]:
        raise NeuroFMError(
            f"The code shards in {cfg.codes} come from another tokenizer than the ones {out} was trained on; "
            "resume on the same code shards or start a new run."
        )
    now = {k: v for k, v in to_dict(cfg).items() if k != "model"}
    check_resume_settings(f"{out}/{tag}", saved.get("training", {}), now, free=TRAJECTORY_FREE, allow_changed=cfg.allow_changed)


def train_pretrain(cfg: PretrainConfig, progress: bool = True, on_step=None) -> dict:
    """Pretrain (or resume) on ``cfg.codes``; returns the final metrics (also in ``out/DONE.json``).
    ``on_step(step)``, if given, is called after every optimizer step (e.g. a profiler's ``step``)."""
    manifest = code_manifest(cfg.codes)
    fill_model_config(cfg, manifest)
    rank, world, local = _setup_distributed()
    device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    out = output_folder(cfg.out, "out")
    with writer_lock(out, "out") if rank == 0 else contextlib.nullcontext():  # one run per folder
        return _train(cfg, manifest, rank, world, device, out, progress, on_step)


def _train(cfg: PretrainConfig, manifest: dict, rank: int, world: int, device: torch.device, out: Path, progress: bool,
           on_step) -> dict:
    import deepspeed

    if rank == 0:
        (out / "DONE.json").unlink(missing_ok=True)  # a marker of an earlier, shorter run
    tag = latest_tag(out)
    ds_config = deepspeed_config(cfg)
    states: list[dict] = []
    if tag is not None:
        _check_resume(out, tag, cfg, manifest)
        states = [json.loads((out / tag / f"neurofm_state_rank{r}.json").read_text())
                  for r in range(len(list((out / tag).glob("neurofm_state_rank*.json"))))]
    elastic = bool(states) and len(states) != world
    load_tag = tag
    if elastic:  # another rank count: load DeepSpeed's universal form of the checkpoint
        load_tag = f"{tag}_universal"
        if rank == 0 and not (out / load_tag).is_dir():
            to_universal(out / tag, out / load_tag)
        torch.distributed.barrier()
        ds_config["checkpoint"] = {"load_universal": True}
    torch.manual_seed(cfg.seed)
    model = MaskedCodeModel(cfg.model)
    if cfg.model.code_embedding_init == "tokenizer" and not states:
        model.init_code_embeddings(tokenizer_codebooks(manifest, cfg.codes), seed=cfg.seed)
    if cfg.compile:
        model = torch.compile(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95),
                                  fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps, min_ratio=cfg.min_lr_ratio)
    )
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    step, data_state = 0, {"position": 0, "offset": 0, "pending": {}}
    if states:
        with weights_only_loads(out / load_tag):
            engine.load_checkpoint(str(out), tag=load_tag)
        step = states[0]["step"]
        if not elastic:
            data_state = states[rank]["data"]
        else:
            # continue the global stream after the furthest rank; old queues go to rank r % world
            data_state = {
                "position": 0,
                "offset": states[0]["data"].get("offset", 0) + len(states) * max(s["data"]["position"] for s in states),
                "pending": {},
            }
            for old_rank, s in enumerate(states):
                if old_rank % world == rank:
                    for bucket, indices in s["data"]["pending"].items():
                        data_state["pending"].setdefault(bucket, []).extend(indices)
        if rank < len(states):
            generator.set_state(torch.tensor(states[rank]["mask_generator"], dtype=torch.uint8))
            torch.set_rng_state(torch.tensor(states[rank]["torch_rng"], dtype=torch.uint8))
        if rank == 0:
            logger.info("resuming %s from %s (step %d%s)", out, load_tag, step,
                        f", {len(states)} → {world} ranks" if elastic else "")
    stream = ShardStream(cfg.codes, rank=rank, world_size=world, seed=cfg.seed, epochs=None,
                         modality_weights=cfg.modality_weights, position=data_state["position"],
                         offset=data_state.get("offset", 0))
    batches = BatchStream(stream, cfg.micro_batch, data_state["pending"], collate_fn=collate_codes,
                          num_workers=cfg.num_workers, pin_memory=device.type == "cuda")
    stop = {"flag": False}
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    log = MetricsLog(out / "train_log.jsonl", resumed_step=step, enabled=rank == 0,
                     tensorboard=out / "tensorboard" if cfg.tensorboard else None)
    metrics: dict = {}
    window_start, tokens = time.perf_counter(), 0
    try:
        while step < cfg.steps:
            losses, accuracies = [], []
            for _ in range(cfg.grad_accum):
                batch = next(batches)
                codes, modality = batch["codes"].to(device), batch["modality"].to(device)
                b, p, k, _ = codes.shape
                mask = make_mask(b, p, k, cfg.model.mask_ratio, cfg.model.masking, generator).to(device)
                n_masked = masked_tokens(p, k, cfg.model.mask_ratio, cfg.model.masking)
                logits = engine(codes, modality, mask, p * k - n_masked)
                loss, accuracy = masked_code_loss(logits, codes, mask, n_masked)
                engine.backward(loss)
                engine.step()
                losses.append(loss.detach())  # no host sync per step: read at log time
                accuracies.append(accuracy.detach())
                tokens += b * p * k * world
            step += 1
            if on_step is not None:
                on_step(step)
            if rank == 0 and (step % cfg.log_every == 0 or step == cfg.steps):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                elapsed = time.perf_counter() - window_start
                tokens_per_s = tokens / elapsed
                peak = _peak_flops()
                mfu = tokens_per_s * flops_per_token(cfg, p * k) / (peak * world) if peak else None
                metrics = {"step": step, "loss": float(torch.stack(losses).mean()),
                           "masked_accuracy": torch.stack(accuracies).float().mean(0).cpu().tolist(),
                           "lr": scheduler.get_last_lr()[0], "tokens_per_s": tokens_per_s, "mfu": mfu}
                log.write(metrics)
                if progress:
                    logger.info("step %d loss %.4f acc %s tok/s %.0f", step, metrics["loss"], [round(a, 3) for a in metrics["masked_accuracy"]], tokens_per_s)
                window_start, tokens = time.perf_counter(), 0
            if step % cfg.checkpoint_every == 0 or step == cfg.steps or stop["flag"]:
                save_checkpoint(engine, out, step, cfg, manifest, batches, generator, rank)
            if stop["flag"]:
                logger.warning("SIGTERM: checkpoint saved at step %d; exiting", step)
                break
    finally:
        signal.signal(signal.SIGTERM, previous)
        log.close()
    if step >= cfg.steps:
        probe = probe_logits(engine, cfg.codes, device)  # every rank: ZeRO-3 gathers parameters collectively
        if rank == 0:
            (out / "DONE.json").write_text(json.dumps({"step": step, "world_size": world, **metrics, "probe": probe}))
    torch.distributed.barrier()
    return metrics


def probe_logits(model, codes_dir: str | Path, device: torch.device | str = "cpu", n: int = 4) -> list[float]:
    """Logits of a fixed probe (the first ``n`` windows, a seed-0 random mask), flattened head values.

    Written into ``DONE.json`` at the end of training so a release can be checked against the model
    that was trained (``neurofm export`` → ``from_pretrained`` must reproduce them).
    """
    index = ShardIndex(codes_dir)
    batch = collate_codes([index[i] for i in range(min(n, len(index)))][:1] * n)
    codes, modality = batch["codes"].to(device), batch["modality"].to(device)
    b, p, k, _ = codes.shape
    mask = make_mask(b, p, k, 0.5, "random", torch.Generator().manual_seed(0)).to(device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(codes, modality, mask)
    model.train(was_training)
    return logits.float().flatten()[:64].cpu().tolist()


def save_checkpoint(engine, out: Path, step: int, cfg: PretrainConfig, manifest: dict, batches: BatchStream, generator: torch.Generator, rank: int) -> None:
    """Our per-rank state into the tag, then DeepSpeed's files (which update ``latest`` last)."""
    tag = f"step_{step:08d}"
    (out / tag).mkdir(parents=True, exist_ok=True)
    try:
        state = {"step": step, "data": batches.state(), "mask_generator": generator.get_state().tolist(),
                 "torch_rng": torch.get_rng_state().tolist()}
        (out / tag / f"neurofm_state_rank{rank}.json").write_text(json.dumps(state))
        if rank == 0:
            (out / tag / "neurofm_config.json").write_text(json.dumps({
                "model": to_dict(cfg.model), "training": to_dict(cfg), "tokenizer_sha256": manifest["tokenizer"]["sha256"],
                "tokenizer_path": manifest["tokenizer"]["path"], "codes": str(Path(cfg.codes).resolve()),
            }))
        torch.distributed.barrier()
        # universal_checkpoint_info lets DeepSpeed's ds_to_universal convert this tag for another rank count
        engine.save_checkpoint(str(out), tag=tag, client_state={"universal_checkpoint_info": {"universal_checkpoint_version": 0.2}})
    except OSError:
        if rank == 0 and latest_tag(out) != tag:  # e.g. a full disk: no half-written tag beside the last good one
            shutil.rmtree(out / tag, ignore_errors=True)
        raise
    if rank == 0:
        tags = sorted(p.name for p in out.glob("step_*") if p.is_dir() and p.name[5:].isdigit())
        for old in tags[: -cfg.keep_checkpoints]:
            shutil.rmtree(out / old, ignore_errors=True)
            shutil.rmtree(out / f"{old}_universal", ignore_errors=True)
