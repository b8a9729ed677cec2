"""Stale build locks of torch extensions, which would make every DeepSpeed start wait forever.

DeepSpeed compiles some ops on first use (on CPU its shared-memory communication op, 30–50 s) through
``torch.utils.cpp_extension``, which guards the build folder with an empty ``lock`` file
(``torch.utils.file_baton.FileBaton``): the builder creates it, keeps it open while it builds, and
removes it when done; everyone else polls until it disappears. A builder killed mid-build leaves the
file behind, and from then on every start polls forever without a word.

:func:`clear_stale_extension_locks` runs before DeepSpeed starts: a lock that some process on this
machine holds open is a live build (left alone); one nobody here holds is stale and removed, unless the
run spans several nodes and the lock is young (then it may be another node's live build on a shared
home directory: it is reported, and removed once older than ``STALE_AFTER_S``).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

logger = logging.getLogger("neurofm.extensions")

STALE_AFTER_S = 600.0  # far longer than any op build; older unheld locks are stale on any topology


def extensions_root() -> Path:
    """The folder holding torch extension builds (``TORCH_EXTENSIONS_DIR`` or torch's default cache)."""
    from torch.utils.cpp_extension import get_default_build_root

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())


def lock_holders(lock: Path) -> list[int]:
    """PIDs of processes on this machine that hold ``lock`` open (read from ``/proc``; [] elsewhere)."""
    target = str(lock.resolve())
    holders = []
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            if any(os.readlink(fd) == target for fd in fd_dir.iterdir()):
                holders.append(int(fd_dir.parent.name))
        except OSError:  # a process that ended, or one we may not inspect
            continue
    return holders


def _single_node() -> bool:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    return world <= local


def clear_stale_extension_locks(root: str | Path | None = None, now: float | None = None) -> list[Path]:
    """Remove build locks no live builder holds (see the module docstring); returns the removed paths."""
    root = Path(root) if root is not None else extensions_root()
    if not root.is_dir():
        return []
    now = time.time() if now is None else now
    removed = []
    for lock in root.rglob("lock"):
        try:
            age = now - lock.stat().st_mtime
        except FileNotFoundError:  # the builder finished meanwhile
            continue
        holders = lock_holders(lock)
        if holders:
            logger.info("waiting for the extension build in %s (process %s)", lock.parent, holders[0])
            continue
        if age < STALE_AFTER_S and not _single_node():
            logger.warning("%s is held by no process on this node (%.0f s old): another node may be building it. If none "
                           "is, delete it; otherwise the start waits until that build ends.", lock, age)
            continue
        lock.unlink(missing_ok=True)
        logger.warning("removed %s, left by an interrupted extension build (no process holds it); the op is rebuilt.", lock)
        removed.append(lock)
    return removed


__all__ = ["STALE_AFTER_S", "clear_stale_extension_locks", "extensions_root", "lock_holders"]
