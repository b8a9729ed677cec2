"""Output folders written whole or not at all, and never over what the user did not ask to replace.

Commands whose result is one folder (``export``, ``finetune``, ``targets``, ``simulate-speech``) build it
in ``<out>.partial`` and swap it into place with renames (:func:`replaced_folder`). Before any work,
:func:`check_output` refuses an ``--out`` that is or contains one of the command's inputs (whatever the
flags say), that is a file, or that already holds something when ``--overwrite`` was not given.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

from neurofm.errors import NeuroFMError


def check_output(out: str | Path, inputs: Mapping[str, str | Path | None], *, overwrite: bool, option: str = "--out") -> Path:
    """Refuse an output folder that would destroy inputs or an earlier result.

    ``inputs`` maps each input's option name (``--run``, ``release`` …) to its path (``None``: not given).
    """
    out = Path(out)
    target = out.resolve()
    for name, path in inputs.items():
        if path is None:
            continue
        source = Path(path).resolve()
        if source == target or target in source.parents:
            raise NeuroFMError(f"{option}={out} is or contains the input {name}={path}; writing there would delete it. "
                               f"Choose another {option}.")
    if out.exists() and not out.is_dir():
        raise NeuroFMError(f"{option}={out} is a file, not a folder; remove it or choose another {option}.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise NeuroFMError(f"{option}={out} already holds a result; pass --overwrite to replace it, or choose another {option}.")
    return out


def refuse_file(out: str | Path, option: str = "--out") -> Path:
    """``out`` as a Path; a file standing there is an error (checked before work starts)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NeuroFMError(f"{option}={out} is a file, not a folder; remove it or choose another {option}.")
    return out


def output_folder(out: str | Path, option: str = "--out") -> Path:
    """Create (or keep) the folder ``out`` that a resumable stage writes into; a file there is an error."""
    out = refuse_file(out, option)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise NeuroFMError(f"{option}={out}: a file stands where one of its parent folders should be; choose another {option}.") from None
    except PermissionError:
        raise NeuroFMError(f"{option}={out} cannot be created (permission denied); choose a folder you may write to.") from None
    return out


@contextlib.contextmanager
def writer_lock(out: str | Path, option: str = "--out") -> Iterator[None]:
    """Hold ``<out>.lock`` (an OS file lock) while writing ``out``; a second writer is refused at once.

    The lock dies with its process, so a lock file left by a killed run is stale and simply taken over;
    the file records the holder's PID and host for the error message.
    """
    import fcntl
    import json
    import socket

    out = Path(out)
    path = out.with_name(out.name + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise NeuroFMError(f"{option}={out} is being written by {holder} (lock {path}); wait for it to finish or choose "
                           f"another {option}.") from None
    fh.seek(0)
    fh.truncate()
    fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    fh.flush()
    try:
        yield
    finally:
        fh.close()  # releases the lock; the file stays (harmless, reused by the next writer)


def recover_replaced(out: str | Path) -> Path:
    """Put back ``<out>.replaced`` when a crash between :func:`replaced_folder`'s two renames left no ``out``."""
    out = Path(out)
    old = out.with_name(out.name + ".replaced")
    if old.is_dir() and not out.exists():
        os.replace(old, out)
    return out


@contextlib.contextmanager
def replaced_folder(out: str | Path) -> Iterator[Path]:
    """Yield an empty ``<out>.partial`` to fill; on success it replaces ``out``, on error it is removed.

    The earlier ``out`` is kept until the new one is in place (as ``<out>.replaced``, restored by the next
    call if a crash fell between the two renames).
    """
    out = recover_replaced(out)
    tmp, old = out.with_name(out.name + ".partial"), out.with_name(out.name + ".replaced")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            raise NeuroFMError(f"No space left on the device while writing {out}; nothing was written (the partial folder "
                               "is removed). Free some space and rerun.") from None
        raise
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


__all__ = ["writer_lock", "check_output", "output_folder", "recover_replaced", "refuse_file", "replaced_folder"]
