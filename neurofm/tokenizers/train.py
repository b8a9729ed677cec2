"""``train_tokenizer``: signal shards → a tokenizer checkpoint (resumable).

The loop asks its components what to do: the batch stream gives batches (and its resume state), the
checkpoint module saves; the loop itself is short.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from neurofm.config import to_dict
from neurofm.data_shards.dataset import ShardIndex, ShardStream
from neurofm.errors import NeuroFMError
from neurofm.devices import resolve_device
from neurofm.distributed import barrier, process_group
from neurofm.training import MetricsLog, changed_settings, check_resume_settings
from neurofm.outputs import output_folder, writer_lock
from neurofm.schedule import warmup_cosine
from neurofm.tokenizers.checkpoint import load_training_state, read_config, save_tokenizer, stored_model_settings
from neurofm.tokenizers.config import FAMILY_OF_MODALITY, TokenizerModelConfig, TokenizerTrainConfig
from neurofm.tokenizers.data import BatchStream, require_signal, split_indices
from neurofm.tokenizers.losses import reconstruction_loss
from neurofm.tokenizers.model import SensorTokenizer

logger = logging.getLogger("neurofm.tokenizer")


def code_usage(counts: np.ndarray) -> dict[str, list[float]]:
    """Per-level usage (fraction of codes used at least once) and perplexity from counts [L, V]."""
    usage, perplexity = [], []
    for level in counts:
        total = level.sum()
        p = level / max(total, 1)
        usage.append(float((level > 0).mean()))
        perplexity.append(float(np.exp(-(p[p > 0] * np.log(p[p > 0])).sum())) if total else 0.0)
    return {"usage": usage, "perplexity": perplexity}


def check_shards_fit(index: ShardIndex, model: TokenizerModelConfig) -> None:
    """The shards' rates and window lengths must match the model's patches and rates."""
    require_signal(index)
    settings = index.manifest["settings"]
    for modality in {r["modality"] for r in index.manifest["recordings"]}:
        family = FAMILY_OF_MODALITY[modality]
        if family == "electro":
            rate, expected, field = settings[modality]["sfreq"], model.electro_sfreq, "electro_sfreq"
            samples = settings[modality]["window_seconds"] * rate
        else:
            rate, expected, field = settings["fmri"]["tr_seconds"], model.bold_tr_seconds, "bold_tr_seconds"
            samples = settings["fmri"]["window_seconds"] / rate
        if abs(rate - expected) > 1e-6:
            raise NeuroFMError(f"The {modality} shards are at {rate:g} ({'Hz' if family == 'electro' else 's'}) but the tokenizer expects model.{field}={expected:g}; set it to match.")
        if round(samples) % model.patch_samples(family):
            raise NeuroFMError(
                f"{modality} windows of {round(samples)} samples do not split into model.{family}_patch_samples="
                f"{model.patch_samples(family)}; change one of them."
            )


def count_codes(counts: np.ndarray, codes: np.ndarray) -> None:
    """Add the codes [..., L] to per-level counts [L, V] in place."""
    flat = codes.reshape(-1, counts.shape[0])
    for level in range(counts.shape[0]):
        counts[level] += np.bincount(flat[:, level], minlength=counts.shape[1])


def channel_dropout(channel_mask: torch.Tensor, fraction: float, seed: int, step: int, windows: list[int]) -> torch.Tensor:
    """Hide ``fraction`` of each window's real channels from the encoder (keeping at least one).

    Each window's draw depends only on (seed, step, its sample index ``windows[i]``), not on the batch's
    padding or on which rank holds it, so data-parallel ranks hide what one process would.
    """
    if fraction == 0:
        return channel_mask
    keep = torch.ones_like(channel_mask)
    for row, window in enumerate(windows):
        n = int(channel_mask[row].sum())
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step, window]).generate_state(1)[0]))
        keep[row, :n] = torch.rand(n, generator=g) >= fraction
    encoder_mask = channel_mask & keep
    empty = ~encoder_mask.any(dim=1)
    encoder_mask[empty] = channel_mask[empty]
    return encoder_mask


# settings that do not change the training trajectory (where data and logs go, how often to save)
TRAJECTORY_FREE = frozenset({"shards", "out", "log_every", "checkpoint_every", "tensorboard", "allow_changed", "num_workers"})


def train_tokenizer(cfg: TokenizerTrainConfig, progress: bool = True) -> dict:
    """Train (or resume training) a tokenizer; returns the last logged metrics.

    Writes ``cfg.out``: the checkpoint (``config.json``, ``model.safetensors``, ``training_state.pt``)
    every ``checkpoint_every`` steps and at the end, and ``train_log.jsonl``.
    """
    out = output_folder(Path(cfg.out).parent, "out").joinpath(Path(cfg.out).name)
    device = resolve_device(cfg.device)
    rank, world = process_group("nccl" if device.type == "cuda" else "gloo")
    if cfg.batch_size % world:
        raise NeuroFMError(f"batch_size={cfg.batch_size} does not split over {world} processes; use a multiple of {world} "
                           "(batch_size is the global batch).")
    with writer_lock(out, "out") if rank == 0 else contextlib.nullcontext():
        return _train(cfg, out, progress, device, rank, world)


def _train(cfg: TokenizerTrainConfig, out: Path, progress: bool, device: torch.device, rank: int, world: int) -> dict:
    index = ShardIndex(cfg.shards)
    check_shards_fit(index, cfg.model)
    train_idx, _ = split_indices(index, cfg.eval_fraction)
    torch.manual_seed(cfg.seed)
    model = SensorTokenizer(cfg.model).to(device)  # built after the process group: RVQ then syncs its codebooks
    ddp = model if world == 1 else torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps)
    )
    step, data_state = 0, {"position": 0, "pending": {}}
    state = load_training_state(out) if rank == 0 else None  # rank 0 first: it repairs an interrupted save
    barrier(world)
    if rank != 0:
        state = load_training_state(out)
    if state is not None:
        saved = read_config(out)
        model_changed = changed_settings(stored_model_settings(saved), to_dict(cfg.model))
        if model_changed:
            raise NeuroFMError(f"{out} holds a tokenizer of another architecture (saved vs now: {model_changed}); resume "
                               "with the config it was made with, pass another out=…, or delete it to start over.")
        now = {k: v for k, v in to_dict(cfg).items() if k != "model"}
        check_resume_settings(str(out), saved.get("training", {}), now, free=TRAJECTORY_FREE, allow_changed=cfg.allow_changed)
        from safetensors.torch import load_model

        load_model(model, str(out / "model.safetensors"), device=str(device))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rng = state.get("torch_rng_by_rank")
        torch.set_rng_state(rng[rank] if rng is not None and len(rng) == world else state["torch_rng"])
        step = int(state["step"])
        data_state = json.loads(state["data"])
        logger.info("resuming %s at step %d", out, step)
        if step >= cfg.steps:
            return read_config(out).get("last_metrics", {})
    # one global stream on every rank (each reads its rows of every global batch, see BatchStream's part)
    stream = ShardStream(cfg.shards, seed=cfg.seed, indices=train_idx, epochs=None, rank=0, world_size=1,
                         modality_weights=cfg.modality_weights, position=data_state["position"])
    batches = BatchStream(stream, cfg.batch_size, data_state["pending"], by_channels=cfg.bucket_by_channels,
                          num_workers=cfg.num_workers, pin_memory=device.type == "cuda", part=(rank, world))
    share = None if world == 1 else _global_share(world)
    counts = np.zeros((cfg.model.levels, cfg.model.codes_per_level), dtype=np.int64)
    metrics: dict = {}
    model.train()
    started, first_step = time.perf_counter(), step
    with MetricsLog(out.with_name(out.name + ".log.jsonl"), resumed_step=step, enabled=rank == 0,
                    tensorboard=out.with_name(out.name + ".tensorboard") if cfg.tensorboard else None) as log:
        while step < cfg.steps:
            batch = next(batches)
            encoder_mask = channel_dropout(batch.channel_mask, cfg.channel_dropout, cfg.seed, step, batch.indices).to(device)
            signal, sensors, channel_mask, time_mask = (t.to(device, non_blocking=True) for t in (batch.signal, batch.sensors, batch.channel_mask, batch.time_mask))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.autocast_bf16):
                result = ddp(signal, sensors, channel_mask, batch.family, encoder_mask)
            losses = reconstruction_loss(signal, result["reconstruction"].float(), channel_mask, time_mask, cfg.loss, share)
            loss = losses["total"] + result["commit_loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            count_codes(counts, result["codes"].cpu().numpy())
            if step % cfg.log_every == 0 or step == cfg.steps:
                terms = {"loss": loss, **{k: v for k, v in losses.items() if k != "total"}, "commit": result["commit_loss"]}
                terms = _global_means(terms, world)
                metrics = {
                    "step": step, **terms, "lr": scheduler.get_last_lr()[0],
                    "windows_per_s": (step - first_step) * cfg.batch_size / (time.perf_counter() - started),
                    **code_usage(_global_sum(counts, world)),
                }
                counts[:] = 0
                log.write(metrics)
                if progress:
                    logger.info("step %d loss %.4f corr %.3f usage %s", step, metrics["loss"], metrics["correlation"],
                                [round(u, 2) for u in metrics["usage"]])
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                rngs = _gather(torch.get_rng_state(), world)  # every rank's: codebook restarts draw per rank
                if rank == 0:
                    training_state = {
                        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                        "torch_rng": torch.get_rng_state(), "torch_rng_by_rank": rngs, "data": json.dumps(batches.state()),
                        "world_size": world,
                    }
                    save_tokenizer(model, out, extra={"training": to_dict(cfg), "trained_steps": step, "world_size": world,
                                                      "shards": str(cfg.shards), "last_metrics": metrics},
                                   training_state=training_state)
                barrier(world)
    if rank == 0 and world > 1:
        (out.with_name(out.name + ".done.json")).write_text(json.dumps({"step": step, "world_size": world}))
    return metrics


def _global_share(world: int):
    """``share`` for :func:`reconstruction_loss`: this rank's fraction of the global counts × ranks."""
    def share(samples: torch.Tensor, channels: float):
        local = torch.stack([samples.detach().float().cpu(), torch.tensor(float(channels))])
        total = local.clone()
        torch.distributed.all_reduce(total)
        return tuple((local / total.clamp(min=1) * world).tolist())
    return share


def _global_means(terms: dict[str, torch.Tensor], world: int) -> dict[str, float]:
    """Each term's global value: the mean over ranks of their (share-weighted) contributions."""
    values = torch.stack([t.detach().float().cpu() for t in terms.values()])
    if world > 1:
        torch.distributed.all_reduce(values)
        values /= world
    return dict(zip(terms, values.tolist()))


def _global_sum(counts: np.ndarray, world: int) -> np.ndarray:
    if world == 1:
        return counts
    total = torch.from_numpy(counts.copy())
    torch.distributed.all_reduce(total)
    return total.numpy()


def _gather(value: torch.Tensor, world: int) -> list[torch.Tensor]:
    if world == 1:
        return [value]
    gathered = [None] * world
    torch.distributed.all_gather_object(gathered, value)
    return gathered
