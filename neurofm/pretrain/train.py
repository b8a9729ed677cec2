"""``train_pretrain``: masked-code pretraining on DeepSpeed, one process to many nodes.

Run it in one process (``neurofm pretrain train``), under ``torchrun``, or under the ``deepspeed``
launcher (``neurofm launch pretrain`` renders those). Each rank streams its own share of the code
shards. Checkpoints go through the shared :class:`~neurofm.training.checkpoint.CheckpointManager`
with its DeepSpeed backend: one tag per saved step holding DeepSpeed's own (ZeRO-sharded) files, every
rank's ``train_state_rank{r}.json`` (step, windows seen, data position and queue, masking and torch
RNG) and ``config.json`` (settings, tokenizer identity); ``latest`` moves to a tag only once all of it
is written, so an interrupted save leaves the previous checkpoint as the one resumed from. SIGTERM saves a checkpoint at
the next step boundary and raises :class:`~neurofm.errors.TrainingInterrupted` (so no caller takes the run for a
finished one). On success rank 0 writes ``DONE.json``.

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
import socket
import time
from pathlib import Path

import numpy as np
import torch

from neurofm.config import to_dict
from neurofm.data_shards.dataset import ShardIndex, ShardStream
from neurofm.errors import NeuroFMError
from neurofm.training import MetricsLog, changed_settings, check_resume_settings
from neurofm.training.preemption import Preemption
from neurofm.training.checkpoint import Checkpoint, CheckpointManager, DeepSpeedBackend, TrainState, capture_rng, restore_rng
from neurofm.schedule import warmup_cosine
from neurofm.data_shards.modalities import FAMILY_OF_MODALITY, MODALITY_IDS
from neurofm.data_shards.remote import is_pipe
from neurofm.distributed import destroy_at_exit
from neurofm.pretrain.config import PretrainConfig
from neurofm.pretrain.extension_locks import clear_stale_extension_locks
from neurofm.pretrain.masking import make_mask, masked_tokens
from neurofm.pretrain.model import MaskedCodeModel, masked_code_loss, masked_latent_loss
from neurofm.outputs import output_folder, writer_lock
from neurofm.data_shards.batches import BatchStream
from neurofm.data_shards.slots import new_zeros

logger = logging.getLogger("neurofm.pretrain")

#: Dense bf16 peak FLOP/s per device, for MFU (NVIDIA data sheets, SXM parts).
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "V100": 125e12}


def collate_codes(samples: list[dict], zeros=new_zeros) -> dict:
    """Code samples of one bucket → codes [B, P, K, L] (long), modality [B] (long), keys; ``zeros``
    allocates the tensors (see :class:`~neurofm.data_shards.batches.BatchStream`)."""
    k, p, levels = samples[0]["codes"].shape  # stored [K, P, L]
    out = zeros({"codes": ((len(samples), p, k, levels), torch.int64), "modality": ((len(samples),), torch.int64)})
    for i, s in enumerate(samples):
        out["codes"][i] = torch.from_numpy(s["codes"].astype(np.int64)).permute(1, 0, 2)
    out["modality"][:] = torch.tensor([MODALITY_IDS[s["meta"]["modality"]] for s in samples])
    return {**out, "keys": [s["__key__"] for s in samples]}


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
            "and model.latent_loss need its codebooks); put it back, or set model.code_embedding_init=random and model.latent_loss=0."
        )
    return load_tokenizer(path).quantizer.residual.codebooks.detach()


def fill_model_config(cfg: PretrainConfig, manifest: dict) -> None:
    """Take K, L, V and the channel-token families from the code shards' tokenizer; if the config names
    them, they must agree."""
    tok = manifest["tokenizer"]
    for name, value in (("n_latents", tok["n_latents"]), ("levels", tok["levels"]), ("codes_per_level", tok["codes_per_level"]),
                        ("channel_tokens", list(tok.get("channel_tokens", [])))):
        given = getattr(cfg.model, name)
        if given and given != value:
            raise NeuroFMError(
                f"model.{name}={given} but the code shards in {cfg.codes} come from a tokenizer with {name}={value} "
                f"({tok['path']}); remove model.{name} or encode with the matching tokenizer."
            )
        setattr(cfg.model, name, value)
    longest = longest_window_patches(manifest)
    if longest > cfg.model.max_patches:
        raise NeuroFMError(
            f"The code shards in {cfg.codes} hold windows of {longest} time patches but model.max_patches="
            f"{cfg.model.max_patches}; raise model.max_patches to at least {longest}, or build shorter windows."
        )


def longest_window_patches(manifest: dict) -> int:
    """The longest window of a code-shard manifest, in the tokenizer's time patches."""
    patch_seconds = manifest["tokenizer"]["patch_seconds"]
    settings = manifest.get("settings", {})
    modalities = {r["modality"] for r in manifest.get("recordings", [])}
    return max((round(settings[m]["window_seconds"] / patch_seconds[FAMILY_OF_MODALITY[m]])
                for m in modalities if isinstance(settings.get(m), dict) and "window_seconds" in settings[m]), default=0)


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
        destroy_at_exit()
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


# settings that do not change the training trajectory (where data and logs go, how often to save)
TRAJECTORY_FREE = frozenset({"codes", "out", "log_every", "checkpoint_every", "keep_checkpoints", "tensorboard", "compile",
                             "allow_changed", "num_workers"})


def _check_resume(checkpoint: Checkpoint, cfg: PretrainConfig, manifest: dict) -> None:
    where = checkpoint.root / checkpoint.tag
    saved = checkpoint.config
    # settings a checkpoint of an older version does not name cannot differ from it
    diff = changed_settings(saved.get("model", {}), to_dict(cfg.model))
    if diff:
        raise NeuroFMError(
            f"{where} is a checkpoint of a different model (saved vs now: {diff}); resume with the config it was "
            "made with, or use another out=…"
        )
    if saved.get("tokenizer_sha256") != manifest["tokenizer"]["sha256"]:
        raise NeuroFMError(
            f"The code shards in {cfg.codes} come from another tokenizer than the ones {checkpoint.root} was trained on; "
            "resume on the same code shards or start a new run."
        )
    now = {k: v for k, v in to_dict(cfg).items() if k != "model"}
    check_resume_settings(str(where), saved.get("training", {}), now, free=TRAJECTORY_FREE, allow_changed=cfg.allow_changed)


def resumed_data_state(checkpoint: Checkpoint | None, rank: int, world: int) -> dict:
    """Where this rank's data stream continues. Same rank count: its own saved position and queues.
    Another rank count: the global stream continues after the furthest old rank, and old rank r's
    queued windows go to rank ``r % world``."""
    if checkpoint is None:
        return {"position": 0, "offset": 0, "pending": {}}
    if checkpoint.world == world:
        return checkpoint.states[rank].data
    states = [s.data for s in checkpoint.states]
    data = {"position": 0, "offset": states[0].get("offset", 0) + len(states) * max(s["position"] for s in states), "pending": {}}
    for old_rank, s in enumerate(states):
        if old_rank % world == rank:
            for bucket, indices in s["pending"].items():
                data["pending"].setdefault(bucket, []).extend(indices)
    return data


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


class Throughput:
    """Tokens per second (all ranks) and model FLOP utilisation between two logged steps."""

    def __init__(self, cfg: PretrainConfig, world: int):
        self.cfg, self.world = cfg, world
        self.reset()

    def reset(self) -> None:
        self.started, self.tokens = time.perf_counter(), 0

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    def read(self, device: torch.device, tokens_per_window: int) -> dict:
        if device.type == "cuda":
            torch.cuda.synchronize()
        tokens_per_s = self.tokens / (time.perf_counter() - self.started)
        peak = _peak_flops()
        mfu = tokens_per_s * flops_per_token(self.cfg, tokens_per_window) / (peak * self.world) if peak else None
        self.reset()
        return {"tokens_per_s": tokens_per_s, "mfu": mfu}


#: lets DeepSpeed's ds_to_universal convert a tag for another rank count
UNIVERSAL_INFO = {"universal_checkpoint_info": {"universal_checkpoint_version": 0.2}}


def _engine(cfg: PretrainConfig, manifest: dict, ds_config: dict, device: torch.device, fresh: bool):
    """The DeepSpeed engine around a freshly initialised model (its weights are replaced on resume) and
    its LR scheduler."""
    import deepspeed

    torch.manual_seed(cfg.seed)
    model = MaskedCodeModel(cfg.model)
    init_embeddings = cfg.model.code_embedding_init == "tokenizer" and fresh
    if init_embeddings or cfg.model.latent_loss > 0:
        codebooks = tokenizer_codebooks(manifest, cfg.codes)
        if init_embeddings:
            model.init_code_embeddings(codebooks, seed=cfg.seed)
        if cfg.model.latent_loss > 0:  # the targets are not in the checkpoint: rebuilt on every start
            model.set_latent_targets(codebooks, seed=cfg.seed)
    if cfg.compile:
        model = torch.compile(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95),
                                  fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps, min_ratio=cfg.min_lr_ratio)
    )
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    return engine, scheduler


def _checkpoint_config(cfg: PretrainConfig, manifest: dict) -> dict:
    """What a pretraining tag stores besides DeepSpeed's files (read by the resume check and ``export``)."""
    return {"model": to_dict(cfg.model), "training": to_dict(cfg), "tokenizer_sha256": manifest["tokenizer"]["sha256"],
            "tokenizer_path": manifest["tokenizer"]["path"], "codes": cfg.codes if is_pipe(cfg.codes) else str(Path(cfg.codes).resolve())}


def _micro_step(engine, batch: dict, cfg: PretrainConfig, generator: torch.Generator, device: torch.device):
    """Forward, backward and (at the accumulation boundary, DeepSpeed decides) optimizer step on one
    micro-batch; returns the loss, masked accuracy per window and level [B, L], the latent-regression term
    (NaN without ``latent_loss``; all on device, no host sync), the windows' modality ids [B] and tokens
    per window."""
    codes, modality = batch["codes"].to(device), batch["modality"].to(device)
    b, p, k, _ = codes.shape
    mask = make_mask(b, p, k, cfg.model.mask_ratio, cfg.model.masking, generator).to(device)
    n_masked = masked_tokens(p, k, cfg.model.mask_ratio, cfg.model.masking)
    if cfg.model.latent_loss > 0:
        logits, latents = engine(codes, modality, mask, p * k - n_masked, with_latents=True)
        latent_term = masked_latent_loss(latents, engine.module.quantized_latents(codes), mask, n_masked)
        loss, accuracy = masked_code_loss(logits, codes, mask, n_masked, per_window=True)
        loss = loss + cfg.model.latent_loss * latent_term
    else:
        loss, accuracy = masked_code_loss(engine(codes, modality, mask, p * k - n_masked), codes, mask, n_masked, per_window=True)
        latent_term = torch.tensor(float("nan"), device=device)
    engine.backward(loss)
    engine.step()
    return loss.detach(), accuracy.detach(), latent_term.detach(), modality, p * k


class MaskedAccuracyTally:
    """Masked-code accuracy per level, summed per modality over one logging interval on the device (no
    host sync until :meth:`read`). A batch holds windows of one shape, so fMRI's parcel tokens and the
    electrophysiology latents come in separate batches: the last batch alone says little, a mean over
    the interval split by modality says how each is learnt."""

    def __init__(self) -> None:
        self.sums: torch.Tensor | None = None  # [modalities, L]
        self.counts: torch.Tensor | None = None  # [modalities]

    def add(self, accuracy: torch.Tensor, modality: torch.Tensor) -> None:
        """accuracy [B, L] of each window, modality [B] (ids of ``MODALITY_IDS``)."""
        if self.sums is None:
            self.sums = accuracy.new_zeros(len(MODALITY_IDS), accuracy.shape[1])
            self.counts = accuracy.new_zeros(len(MODALITY_IDS))
        self.sums.index_add_(0, modality, accuracy.float())
        self.counts.index_add_(0, modality, torch.ones_like(modality, dtype=self.counts.dtype))

    def read(self) -> dict:
        """``masked_accuracy`` [L] over every window since the last read, and ``masked_accuracy_by_modality``
        {modality: [L]} for the modalities seen; then starts a new interval."""
        if self.sums is None:
            return {}
        sums, counts = self.sums.cpu(), self.counts.cpu()
        self.sums, self.counts = None, None
        return {"masked_accuracy": (sums.sum(0) / counts.sum()).tolist(),
                "masked_accuracy_by_modality": {name: (sums[i] / counts[i]).tolist()
                                                for name, i in MODALITY_IDS.items() if counts[i] > 0}}


def _train(cfg: PretrainConfig, manifest: dict, rank: int, world: int, device: torch.device, out: Path, progress: bool,
           on_step) -> dict:
    if rank == 0:
        (out / "DONE.json").unlink(missing_ok=True)  # a marker of an earlier, shorter run
    checkpoints = CheckpointManager(out, every=cfg.checkpoint_every, keep=cfg.keep_checkpoints, rank=rank, world=world,
                                    barrier=torch.distributed.barrier)
    resumed = checkpoints.latest()
    ds_config = deepspeed_config(cfg)
    if resumed is not None:
        _check_resume(resumed, cfg, manifest)
        DeepSpeedBackend.prepare_load(resumed, rank, world, ds_config, torch.distributed.barrier)
    engine, scheduler = _engine(cfg, manifest, ds_config, device, fresh=resumed is None)
    checkpoints.backend = DeepSpeedBackend(engine, UNIVERSAL_INFO)
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    step, windows_seen = 0, 0
    if resumed is not None:
        checkpoints.load(resumed)
        step, windows_seen = resumed.step, resumed.states[0].windows_seen
        if rank < resumed.world:  # new ranks of an elastic resume keep their seeded generators
            restore_rng(resumed.states[rank].rng, {"mask": generator})
        if rank == 0:
            logger.info("resuming %s from %s (step %d%s)", out, resumed.tag, step,
                        f", {resumed.world} → {world} ranks" if resumed.world != world else "")
    data = resumed_data_state(resumed, rank, world)
    stream = ShardStream(cfg.codes, rank=rank, world_size=world, seed=cfg.seed, epochs=None,
                         modality_weights=cfg.modality_weights, position=data["position"], offset=data.get("offset", 0))
    batches = BatchStream(stream, cfg.micro_batch, data["pending"], collate_fn=collate_codes,
                          num_workers=cfg.num_workers, pin_memory=device.type == "cuda")
    throughput = Throughput(cfg, world)
    metrics: dict = {}
    accuracy = MaskedAccuracyTally()
    with Preemption() as preempted, MetricsLog(out / "train_log.jsonl", resumed_step=step, enabled=rank == 0,
                                               tensorboard=out / "tensorboard" if cfg.tensorboard else None) as log:
        while step < cfg.steps:
            losses, latent_terms = [], []
            for _ in range(cfg.grad_accum):
                loss, window_accuracy, latent_term, modality, tokens_per_window = _micro_step(engine, next(batches), cfg, generator, device)
                losses.append(loss)
                accuracy.add(window_accuracy, modality)
                latent_terms.append(latent_term)
                windows = len(modality)
                windows_seen += windows * world
                throughput.add(windows * tokens_per_window * world)
            step += 1
            if on_step is not None:
                on_step(step)
            if rank == 0 and (step % cfg.log_every == 0 or step == cfg.steps):
                metrics = {"step": step, "loss": float(torch.stack(losses).mean()), **accuracy.read(),
                           "lr": scheduler.get_last_lr()[0], **throughput.read(device, tokens_per_window)}
                if cfg.model.latent_loss > 0:
                    metrics["latent_unexplained"] = float(torch.stack(latent_terms).mean())
                log.write(metrics)
                if progress:
                    logger.info("step %d loss %.4f acc %s tok/s %.0f", step, metrics["loss"],
                                [round(a, 3) for a in metrics["masked_accuracy"]], metrics["tokens_per_s"])
            if checkpoints.should_save(step, last=step == cfg.steps, requested=preempted.requested):
                state = TrainState(step=step, windows_seen=windows_seen, data=batches.state(), rng=capture_rng({"mask": generator}))
                checkpoints.save(step, state, _checkpoint_config(cfg, manifest))
            if preempted.requested:
                break
    if step >= cfg.steps:
        probe = probe_logits(engine, cfg.codes, device)  # every rank: ZeRO-3 gathers parameters collectively
        if rank == 0:
            (out / "DONE.json").write_text(json.dumps({"step": step, "world_size": world, **metrics, "probe": probe}))
    torch.distributed.barrier()
    preempted.raise_if_stopped(out, step, cfg.steps)
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
