"""Where a command runs: ``device: auto | cpu | cuda`` → a ``torch.device``.

``auto`` takes a GPU when torch sees one (under torchrun, this process's ``LOCAL_RANK`` GPU), else the
CPU; ``cuda`` on a machine without one is a clear error rather than torch's assertion.
"""

from __future__ import annotations

import os

import torch

from neurofm.errors import NeuroFMError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto") -> torch.device:
    """``name`` ('auto', 'cpu', 'cuda' or 'cuda:N') → the device to run on."""
    if name not in DEVICES and not name.startswith("cuda:"):
        raise NeuroFMError(f"device '{name}' is not one of {', '.join(DEVICES)} (or cuda:N).")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise NeuroFMError(f"device '{name}' asked for a GPU, but torch sees none here; use --device cpu or auto.")
    if name.startswith("cuda:"):
        return torch.device(name)
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


__all__ = ["DEVICES", "resolve_device"]
