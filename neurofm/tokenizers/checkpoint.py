"""Tokenizer checkpoints: a directory with ``config.json`` and ``model.safetensors``.

This is what ``encode``, ``eval`` and releases read. Training writes its resumable checkpoints (the same
two files plus optimizer and train state) through the shared checkpoint manager into
``<out>.checkpoints/`` and publishes each one into ``out`` (see :mod:`neurofm.tokenizers.train`).
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_model

import neurofm
from neurofm.config import from_dict, to_dict
from neurofm.errors import NeuroFMError
from neurofm.files import load_state, load_tensors, read_json
from neurofm.outputs import replaced_folder
from neurofm.tokenizers.config import TokenizerModelConfig
from neurofm.tokenizers.model import SensorTokenizer

FORMAT = "neurofm-tokenizer"
VERSION = 1


def tokenizer_config(model_cfg: TokenizerModelConfig, extra: dict | None = None) -> dict:
    """The ``config.json`` of a tokenizer checkpoint: format, version and model settings (+ ``extra``)."""
    return {"format": FORMAT, "version": VERSION, "neurofm_version": neurofm.__version__, "model": to_dict(model_cfg), **(extra or {})}


def save_tokenizer(model: SensorTokenizer, directory: str | Path, *, extra: dict | None = None) -> None:
    """Write ``model`` to ``directory``, atomically."""
    with replaced_folder(directory) as tmp:
        save_model(model, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(tokenizer_config(model.cfg, extra), indent=1))


def read_config(directory: str | Path) -> dict:
    """``config.json`` of a checkpoint, checked for format and version."""
    directory = Path(directory)
    path = directory / "config.json"
    if not path.is_file() or not (directory / "model.safetensors").is_file():
        raise NeuroFMError(
            f"{directory} is not a tokenizer checkpoint (needs config.json and model.safetensors); "
            "train one with `neurofm tokenizer train`."
        )
    config = read_json(path, "retrain the tokenizer, or copy its folder again.")
    if config.get("format") != FORMAT:
        raise NeuroFMError(f"{directory} is not a NeuroFM tokenizer checkpoint (format {config.get('format')!r}).")
    if config.get("version") != VERSION:
        raise NeuroFMError(
            f"{directory} is a version-{config.get('version')} tokenizer checkpoint; this NeuroFM "
            f"({neurofm.__version__}) reads version {VERSION}. Use the NeuroFM release that wrote it, or retrain."
        )
    return config


def stored_model_settings(config: dict) -> dict:
    """The model settings of a checkpoint's ``config.json``, with the defaults of settings added since
    it was written (``spatial_field``, ``spectrum_readout`` off: checkpoints before them have no such weights;
    ``bold_tokens`` latents: what fMRI windows were before)."""
    return {"spatial_field": False, "spectrum_readout": False, "bold_tokens": "latents", **config["model"]}


def load_tokenizer(directory: str | Path) -> SensorTokenizer:
    """The tokenizer in ``directory``, in eval mode."""
    config = read_config(directory)
    fix = "retrain the tokenizer, or copy its folder again."
    if not isinstance(config.get("model"), dict):
        raise NeuroFMError(f"{directory}/config.json has no 'model' settings; {fix}")
    model = SensorTokenizer(from_dict(TokenizerModelConfig, stored_model_settings(config), prefix=f"{directory}/config.json: model"))
    weights = Path(directory) / "model.safetensors"
    load_state(model, load_tensors(weights, fix), weights, fix)
    return model.eval()
