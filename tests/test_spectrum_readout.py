"""The tokenizer's spectrum read-out: a window's spectrum read linearly from its patch-averaged codes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from neurofm.config import load_config
from neurofm.errors import NeuroFMError
from neurofm.tokenizers.checkpoint import load_tokenizer, save_tokenizer
from neurofm.tokenizers.config import TokenizerTrainConfig
from neurofm.tokenizers.losses import SPECTRUM_BAND_HZ, band_log_spectrum
from neurofm.tokenizers.train import train_tokenizer

SFREQ = 256.0
READOUT = ["model.spectrum_readout=true", "loss.spectrum_readout=1.0"]


def _sines(hz: list[float], samples: int) -> torch.Tensor:
    t = torch.arange(samples) / SFREQ
    return torch.stack([torch.sin(2 * np.pi * f * t) for f in hz])[None] + 0.01 * torch.randn(1, len(hz), samples)


@pytest.mark.parametrize("samples", [512, 128])  # a 2-s window, and a 0.5-s one (zero-padded to one 1-s segment)
def test_band_spectrum_peaks_at_the_rhythm_of_the_real_channels_only(samples):
    signal = _sines([11.0, 30.0], samples) * torch.tensor([1.0, 100.0])[None, :, None]  # the loud 30 Hz channel is padding
    spectrum = band_log_spectrum(signal, torch.tensor([[True, False]]), torch.ones(1, samples, dtype=torch.bool), SFREQ)
    low, high = SPECTRUM_BAND_HZ
    assert spectrum.shape == (1, high - low + 1)
    assert abs(int(spectrum.argmax()) + low - 11) <= 1
    assert float(spectrum.mean()) == pytest.approx(0.0, abs=1e-5)  # centred: the shape, not the level


def test_a_windows_zero_padding_does_not_enter_its_spectrum():
    full = _sines([9.0], 512)
    padded = torch.cat([full[..., :256], torch.zeros(1, 1, 256)], dim=-1)
    time_mask = torch.arange(512)[None] < 256
    one = band_log_spectrum(full[..., :256], torch.ones(1, 1, dtype=torch.bool), torch.ones(1, 256, dtype=torch.bool), SFREQ)
    assert torch.allclose(band_log_spectrum(padded, torch.ones(1, 1, dtype=torch.bool), time_mask, SFREQ), one, atol=1e-4)
    assert int(band_log_spectrum(padded, torch.ones(1, 1, dtype=torch.bool), time_mask, SFREQ).argmax()) + SPECTRUM_BAND_HZ[0] == 9


@pytest.mark.parametrize("overrides", [["loss.spectrum_readout=1.0"], ["model.spectrum_readout=true"]])
def test_the_weight_and_the_head_come_together(overrides):
    with pytest.raises((NeuroFMError, ValueError), match="spectrum_readout"):
        load_config(TokenizerTrainConfig, None, overrides)


def test_readout_is_given_for_electrophysiology_only_and_old_checkpoints_load_without_it(tmp_path):
    from conftest import load_older_checkpoint, small_tokenizer

    model = small_tokenizer(spectrum_readout=True).eval()
    sensors = torch.zeros(2, 3, 12)
    sensors[..., :3] = torch.randn(2, 3, 3) * 0.05
    sensors[..., 6] = 1.0
    mask = torch.ones(2, 3, dtype=torch.bool)
    with torch.no_grad():
        electro = model(torch.randn(2, 3, 512), sensors, mask, "electro", time_mask=torch.arange(512)[None].repeat(2, 1) < 300)
        bold = model(torch.randn(2, 3, 8), sensors, mask, "bold")
    assert electro["spectrum_readout"].shape == (2, SPECTRUM_BAND_HZ[1] - SPECTRUM_BAND_HZ[0] + 1)
    assert "spectrum_readout" not in bold
    save_tokenizer(model, tmp_path / "with")
    assert load_tokenizer(tmp_path / "with").spectrum is not None
    loaded = load_older_checkpoint(tmp_path / "old", "spectrum_readout")
    assert loaded.spectrum is None and loaded.cfg.spectrum_readout is False


def test_training_with_the_readout_lowers_it_and_fmri_batches_add_nothing(corpus_shards, tmp_path):
    from conftest import SMALL_TOKENIZER

    cfg = load_config(TokenizerTrainConfig, None, [*SMALL_TOKENIZER, *READOUT, f"shards={corpus_shards}", f"out={tmp_path / 't'}",
                                                  "steps=60", "log_every=1", "lr=3e-3", "tensorboard=false",
                                                  "modality_weights={eeg: 1.0, fmri: 0.3}"])
    train_tokenizer(cfg, progress=False)
    log = [json.loads(line) for line in (tmp_path / "t.log.jsonl").read_text().splitlines()]
    electro = [r["spectrum_readout"] for r in log if r["spectrum_readout"] > 0]
    assert len(electro) < len(log)  # the fMRI batches' steps log 0
    assert np.mean(electro[-5:]) < 0.7 * np.mean(electro[:5]), (electro[:5], electro[-5:])


def test_readout_trains_on_two_ranks(corpus_shards, tmp_path):
    """Under DDP the head is part of the model's forward (unused on fMRI batches, which DDP allows)."""
    from conftest import SMALL_TOKENIZER, TOKENIZER_TRAIN_CODE, torchrun_processes

    out = tmp_path / "ddp"
    torchrun_processes(2, TOKENIZER_TRAIN_CODE, f"shards={corpus_shards}", f"out={out}", *SMALL_TOKENIZER, *READOUT, "steps=6",
                       "log_every=2", "tensorboard=false")
    assert json.loads((tmp_path / "ddp.done.json").read_text())["world_size"] == 2
    log = [json.loads(line) for line in (tmp_path / "ddp.log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4, 6] and "spectrum_readout" in log[-1]
