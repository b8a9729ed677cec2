"""Views of one scene: the simulator records the same sources on every device, the tokenizer pairs them."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from neurofm.config import load_config
from neurofm.data_shards import ShardIndex, build_shards
from neurofm.data_shards.batches import collate
from neurofm.data_shards.config import ShardsConfig, SimulateConfig
from neurofm.data_shards.simulate import plan_recordings, simulate_raw
from neurofm.errors import NeuroFMError
from neurofm.tokenizers.checkpoint import load_tokenizer
from neurofm.tokenizers.config import LossConfig, TokenizerTrainConfig
from neurofm.tokenizers.losses import reconstruction_loss, view_losses
from neurofm.tokenizers.train import train_tokenizer
from neurofm.tokenizers.views import ViewPartners

MONTAGES = ["biosemi64", "classic_1020"]


def view_config(cache) -> SimulateConfig:
    # 4 recordings of 20 s: 2 scenes, each on both montages
    return SimulateConfig(hours=80 / 3600, modalities=["eeg"], recording_seconds=20, subjects=2, eeg_montages=MONTAGES,
                          device_views=True, cache_dir=str(cache))


@pytest.fixture(scope="module")
def view_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("views")
    config = load_config(ShardsConfig, None, [f"out={out / 'shards'}", "inputs=[]"])
    config.simulate = view_config(out / "gains")
    build_shards(config, progress=False)
    return out / "shards"


def _conditions(raw) -> list[tuple[float, str]]:
    return [(round(a["onset"], 3), a["description"]) for a in raw.annotations if a["description"] != "blink"]


def test_device_views_record_each_scene_on_every_device_from_the_same_sources(tmp_path):
    config = view_config(tmp_path)
    plan = plan_recordings(config)
    assert [s.device for s in plan] == MONTAGES * 2
    assert plan[0].index == plan[1].index != plan[2].index
    (raw_a, truth_a), (raw_b, truth_b), (raw_c, truth_c) = (simulate_raw(s, config) for s in plan[:3])
    assert truth_a["scene"] == truth_b["scene"] != truth_c["scene"]
    assert truth_a["alpha_hz"] == truth_b["alpha_hz"] != truth_c["alpha_hz"]
    assert _conditions(raw_a) == _conditions(raw_b) != _conditions(raw_c)  # same events (blinks are the device's)
    assert raw_a.ch_names != raw_b.ch_names
    # without views the devices take turns, one scene each
    cycling = plan_recordings(SimulateConfig(**{**config.__dict__, "device_views": False}))
    assert len({s.index for s in cycling}) == len(cycling)


def test_partners_are_the_same_seconds_of_the_other_device(view_shards):
    index = ShardIndex(view_shards)
    partners = ViewPartners(index, np.arange(len(index)))
    assert len(partners) == len(index)  # every window has its view on the other montage
    pairs = partners.draw(list(range(len(index))), seed=0, step=0)
    for row, j in pairs:
        a, b = index[row]["meta"], index[j]["meta"]
        assert a["labels"]["scene"] == b["labels"]["scene"] and a["labels"]["device"] != b["labels"]["device"]
        assert a["window_onset"] == b["window_onset"]
    assert partners.draw([0, 1, 2], seed=0, step=5) == partners.draw([0, 1, 2], seed=0, step=5)
    # a partner outside the allowed windows (e.g. the held-out split) is not used: here none is left
    first = index.manifest["recordings"][0]
    with pytest.raises(NeuroFMError, match="device_views"):
        ViewPartners(index, np.arange(first["n_windows"]) + first["first_sample"])


def test_extend_appends_the_partners_with_their_own_channels(view_shards):
    index = ShardIndex(view_shards)
    partners = ViewPartners(index, np.arange(len(index)))
    rows = [0, 1, len(index) - 1]
    batch = collate([{**index[i], "__index__": i} for i in rows])
    extended, views = partners.extend(batch, seed=0, step=0)
    assert extended.signal.shape[0] == 6 and views.shape == (6, 2)
    assert sorted(map(tuple, views.tolist())) == sorted([(0, 3), (3, 0), (1, 4), (4, 1), (2, 5), (5, 2)])
    for r, (_, j) in enumerate(partners.draw(rows, 0, 0)):
        n = index[j]["signal"].shape[0]
        assert int(extended.channel_mask[3 + r].sum()) == n
        assert torch.equal(extended.signal[3 + r, :n], torch.from_numpy(index[j]["signal"]).float())
    assert torch.equal(extended.signal[:3, : batch.signal.shape[1]], batch.signal)


def test_shards_without_scenes_are_a_clear_error(corpus_shards):
    index = ShardIndex(corpus_shards)
    with pytest.raises(NeuroFMError, match="device_views=true"):
        ViewPartners(index, np.arange(len(index)))


def test_view_losses_are_zero_for_identical_views_and_about_two_for_unrelated_ones():
    torch.manual_seed(0)
    latents = torch.randn(8, 2, 3, 16)
    signal = torch.randn(8, 5, 64)
    channel_mask, time_mask = torch.ones(8, 5, dtype=torch.bool), torch.ones(8, 64, dtype=torch.bool)
    views = torch.tensor([[0, 4], [4, 0], [1, 5], [5, 1]])
    weights = LossConfig()
    same = latents.clone()
    same[4:6] = latents[0:2]
    terms = view_losses(same, signal[views[:, 1]], signal, channel_mask, time_mask, views, weights)
    assert float(terms["view_consistency"]) == 0.0
    assert float(terms["view_reconstruction"]) == pytest.approx(0.0, abs=1e-5)  # b reconstructed exactly
    unrelated = view_losses(latents * 1e3 + 5, signal[views[:, 0]], signal, channel_mask, time_mask, views, weights)
    assert 1.0 < float(unrelated["view_consistency"]) < 3.5  # ~2 whatever the latents' scale and offset
    expected = reconstruction_loss(signal[views[:, 1]], signal[views[:, 0]], channel_mask[views[:, 1]], time_mask[views[:, 1]], weights)
    assert float(unrelated["view_reconstruction"]) == pytest.approx(float(expected["total"]))


def _view_distance(tokenizer, index: ShardIndex) -> float:
    partners = ViewPartners(index, np.arange(len(index)))
    batch = collate([{**index[i], "__index__": i} for i in range(len(index)) if index[i]["meta"]["labels"]["device"] == MONTAGES[0]])
    batch, views = partners.extend(batch, 0, 0)
    with torch.no_grad():
        latents = tokenizer.encode(batch.signal, batch.sensors, batch.channel_mask, batch.family)
    spread = latents.var(dim=0).mean()
    return float((latents[views[:, 0]] - latents[views[:, 1]]).pow(2).mean() / spread)


def test_training_with_the_view_losses_brings_the_views_latents_together(view_shards, tmp_path):
    from conftest import SMALL_TOKENIZER

    small = [*SMALL_TOKENIZER, "log_every=10", "steps=40", "tensorboard=false", "channel_dropout=0", f"shards={view_shards}"]
    for name, extra in (("plain", []), ("views", ["loss.view_consistency=1.0", "loss.view_reconstruction=1.0"])):
        train_tokenizer(load_config(TokenizerTrainConfig, None, [*small, f"out={tmp_path / name}", *extra]), progress=False)
    log = [json.loads(line) for line in (tmp_path / "views.log.jsonl").read_text().splitlines()]
    assert {"view_consistency", "view_reconstruction"} <= set(log[-1])
    index = ShardIndex(view_shards)
    plain, views = (_view_distance(load_tokenizer(tmp_path / name), index) for name in ("plain", "views"))
    assert views < 0.7 * plain, (views, plain)


def test_view_losses_train_on_two_ranks(view_shards, tmp_path):
    """Under DDP each rank pairs the windows of its part of the batch (local means of the view terms)."""
    from conftest import SMALL_TOKENIZER, TOKENIZER_TRAIN_CODE, torchrun_processes

    out = tmp_path / "ddp"
    torchrun_processes(2, TOKENIZER_TRAIN_CODE, f"shards={view_shards}", f"out={out}", *SMALL_TOKENIZER, "steps=4", "log_every=2",
                       "tensorboard=false", "loss.view_consistency=1.0", "loss.view_reconstruction=1.0")
    assert json.loads((tmp_path / "ddp.done.json").read_text())["world_size"] == 2  # both ranks reached the end
    log = [json.loads(line) for line in (tmp_path / "ddp.log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4] and all(r["view_reconstruction"] > 0 for r in log)


def test_meeg_views_let_meg_share_the_eeg_scenes_like_a_simultaneous_recording(tmp_path):
    config = SimulateConfig(hours=160 / 3600, modalities=["eeg", "meg"], recording_seconds=20, subjects=2, eeg_montages=MONTAGES,
                            meg_helmets=["neuromag306", "ctf275"], device_views=True, meeg_views=True, cache_dir=str(tmp_path))
    plan = plan_recordings(config)
    from neurofm.data_shards.simulate.recordings import scene

    by_scene: dict[str, set] = {}
    for spec in plan:
        by_scene.setdefault(scene(spec), set()).add(spec.device)
    assert list(by_scene.values()) == [{*MONTAGES, "neuromag306", "ctf275"}] * 2
    eeg, meg = (next(s for s in plan if s.modality == m) for m in ("eeg", "meg"))
    (raw_eeg, truth_eeg), (raw_meg, truth_meg) = simulate_raw(eeg, config), simulate_raw(meg, config)
    assert truth_eeg["scene"] == truth_meg["scene"] and truth_eeg["alpha_hz"] == truth_meg["alpha_hz"]
    assert _conditions(raw_eeg) == _conditions(raw_meg) and raw_eeg.info["sfreq"] == raw_meg.info["sfreq"]
    # the shared sources are part of a recording's provenance; meeg_views alone is a config error
    assert meg.sources == "eeg" and meg.checksum() != dataclasses.replace(meg, sources="").checksum()
    with pytest.raises(ValueError, match="meeg_views needs device_views"):
        SimulateConfig(meeg_views=True)
