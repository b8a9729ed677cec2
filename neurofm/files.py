"""Reading the JSON and safetensors files users hand over, with errors that name the file and the fix.

Every stage reads folders made by another stage (or by a colleague): a manifest, a release's or a
tokenizer's ``config.json``, ``model.safetensors``, a finetuning head. A file that is missing, not
JSON, JSON of the wrong shape, or not safetensors is a :class:`~neurofm.errors.NeuroFMError` here,
never a traceback from ``json`` or ``safetensors``.
"""

from __future__ import annotations

import json
from pathlib import Path

from neurofm.errors import NeuroFMError


def read_json(path: str | Path, fix: str, expect: type = dict):
    """The JSON value in ``path`` (of type ``expect``); ``fix`` says how to get a good one."""
    path = Path(path)
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise NeuroFMError(f"{path} is missing; {fix}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise NeuroFMError(f"{path} is not valid JSON ({err}); {fix}") from None
    except IsADirectoryError:
        raise NeuroFMError(f"{path} is a folder, not a JSON file; {fix}") from None
    if not isinstance(value, expect):
        raise NeuroFMError(f"{path} holds a JSON {type(value).__name__}, not the {expect.__name__} expected; {fix}")
    return value


def load_tensors(path: str | Path, fix: str) -> dict:
    """The tensors of the safetensors file ``path``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise NeuroFMError(f"{path} is missing; {fix}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise NeuroFMError(f"{path} is not a readable safetensors file ({str(err).splitlines()[0]}); {fix}") from None


def load_state(module, state: dict, path: str | Path, fix: str, strict: bool = True) -> None:
    """``module.load_state_dict(state)`` with missing, unexpected and wrongly shaped tensors named."""
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a size mismatch
        detail = " ".join(line.strip() for line in str(err).splitlines()[1:3])
        raise NeuroFMError(f"{path} does not match its config ({detail}); {fix}") from None
    if strict and (missing or unexpected):
        raise NeuroFMError(f"{path} does not match its config (missing {missing[:3]}, unexpected {unexpected[:3]}); {fix}")


__all__ = ["load_state", "load_tensors", "read_json"]
