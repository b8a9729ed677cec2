"""Per-layer linear probes of a release, on real windows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from neurofm.cli import main
from neurofm.errors import NeuroFMError
from neurofm.finetune.encoder import BrainEncoder
from neurofm.finetune.probe import probe_release, window_label
from neurofm.data_shards.batches import collate


def test_encoder_gives_one_embedding_per_layer(release, corpus_shards):
    from neurofm.data_shards import ShardIndex

    encoder = BrainEncoder.from_pretrained(release)
    index = ShardIndex(corpus_shards)
    batch = collate([index[0], index[1]])
    emb = encoder.layer_embeddings(batch.signal, batch.sensors, batch.channel_mask, batch.family, ["eeg", "eeg"])
    assert emb.shape == (3, 2, 32) and np.isfinite(emb.numpy()).all()


def test_window_labels():
    meta = {"dataset": "x", "labels": {"event": "related"}, "events": [{"label": "blink"}, {"label": "T1"}, {"label": "T2"}]}
    assert window_label(meta, ["T1", "T2"], None) == "T1"
    assert window_label(meta, None, "dataset") == "x" and window_label(meta, None, "event") == "related"
    assert window_label(meta, ["T9"], None) is None


def test_probe_finds_what_is_decodable_and_reports_baselines(release, corpus_shards, tmp_path, capsys):
    # the modality of a window is trivially in its embedding (sensor kinds differ): a probe must find it
    code = main(["probe", "--release", str(release), "--shards", str(corpus_shards), "--out", str(tmp_path / "p"),
                 "--label-key", "modality", "--folds", "3", "--group-by", "block"])
    printed = capsys.readouterr().out
    assert code == 0 and "shuffled" in printed and "random weights" in printed and "raw features" in printed
    metrics = json.loads((tmp_path / "p" / "metrics.json").read_text())
    assert metrics["classes"] == ["eeg", "fmri", "ieeg", "meg"] and metrics["chance"]["balanced_accuracy"] == 0.25
    best = max(r["balanced_accuracy"] for r in metrics["layers"])
    shuffled = max(r["shuffled"]["balanced_accuracy"] for r in metrics["layers"])
    assert best > 0.8 and shuffled < 0.45
    for r in metrics["layers"]:
        assert 0 <= r["auroc"] <= 1 and -1 <= r["kappa"] <= 1 and 0 <= r["weighted_f1"] <= 1
        assert 0 <= r["random_weights"]["balanced_accuracy"] <= 1
    assert metrics["grouping"] == "blocks of 10 windows" and 0 <= metrics["raw_features"]["balanced_accuracy"] <= 1
    assert (tmp_path / "p" / "layers.png").is_file() and (tmp_path / "p" / "confusion.png").is_file()


def test_probe_groups_by_recording_by_default(release, corpus_shards, tmp_path):
    metrics = probe_release(release, corpus_shards, tmp_path / "p", label_key="modality", n_splits=3)
    assert metrics["grouping"] == "by recording" and metrics["pooling"] == "mean"
    assert {"random_weights", "shuffled"} <= set(metrics["layers"][0]) and "raw_features" in metrics
    assert 0 <= metrics["raw_spectrum"]["balanced_accuracy"] <= 1  # the spectrum of the EEG/MEG/iEEG windows (fMRI's NaN, imputed)
    with pytest.raises(NeuroFMError, match="different lengths"):  # EEG and fMRI windows have other patch counts
        probe_release(release, corpus_shards, tmp_path / "t", label_key="modality", n_splits=3, pooling="time")


def test_probe_of_epochs_pools_the_patches_after_each_event_by_default(release, tmp_path, capsys):
    """Event-locked windows (the demo's probe set, smaller): ``auto`` is ``event`` pooling, whose vector
    holds the tokens of the 3 patches a 0.4-s span can overlap, whatever the window length."""
    from neurofm.config import load_config
    from neurofm.data_shards import ShardIndex, build_shards
    from neurofm.data_shards.config import ShardsConfig
    from neurofm.data_shards.windows import event_onset

    config = load_config(ShardsConfig, "configs/demo_probe.yaml", [f"out={tmp_path / 'epochs'}", "simulate.hours=0.02",
                                                                  "simulate.recording_seconds=20"])
    build_shards(config, progress=False)
    metrics = probe_release(release, tmp_path / "epochs", tmp_path / "p", label_key="event", n_splits=2)
    assert metrics["pooling"] == "event" and metrics["grouping"] == "by recording"
    encoder = BrainEncoder.from_pretrained(release)
    index = ShardIndex(tmp_path / "epochs")
    batch = collate([index[0], index[1]])
    anchors = [event_onset(m) for m in batch.metas]
    assert anchors == [0.5, 0.5]  # tmin −0.5: the event half a second into each window
    args = (batch.signal, batch.sensors, batch.channel_mask, batch.family, ["eeg", "eeg"], None, "event", anchors)
    emb = encoder.layer_embeddings(*args)
    k, d = encoder.model.cfg.n_latents, encoder.d_model
    assert emb.shape == (encoder.n_layers, 2, 3 * k * d) and not emb[:, :, 2 * k * d:].any()  # patches 2, 3; no third
    flat = encoder.layer_embeddings(*args[:-2], "flat").reshape(encoder.n_layers, 2, -1, k * d)
    assert np.allclose(emb[:, :, : 2 * k * d].numpy(), flat[:, :, 2:4].reshape(encoder.n_layers, 2, -1).numpy())
    # a sustained response: --event-span 1.2 keeps the patches of 0.5 … 1.7 s (2 … 6) of the 0.25-s patches
    longer = encoder.layer_embeddings(*args, event_span=1.2)
    assert longer.shape == (encoder.n_layers, 2, 6 * k * d) and not longer[:, :, 5 * k * d:].any()
    assert np.allclose(longer[:, :, : 5 * k * d].numpy(), flat[:, :, 2:7].reshape(encoder.n_layers, 2, -1).numpy())
    assert main(["probe", "--release", str(release), "--shards", str(tmp_path / "epochs"), "--out", str(tmp_path / "q"),
                 "--label-key", "event", "--folds", "2", "--event-span", "1.2"]) == 0
    assert "event pooling (1.2 s after each event)" in capsys.readouterr().out
    assert json.loads((tmp_path / "q" / "metrics.json").read_text())["event_span"] == 1.2
    with pytest.raises(NeuroFMError, match="event span must be a positive"):
        encoder.layer_embeddings(*args, event_span=0.0)


def test_probe_bad_labels(release, corpus_shards, tmp_path):
    with pytest.raises(NeuroFMError, match="carries any of the labels"):
        probe_release(release, corpus_shards, tmp_path, labels=["nope"])
    with pytest.raises(NeuroFMError, match="has no tokenizer/ directory"):
        probe_release(tmp_path, corpus_shards, tmp_path, label_key="modality")


def test_embed_writes_every_layer_in_stored_order(release, corpus_shards, tmp_path):
    from safetensors.numpy import load_file

    from neurofm.data_shards import ShardIndex

    assert main(["embed", "--release", str(release), "--shards", str(corpus_shards), "--out", str(tmp_path / "e")]) == 0
    tensors = load_file(str(tmp_path / "e" / "embeddings.safetensors"))
    index = json.loads((tmp_path / "e" / "index.json").read_text())
    shards = ShardIndex(corpus_shards)
    assert sorted(tensors) == ["layer_0", "layer_1", "layer_2"]
    assert all(t.shape == (len(shards), 32) for t in tensors.values())
    assert [r["key"] for r in index[:3]] == [shards[i]["__key__"] for i in range(3)]
    encoder = BrainEncoder.from_pretrained(release)
    batch = collate([shards[0]])
    direct = encoder.layer_embeddings(batch.signal, batch.sensors, batch.channel_mask, batch.family, [index[0]["modality"]])
    assert np.allclose(direct[:, 0].numpy(), np.stack([tensors[f"layer_{i}"][0] for i in range(3)]), atol=1e-5)


def test_embed_on_two_torchrun_processes_writes_the_files_of_one(release, corpus_shards, tmp_path):
    from conftest import one_and_two_processes

    code = "import sys; from neurofm.finetune.embed import embed_shards; embed_shards(sys.argv[1], sys.argv[2], sys.argv[3], batch_size=4)"
    one_and_two_processes(code, tmp_path, release, corpus_shards)
    from safetensors import safe_open

    assert (tmp_path / "1" / "index.json").read_bytes() == (tmp_path / "2" / "index.json").read_bytes()
    one, two = (safe_open(str(tmp_path / n / "embeddings.safetensors"), "np") for n in ("1", "2"))
    assert one.metadata() == two.metadata()  # (safetensors writes its metadata map in no fixed key order)
    assert sorted(one.keys()) == sorted(two.keys()) and len(one.keys()) == 3
    for name in one.keys():
        assert np.array_equal(one.get_tensor(name), two.get_tensor(name)), name


def test_probe_on_two_torchrun_processes_gives_the_scores_of_one(release, corpus_shards, tmp_path):
    from conftest import one_and_two_processes

    code = ("import sys; from neurofm.finetune.probe import probe_release; "
            "probe_release(sys.argv[1], sys.argv[2], sys.argv[3], label_key='modality', n_splits=3)")
    one, two = (json.loads((f / "metrics.json").read_text()) for f in one_and_two_processes(code, tmp_path, release, corpus_shards))
    assert one == two and one["windows"] > 8


def test_auto_pooling_is_event_for_event_locked_windows_cov_for_continuous_electrophysiology_flat_or_mean_else():
    from neurofm.finetune.encoder import resolve_pooling

    settings = {"eeg": {"window_seconds": 2.0, "sfreq": 256.0}, "meg": {"window_seconds": 2.0, "sfreq": 256.0},
                "fmri": {"window_seconds": 16.0, "tr_seconds": 2.0}}
    manifest = lambda *mods, layout="continuous": {"settings": settings, "recordings": [{"modality": m, "layout": layout} for m in mods]}  # noqa: E731
    assert resolve_pooling("auto", manifest("eeg", "meg", layout="epochs")) == "event"
    assert resolve_pooling("auto", manifest("eeg", "fmri", layout="epochs")) == "mean"  # two patch lengths
    assert resolve_pooling("auto", manifest("eeg", "meg")) == "cov"  # continuous: states, not latencies
    assert resolve_pooling("auto", {"settings": {}, "recordings": [{"modality": "eeg"}]}) == "cov"  # cov's size needs no window length
    assert resolve_pooling("auto", manifest("eeg", "fmri")) == "mean"
    assert resolve_pooling("auto", manifest("fmri", "fmri")) == "flat"
    mixed = {"settings": settings, "recordings": [{"modality": "eeg", "layout": "epochs"}, {"modality": "eeg"}]}
    assert resolve_pooling("auto", mixed) == "flat"
    assert resolve_pooling("auto", {"settings": {}, "recordings": [{"modality": "eeg", "layout": "epochs"}, {"modality": "meg"}]}) == "mean"
    assert resolve_pooling("time", manifest("eeg", "fmri")) == "time"
    # fMRI with one token per parcel: two parcellations give two token counts, one gives one
    parcels = lambda *counts: {"settings": settings, "recordings": [{"modality": "fmri", "n_channels": c} for c in counts]}  # noqa: E731
    assert resolve_pooling("auto", parcels(32, 64), ("bold",)) == "mean"
    assert resolve_pooling("auto", parcels(32, 32), ("bold",)) == "flat"
    assert resolve_pooling("auto", parcels(32, 64)) == "flat"  # K latents whatever the parcel count
