"""Checkpoints of every training loop: one contract, two backends, one train-state format.

A :class:`CheckpointManager` owns a checkpoint root; each save is one tag folder::

    root/latest                       the tag of the last complete checkpoint (written last, atomically)
    root/step_00000100/
        config.json                   what the loop stores to check on resume (its settings …), rank 0
        train_state_rank{r}.json      each rank's TrainState: step, windows seen, data position, RNG states
        …                             the backend's files: FolderBackend → model.safetensors,
                                      <group>.safetensors, optimizer.pt; DeepSpeedBackend → DeepSpeed's own

Saving writes the backend's files, then every rank's train state and the config, waits for all ranks,
and only then points ``latest`` at the new tag and removes tags beyond the last ``keep``. A crash at any
moment leaves ``latest`` on a complete checkpoint; an unfinished tag left beside it is removed by the
next save. Loading reads ``latest`` (a tag without all its files is an error that names it) and hands
the tag to the backend. Nothing here unpickles: JSON, safetensors, and ``optimizer.pt`` through
``torch.load(weights_only=True)``; DeepSpeed's files through :func:`weights_only_loads`.
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from neurofm.errors import NeuroFMError
from neurofm.files import read_json

LATEST = "latest"
CONFIG = "config.json"


def tag_of(step: int) -> str:
    return f"step_{step:08d}"


def _state_file(rank: int) -> str:
    return f"train_state_rank{rank}.json"


def latest_tag(root: str | Path) -> str | None:
    """The tag ``root/latest`` names (None: no checkpoint yet); not checked for completeness."""
    pointer = Path(root) / LATEST
    return pointer.read_text().strip() if pointer.is_file() else None


# ---------------------------------------------------------------------------------------------- train state
@dataclass
class TrainState:
    """Where one rank of a training stands, in plain JSON.

    ``step``: optimizer steps (epochs for finetuning) done; ``windows_seen``: training windows consumed by
    all ranks together; ``data``: the data stream's resume state (``BatchStream.state()``); ``rng``: named
    RNG states (see :func:`capture_rng`); ``extra``: loop-specific counters (finetuning: loss history,
    best validation loss, patience).
    """

    step: int = 0
    windows_seen: int = 0
    data: dict = field(default_factory=dict)
    rng: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: dict, where: Path) -> TrainState:
        try:
            return cls(step=int(obj["step"]), windows_seen=int(obj.get("windows_seen", 0)), data=dict(obj.get("data", {})),
                       rng=dict(obj.get("rng", {})), extra=dict(obj.get("extra", {})))
        except (KeyError, TypeError, ValueError) as err:
            raise NeuroFMError(f"{where} is not a NeuroFM train state ({type(err).__name__}: {err}); delete the checkpoint "
                               "folder to start over, or restore the file.") from None


def capture_rng(torch_generators: dict[str, torch.Generator] | None = None,
                numpy_generators: dict[str, np.random.Generator] | None = None) -> dict:
    """Torch's global CPU RNG (``torch``), named torch generators (``torch:<name>``) and numpy generators
    (``numpy:<name>``) as JSON values (torch states base64-encoded bytes)."""
    encode = lambda t: base64.b64encode(t.numpy().tobytes()).decode()  # noqa: E731
    rng = {"torch": encode(torch.get_rng_state())}
    rng.update({f"torch:{name}": encode(g.get_state()) for name, g in (torch_generators or {}).items()})
    rng.update({f"numpy:{name}": g.bit_generator.state for name, g in (numpy_generators or {}).items()})
    return rng


def restore_rng(rng: dict, torch_generators: dict[str, torch.Generator] | None = None,
                numpy_generators: dict[str, np.random.Generator] | None = None) -> None:
    """Put back what :func:`capture_rng` took (states it does not hold are left as they are)."""
    decode = lambda s: torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)  # noqa: E731
    if "torch" in rng:
        torch.set_rng_state(decode(rng["torch"]))
    for name, g in (torch_generators or {}).items():
        if f"torch:{name}" in rng:
            g.set_state(decode(rng[f"torch:{name}"]))
    for name, g in (numpy_generators or {}).items():
        if f"numpy:{name}" in rng:
            g.bit_generator.state = rng[f"numpy:{name}"]


# ---------------------------------------------------------------------------------------------- backends
class FolderBackend:
    """Rank 0 writes ``model.safetensors`` (``module``), ``<name>.safetensors`` for each tensor group
    (``tensors``: name → a function giving the tensors, or None to write none) and ``optimizer.pt``
    (``optimizer`` and ``scheduler`` state dicts: plain tensors and values)."""

    def __init__(self, module: torch.nn.Module | None = None, optimizer=None, scheduler=None,
                 tensors: dict[str, Callable[[], dict | None]] | None = None):
        self.module, self.optimizer, self.scheduler, self.tensors = module, optimizer, scheduler, tensors or {}

    def save(self, root: Path, tag: str, rank: int) -> None:
        from safetensors.torch import save_file, save_model

        if rank != 0:
            return
        folder = root / tag
        if self.module is not None:
            save_model(self.module, str(folder / "model.safetensors"))
        for name, get in self.tensors.items():
            value = get()
            if value is not None:
                save_file({k: v.contiguous() for k, v in value.items()}, str(folder / f"{name}.safetensors"))
        if self.optimizer is not None:
            torch.save({"optimizer": self.optimizer.state_dict(),
                        "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None}, folder / "optimizer.pt")

    def load(self, root: Path, tag: str, saved_world: int, world: int) -> dict[str, dict | None]:
        """Load the module and optimizer in place; return the tensor groups (None where not saved)."""
        from safetensors.torch import load_model

        from neurofm.files import load_tensors

        folder, fix = root / tag, f"delete {root} to train from the start, or restore the file."
        if self.module is not None:
            device = next(self.module.parameters()).device
            try:
                load_model(self.module, str(folder / "model.safetensors"), device=str(device))
            except Exception as err:  # safetensors raises its own error types on a damaged file
                raise NeuroFMError(f"{folder / 'model.safetensors'} cannot be loaded ({str(err).splitlines()[0][:200]}); {fix}") from None
        groups = {name: load_tensors(folder / f"{name}.safetensors", fix) if (folder / f"{name}.safetensors").is_file() else None
                  for name in self.tensors}
        if self.optimizer is not None:
            path = folder / "optimizer.pt"
            try:
                state = torch.load(path, weights_only=True, map_location="cpu")
                self.optimizer.load_state_dict(state["optimizer"])
                if self.scheduler is not None:
                    self.scheduler.load_state_dict(state["scheduler"])
            except Exception as err:  # UnpicklingError, RuntimeError, EOFError, KeyError, ValueError on a damaged file
                raise NeuroFMError(f"{path} is damaged or not a NeuroFM optimizer state ({str(err).splitlines()[0][:200]}); "
                                   f"{fix}") from None
        return groups

    def remove(self, root: Path, tag: str) -> None:
        shutil.rmtree(root / tag, ignore_errors=True)


class DeepSpeedBackend:
    """DeepSpeed's engine writes and reads its own (ZeRO-sharded) files into the tag, every rank its
    share; ``latest`` stays the manager's. Loading on another number of ranks needs the tag in DeepSpeed's
    universal form (``<tag>_universal``): call :meth:`prepare_load` before ``deepspeed.initialize``. Every
    ``torch.load`` runs weights-only."""

    def __init__(self, engine=None, client_state: dict | None = None):
        self.engine, self.client_state = engine, client_state or {}

    @staticmethod
    def prepare_load(checkpoint: Checkpoint, rank: int, world: int, ds_config: dict, barrier: Callable[[], None]) -> None:
        """For a resume on another rank count: convert the tag (rank 0, once; DeepSpeed's ``ds_to_universal``,
        weights-only) and configure the engine to load the universal form."""
        if checkpoint.world == world:
            return
        universal = checkpoint.root / f"{checkpoint.tag}_universal"
        if rank == 0 and not universal.is_dir():
            _to_universal(checkpoint.root / checkpoint.tag, universal)
        barrier()
        ds_config["checkpoint"] = {"load_universal": True}

    def save(self, root: Path, tag: str, rank: int) -> None:
        self.engine.save_checkpoint(str(root), tag=tag, client_state=self.client_state, save_latest=False)

    def load(self, root: Path, tag: str, saved_world: int, world: int) -> dict:
        from neurofm.pretrain.safe_checkpoint import weights_only_loads

        load_tag = tag if saved_world == world else f"{tag}_universal"
        with weights_only_loads(root / load_tag):
            self.engine.load_checkpoint(str(root), tag=load_tag)
        return {}

    def remove(self, root: Path, tag: str) -> None:
        shutil.rmtree(root / tag, ignore_errors=True)
        shutil.rmtree(root / f"{tag}_universal", ignore_errors=True)


# ---------------------------------------------------------------------------------------------- the manager
@dataclass
class Checkpoint:
    """A complete checkpoint found under a root: its tag, stored config and every rank's train state."""

    root: Path
    tag: str
    config: dict
    states: list[TrainState]

    @property
    def step(self) -> int:
        return self.states[0].step

    @property
    def world(self) -> int:
        return len(self.states)

    def state_for(self, rank: int, world: int) -> TrainState:
        """This rank's state when the rank count is unchanged, else rank 0's (step and counters agree)."""
        return self.states[rank] if world == len(self.states) else self.states[0]


class CheckpointManager:
    """``should_save`` / ``save`` / ``latest`` / ``load`` for a checkpoint ``root`` (see module docstring).

    ``every``: save every that many steps (and always at the last step or on request); ``keep``: complete
    tags kept (the newest); ``backend``: a :class:`FolderBackend` or :class:`DeepSpeedBackend` (may be set
    after construction, e.g. once the DeepSpeed engine exists); ``barrier``: a function that waits for every
    rank (None in one process).
    """

    def __init__(self, root: str | Path, backend=None, *, every: int, keep: int = 1, rank: int = 0, world: int = 1,
                 barrier: Callable[[], None] | None = None):
        if keep < 1:
            raise NeuroFMError(f"keep_checkpoints={keep}: at least 1 checkpoint must be kept (the one a resume starts from).")
        self.root, self.backend, self.every, self.keep = Path(root), backend, every, keep
        self.rank, self.world, self._barrier = rank, world, barrier

    def should_save(self, step: int, *, last: bool = False, requested: bool = False) -> bool:
        return last or requested or (self.every > 0 and step % self.every == 0)

    def latest(self) -> Checkpoint | None:
        """The checkpoint ``latest`` names (None: no checkpoint yet); a damaged one is an error naming it."""
        pointer = self.root / LATEST
        if not pointer.is_file():
            return None
        tag = pointer.read_text().strip()
        folder = self.root / tag
        fix = f"delete {self.root} to start over, or restore it."
        if not tag or not folder.is_dir() or not (folder / _state_file(0)).is_file():
            raise NeuroFMError(f"{pointer} names {tag!r}, which is not a complete checkpoint; {fix}")
        states, rank = [], 0
        while (folder / _state_file(rank)).is_file():
            path = folder / _state_file(rank)
            states.append(TrainState.from_json(read_json(path, fix), path))
            rank += 1
        return Checkpoint(self.root, tag, read_json(folder / CONFIG, fix), states)

    def load(self, checkpoint: Checkpoint) -> dict:
        """Load ``checkpoint`` into the backend; returns what the backend gives back (tensor groups)."""
        return self.backend.load(self.root, checkpoint.tag, checkpoint.world, self.world)

    def save(self, step: int, state: TrainState, config: dict) -> str:
        """Write a checkpoint of ``step`` (every rank calls this with its own ``state``); returns its tag."""
        from neurofm.data_shards.writer import write_json_atomic, write_text_atomic

        tag = tag_of(step)
        folder = self.root / tag
        try:
            if self._latest_tag() == tag:  # saved twice at one step: every rank sees it before the first barrier
                return tag
            if self.rank == 0:
                shutil.rmtree(folder, ignore_errors=True)  # an unfinished save of an interrupted run
                folder.mkdir(parents=True)
            self._wait()
            self.backend.save(self.root, tag, self.rank)
            write_json_atomic(folder / _state_file(self.rank), asdict(state))
            if self.rank == 0:
                write_json_atomic(folder / CONFIG, config)
            self._wait()
            if self.rank == 0:
                write_text_atomic(self.root / LATEST, tag)
        except OSError:
            if self.rank == 0 and self._latest_tag() != tag:  # e.g. a full disk: no half-written tag beside the last good one
                self.backend.remove(self.root, tag)
            raise
        if self.rank == 0:
            self._retain(tag)
        self._wait()
        return tag

    def _latest_tag(self) -> str | None:
        return latest_tag(self.root)

    def _retain(self, newest: str) -> None:
        tags = sorted(p.name for p in self.root.glob("step_*") if p.is_dir() and p.name[5:].isdigit() and p.name <= newest)
        for old in tags[: -self.keep]:
            self.backend.remove(self.root, old)
        for stray in self.root.glob("step_*"):  # tags after the newest: from a run that went further, then was resumed earlier
            if stray.is_dir() and stray.name[5:].isdigit() and stray.name > newest:
                self.backend.remove(self.root, stray.name)

    def _wait(self) -> None:
        if self._barrier is not None and self.world > 1:
            self._barrier()


def publish_folder(source: Path, out: Path, names: tuple[str, ...]) -> None:
    """Copy ``names`` from a checkpoint tag into ``out``, replacing it whole (see ``replaced_folder``)."""
    from neurofm.outputs import replaced_folder

    with replaced_folder(out) as tmp:
        for name in names:
            shutil.copy2(source / name, tmp / name)


def _to_universal(tag_dir: Path, universal_dir: Path) -> None:
    """Convert a ZeRO checkpoint tag into DeepSpeed's universal form (loadable on any rank count)."""
    import subprocess

    from neurofm.pretrain.safe_checkpoint import universal_command

    tmp = universal_dir.with_name(universal_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    result = subprocess.run(universal_command(tag_dir, tmp), capture_output=True, text=True)
    if result.returncode != 0:
        raise NeuroFMError(f"Could not convert {tag_dir} to a universal checkpoint:\n{result.stderr[-2000:]}")
    tmp.rename(universal_dir)


__all__ = ["Checkpoint", "CheckpointManager", "DeepSpeedBackend", "FolderBackend", "TrainState", "capture_rng",
           "latest_tag", "publish_folder", "restore_rng", "tag_of"]
