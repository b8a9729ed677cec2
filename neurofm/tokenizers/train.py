"""``train_tokenizer``: signal shards → a tokenizer checkpoint (resumable).

The loop asks its components what to do: the batch stream gives batches (and its resume state), the
checkpoint module saves; the loop itself is short.
"""

from __future__ import annotations

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


def channel_dropout(channel_mask: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Hide ``fraction`` of each window's real channels from the encoder (keeping at least one)."""
    if fraction == 0:
        return channel_mask
    keep = torch.rand(channel_mask.shape, generator=generator) >= fraction
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
    with writer_lock(out, "out"):
        return _train(cfg, out, progress)


def _train(cfg: TokenizerTrainConfig, out: Path, progress: bool) -> dict:
    index = ShardIndex(cfg.shards)
    check_shards_fit(index, cfg.model)
    train_idx, _ = split_indices(index, cfg.eval_fraction)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = SensorTokenizer(cfg.model).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps)
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    step, data_state = 0, {"position": 0, "pending": {}}
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
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        step = int(state["step"])
        data_state = json.loads(state["data"])
        logger.info("resuming %s at step %d", out, step)
        if step >= cfg.steps:
            return read_config(out).get("last_metrics", {})
    stream = ShardStream(cfg.shards, seed=cfg.seed, indices=train_idx, epochs=None,
                         modality_weights=cfg.modality_weights, position=data_state["position"])
    batches = BatchStream(stream, cfg.batch_size, data_state["pending"],
                          by_channels=cfg.bucket_by_channels, num_workers=cfg.num_workers, pin_memory=device.type == "cuda")
    counts = np.zeros((cfg.model.levels, cfg.model.codes_per_level), dtype=np.int64)
    metrics: dict = {}
    model.train()
    started, first_step = time.perf_counter(), step
    with MetricsLog(out.with_name(out.name + ".log.jsonl"), resumed_step=step,
                    tensorboard=out.with_name(out.name + ".tensorboard") if cfg.tensorboard else None) as log:
        while step < cfg.steps:
            batch = next(batches)
            encoder_mask = channel_dropout(batch.channel_mask, cfg.channel_dropout, generator).to(device)
            signal, sensors, channel_mask, time_mask = (t.to(device) for t in (batch.signal, batch.sensors, batch.channel_mask, batch.time_mask))
            result = model(signal, sensors, channel_mask, batch.family, encoder_mask)
            losses = reconstruction_loss(signal, result["reconstruction"], channel_mask, time_mask, cfg.loss)
            loss = losses["total"] + result["commit_loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            count_codes(counts, result["codes"].cpu().numpy())
            if step % cfg.log_every == 0 or step == cfg.steps:
                metrics = {
                    "step": step, "loss": loss.item(), **{k: v.item() for k, v in losses.items() if k != "total"},
                    "commit": result["commit_loss"].item(), "lr": scheduler.get_last_lr()[0],
                    "windows_per_s": (step - first_step) * cfg.batch_size / (time.perf_counter() - started), **code_usage(counts),
                }
                counts[:] = 0
                log.write(metrics)
                if progress:
                    logger.info("step %d loss %.4f corr %.3f usage %s", step, metrics["loss"], metrics["correlation"],
                                [round(u, 2) for u in metrics["usage"]])
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                training_state = {
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                    "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
                    "data": json.dumps(batches.state()),
                }
                save_tokenizer(model, out, extra={"training": to_dict(cfg), "trained_steps": step,
                                                  "shards": str(cfg.shards), "last_metrics": metrics},
                               training_state=training_state)
    return metrics
