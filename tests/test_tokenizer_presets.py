"""Every tokenizer preset in configs/ loads, builds, and runs one window (so presets cannot rot)."""

from __future__ import annotations

import pytest
import torch

from neurofm.config import load_config
from neurofm.tokenizers.config import TokenizerTrainConfig
from neurofm.tokenizers.model import SensorTokenizer
from tests.conftest import ROOT

PRESETS = sorted((ROOT / "configs").glob("tokenizer_*.yaml"))


def test_presets_exist():
    assert {p.stem for p in PRESETS} >= {"tokenizer_tiny", "tokenizer_base", "tokenizer_large"}


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_builds_and_encodes(preset):
    cfg = load_config(TokenizerTrainConfig, preset)
    model = SensorTokenizer(cfg.model).eval()
    sensors = torch.zeros(1, 5, 12)
    sensors[0, :, :3] = torch.randn(5, 3) * 0.05
    sensors[0, :, 6] = 1.0  # eeg
    signal = torch.randn(1, 5, cfg.model.electro_patch_samples * 2)
    with torch.no_grad():
        result = model(signal, sensors, torch.ones(1, 5, dtype=torch.bool), "electro")
    assert result["codes"].shape == (1, 2, cfg.model.n_latents, cfg.model.levels)
    assert result["reconstruction"].shape == signal.shape
