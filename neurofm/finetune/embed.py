"""``embed_shards``: a release's per-layer embeddings of every window of a shard set, on disk.

Writes ``embeddings.safetensors`` (``layer_0`` … ``layer_n``, each [windows, D] float32, mean-pooled
over tokens) and ``index.json`` (per row: key, source, modality, window onset, labels and events), in
the shards' stored order.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from neurofm.data_shards.dataset import ShardIndex
from neurofm.finetune.encoder import BrainEncoder
from neurofm.tokenizers.data import ordered_batches


def embed_shards(release: str | Path, shards: str | Path, out: str | Path, *, batch_size: int = 32) -> Path:
    """Embed every window of ``shards`` with ``release``; returns the output folder."""
    encoder = BrainEncoder.from_pretrained(release)
    index = ShardIndex(shards)
    chunks, rows = [], []
    for batch in ordered_batches(index, range(len(index)), batch_size):
        chunks.append(encoder.layer_embeddings(batch.signal, batch.sensors, batch.channel_mask, batch.family,
                                               [m["modality"] for m in batch.metas]))
        rows += [{"key": k, "source": m["source"], "modality": m["modality"], "window_onset": m.get("window_onset"),
                  "labels": m.get("labels", {}), "events": m.get("events", [])} for k, m in zip(batch.keys, batch.metas)]
    embeddings = torch.cat(chunks, dim=1).float()  # [layers, windows, D]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({f"layer_{i}": e.contiguous() for i, e in enumerate(embeddings)}, str(out / "embeddings.safetensors"),
              metadata={"release": str(release), "shards": str(shards), "pooling": "mean"})
    (out / "index.json").write_text(json.dumps(rows, default=lambda v: v.item() if isinstance(v, np.generic) else str(v)))
    return out
