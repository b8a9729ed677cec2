"""``encode_shards``: signal shards → code shards, so pretraining never runs the tokenizer.

Code shards have the layout of signal shards with ``codes.npy`` (int16, latent × time patch × level;
with channel tokens, channel × time patch × level) in place of ``signal.npy``; ``sensors.npy`` and ``meta.json`` are carried over unchanged. Their
``manifest.json`` names the tokenizer (path, sha256 of its weights, its config) and the signal shards
they came from. Samples keep their order and keys; an interrupted run resumes.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import neurofm
from neurofm.data_shards.dataset import ShardIndex
from neurofm.data_shards.writer import FORMAT_VERSION, MANIFEST, ShardWriter, encode_npy, read_manifest, sha256_file, write_json_atomic
from neurofm.data_shards.parallel import finish_staged, staged_entry, staged_samples, staging_tar
from neurofm.devices import resolve_device
from neurofm.distributed import process_group
from neurofm.errors import ShardError
from neurofm.tokenizers.checkpoint import load_tokenizer
from neurofm.data_shards.batches import batch_plan, collate
from neurofm.tokenizers.usage import check_shards_fit, code_usage, count_codes
from neurofm.outputs import output_folder, writer_lock


def encode_shards(checkpoint: str | Path, shards: str | Path, out: str | Path, *, batch_size: int = 32, samples_per_shard: int = 1024,
                  progress: bool = True, device: str = "auto") -> dict:
    """Encode every window of ``shards`` with the tokenizer in ``checkpoint`` into code shards in ``out``
    on ``device`` (``auto``: this process's GPU when there is one, see :func:`neurofm.devices.resolve_device`).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process encodes every ``world``-th batch of the same
    batch plan (:func:`~neurofm.data_shards.batches.batch_plan`) into ``<out>/.staging/``; rank 0 then
    packs them in order, so the code shards are the ones one process writes.
    """
    torch_device = resolve_device(device)
    model = load_tokenizer(checkpoint).to(torch_device)
    index = ShardIndex(shards)
    check_shards_fit(index, model.cfg)
    out = output_folder(out, "--out")
    rank, world = process_group()
    with writer_lock(out) if rank == 0 else contextlib.nullcontext():
        manifest = _start(model, index, checkpoint, shards, out)
        if not manifest["complete"]:
            manifest = _encode(model, index, manifest, out, batch_size, samples_per_shard, progress, rank, world)
    return manifest


def _start(model, index: ShardIndex, checkpoint, shards, out: Path) -> dict:
    tokenizer = {
        "path": str(Path(checkpoint).resolve()),
        "sha256": sha256_file(Path(checkpoint) / "model.safetensors"),
        "n_latents": model.cfg.n_latents,
        "levels": model.cfg.levels,
        "codes_per_level": model.cfg.codes_per_level,
        "channel_tokens": model.cfg.channel_token_families,
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
    return manifest


def _encode(model, index: ShardIndex, manifest: dict, out: Path, batch_size: int, samples_per_shard: int, progress: bool,
            rank: int, world: int) -> dict:
    done = sum(s["samples"] for s in manifest["shards"])
    plan = batch_plan(index, np.arange(done, len(index)), batch_size)
    staging = out / f".staging-b{batch_size}"
    staging.mkdir(exist_ok=True)
    mine = range(rank, len(plan), world)
    with torch.no_grad(), tqdm(total=len(mine), desc=f"encode (rank {rank}/{world})", disable=not progress or rank > 0,
                               unit="batch") as bar:
        for j in mine:
            first = int(plan[j][0])
            if staged_entry(staging, first) is None:
                finish_staged(staging, first, _encode_batch(model, index, plan[j], staging, first))
            bar.update(1)
    if world > 1:
        torch.distributed.barrier()
    if rank == 0:
        manifest = _pack(index, manifest, out, plan, staging, samples_per_shard, model, encoded_all=done == 0)
    if world > 1:
        torch.distributed.barrier()
    return manifest if rank == 0 else read_manifest(out)


def _encode_batch(model, index: ShardIndex, indices: np.ndarray, staging: Path, first: int) -> dict:
    """Codes of one planned batch into its staging tar; returns its code counts [L, V] as a list."""
    batch = collate([{**index[int(i)], "__index__": int(i)} for i in indices])
    device = next(model.parameters()).device
    latents = model.encode(batch.signal.to(device), batch.sensors.to(device), batch.channel_mask.to(device), batch.family)
    codes = model.quantize(latents)[1].cpu().numpy()  # [B, P, K, L]
    counts = np.zeros((model.cfg.levels, model.cfg.codes_per_level), dtype=np.int64)
    with staging_tar(staging, first) as add:
        for i, (key, meta) in enumerate(zip(batch.keys, batch.metas)):
            c = int(batch.channel_mask[i].sum())
            tokens = codes[i, :, :c] if model.cfg.channel_tokens(batch.family) else codes[i]  # a padded channel's token is no code
            count_codes(counts, tokens)
            add(key, {
                "codes.npy": encode_npy(np.ascontiguousarray(tokens.transpose(1, 0, 2)).astype(np.int16)),
                "sensors.npy": encode_npy(batch.sensors[i, :c].numpy()),
                "meta.json": json.dumps(meta).encode(),
            })
    return {"counts": counts.tolist()}


def _pack(index: ShardIndex, manifest: dict, out: Path, plan: list[np.ndarray], staging: Path, samples_per_shard: int, model,
          encoded_all: bool) -> dict:
    """Rank 0: the staged batches, in plan order, into code shards; then the manifest."""
    writer = ShardWriter(out, samples_per_shard, manifest)
    counts = np.zeros((model.cfg.levels, model.cfg.codes_per_level), dtype=np.int64)
    try:
        for indices in plan:
            first = int(indices[0])
            counts += np.asarray(staged_entry(staging, first)["counts"], dtype=np.int64)
            for key, files in staged_samples(staging, first):
                writer.write(key, files)
        writer.close_shard()
    except BaseException:
        writer.abort()
        raise
    shutil.rmtree(staging, ignore_errors=True)
    manifest["statistics"] = {**index.manifest.get("statistics", {})}
    manifest["code_usage"] = code_usage(counts) if encoded_all else None
    manifest["complete"] = True
    write_json_atomic(out / MANIFEST, manifest)
    return manifest


__all__ = ["encode_shards"]
