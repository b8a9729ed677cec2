"""Reading DeepSpeed checkpoints without running code from them.

DeepSpeed reads its checkpoint files with torch.load's weights-only mode switched off, i.e. full unpickling:
a crafted run folder (a colleague's run, a cluster scratch directory) would run arbitrary code on
``neurofm pretrain train`` resume or ``neurofm export``. Inside :func:`weights_only_loads` every
``torch.load`` — DeepSpeed's included — is forced through torch's weights-only unpickler, which builds
tensors, plain containers and the few DeepSpeed classes its checkpoints hold (allow-listed below) and
refuses anything else. ``python -m neurofm.pretrain.safe_checkpoint universal …`` runs DeepSpeed's
universal-checkpoint converter the same way.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import runpy
import sys
from collections.abc import Iterator
from pathlib import Path

from neurofm.errors import NeuroFMError

FORCE_ENV = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"

# the non-tensor objects DeepSpeed 0.19 writes into ZeRO checkpoints (plain values, no behaviour on load)
DEEPSPEED_CHECKPOINT_GLOBALS = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)


def _allowed_globals() -> list:
    found = []
    for dotted in DEEPSPEED_CHECKPOINT_GLOBALS:
        module, _, name = dotted.rpartition(".")
        try:
            obj = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue  # another DeepSpeed version: what it lacks cannot be in its checkpoints
        found.append(obj)
    return found


@contextlib.contextmanager
def weights_only_loads(where: str | Path) -> Iterator[None]:
    """Force every ``torch.load`` inside onto the weights-only unpickler; a file that needs more is refused.

    ``where`` (the run folder or checkpoint) is named in the error.
    """
    import torch

    previous = os.environ.get(FORCE_ENV)
    os.environ[FORCE_ENV] = "1"
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            yield
    except pickle.UnpicklingError as err:
        raise NeuroFMError(
            f"{where} holds a checkpoint file that is not plain tensors and values (it asks to run code on load), "
            f"so it was not loaded. Use only run folders you made or trust, or retrain. Detail: {str(err).splitlines()[0]}"
        ) from None
    finally:
        if previous is None:
            os.environ.pop(FORCE_ENV, None)
        else:
            os.environ[FORCE_ENV] = previous


def universal_command(tag_dir: Path, out_dir: Path) -> list[str]:
    """The command converting a ZeRO checkpoint tag into DeepSpeed's universal form, weights-only."""
    return [sys.executable, "-m", __name__, "universal", "--input_folder", str(tag_dir), "--output_folder", str(out_dir),
            "--num_extract_workers", "1", "--num_merge_workers", "1"]


def _main(argv: list[str]) -> int:
    if not argv or argv[0] != "universal":
        print(f"usage: python -m {__name__} universal --input_folder TAG --output_folder OUT", file=sys.stderr)
        return 2
    sys.argv = ["ds_to_universal", *argv[1:]]
    try:
        with weights_only_loads(argv[argv.index("--input_folder") + 1] if "--input_folder" in argv else "checkpoint"):
            runpy.run_module("deepspeed.checkpoint.ds_to_universal", run_name="__main__")
    except NeuroFMError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
