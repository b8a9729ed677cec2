"""The sensor-aware tokenizer on real windows from ../shared/data."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch

from neurofm.cli import main
from neurofm.config import load_config
from neurofm.data_shards import ShardIndex, verify_shards
from neurofm.errors import NeuroFMError, TrainingInterrupted
from neurofm.tokenizers.checkpoint import load_tokenizer, save_tokenizer
from neurofm.tokenizers.config import TokenizerTrainConfig
from neurofm.data_shards.batches import collate
from neurofm.tokenizers.encode import encode_shards
from neurofm.tokenizers.evaluate import evaluate_tokenizer
from neurofm.tokenizers.train import SPARSE_MONTAGE_CHANNELS, checkpoint_root, sparse_montage, train_tokenizer

from conftest import SMALL_TOKENIZER as SMALL
from conftest import TOKENIZER_TRAIN_CODE as TRAIN_CODE
from conftest import load_older_checkpoint, small_tokenizer


def train_config(shards, out, *extra) -> TokenizerTrainConfig:
    return load_config(TokenizerTrainConfig, None, [f"shards={shards}", f"out={out}", *SMALL, *extra])


@pytest.fixture(scope="module")
def windows(corpus_shards):
    """Two real windows of each modality, decoded."""
    index = ShardIndex(corpus_shards)
    by_modality: dict[str, list] = {}
    for i in range(len(index)):
        m = index.modality_of[i]
        if len(by_modality.setdefault(m, [])) < 2 and (m != "meg" or index[i]["signal"].shape[0] > 100):
            by_modality[m].append(index[i])
    return by_modality


@pytest.fixture(scope="module")
def trained(corpus_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok") / "ckpt"
    train_tokenizer(train_config(corpus_shards, out, "steps=30"), progress=False)
    return out


def test_shapes_for_every_modality(windows):
    model = small_tokenizer()
    for modality, samples in windows.items():
        batch = collate(samples)
        result = model(batch.signal, batch.sensors, batch.channel_mask, batch.family)
        b, c, t = batch.signal.shape
        patch = 64 if modality != "fmri" else 4
        tokens = c if modality == "fmri" else 4  # fMRI: one token per parcel (bold_tokens: channels)
        assert result["reconstruction"].shape == (b, c, t)
        assert result["codes"].shape == (b, t // patch, tokens, 2)
        assert 0 <= result["codes"].min() and result["codes"].max() < 16


def test_channel_order_does_not_change_the_codes(windows):
    model = small_tokenizer().double().eval()
    sample = windows["eeg"][0]
    batch = collate([sample])
    perm = torch.randperm(batch.signal.shape[1], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = model(batch.signal.double(), batch.sensors.double(), batch.channel_mask, "electro")
        b = model(batch.signal[:, perm].double(), batch.sensors[:, perm].double(), batch.channel_mask[:, perm], "electro")
    assert torch.equal(a["codes"], b["codes"])
    assert torch.allclose(a["reconstruction"][:, perm], b["reconstruction"], atol=1e-9)


def test_any_channel_count_encodes_and_decodes_the_kept_channels(windows):
    model = small_tokenizer().eval()
    batch = collate(windows["meg"][:1])
    keep = torch.arange(0, batch.signal.shape[1], 7)  # every 7th of 366 MEG/EEG channels
    with torch.no_grad():
        full = model(batch.signal, batch.sensors, batch.channel_mask, "electro")
        part = model(batch.signal[:, keep], batch.sensors[:, keep], batch.channel_mask[:, keep], "electro")
        # the latents of the kept channels can also be decoded at sensors the encoder never saw
        latents = model.quantize(model.encode(batch.signal[:, keep], batch.sensors[:, keep], batch.channel_mask[:, keep], "electro"))[0]
        everywhere = model.decode(latents, batch.sensors, "electro")
    assert part["reconstruction"].shape == (1, len(keep), batch.signal.shape[2])
    assert full["codes"].shape == part["codes"].shape
    assert everywhere.shape == batch.signal.shape and torch.isfinite(everywhere).all()


def test_padding_channels_do_not_change_a_window(windows):
    model = small_tokenizer().double().eval()
    alone = collate(windows["eeg"][:1])
    padded = collate([windows["eeg"][0], windows["meg"][0]])  # padded to the MEG channel count
    with torch.no_grad():
        a = model(alone.signal.double(), alone.sensors.double(), alone.channel_mask, "electro")
        b = model(padded.signal.double(), padded.sensors.double(), padded.channel_mask, "electro")
    c = alone.signal.shape[1]
    assert torch.equal(a["codes"][0], b["codes"][0])
    assert torch.allclose(a["reconstruction"][0], b["reconstruction"][0, :c], atol=1e-9)


def test_channel_tokens_follow_the_parcels_in_any_order_and_padding(windows, tmp_path):
    model = small_tokenizer().double().eval()
    sample = windows["fmri"][0]
    fewer = {**sample, "signal": sample["signal"][:5], "sensors": sample["sensors"][:5]}
    alone, padded = collate([fewer]), collate([fewer, sample])  # padded to the other window's parcel count
    perm = torch.randperm(5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = model(alone.signal.double(), alone.sensors.double(), alone.channel_mask, "bold")
        b = model(padded.signal.double(), padded.sensors.double(), padded.channel_mask, "bold")
        shuffled = model(alone.signal[:, perm].double(), alone.sensors[:, perm].double(), alone.channel_mask, "bold")
    assert a["codes"].shape[2] == 5 and b["codes"].shape[2] == len(sample["signal"])
    # each parcel's token is its own: reordering parcels reorders tokens; padding changes nothing
    assert torch.equal(a["codes"][:, :, perm], shuffled["codes"])
    assert torch.allclose(a["reconstruction"][:, perm], shuffled["reconstruction"], atol=1e-9)
    assert torch.equal(a["codes"][0], b["codes"][0, :, :5])
    assert torch.allclose(a["reconstruction"][0], b["reconstruction"][0, :5], atol=1e-9)
    assert model.cfg.bits_per_second("bold", 5) == pytest.approx(5 * 2 * 4 / 8.0)  # 5 tokens × 2 levels × 4 bits per 8 s
    assert model.cfg.bits_per_second("electro", 5) == pytest.approx(4 * 2 * 4 / 0.25)  # EEG/MEG: K latents whatever C
    # a checkpoint written before channel tokens existed has K latents for fMRI too
    loaded = load_older_checkpoint(tmp_path / "old", "bold_tokens", bold_tokens="latents")
    assert loaded.cfg.bold_tokens == "latents" and not loaded.channel_tokens
    with torch.no_grad():
        assert loaded(alone.signal, alone.sensors, alone.channel_mask, "bold")["codes"].shape[2] == 4


def test_save_load_identical_and_other_version_refused(windows, tmp_path):
    model = small_tokenizer()
    batch = collate(windows["ieeg"])
    model(batch.signal, batch.sensors, batch.channel_mask, "electro")  # k-means initialises the codebooks
    model.eval()
    save_tokenizer(model, tmp_path / "ckpt")
    loaded = load_tokenizer(tmp_path / "ckpt")
    with torch.no_grad():
        a = model(batch.signal, batch.sensors, batch.channel_mask, "electro")
        b = loaded(batch.signal, batch.sensors, batch.channel_mask, "electro")
    assert torch.equal(a["codes"], b["codes"]) and torch.equal(a["reconstruction"], b["reconstruction"])
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    config["version"] = 99
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    with pytest.raises(NeuroFMError, match="version-99 tokenizer checkpoint.*reads version 1"):
        load_tokenizer(tmp_path / "ckpt")
    with pytest.raises(NeuroFMError, match="not a tokenizer checkpoint"):
        load_tokenizer(tmp_path)


def test_spatial_field_averages_over_sensors_and_old_checkpoints_load_without_it(windows, tmp_path):
    model = small_tokenizer(spatial_field=True).double().eval()
    batch = collate(windows["eeg"][:1])
    twice = collate([{**windows["eeg"][0], "signal": np.concatenate([windows["eeg"][0]["signal"]] * 2),
                      "sensors": np.concatenate([windows["eeg"][0]["sensors"]] * 2)}])
    with torch.no_grad():
        def virtual(b):  # the field's K virtual channels of a window: [1, P, K, D]
            patches = b.signal.double().reshape(*b.signal.shape[:2], -1, 64)
            return model.field.encode(patches, model.sensor_encoder(b.sensors.double()), b.channel_mask, "electro")
        # every sensor given twice is the same field sampled twice: the same virtual channels
        assert torch.allclose(virtual(batch), virtual(twice), atol=1e-9)
    # a checkpoint written before the field existed has no such setting and no such weights
    loaded = load_older_checkpoint(tmp_path / "old", "spatial_field")
    assert loaded.field is None and loaded.cfg.spatial_field is False


def test_bad_windows_are_clear_errors(windows):
    model = small_tokenizer().eval()
    batch = collate(windows["eeg"][:1])
    s, x, m = batch.sensors, batch.signal, batch.channel_mask
    with pytest.raises(NeuroFMError, match="has no sensors"):
        model.encode(x[:, :0], s[:, :0], m[:, :0], "electro")
    nan = x.clone()
    nan[0, 0, 5] = float("nan")
    with pytest.raises(NeuroFMError, match="NaN"):
        model.encode(nan, s, m, "electro")
    unknown = s.clone()
    unknown[0, 0, 6:] = 0.0  # a row with no kind
    with pytest.raises(NeuroFMError, match="no valid kind"):
        model.encode(x, unknown, m, "electro")
    with pytest.raises(NeuroFMError, match="do not split into patches of 64"):
        model.encode(x[:, :, :500], s, m, "electro")
    with pytest.raises(NeuroFMError, match="unknown modality family 'nirs'"):
        model.encode(x, s, m, "nirs")


def test_fsq_quantizer(windows):
    model = small_tokenizer(quantizer="fsq", fsq_levels=[5, 3]).eval()
    batch = collate(windows["fmri"])
    with torch.no_grad():
        result = model(batch.signal, batch.sensors, batch.channel_mask, "bold")
    assert model.cfg.codes_per_level == 15 and result["codes"].max() < 15
    assert model.cfg.bits_per_second("bold", 20) == pytest.approx(20 * 2 * np.log2(15) / 8.0)  # 20 parcel tokens, log2(15) bits per level


def test_short_training_lowers_the_loss(corpus_shards, tmp_path):
    cfg = train_config(corpus_shards, tmp_path / "t", "steps=60", "modality_weights={eeg: 1.0}", "lr=3e-3")
    train_tokenizer(cfg, progress=False)
    log = [json.loads(line) for line in (tmp_path / "t.log.jsonl").read_text().splitlines()]
    first, last = np.mean([r["loss"] for r in log[:2]]), np.mean([r["loss"] for r in log[-2:]])
    assert last < 0.85 * first, (first, last)  # at least 15 % lower after 60 steps
    assert log[-1]["correlation"] > log[0]["correlation"] + 0.05  # and the reconstruction follows the signal better


def test_sparse_montages_keep_a_few_real_channels_of_dense_windows_only():
    mask = torch.zeros(4, 64, dtype=torch.bool)
    mask[0, :64], mask[1, :20], mask[2, :SPARSE_MONTAGE_CHANNELS], mask[3, :40] = True, True, True, True
    kept = sparse_montage(mask, 1.0, seed=0, step=3, windows=[7, 8, 9, 10])
    assert not (kept & ~mask).any()  # only real channels stay
    assert [2 <= int(n) <= SPARSE_MONTAGE_CHANNELS for n in kept.sum(1)] == [True] * 4
    assert torch.equal(kept[2], mask[2])  # a window that is already sparse is left whole
    # each window's draw follows (seed, step, sample index), not its row in the batch
    assert torch.equal(sparse_montage(mask[[3, 0]], 1.0, seed=0, step=3, windows=[10, 7]), kept[[3, 0]])
    assert not torch.equal(sparse_montage(mask, 1.0, seed=0, step=4, windows=[7, 8, 9, 10]), kept)
    assert torch.equal(sparse_montage(mask, 0.0, seed=0, step=3, windows=[7, 8, 9, 10]), mask)
    some = torch.stack([sparse_montage(mask[:1], 0.3, seed=0, step=step, windows=[7])[0] for step in range(200)])
    assert 0.15 < float((some.sum(1) <= SPARSE_MONTAGE_CHANNELS).float().mean()) < 0.45  # about 30 % of the windows
    with pytest.raises(ValueError, match="sparse_montages"):
        TokenizerTrainConfig(sparse_montages=1.5)


def test_training_with_sparse_montages_runs_and_learns(corpus_shards, tmp_path):
    cfg = train_config(corpus_shards, tmp_path / "t", "steps=30", "modality_weights={eeg: 1.0}", "lr=3e-3", "sparse_montages=0.5")
    train_tokenizer(cfg, progress=False)
    log = [json.loads(line) for line in (tmp_path / "t.log.jsonl").read_text().splitlines()]
    assert np.isfinite([r["loss"] for r in log]).all() and log[-1]["loss"] < log[0]["loss"]


def test_resume_continues_the_same_trajectory_and_seed_fixes_codes(corpus_shards, tmp_path):
    straight = train_config(corpus_shards, tmp_path / "a", "steps=12", "checkpoint_every=6")
    train_tokenizer(straight, progress=False)
    cut = train_config(corpus_shards, tmp_path / "b", "steps=12", "checkpoint_every=6")
    import neurofm.tokenizers.train as train_module

    calls = {"n": 0}
    real_step = torch.optim.AdamW.step

    def dying_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 9:  # killed after the step-6 checkpoint
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    torch.optim.AdamW.step = dying_step
    try:
        with pytest.raises(KeyboardInterrupt):
            train_module.train_tokenizer(cut, progress=False)
    finally:
        torch.optim.AdamW.step = real_step
    assert json.loads((tmp_path / "b" / "config.json").read_text())["trained_steps"] == 6
    train_tokenizer(cut, progress=False)
    a = (tmp_path / "a" / "model.safetensors").read_bytes()
    b = (tmp_path / "b" / "model.safetensors").read_bytes()
    assert a == b  # same seed, same data, same steps: bit-identical weights, resumed or not

    # SIGTERM (a scheduler's preemption) during step 9: the step ends, is saved although no checkpoint is due, and
    # training stops, saying so; the rerun continues from step 9 to the same weights
    def preempted_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 9:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(self, *args, **kwargs)

    calls["n"], sigterm = 0, train_config(corpus_shards, tmp_path / "c", "steps=12", "checkpoint_every=6")
    torch.optim.AdamW.step = preempted_step
    try:
        with pytest.raises(TrainingInterrupted, match="stopped by SIGTERM at step 9 of 12"):
            train_tokenizer(sigterm, progress=False)
    finally:
        torch.optim.AdamW.step = real_step
    assert json.loads((tmp_path / "c" / "config.json").read_text())["trained_steps"] == 9
    assert train_tokenizer(sigterm, progress=False)["step"] == 12
    assert (tmp_path / "c" / "model.safetensors").read_bytes() == a
    with pytest.raises(NeuroFMError, match=r"other settings.*'lr'"):
        train_tokenizer(train_config(corpus_shards, tmp_path / "b", "steps=12", "checkpoint_every=6", "lr=1e-2"), progress=False)
    with pytest.raises(NeuroFMError, match=r"another architecture.*'n_latents'"):
        train_tokenizer(train_config(corpus_shards, tmp_path / "b", "steps=12", "checkpoint_every=6", "model.n_latents=3"), progress=False)
    # a deliberately longer schedule continues the run (and its logs, once per step)
    longer = train_config(corpus_shards, tmp_path / "b", "steps=14", "checkpoint_every=6", "allow_changed=[steps]")
    assert train_tokenizer(longer, progress=False)["step"] == 14
    logged = [json.loads(line)["step"] for line in (tmp_path / "b.log.jsonl").read_text().splitlines()]
    assert logged == sorted(set(logged)) and logged[-1] == 14


def test_eval_on_two_torchrun_processes_gives_the_metrics_of_one(trained, corpus_shards, tmp_path):
    from conftest import one_and_two_processes

    code = ("import sys; from neurofm.tokenizers.evaluate import evaluate_tokenizer; "
            "evaluate_tokenizer(sys.argv[1], sys.argv[2], sys.argv[3], batch_size=4, plot=False)")
    one, two = (json.loads((f / "metrics.json").read_text()) for f in one_and_two_processes(code, tmp_path, trained, corpus_shards))
    assert one == two and one["held_out_windows"] > 8


def test_eval_reports_every_modality(trained, corpus_shards, tmp_path):
    metrics = evaluate_tokenizer(trained, corpus_shards, tmp_path / "eval")
    assert set(metrics["modalities"]) == {"eeg", "meg", "ieeg", "fmri"}
    for m in metrics["modalities"].values():
        assert -1 <= m["pcc"] <= 1 and m["windows"] > 0 and m["spectral_error"] >= 0
    assert metrics["modalities"]["eeg"]["bits_per_second"] == pytest.approx(4 * 2 * 4 / 0.25)
    assert len(metrics["codes"]["usage"]) == 2
    assert {p.name for p in (tmp_path / "eval").glob("*.png")} == {f"reconstruction_{m}.png" for m in ("eeg", "meg", "ieeg", "fmri")}
    sources = {r["source"] for r in json.loads((corpus_shards / "manifest.json").read_text())["recordings"]}
    assert metrics["recordings"] and set(metrics["recordings"]) <= sources


def test_encode_writes_code_shards_that_decode_like_the_model(trained, corpus_shards, tmp_path):
    manifest = encode_shards(trained, corpus_shards, tmp_path / "codes", progress=False)
    assert manifest["complete"] and manifest["kind"] == "codes"
    assert verify_shards(tmp_path / "codes") == []
    codes_index, signal_index = ShardIndex(tmp_path / "codes"), ShardIndex(corpus_shards)
    assert len(codes_index) == len(signal_index)
    model = load_tokenizer(trained)
    for i in (0, len(signal_index) - 1):
        coded, original = codes_index[i], signal_index[i]
        assert coded["__key__"] == original["__key__"] and coded["codes"].dtype == np.int16
        batch = collate([original])
        with torch.no_grad():
            direct = model(batch.signal, batch.sensors, batch.channel_mask, batch.family)["reconstruction"]
            codes = torch.from_numpy(coded["codes"].astype(np.int64)).permute(1, 0, 2)[None]  # [1, P, K, L]
            from_codes = model.decode_codes(codes, batch.sensors, batch.family)
        assert torch.allclose(direct, from_codes, atol=1e-5)


@pytest.mark.parametrize("command", [["tokenizer", "train"], ["tokenizer", "eval"], ["tokenizer", "encode"]])
def test_tokenizer_help(command, capsys):
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    assert "usage: neurofm tokenizer" in capsys.readouterr().out


def test_a_crash_between_the_publish_renames_loses_nothing(corpus_shards, tmp_path):
    """Killed after the old tokenizer moved aside and before the new one moved in: the rerun puts the
    tokenizer back from its checkpoint instead of starting over (and deleting it)."""
    out = tmp_path / "tok"
    cfg = train_config(corpus_shards, out, "steps=4", "checkpoint_every=2")
    train_tokenizer(cfg, progress=False)
    weights = (out / "model.safetensors").read_bytes()
    out.rename(tmp_path / "tok.replaced")  # the state a crash between the two renames leaves
    assert train_tokenizer(cfg, progress=False)["step"] == 4
    assert (out / "model.safetensors").read_bytes() == weights
    assert sorted(p.name for p in checkpoint_root(out).glob("step_*")) == ["step_00000002", "step_00000004"]  # keep 2


def test_training_into_a_tokenizer_it_did_not_write_is_refused(trained, corpus_shards, tmp_path):
    import shutil

    mine = tmp_path / "mine"
    shutil.copytree(trained, mine)  # a finished tokenizer, without the checkpoints of its training
    with pytest.raises(NeuroFMError, match="already holds a tokenizer.*left as it is"):
        train_tokenizer(train_config(corpus_shards, mine, "steps=2"), progress=False)
    assert (mine / "model.safetensors").read_bytes() == (trained / "model.safetensors").read_bytes()


def test_batches_group_windows_of_similar_channel_counts(corpus_shards):
    from neurofm.data_shards import ShardStream
    from neurofm.data_shards.batches import BatchStream, channel_class

    assert [channel_class(c) for c in (3, 16, 17, 64, 65, 306)] == [16, 16, 32, 64, 128, 512]
    batches = BatchStream(ShardStream(corpus_shards, seed=0, epochs=None), 4, by_channels=True)
    for _ in range(12):
        batch = next(batches)
        real = batch.channel_mask.sum(1)
        assert batch.signal.shape[1] == int(real.max()) and channel_class(int(real.min())) == channel_class(int(real.max()))


def test_encoding_on_two_torchrun_processes_writes_the_code_shards_of_one(trained, corpus_shards, tmp_path):
    from conftest import torchrun_processes

    one = encode_shards(trained, corpus_shards, tmp_path / "one", batch_size=8, samples_per_shard=64, progress=False)
    torchrun_processes(2, "import sys; from neurofm.tokenizers.encode import encode_shards; "
                 "encode_shards(sys.argv[1], sys.argv[2], sys.argv[3], batch_size=8, samples_per_shard=64, progress=False)",
                 trained, corpus_shards, tmp_path / "two")
    names = [s["name"] for s in one["shards"]] + ["manifest.json"]
    assert len(names) > 2
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    assert not list((tmp_path / "two").glob(".staging*"))




def logged(out) -> list[dict]:
    return [json.loads(line) for line in out.with_name(out.name + ".log.jsonl").read_text().splitlines()]


def test_two_ranks_follow_the_loss_curve_of_one_at_the_same_global_batch(corpus_shards, tmp_path):
    """DDP: each rank takes half of every global batch; the shares of the loss make the averaged
    gradients those of the whole batch (FSQ: no codebook sampling that differs between rank counts)."""
    from conftest import torchrun_processes

    args = [f"shards={corpus_shards}", *SMALL, "model.quantizer=fsq", "model.fsq_levels=[4,4]", "steps=5", "log_every=1",
            "tensorboard=false"]
    for n in (1, 2):
        torchrun_processes(n, TRAIN_CODE, *args, f"out={tmp_path / str(n)}")
    one, two = logged(tmp_path / "1"), logged(tmp_path / "2")
    assert [r["step"] for r in two] == [1, 2, 3, 4, 5]
    for a, b in zip(one, two):
        for key in ("loss", "time_l1", "correlation", "spectrum_l1"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
    assert json.loads((tmp_path / "2.done.json").read_text())["world_size"] == 2  # both ranks reached the end


def test_two_ranks_resume_exactly_with_synced_codebooks(corpus_shards, tmp_path):
    from conftest import torchrun_processes

    args = [f"shards={corpus_shards}", *SMALL, "steps=6", "checkpoint_every=3", "tensorboard=false"]
    torchrun_processes(2, TRAIN_CODE, *args, f"out={tmp_path / 'whole'}")
    dying = ("import torch; real = torch.optim.AdamW.step; calls = [0]\n"
             "def step(self, *a, **k):\n    calls[0] += 1\n    if calls[0] == 5:\n        raise SystemExit(3)\n"
             "    return real(self, *a, **k)\n"
             "torch.optim.AdamW.step = step\n" + TRAIN_CODE)
    killed = torchrun_processes(2, dying, *args, f"out={tmp_path / 'cut'}", check=False)
    assert killed.returncode != 0 and json.loads((tmp_path / "cut" / "config.json").read_text())["trained_steps"] == 3
    torchrun_processes(2, TRAIN_CODE, *args, f"out={tmp_path / 'cut'}")
    assert (tmp_path / "whole" / "model.safetensors").read_bytes() == (tmp_path / "cut" / "model.safetensors").read_bytes()
    model = load_tokenizer(tmp_path / "whole")  # one set of codebooks: the ranks' EMA updates were all-reduced
    assert model.cfg.quantizer == "rvq" and torch.isfinite(model.quantizer.residual.codebooks).all()


def test_two_nodes_on_one_machine_run_the_rendered_tokenizer_command_then_resume_on_one(corpus_shards, tmp_path):
    """The command `neurofm launch tokenizer` renders for 2 nodes, started as node 0 and node 1 (one CPU
    rank each, gloo, c10d rendezvous on 127.0.0.1); then the checkpoint resumes on one node."""
    from conftest import ROOT, free_port, run_as_two_nodes
    from neurofm.launch import LaunchConfig, render_launch

    out = tmp_path / "tok"
    launch = LaunchConfig(stage="tokenizer", config=[str(ROOT / "configs/tokenizer_tiny.yaml")], nodes=2, gpus_per_node=1,
                          launcher="torchrun", master_addr="127.0.0.1", master_port=free_port(),
                          overrides=[f"shards={corpus_shards}", f"out={out}", *SMALL, "steps=3", "tensorboard=false"])
    command = render_launch(launch)["command"]
    assert command.startswith("torchrun --nnodes=2 --nproc-per-node=1 --rdzv-backend=c10d") and "tokenizer train" in command
    logs = run_as_two_nodes(command)
    done = out.with_name("tok.done.json")  # the success marker (both ranks reached it), not the exit codes alone
    assert done.is_file(), logs[0][-2000:] + logs[1][-2000:]
    assert json.loads(done.read_text())["world_size"] == 2
    resumed = load_config(TokenizerTrainConfig, ROOT / "configs/tokenizer_tiny.yaml",
                          [*launch.overrides, "steps=5", "allow_changed=[steps]"])
    assert train_tokenizer(resumed, progress=False)["step"] == 5  # one node, one rank
    assert json.loads((out / "config.json").read_text())["world_size"] == 1


def test_the_slow_loss_weighs_a_lost_slow_deflection_not_lost_fast_detail():
    from neurofm.tokenizers.config import LossConfig
    from neurofm.tokenizers.losses import block_means, reconstruction_loss

    t = torch.arange(512) / 256.0
    slow, fast = torch.sin(2 * torch.pi * 3 * t), torch.sin(2 * torch.pi * 64 * t)  # same amplitude
    target = (slow + fast)[None, None]
    channel_mask, time_mask = torch.ones(1, 1, dtype=torch.bool), torch.ones(1, 512, dtype=torch.bool)
    weights = LossConfig(time_l1=0, correlation=0, spectrum=0, slow=1.0, slow_samples=16)
    lost_slow = reconstruction_loss(target, fast[None, None], channel_mask, time_mask, weights)
    lost_fast = reconstruction_loss(target, slow[None, None], channel_mask, time_mask, weights)
    assert lost_slow["slow_l1"] > 10 * lost_fast["slow_l1"]
    assert lost_slow["time_mse"] == pytest.approx(float(lost_fast["time_mse"]), rel=0.01)  # the plain MSE cannot tell them apart
    # padding (time_mask False) is left out of the block means
    x, w = torch.tensor([[1.0, 3.0, 5.0, 100.0]]), torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    means, counts = block_means(x, w, 2)
    assert means.tolist() == [[2.0, 5.0]] and counts.tolist() == [[2.0, 1.0]]


def test_code_counts_skip_the_minus_one_of_padding_tokens():
    """Code batches pad the tokens of windows with fewer channels with −1 (no code): counting them must
    neither crash (bincount of a negative) nor count a code."""
    from neurofm.tokenizers.usage import code_usage, count_codes

    counts = np.zeros((2, 4), dtype=np.int64)
    codes = np.array([[[0, 3], [1, 3]], [[-1, -1], [2, 0]]])  # [2 windows, 2 tokens, L = 2]; one padding token
    count_codes(counts, codes)
    assert counts.tolist() == [[1, 1, 1, 0], [1, 0, 0, 2]]
    assert code_usage(counts)["usage"] == [0.75, 0.5]
