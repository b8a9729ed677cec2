"""Every column of the representation benchmark, computed once per window of a probe shard set.

Columns: the release (every layer), the same architecture with random weights (every layer), the
tokenizer alone (its quantized latents) — each pooled over the tokens that hold signal in each of the
benchmark's poolings (see :func:`neurofm.finetune.encoder.pool_tokens`) — and raw features of the same windows
(:mod:`neurofm.bench.features`, laid out per device).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from neurofm.bench.features import device_features, feature_sets
from neurofm.data_shards.config import SimulateConfig
from neurofm.data_shards.dataset import ShardIndex
from neurofm.finetune.encoder import BrainEncoder
from neurofm.data_shards.windows import event_onset
from neurofm.pretrain.model import MaskedCodeModel
from neurofm.data_shards.batches import ordered_batches


@dataclass
class ProbeWindows:
    """Per window (``n``): ``metas`` and the valid raw signal; per column name: a list of per-layer
    matrices [n, F]; the simulator settings that made the windows, if they are simulated (the oracle
    column, :mod:`neurofm.bench.oracle`, rebuilds their true sources from them)."""

    metas: list[dict]
    columns: dict[str, list[np.ndarray]] = field(default_factory=dict)
    raw_windows: list[tuple[np.ndarray, dict]] = field(default_factory=list)  # (signal [C, valid T], meta)
    simulation: SimulateConfig | None = None

    def device(self) -> np.ndarray:
        return np.asarray([device_of(m) for m in self.metas])

    def field(self, key: str) -> np.ndarray:
        """A label of every window: ``meta[key]`` or ``meta['labels'][key]`` (None where absent)."""
        return np.asarray([m.get(key, m.get("labels", {}).get(key)) for m in self.metas], dtype=object)


def device_of(meta: dict) -> str:
    """The recording device of a window: the simulator's ground truth, else the dataset name."""
    return str(meta.get("labels", {}).get("device") or meta.get("dataset"))


def random_encoder(release_encoder: BrainEncoder, seed: int) -> BrainEncoder:
    """The release's architecture with freshly initialised encoder weights (the tokenizer is kept)."""
    torch.manual_seed(seed)
    return BrainEncoder(release_encoder.tokenizer, MaskedCodeModel(release_encoder.model.cfg).eval()).to(release_encoder.device)


def collect(release: str | Path, shards: str | Path, poolings: tuple[str, ...] = ("mean", "time"), seed: int = 0,
            batch_size: int = 32, indices=None, simulation: SimulateConfig | None = None) -> ProbeWindows:
    """Every column for every window of ``shards`` (or its sample ``indices``; raw features per device,
    see module docstring); ``simulation``: the settings that simulated ``shards`` (enables the oracle)."""
    encoder = BrainEncoder.from_pretrained(release)
    random = random_encoder(encoder, seed + 1)
    index = ShardIndex(shards)
    parts: dict[str, list] = defaultdict(list)
    metas, raw_windows = [], []
    for batch in ordered_batches(index, range(len(index)) if indices is None else indices, batch_size):
        n_valid = batch.time_mask.sum(1)
        modalities = [m["modality"] for m in batch.metas]
        args = (batch.signal, batch.sensors, batch.channel_mask, batch.family)
        anchors = [event_onset(m) for m in batch.metas]
        for pooling in poolings:
            parts[f"release/{pooling}"].append(encoder.layer_embeddings(*args, modalities, n_valid, pooling, anchors).numpy())
            parts[f"random/{pooling}"].append(random.layer_embeddings(*args, modalities, n_valid, pooling, anchors).numpy())
            parts[f"tokenizer/{pooling}"].append(encoder.tokenizer_embeddings(*args, n_valid, pooling, anchors)[None].numpy())
        for i, meta in enumerate(batch.metas):
            c, t = int(batch.channel_mask[i].sum()), int(n_valid[i])
            raw_windows.append((batch.signal[i, :c, :t].numpy(), meta))
        metas += batch.metas
    windows = ProbeWindows(metas, raw_windows=raw_windows, simulation=simulation)
    for name in list(parts):  # each column's batches freed once stacked: the peak is one column over, not all of them
        windows.columns[name] = list(np.concatenate(parts.pop(name), axis=1))  # [layers, n, F]
    return windows


def raw_columns(windows: ProbeWindows, rows: np.ndarray, labels: list[str] | None = None) -> list[np.ndarray]:
    """Raw features of ``rows`` (all of one device) as a column of candidate feature sets, chosen between by
    the probe's inner CV like a release's layers (:func:`~neurofm.bench.features.feature_sets`: every feature,
    and the channel-averaged spectrum alone — alpha-frequency R² 0.77–0.85 from the spectrum alone, ≈ 0 from all)."""
    return feature_sets(device_features([windows.raw_windows[i] for i in rows], labels))


__all__ = ["ProbeWindows", "collect", "device_of", "random_encoder", "raw_columns"]
