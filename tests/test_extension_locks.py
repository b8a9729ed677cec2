"""A torch-extension build lock left by a killed builder must not make DeepSpeed starts wait forever."""

from __future__ import annotations

import subprocess
import sys
import time

from neurofm.pretrain.extension_locks import STALE_AFTER_S, clear_stale_extension_locks, lock_holders


def _lock(root, name="op"):
    (root / name).mkdir(parents=True)
    lock = root / name / "lock"
    lock.touch()
    return lock


def test_an_unheld_lock_is_removed_and_a_held_one_kept(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    stale = _lock(tmp_path, "stale")
    live = _lock(tmp_path, "live")
    holder = subprocess.Popen([sys.executable, "-c", f"f = open({str(live)!r}); import time; time.sleep(60)"])
    try:
        deadline = time.time() + 20
        while not lock_holders(live) and time.time() < deadline:
            time.sleep(0.05)
        assert lock_holders(live) == [holder.pid] and lock_holders(stale) == []
        assert clear_stale_extension_locks(tmp_path) == [stale]
        assert live.exists() and not stale.exists()
    finally:
        holder.kill()
        holder.wait()


def test_on_several_nodes_a_young_unheld_lock_may_be_another_nodes_build(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    lock = _lock(tmp_path)
    assert clear_stale_extension_locks(tmp_path) == [] and lock.exists()
    assert clear_stale_extension_locks(tmp_path, now=time.time() + STALE_AFTER_S + 1) == [lock] and not lock.exists()
