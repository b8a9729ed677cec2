"""What training, ``eval`` and ``encode`` of a tokenizer share: whether shards fit the model, and
how its codes are used (per-level usage and perplexity)."""

from __future__ import annotations

import numpy as np

from neurofm.data_shards.batches import require_signal
from neurofm.data_shards.dataset import ShardIndex
from neurofm.data_shards.modalities import FAMILY_OF_MODALITY
from neurofm.errors import NeuroFMError
from neurofm.tokenizers.config import TokenizerModelConfig


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
    """Add the codes [..., L] to per-level counts [L, V] in place; negative codes (the −1 of padding tokens,
    e.g. the channel tokens of a window with fewer channels than its batch) are not codes and are skipped."""
    flat = codes.reshape(-1, counts.shape[0])
    for level in range(counts.shape[0]):
        column = flat[:, level]
        counts[level] += np.bincount(column[column >= 0], minlength=counts.shape[1])
