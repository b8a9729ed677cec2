"""Epoch checkpoints of a finetune run, so an interrupted ``neurofm finetune`` resumes where it stopped.

Layout: ``<out>.progress/config.json`` (the run's config; other trajectory settings refuse to resume,
naming them, unless allowed with ``--allow-changed KEY``), ``tensorboard/<training>/`` (epoch scalars) and
one folder per training (``model``, ``shuffled``, ``random_encoder``) holding ``state.json`` — epoch,
loss history, best validation loss, patience count, the data-order RNG state, ``done`` — and the
folder it names, ``epoch-NNNN/``: ``last.safetensors`` and ``best.safetensors`` (the trainable
tensors), ``optimizer.pt`` (plain tensors, loaded with ``weights_only=True``) and ``rng.safetensors``
(torch's RNG state). The epoch folder is complete before ``state.json`` (written atomically) points
at it, so a crash mid-write leaves the previous epoch in force. The progress folder is removed once
the run folder is written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from neurofm.data_shards.writer import write_json_atomic
from neurofm.files import read_json
from neurofm.training import MetricsLog, check_resume_settings


def progress_root(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".progress")


#: settings that do not change a finetune's trajectory
TRAJECTORY_FREE = frozenset({"out", "tensorboard", "allow_changed"})


def check_config(root: Path, config: dict, allow_changed: list[str] | tuple[str, ...] = ()) -> None:
    """Create ``root`` for ``config``, or check that an existing one was made with the same settings
    (those in ``allow_changed`` may differ on purpose)."""
    path = root / "config.json"
    if path.is_file():
        saved = read_json(path, f"delete {root} to start over.")
        check_resume_settings(f"{root} (an interrupted finetune)", saved, json.loads(json.dumps(config)),
                              free=TRAJECTORY_FREE, allow_changed=allow_changed)
        return
    root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, config)


class TrainingProgress:
    """The epoch checkpoints of one training (see module docstring)."""

    def __init__(self, root: Path, name: str, enabled: bool = True):
        self.dir, self.enabled = root / name, enabled

    def metrics_log(self, resumed_epoch: int, tensorboard: bool) -> MetricsLog:
        """The epoch log of this training (JSONL beside its checkpoints; TensorBoard scalars in
        ``<progress root>/tensorboard/<training>/``, copied into the run folder when it is written)."""
        return MetricsLog(self.dir / "train_log.jsonl", resumed_step=resumed_epoch, enabled=self.enabled,
                          tensorboard=self.dir.parent / "tensorboard" / self.dir.name if tensorboard else None)

    def state(self) -> dict | None:
        path = self.dir / "state.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def tensors(self, state: dict, name: str) -> dict[str, torch.Tensor] | None:
        path = self.dir / state["folder"] / name
        return load_file(str(path)) if path.is_file() else None

    def optimizer(self, state: dict) -> dict:
        return torch.load(self.dir / state["folder"] / "optimizer.pt", map_location="cpu", weights_only=True)

    def save(self, state: dict, last: dict, best: dict | None, optimizer: dict) -> None:
        if not self.enabled:
            return
        folder = f"epoch-{state['epoch']:04d}"
        work = self.dir / folder
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        save_file(last, str(work / "last.safetensors"))
        if best is not None:
            save_file(best, str(work / "best.safetensors"))
        torch.save(optimizer, work / "optimizer.pt")
        save_file({"torch": torch.get_rng_state()}, str(work / "rng.safetensors"))
        write_json_atomic(self.dir / "state.json", {**state, "folder": folder})
        for old in self.dir.glob("epoch-*"):
            if old.name != folder:
                shutil.rmtree(old, ignore_errors=True)


__all__ = ["TrainingProgress", "check_config", "progress_root"]
