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
from neurofm.training.preemption import Preemption
from neurofm.training.checkpoint import (Checkpoint, CheckpointManager, FolderBackend, TrainState, capture_rng,
                                       publish_folder, restore_rng)
from neurofm.outputs import output_folder, recover_replaced, writer_lock
from neurofm.schedule import warmup_cosine
from neurofm.tokenizers.checkpoint import stored_model_settings, tokenizer_config
from neurofm.tokenizers.config import TokenizerTrainConfig
from neurofm.tokenizers.usage import check_shards_fit, code_usage, count_codes
from neurofm.data_shards.batches import BatchStream, split_indices
from neurofm.tokenizers.losses import reconstruction_loss, spectrum_readout_loss, view_losses
from neurofm.tokenizers.model import SensorTokenizer
from neurofm.tokenizers.views import ViewPartners

logger = logging.getLogger("neurofm.tokenizer")


def window_seed(seed: int, step: int, window: int, *stream: int) -> int:
    """The seed of one window's random draw at one step (``stream`` tells apart draws of different kinds)."""
    return int(np.random.SeedSequence([seed, step, window, *stream]).generate_state(1)[0])


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
        g = torch.Generator().manual_seed(window_seed(seed, step, window))
        keep[row, :n] = torch.rand(n, generator=g) >= fraction
    encoder_mask = channel_mask & keep
    empty = ~encoder_mask.any(dim=1)
    encoder_mask[empty] = channel_mask[empty]
    return encoder_mask


#: ``sparse_montages`` keeps 2 … this many of a window's channels (a headband has 4, a clinical montage 8–10)
SPARSE_MONTAGE_CHANNELS = 8


def sparse_montage(channel_mask: torch.Tensor, fraction: float, seed: int, step: int, windows: list[int]) -> torch.Tensor:
    """Cut ``fraction`` of the windows with more than ``SPARSE_MONTAGE_CHANNELS`` real channels down to a
    random 2 … ``SPARSE_MONTAGE_CHANNELS`` of them: channel_mask [B, C] → the mask of what stays, for the
    encoder and the loss alike. Draws depend on (seed, step, sample index) only, as in :func:`channel_dropout`."""
    if fraction == 0:
        return channel_mask
    kept = channel_mask.clone()
    for row, window in enumerate(windows):
        n = int(channel_mask[row].sum())
        rng = np.random.default_rng(window_seed(seed, step, window, 1))
        if n <= SPARSE_MONTAGE_CHANNELS or rng.random() >= fraction:
            continue
        real = torch.nonzero(channel_mask[row])[:, 0]
        kept[row] = False
        kept[row, real[torch.from_numpy(rng.choice(n, size=int(rng.integers(2, SPARSE_MONTAGE_CHANNELS + 1)), replace=False))]] = True
    return kept


# settings that do not change the training trajectory (where data and logs go, how often to save)
TRAJECTORY_FREE = frozenset({"shards", "out", "log_every", "checkpoint_every", "keep_checkpoints", "tensorboard",
                             "allow_changed", "num_workers"})


def checkpoint_root(out: str | Path) -> Path:
    """Where the resumable checkpoints of the tokenizer trained into ``out`` go: ``<out>.checkpoints``."""
    out = Path(out)
    return out.with_name(out.name + ".checkpoints")


def train_tokenizer(cfg: TokenizerTrainConfig, progress: bool = True) -> dict:
    """Train (or resume training) a tokenizer; returns the last logged metrics.

    Writes checkpoints into ``<out>.checkpoints/`` every ``checkpoint_every`` steps and at the end, each
    published as the tokenizer ``out`` (``config.json``, ``model.safetensors``); the log goes to
    ``<out>.log.jsonl`` (and ``<out>.tensorboard/``).
    """
    out = output_folder(Path(cfg.out).parent, "out").joinpath(Path(cfg.out).name)
    device = resolve_device(cfg.device)
    rank, world = process_group("nccl" if device.type == "cuda" else "gloo")
    if cfg.batch_size % world:
        raise NeuroFMError(f"batch_size={cfg.batch_size} does not split over {world} processes; use a multiple of {world} "
                           "(batch_size is the global batch).")
    with writer_lock(out, "out") if rank == 0 else contextlib.nullcontext():
        return _train(cfg, out, progress, device, rank, world)


def _check_resume(checkpoint: Checkpoint | None, cfg: TokenizerTrainConfig, out: Path) -> None:
    """A resume must continue the run's trajectory; without a checkpoint, ``out`` must not hold a tokenizer
    (someone's finished one, or one of an older layout) that training would overwrite."""
    if checkpoint is None:
        if (out / "config.json").is_file() or (out / "training_state.pt").is_file():
            raise NeuroFMError(f"out={out} already holds a tokenizer, and {checkpoint_root(out)} no checkpoint of its training; it "
                               "was left as it is. Choose another out=…, or delete it to train there.")
        return
    where = checkpoint.root / checkpoint.tag
    model_changed = changed_settings(stored_model_settings(checkpoint.config), to_dict(cfg.model))
    if model_changed:
        raise NeuroFMError(f"{where} holds a tokenizer of another architecture (saved vs now: {model_changed}); resume "
                           "with the config it was made with, pass another out=…, or delete it to start over.")
    now = {k: v for k, v in to_dict(cfg).items() if k != "model"}
    check_resume_settings(str(where), checkpoint.config.get("training", {}), now, free=TRAJECTORY_FREE, allow_changed=cfg.allow_changed)


def _publish(checkpoints: CheckpointManager, tag: str, out: Path) -> None:
    """Make ``out`` the tokenizer of checkpoint ``tag`` (rank 0; the others wait)."""
    if checkpoints.rank == 0:
        publish_folder(checkpoints.root / tag, out, ("config.json", "model.safetensors"))
    barrier(checkpoints.world)


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
    checkpoints = CheckpointManager(checkpoint_root(out), FolderBackend(model, optimizer, scheduler), every=cfg.checkpoint_every,
                                    keep=cfg.keep_checkpoints, rank=rank, world=world, barrier=lambda: barrier(world))
    if rank == 0:
        recover_replaced(out)  # a crash between the two renames of a publish
    barrier(world)
    resumed = checkpoints.latest()
    _check_resume(resumed, cfg, out)
    step, data_state = 0, {"position": 0, "pending": {}}
    if resumed is not None:
        checkpoints.load(resumed)
        restore_rng(resumed.state_for(rank, world).rng)
        step, data_state = resumed.step, resumed.states[0].data
        logger.info("resuming %s at step %d", out, step)
        if step >= cfg.steps:
            _publish(checkpoints, resumed.tag, out)  # again: the run may have been killed before its last publish
            return resumed.config.get("last_metrics", {})
    # one global stream on every rank (each reads its rows of every global batch, see BatchStream's part)
    stream = ShardStream(cfg.shards, seed=cfg.seed, indices=train_idx, epochs=None, rank=0, world_size=1,
                         modality_weights=cfg.modality_weights, position=data_state["position"])
    batches = BatchStream(stream, cfg.batch_size, data_state["pending"], by_channels=cfg.bucket_by_channels,
                          num_workers=cfg.num_workers, pin_memory=device.type == "cuda", part=(rank, world))
    partners = ViewPartners(index, train_idx) if cfg.loss.views else None
    share = None if world == 1 else _global_share(world)
    counts = np.zeros((cfg.model.levels, cfg.model.codes_per_level), dtype=np.int64)
    metrics: dict = {}
    model.train()
    started, first_step = time.perf_counter(), step
    with Preemption() as preempted, MetricsLog(out.with_name(out.name + ".log.jsonl"), resumed_step=step, enabled=rank == 0,
                                               tensorboard=out.with_name(out.name + ".tensorboard") if cfg.tensorboard else None) as log:
        while step < cfg.steps:
            batch, views = next(batches), None
            if partners is not None:
                batch, views = partners.extend(batch, cfg.seed, step)
            channel_mask = sparse_montage(batch.channel_mask, cfg.sparse_montages, cfg.seed, step, batch.indices)
            encoder_mask = channel_dropout(channel_mask, cfg.channel_dropout, cfg.seed, step, batch.indices).to(device)
            signal, sensors, channel_mask, time_mask = (t.to(device, non_blocking=True) for t in (batch.signal, batch.sensors, channel_mask, batch.time_mask))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.autocast_bf16):
                result = ddp(signal, sensors, channel_mask, batch.family, encoder_mask, None if views is None else views.to(device), time_mask)
            losses = reconstruction_loss(signal, result["reconstruction"].float(), channel_mask, time_mask, cfg.loss, share)
            loss = losses["total"] + result["commit_loss"]
            if partners is not None:  # every step logs the view terms (0 where a batch has no pairs)
                losses.update(_view_terms(result, signal, channel_mask, time_mask, views, cfg))
                loss = loss + cfg.loss.view_consistency * losses["view_consistency"] + cfg.loss.view_reconstruction * losses["view_reconstruction"]
            if cfg.loss.spectrum_readout:  # every step logs it (0 for fMRI batches: no 1–45 Hz content)
                losses["spectrum_readout"] = _spectrum_term(result, signal, channel_mask, time_mask, cfg.model.electro_sfreq)
                loss = loss + cfg.loss.spectrum_readout * losses["spectrum_readout"]
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
            if checkpoints.should_save(step, last=step == cfg.steps, requested=preempted.requested):
                # every rank's RNG state (codebook restarts draw per rank); the data stream is global
                state = TrainState(step=step, windows_seen=step * cfg.batch_size, data=batches.state(), rng=capture_rng())
                extra = {"training": to_dict(cfg), "trained_steps": step, "world_size": world, "shards": str(cfg.shards),
                         "last_metrics": metrics}
                _publish(checkpoints, checkpoints.save(step, state, tokenizer_config(cfg.model, extra)), out)
            if preempted.requested:
                break
    preempted.raise_if_stopped(out, step, cfg.steps)
    if rank == 0 and world > 1:
        (out.with_name(out.name + ".done.json")).write_text(json.dumps({"step": step, "world_size": world}))
    return metrics


def _view_terms(result: dict, signal, channel_mask, time_mask, views, cfg: TokenizerTrainConfig) -> dict[str, torch.Tensor]:
    """The view losses of a batch with view pairs (local means under data parallelism), zeros without."""
    if views is None:
        zero = result["commit_loss"].new_zeros(())
        return {"view_consistency": zero, "view_reconstruction": zero}
    views = views.to(signal.device)
    return view_losses(result["latents"].float(), result["view_reconstruction"].float(), signal, channel_mask, time_mask, views, cfg.loss)


def _spectrum_term(result: dict, signal, channel_mask, time_mask, sfreq: float) -> torch.Tensor:
    """The spectrum read-out loss of an EEG/MEG/iEEG batch (a local mean under data parallelism), 0 for fMRI."""
    if "spectrum_readout" not in result:
        return result["commit_loss"].new_zeros(())
    return spectrum_readout_loss(result["spectrum_readout"].float(), signal, channel_mask, time_mask, sfreq)


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
