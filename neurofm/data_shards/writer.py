"""Atomic webdataset shard writing, the manifest, and resumable builds.

A shard is written by ``webdataset.TarWriter`` to ``shard-NNNNNN.tar.partial`` and renamed to
``shard-NNNNNN.tar`` only once complete, so a crash never leaves a shard that looks valid. After each
completed shard the manifest (``manifest.json``, also written through a temporary file and
``os.replace``) records it with its sample count, byte size and sha256; an interrupted build reads the
manifest back, keeps the completed shards and continues with the first sample not in them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np

from neurofm.errors import ShardError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``."""
    tmp = path.with_name(path.name + ".partial")
    try:
        tmp.write_text(text)
    except BaseException:
        tmp.unlink(missing_ok=True)  # e.g. a full disk: the old file stays, no half-written one beside it
        raise
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON to ``path`` atomically (see :func:`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=False))


def encode_npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def read_manifest(out: Path) -> dict | None:
    """The manifest in ``out``, or ``None`` if there is none."""
    path = out / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ShardError(f"{path} is not valid JSON ({err}); delete the output folder and rebuild.") from None
    problem = _manifest_problem(manifest)
    if problem:
        raise ShardError(f"{path} is not a NeuroFM shard manifest ({problem}); point at a folder made by `neurofm shards build` "
                         "or `neurofm tokenizer encode`, or delete it and rebuild.")
    return manifest


_SHARD_FIELDS = {"name": str, "samples": int, "bytes": int, "sha256": str}


def _manifest_problem(manifest) -> str | None:
    """What makes ``manifest`` unusable (wrong structure), or None."""
    if not isinstance(manifest, dict):
        return f"a JSON {type(manifest).__name__}, not an object"
    for key, kind in (("shards", list), ("recordings", list), ("complete", bool)):
        if not isinstance(manifest.get(key), kind):
            return f"'{key}' is {type(manifest.get(key)).__name__ if key in manifest else 'absent'}, not a {kind.__name__}"
    for i, shard in enumerate(manifest["shards"]):
        if not isinstance(shard, dict) or any(not isinstance(shard.get(k), t) for k, t in _SHARD_FIELDS.items()):
            return f"shards[{i}] lacks {', '.join(_SHARD_FIELDS)}"
        if shard["samples"] < 0 or "/" in shard["name"] or shard["name"].startswith("."):
            return f"shards[{i}] has a negative count or a name outside the folder"
    if any(not isinstance(r, dict) for r in manifest["recordings"]):
        return "'recordings' holds something other than objects"
    return None


class ShardWriter:
    """Write samples into numbered tar shards of ``samples_per_shard`` samples each.

    Parameters
    ----------
    out : Path
        Output folder.
    samples_per_shard : int
        Samples per shard (the last shard may hold fewer).
    manifest : dict
        The manifest being built; completed shards are appended to ``manifest["shards"]`` and the
        manifest is rewritten after each one.
    """

    def __init__(self, out: Path, samples_per_shard: int, manifest: dict):
        self.out = out
        self.samples_per_shard = samples_per_shard
        self.manifest = manifest
        self._tar = None  # webdataset.TarWriter of the open shard
        self._stream = None
        self._count = 0
        for stale in out.glob("*.partial"):
            stale.unlink()  # left by an interrupted run; its samples are rewritten

    @property
    def samples_done(self) -> int:
        """Samples in completed shards."""
        return sum(s["samples"] for s in self.manifest["shards"])

    def _open(self) -> None:
        index = len(self.manifest["shards"])
        self._name = f"shard-{index:06d}.tar"
        # imported here, not with the module: webdataset imports torch, which the Dask workers that only
        # stage recordings (this module's helpers) would otherwise load for nothing (≈ 1.3 s, 120 MB each)
        import webdataset as wds

        self._stream = open(self.out / (self._name + ".partial"), "wb")
        self._tar = wds.TarWriter(self._stream, mtime=0.0)  # fixed mtime: same samples, same bytes
        self._count = 0

    def write(self, key: str, files: dict[str, bytes]) -> None:
        """Add one sample: ``files`` maps extensions (``signal.npy``, ``meta.json`` …) to bytes."""
        if self._tar is None:
            self._open()
        self._tar.write({"__key__": key, **files})
        self._count += 1
        if self._count >= self.samples_per_shard:
            self.close_shard()

    def close_shard(self) -> None:
        """Finish the open shard: close, checksum, rename into place, record in the manifest."""
        if self._tar is None:
            return
        self._tar.close()
        self._stream.close()
        partial = self.out / (self._name + ".partial")
        final = self.out / self._name
        entry = {"name": self._name, "samples": self._count, "bytes": partial.stat().st_size, "sha256": sha256_file(partial)}
        os.replace(partial, final)
        self.manifest["shards"].append(entry)
        write_json_atomic(self.out / MANIFEST, self.manifest)
        self._tar = None

    def abort(self) -> None:
        """Drop the open, incomplete shard (its samples are rewritten when the build resumes)."""
        if self._tar is None:
            return
        self._tar.close()
        self._stream.close()
        (self.out / (self._name + ".partial")).unlink(missing_ok=True)
        self._tar = None
