"""Epoch checkpoints of a finetune run, so an interrupted ``neurofm finetune`` resumes where it stopped.

Layout: ``<out>.progress/config.json`` (the run's config; other trajectory settings refuse to resume,
naming them, unless allowed with ``--allow-changed KEY``), ``tensorboard/<training>/`` (epoch scalars) and
one folder per training (``model``, ``shuffled``, ``random_encoder``): a checkpoint root of the shared
:class:`~neurofm.training.checkpoint.CheckpointManager` (folder backend, one tag per epoch, the last kept):
``last.safetensors`` and ``best.safetensors`` (the trainable tensors), ``optimizer.pt``, and the train
state (epoch, windows seen, loss history, best validation loss, patience count, ``done``, the data-order
and torch RNG states); and ``train_log.jsonl``. The progress folder is removed once the run folder is
written.
"""

from __future__ import annotations

import json
from pathlib import Path

from neurofm.data_shards.writer import write_json_atomic
from neurofm.files import read_json
from neurofm.training import MetricsLog, check_resume_settings
from neurofm.training.checkpoint import CheckpointManager, FolderBackend


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
    """The epoch checkpoints and log of one training (see module docstring); only the main process
    (``enabled``) writes."""

    def __init__(self, root: Path, name: str, enabled: bool = True):
        self.dir, self.enabled = root / name, enabled

    def metrics_log(self, resumed_epoch: int, tensorboard: bool) -> MetricsLog:
        """The epoch log of this training (JSONL beside its checkpoints; TensorBoard scalars in
        ``<progress root>/tensorboard/<training>/``, copied into the run folder when it is written)."""
        return MetricsLog(self.dir / "train_log.jsonl", resumed_step=resumed_epoch, enabled=self.enabled,
                          tensorboard=self.dir.parent / "tensorboard" / self.dir.name if tensorboard else None)

    def checkpoints(self, backend: FolderBackend) -> CheckpointManager:
        """A checkpoint every epoch, the last one kept."""
        return CheckpointManager(self.dir, backend, every=1, keep=1)


__all__ = ["TrainingProgress", "check_config", "progress_root"]
