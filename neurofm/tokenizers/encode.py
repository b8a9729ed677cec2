"""``encode_shards``: signal shards → code shards, so pretraining never runs the tokenizer.

Code shards have the layout of signal shards with ``codes.npy`` (int16, latent × time patch × level)
in place of ``signal.npy``; ``sensors.npy`` and ``meta.json`` are carried over unchanged. Their
``manifest.json`` names the tokenizer (path, sha256 of its weights, its config) and the signal shards
they came from. Samples keep their order and keys; an interrupted run resumes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import neurofm
from neurofm.data_shards.dataset import ShardIndex
from neurofm.data_shards.writer import FORMAT_VERSION, MANIFEST, ShardWriter, encode_npy, read_manifest, sha256_file, write_json_atomic
from neurofm.errors import ShardError
from neurofm.tokenizers.checkpoint import load_tokenizer
from neurofm.tokenizers.data import ordered_batches
from neurofm.tokenizers.train import check_shards_fit, code_usage, count_codes
from neurofm.outputs import output_folder, writer_lock


def encode_shards(checkpoint: str | Path, shards: str | Path, out: str | Path, *, batch_size: int = 32, samples_per_shard: int = 1024, progress: bool = True) -> dict:
    """Encode every window of ``shards`` with the tokenizer in ``checkpoint`` into code shards in ``out``."""
    model = load_tokenizer(checkpoint)
    index = ShardIndex(shards)
    check_shards_fit(index, model.cfg)
    out = output_folder(out, "--out")
    with writer_lock(out):
        return _encode(model, index, checkpoint, shards, out, batch_size, samples_per_shard, progress)


def _encode(model, index: ShardIndex, checkpoint, shards, out: Path, batch_size: int, samples_per_shard: int, progress: bool) -> dict:
    tokenizer = {
        "path": str(Path(checkpoint).resolve()),
        "sha256": sha256_file(Path(checkpoint) / "model.safetensors"),
        "n_latents": model.cfg.n_latents,
        "levels": model.cfg.levels,
        "codes_per_level": model.cfg.codes_per_level,
        "patch_seconds": {f: model.cfg.patch_seconds(f) for f in ("electro", "bold")},
    }
    source = {"path": str(shards), "settings_hash": index.manifest["settings_hash"]}
    manifest = read_manifest(out)
    if manifest is not None and (manifest.get("tokenizer", {}).get("sha256") != tokenizer["sha256"] or manifest.get("source_shards") != source):
        raise ShardError(f"{out} holds codes of another tokenizer or other signal shards; choose another --out or delete it.")
    if manifest is None:
        manifest = {
            "format_version": FORMAT_VERSION, "neurofm_version": neurofm.__version__, "kind": "codes", "complete": False,
            "tokenizer": tokenizer, "source_shards": source, "settings_hash": index.manifest["settings_hash"],
            "settings": index.manifest["settings"], "sensor_features": index.manifest["sensor_features"],
            "shards": [], "recordings": index.manifest["recordings"], "skipped": index.manifest.get("skipped", []),
        }
    if manifest["complete"]:
        return manifest
    writer = ShardWriter(out, samples_per_shard, manifest)
    done = writer.samples_done
    remaining = np.arange(done, len(index))
    counts = np.zeros((model.cfg.levels, model.cfg.codes_per_level), dtype=np.int64)
    try:
        with torch.no_grad(), tqdm(total=len(remaining), desc="encode", disable=not progress, unit="win") as bar:
            for batch in ordered_batches(index, remaining, batch_size):
                latents = model.encode(batch.signal, batch.sensors, batch.channel_mask, batch.family)
                codes = model.quantize(latents)[1].numpy()  # [B, P, K, L]
                count_codes(counts, codes)
                for i, (key, meta) in enumerate(zip(batch.keys, batch.metas)):
                    c = int(batch.channel_mask[i].sum())
                    writer.write(key, {
                        "codes.npy": encode_npy(np.ascontiguousarray(codes[i].transpose(1, 0, 2)).astype(np.int16)),
                        "sensors.npy": encode_npy(batch.sensors[i, :c].numpy()),
                        "meta.json": json.dumps(meta).encode(),
                    })
                bar.update(len(batch.keys))
        writer.close_shard()
    except BaseException:
        writer.abort()
        raise
    manifest["statistics"] = {**index.manifest.get("statistics", {})}
    manifest["code_usage"] = code_usage(counts) if len(remaining) == len(index) else None
    manifest["complete"] = True
    write_json_atomic(out / MANIFEST, manifest)
    return manifest
