"""``embed_shards``: a release's per-layer embeddings of every window of a shard set, on disk.

Writes ``embeddings.safetensors`` (``layer_0`` … ``layer_n``, each [windows, F] float32, pooled over
the tokens that hold signal: ``mean`` (F = D), ``time``, ``flat``, ``power``, ``cov`` or ``event``) and ``index.json`` (per row: key, source, modality, window onset, labels and events), in
the shards' stored order.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from neurofm.data_shards.dataset import ShardIndex
from neurofm.devices import resolve_device
from neurofm.errors import NeuroFMError
from neurofm.finetune.config import EVENT_SPAN_SECONDS
from neurofm.finetune.encoder import BrainEncoder, resolve_pooling
from neurofm.data_shards.windows import event_onset
from neurofm.distributed import barrier, map_batches, process_group
from neurofm.data_shards.batches import require_signal
from neurofm.outputs import output_folder


def embed_shards(release: str | Path, shards: str | Path, out: str | Path, *, batch_size: int = 32, pooling: str = "auto",
                 device: str = "auto", event_span: float = EVENT_SPAN_SECONDS) -> Path:
    """Embed every window of ``shards`` with ``release`` on ``device`` (pooled over the tokens that hold
    signal, see :func:`neurofm.finetune.encoder.pool_tokens`); returns the output folder. Under
    ``torchrun`` each process embeds every world-th batch and rank 0 writes them in order: the same
    files as one process."""
    torch_device = resolve_device(device)
    encoder = BrainEncoder.from_pretrained(release).to(torch_device)
    index = ShardIndex(shards)
    require_signal(index)
    pooling = resolve_pooling(pooling, index.manifest, encoder.channel_tokens)

    def embed(batch):
        n_valid = batch.time_mask.sum(1)  # samples holding signal (collate reads n_valid_samples)
        embeddings = encoder.layer_embeddings(batch.signal, batch.sensors, batch.channel_mask, batch.family,
                                              [m["modality"] for m in batch.metas], n_valid, pooling,
                                              [event_onset(m) for m in batch.metas], event_span)
        rows = [{"key": k, "source": m["source"], "modality": m["modality"], "window_onset": m.get("window_onset"),
                 "labels": m.get("labels", {}), "events": m.get("events", [])} for k, m in zip(batch.keys, batch.metas)]
        return embeddings, rows

    results = map_batches(index, range(len(index)), batch_size, embed)
    out = Path(out)
    if results is not None:  # rank 0 writes
        if len({e.shape[2] for e, _ in results}) > 1:
            raise NeuroFMError(f"Windows of {shards} have different lengths, so '{pooling}' pooling gives vectors of different sizes; "
                               "use --pooling mean, or embed one window length at a time.")
        embeddings = torch.cat([e for e, _ in results], dim=1).float()  # [layers, windows, F]
        output_folder(out, "--out")
        save_file({f"layer_{i}": e.contiguous() for i, e in enumerate(embeddings)}, str(out / "embeddings.safetensors"),
                  metadata={"release": str(release), "shards": str(shards), "pooling": pooling, "event_span": str(event_span)})
        rows = [row for _, r in results for row in r]
        (out / "index.json").write_text(json.dumps(rows, default=lambda v: v.item() if isinstance(v, np.generic) else str(v)))
    barrier(process_group()[1])
    return out
