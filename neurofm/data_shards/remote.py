"""Shard folders behind a ``pipe:`` URL, so object stores work through their own command-line clients.

A shard folder given as ``pipe:COMMAND`` is read through COMMAND, which names a file of the folder with
``{name}`` (``manifest.json``, ``shard-000000.tar`` …) and writes it to stdout — webdataset's ``pipe:``
convention, opened with webdataset's own ``gopen``::

    shards='pipe:aws s3 cp s3://bucket/corpus/{name} -'
    shards='pipe:gsutil cat gs://bucket/corpus/{name}'
    shards='pipe:curl -sfL https://host/corpus/{name}'

The reader needs random access (exact resume), so files are fetched into a local cache —
``$NEUROFM_CACHE`` or ``~/.cache/neurofm/shards``, one sub-folder per URL — through a temporary file
renamed into place. The manifest is fetched again by every process that opens the folder (it is small,
and a rebuilt remote folder must not be read through a stale one); each shard is cached under its
manifest sha256 (a rebuilt shard is a new file) and checked against it while it is fetched. A command
that fails, or a shard whose bytes differ, is a :class:`ShardError` naming the command.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from neurofm.errors import ShardError

PREFIX = "pipe:"
_manifests_fetched: set[str] = set()


def is_pipe(location: str | os.PathLike) -> bool:
    return str(location).startswith(PREFIX)


def cache_root() -> Path:
    return Path(os.environ.get("NEUROFM_CACHE", Path.home() / ".cache" / "neurofm" / "shards"))


class PipeFolder:
    """The files of a ``pipe:`` shard folder, fetched on demand into a local cache folder (``self.dir``)."""

    def __init__(self, url: str):
        if "{name}" not in url:
            raise ShardError(f"The shard location {url!r} has no {{name}} placeholder; write the command that prints one file of "
                             "the folder with {name} where the file name goes, e.g. 'pipe:aws s3 cp s3://bucket/corpus/{name} -'.")
        self.url = url
        self.dir = cache_root() / hashlib.sha256(url.encode()).hexdigest()[:16]

    def manifest(self) -> Path:
        """The local copy of ``manifest.json``, fetched once per process."""
        local = self.dir / "manifest.json"
        if self.url not in _manifests_fetched or not local.is_file():
            self._download("manifest.json", local, None)
            _manifests_fetched.add(self.url)
        return local

    def shard(self, name: str, sha256: str) -> Path:
        """The local copy of shard ``name`` whose manifest sha256 is ``sha256`` (fetched unless cached)."""
        local = self.dir / f"{sha256[:16]}-{name}"
        if not local.is_file():
            self._download(name, local, sha256)
        return local

    def _download(self, name: str, local: Path, sha256: str | None) -> None:
        from webdataset.gopen import gopen

        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f"{local.name}.{os.getpid()}.partial")
        command = self.url.replace("{name}", name)
        digest = hashlib.sha256()
        try:
            stream = gopen(command, "rb")
            try:
                with open(tmp, "wb") as out:
                    while chunk := stream.read(1 << 20):
                        digest.update(chunk)
                        out.write(chunk)
            finally:
                stream.close()  # raises when the command exited with an error
        except BaseException as err:
            tmp.unlink(missing_ok=True)
            if isinstance(err, (OSError, ValueError)):
                raise ShardError(f"Fetching {name} with {command[len(PREFIX):]!r} failed ({str(err).splitlines()[0][:300]}); "
                                 "check that the command prints the file to stdout (try it in a shell).") from None
            raise
        if sha256 is not None and digest.hexdigest() != sha256:
            tmp.unlink(missing_ok=True)
            raise ShardError(f"{name} fetched with {command[len(PREFIX):]!r} has other bytes than its manifest records (sha256 "
                             f"{digest.hexdigest()[:12]}… vs {sha256[:12]}…); the remote folder is damaged or was rebuilt.")
        os.replace(tmp, local)


__all__ = ["PipeFolder", "cache_root", "is_pipe"]
