"""Is the masked-code model better than trivial guesses? Masked-code accuracy per RVQ level beside
two predictors that need no model:

- ``unigram``: every masked token gets the most frequent code of its latent and level (frequencies
  counted on training code windows; the tokens of channel-token windows, one per parcel, share one
  slot of their own);
- ``copy_nearest``: a masked token copies the codes of the nearest visible token of the same latent
  in time (the earlier one on a tie); with none visible, the unigram guess.

Both see the same masks as the model. A model that cannot beat them has learned nothing beyond code
statistics and temporal smoothness.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from neurofm.data_shards.dataset import ShardIndex
from neurofm.pretrain.masking import make_mask


def code_frequencies(codes: list[np.ndarray], n_latents: int, levels: int, codes_per_level: int,
                     channel_tokens: list[bool] | None = None) -> np.ndarray:
    """Counts [K + 1, L, V] of every code of windows ``codes`` (each [P, K, L]): row k for latent k, row K
    for the tokens of the windows marked in ``channel_tokens`` (each [P, C, L], one token per channel)."""
    counts = np.zeros((n_latents + 1, levels, codes_per_level), dtype=np.int64)
    for c, channels in zip(codes, channel_tokens or [False] * len(codes)):
        for k in range(c.shape[1]):
            for level in range(levels):
                counts[n_latents if channels else k, level] += np.bincount(c[:, k, level], minlength=codes_per_level)
    return counts


def unigram_predict(codes: np.ndarray, counts: np.ndarray, channel_tokens: bool = False) -> np.ndarray:
    """The unigram guess for every token: [P, K, L] of the most frequent code per (latent, level), or per
    level over all channel tokens for a channel-token window (see :func:`code_frequencies`)."""
    best = counts.argmax(-1)  # [K + 1, L]
    per_token = np.broadcast_to(best[-1], codes.shape[1:]) if channel_tokens else best[: codes.shape[1]]
    return np.broadcast_to(per_token[None], codes.shape).copy()


def copy_nearest_predict(codes: np.ndarray, mask: np.ndarray, counts: np.ndarray, channel_tokens: bool = False) -> np.ndarray:
    """codes [P, K, L], mask [P, K] (True = masked) → guesses [P, K, L]: each masked token copies the
    nearest visible token of its latent (or channel) in time (earlier on a tie); unigram where a latent is all masked."""
    guess = unigram_predict(codes, counts, channel_tokens)
    for k in range(codes.shape[1]):
        visible = np.flatnonzero(~mask[:, k])
        if not len(visible):
            continue
        for t in np.flatnonzero(mask[:, k]):
            nearest = visible[np.argmin(np.abs(visible - t) * 2 + (visible > t))]  # distance, then earlier first
            guess[t, k] = codes[nearest, k]
    return guess


def masked_accuracy(guess: np.ndarray, codes: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Accuracy per level [L] of ``guess`` over the masked tokens (all [P, K, L] / [P, K])."""
    return (guess[mask] == codes[mask]).mean(axis=0)


def _load_codes(index: ShardIndex, rows) -> tuple[list[np.ndarray], list[str]]:
    """Code windows [P, K, L] (stored latent-major, see encode) and their modalities."""
    items = [index[int(i)] for i in rows]
    return [s["codes"].astype(np.int64).transpose(1, 0, 2) for s in items], [s["meta"]["modality"] for s in items]


@torch.no_grad()
def masked_code_report(model, train_codes: str | Path, test_codes: str | Path, *, mask_ratio: float, masking: str,
                       seed: int = 0, max_windows: int = 2000, batch_size: int = 32) -> dict:
    """Masked-code accuracy per level of ``model`` and of both trivial predictors on ``test_codes``
    windows (frequencies from ``train_codes``), one fixed mask per window drawn with ``seed``."""
    from neurofm.data_shards.modalities import FAMILY_OF_MODALITY, MODALITY_IDS
    from neurofm.pretrain.masking import masked_tokens
    from neurofm.pretrain.model import masked_code_loss

    cfg = model.cfg
    train_index, test_index = ShardIndex(train_codes), ShardIndex(test_codes)
    rng = np.random.default_rng(seed)
    train_rows = rng.permutation(len(train_index))[:max_windows]
    channel_tokens = lambda modalities: [FAMILY_OF_MODALITY[m] in cfg.channel_tokens for m in modalities]  # noqa: E731
    train_windows, train_modalities = _load_codes(train_index, train_rows)
    counts = code_frequencies(train_windows, cfg.n_latents, cfg.levels, cfg.codes_per_level, channel_tokens(train_modalities))
    test_rows = np.sort(rng.permutation(len(test_index))[:max_windows])
    windows, modalities = _load_codes(test_index, test_rows)
    channels = channel_tokens(modalities)
    generator = torch.Generator().manual_seed(seed)
    totals = {"model": np.zeros(cfg.levels), "unigram": np.zeros(cfg.levels), "copy_nearest": np.zeros(cfg.levels)}
    n_masked_total = 0
    model.eval()
    for shape in sorted({w.shape for w in windows}):
        group = [i for i, w in enumerate(windows) if w.shape == shape]
        for start in range(0, len(group), batch_size):
            ids = group[start : start + batch_size]
            codes = torch.from_numpy(np.stack([windows[i] for i in ids]))
            p, k = shape[0], shape[1]
            mask = make_mask(len(ids), p, k, mask_ratio, masking, generator)
            modality = torch.tensor([MODALITY_IDS[modalities[i]] for i in ids])
            n_masked = masked_tokens(p, k, mask_ratio, masking)
            logits = model(codes, modality, mask, n_visible=p * k - n_masked)
            _, accuracy = masked_code_loss(logits, codes, mask, n_masked)
            count = n_masked * len(ids)
            totals["model"] += accuracy.numpy() * count
            for j, i in enumerate(ids):
                m = mask[j].numpy()
                totals["unigram"] += masked_accuracy(unigram_predict(windows[i], counts, channels[i]), windows[i], m) * n_masked
                totals["copy_nearest"] += masked_accuracy(copy_nearest_predict(windows[i], m, counts, channels[i]), windows[i], m) * n_masked
            n_masked_total += count
    report = {name: (total / max(n_masked_total, 1)).tolist() for name, total in totals.items()}
    best_trivial = np.maximum(report["unigram"], report["copy_nearest"])
    report["ratio_to_best_trivial"] = (np.asarray(report["model"]) / np.maximum(best_trivial, 1e-12)).tolist()
    report["windows"] = len(windows)
    report["masking"] = {"ratio": mask_ratio, "strategy": masking}
    return report


__all__ = ["code_frequencies", "copy_nearest_predict", "masked_accuracy", "masked_code_report", "unigram_predict"]
