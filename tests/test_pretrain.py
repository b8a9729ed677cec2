"""Masked-code pretraining on DeepSpeed (CPU, gloo), export and launch rendering."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from neurofm.config import load_config
from neurofm.data_shards.modalities import MODALITY_IDS
from neurofm.errors import ConfigError, NeuroFMError
from neurofm.launch import LaunchConfig, render_launch
from neurofm.pretrain.config import PretrainConfig, PretrainModelConfig
from neurofm.pretrain.export import export_release, from_pretrained
from neurofm.pretrain.masking import make_mask, masked_tokens
from neurofm.pretrain.model import MaskedCodeModel, masked_code_loss, masked_latent_loss
from neurofm.pretrain.safe_checkpoint import weights_only_loads
from neurofm.pretrain.train import MaskedAccuracyTally, probe_logits, train_pretrain
from tests.conftest import ROOT, clean_env

TINY = ["model.d_model=32", "model.n_layers=2", "model.n_heads=2", "micro_batch=4", "log_every=1", "warmup_steps=2",
        "tensorboard=false"]


def config(codes, out, *extra) -> PretrainConfig:
    return load_config(PretrainConfig, None, [f"codes={codes}", f"out={out}", *TINY, *extra])


@pytest.mark.parametrize("strategy", ["random", "time", "latent"])
def test_masks_hide_the_same_number_of_tokens_per_window(strategy):
    mask = make_mask(5, 8, 4, 0.5, strategy, torch.Generator().manual_seed(0))
    counts = mask.flatten(1).sum(1)
    assert mask.shape == (5, 8, 4) and (counts == counts[0]).all() and counts[0] == 16
    assert masked_tokens(8, 4, 0.5, strategy) == counts[0]
    if strategy == "time":
        assert (mask.all(dim=2) | ~mask.any(dim=2)).all()  # whole patches
    if strategy == "latent":
        assert (mask.all(dim=1) | ~mask.any(dim=1)).all()  # whole latents


@pytest.mark.parametrize("asymmetric", [False, True])
def test_model_predicts_every_level_of_masked_tokens(asymmetric):
    cfg = PretrainModelConfig(d_model=32, n_layers=2, n_heads=2, n_latents=4, levels=3, codes_per_level=10, asymmetric=asymmetric, decoder_d_model=16)
    model = MaskedCodeModel(cfg)
    codes = torch.randint(0, 10, (2, 8, 4, 3))
    mask = make_mask(2, 8, 4, 0.5, "random", torch.Generator().manual_seed(1))
    logits = model(codes, torch.tensor([0, 3]), mask)
    assert logits.shape == (2, 32, 3, 10)
    loss, accuracy = masked_code_loss(logits, codes, mask)
    assert loss.item() == pytest.approx(np.log(10), rel=0.3) and accuracy.shape == (3,)
    # the sync-free paths (counts known up front) give the same logits, loss and accuracy
    n_masked = masked_tokens(8, 4, 0.5, "random")
    torch.manual_seed(0)
    same_logits = model(codes, torch.tensor([0, 3]), mask, 32 - n_masked)
    assert torch.allclose(same_logits, logits, atol=1e-6)
    fast_loss, fast_accuracy = masked_code_loss(logits, codes, mask, n_masked)
    assert torch.allclose(fast_loss, loss) and torch.equal(fast_accuracy, accuracy)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # fp32 weights under autocast (no DeepSpeed) work too
        assert model(codes, torch.tensor([0, 3]), mask, 32 - n_masked).shape == logits.shape
    loss.backward()
    # a masked token's prediction must not depend on its own (hidden) code
    changed = codes.clone()
    b, p, k = torch.nonzero(mask)[0].tolist()
    changed[b, p, k] = (changed[b, p, k] + 1) % 10
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(codes, torch.tensor([0, 3]), mask), model(changed, torch.tensor([0, 3]), mask))


def test_masked_accuracy_is_tallied_per_modality_over_the_logging_interval():
    """Two batches (one of EEG and MEG windows, one of fMRI): the logged accuracy is the mean over every
    window of the interval, split by modality, and a read starts a new interval."""
    logits = torch.zeros(3, 4, 1, 5)
    logits[..., 2] = 1.0  # predicts code 2 everywhere
    codes = torch.tensor([[2, 2, 2, 2], [2, 2, 0, 0], [0, 0, 0, 0]]).view(3, 2, 2, 1)
    mask = torch.ones(3, 2, 2, dtype=torch.bool)
    _, per_window = masked_code_loss(logits, codes, mask, 4, per_window=True)
    assert per_window.squeeze(1).tolist() == [1.0, 0.5, 0.0]
    _, overall = masked_code_loss(logits, codes, mask, 4)
    assert torch.allclose(per_window.mean(0), overall)
    tally = MaskedAccuracyTally()
    tally.add(per_window, torch.tensor([MODALITY_IDS["eeg"], MODALITY_IDS["meg"], MODALITY_IDS["eeg"]]))
    tally.add(torch.tensor([[0.25]]), torch.tensor([MODALITY_IDS["fmri"]]))
    read = tally.read()
    assert read["masked_accuracy_by_modality"] == {"eeg": [0.5], "meg": [0.5], "fmri": [0.25]}
    assert read["masked_accuracy"] == [pytest.approx((1.0 + 0.5 + 0.0 + 0.25) / 4)]
    assert tally.read() == {}
    with pytest.raises(ValueError, match="n_masked"):
        masked_code_loss(logits, codes, mask, per_window=True)


def test_channel_tokens_are_a_set_per_patch_beside_latent_windows():
    """fMRI windows of a tokenizer with channel tokens: C tokens per patch, any C, sharing one embedding, so
    reordering the parcels reorders the predictions; EEG windows of the same model keep their latent index."""
    cfg = PretrainModelConfig(d_model=32, n_layers=2, n_heads=2, n_latents=4, levels=2, codes_per_level=10, channel_tokens=["bold"])
    model = MaskedCodeModel(cfg).eval()
    fmri, eeg = torch.tensor([3, 3]), torch.tensor([0, 0])
    codes = torch.randint(0, 10, (2, 3, 7, 2))  # 7 parcels: more tokens per patch than the 4 latents
    mask = make_mask(2, 3, 7, 0.5, "random", torch.Generator().manual_seed(1))
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = model(codes, fmri, mask).reshape(2, 3, 7, 2, 10)
        shuffled = model(codes[:, :, perm], fmri, mask[:, :, perm]).reshape(2, 3, 7, 2, 10)
        assert torch.allclose(logits[:, :, perm], shuffled, atol=1e-5)
        latent_codes, latent_mask = codes[:, :, :4], mask[:, :, :4]
        as_latents = model(latent_codes, eeg, latent_mask).reshape(2, 3, 4, 2, 10)
        swapped = model(latent_codes[:, :, [1, 0, 2, 3]], eeg, latent_mask[:, :, [1, 0, 2, 3]]).reshape(2, 3, 4, 2, 10)
        assert not torch.allclose(as_latents[:, :, [1, 0, 2, 3]], swapped, atol=1e-5)  # latent k is not latent j


@pytest.mark.parametrize("stage,precision", [(0, "fp32"), (1, "fp32"), (2, "fp32"), (3, "fp32"), (0, "autocast_bf16")])
def test_zero_stages_train_and_export_reproduces_the_model(code_shards, tmp_path, stage, precision):
    run = tmp_path / "run"
    metrics = train_pretrain(config(code_shards, run, "steps=3", f"zero_stage={stage}", f"precision={precision}"), progress=False)
    assert np.isfinite(metrics["loss"]) and len(metrics["masked_accuracy"]) == 2
    by_modality = metrics["masked_accuracy_by_modality"]
    assert by_modality and set(by_modality) <= set(MODALITY_IDS)
    assert all(len(levels) == 2 and all(0 <= a <= 1 for a in levels) for levels in by_modality.values())
    done = json.loads((run / "DONE.json").read_text())
    assert done["step"] == 3 and (run / "latest").read_text().strip() == "step_00000003"
    release = export_release(run, tmp_path / "release")
    assert {p.name for p in release.iterdir()} == {"config.json", "model.safetensors", "tokenizer", "README.md"}
    model = from_pretrained(release)
    # the run's own probe ran under bf16 autocast when training did; the release is fp32
    assert np.allclose(probe_logits(model, code_shards), done["probe"], atol=1e-5 if precision == "fp32" else 0.1)
    assert "masked-code model" in (release / "README.md").read_text()


def test_resume_after_sigterm_continues_the_same_trajectory(code_shards, tmp_path):
    args = [sys.executable, "-m", "neurofm.cli", "pretrain", "train", "--config", str(ROOT / "configs/pretrain_tiny.yaml"), "--quiet",
            f"codes={code_shards}", *TINY, "steps=40", "checkpoint_every=1000"]
    straight = subprocess.run([*args, f"out={tmp_path / 'a'}"], env=clean_env(), capture_output=True, text=True, timeout=300)
    assert (tmp_path / "a" / "DONE.json").is_file(), straight.stderr[-2000:]
    log = tmp_path / "b" / "train_log.jsonl"
    proc = subprocess.Popen([*args, f"out={tmp_path / 'b'}"], env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and (not log.is_file() or len(log.read_text().splitlines()) < 4):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    stopped = int((tmp_path / "b" / "latest").read_text().strip().split("_")[-1])
    assert 4 <= stopped < 40 and not (tmp_path / "b" / "DONE.json").exists()
    # not finished, and says so: a scheduler or a pipeline must not take it for a completed run
    assert proc.returncode == 143 and f"stopped by SIGTERM at step {stopped} of 40" in proc.stderr.read()
    resumed = subprocess.run([*args, f"out={tmp_path / 'b'}"], env=clean_env(), capture_output=True, text=True, timeout=300)
    assert (tmp_path / "b" / "DONE.json").is_file(), resumed.stderr[-2000:]
    losses = lambda path: {r["step"]: r["loss"] for r in map(json.loads, path.read_text().splitlines())}  # noqa: E731
    a, b = losses(tmp_path / "a" / "train_log.jsonl"), losses(log)
    tail = range(stopped + 1, 41)
    assert [a[s] for s in tail] == pytest.approx([b[s] for s in tail], rel=1e-6, abs=1e-7)


def test_two_process_torchrun_of_the_real_entry_point(code_shards, tmp_path):
    out = tmp_path / "run"
    cmd = ["torchrun", "--standalone", "--nproc-per-node=2", "-m", "neurofm.cli", "pretrain", "train", "--quiet",
           "--config", str(ROOT / "configs/pretrain_tiny.yaml"), f"codes={code_shards}", f"out={out}", *TINY, "steps=3",
           "zero_stage=2"]
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    result = subprocess.run([torchrun, *cmd[1:]], env=clean_env(), capture_output=True, text=True, timeout=300)
    done = out / "DONE.json"  # two-rank DeepSpeed runs can abort at interpreter exit: trust the marker
    assert done.is_file(), result.stderr[-3000:]
    assert json.loads(done.read_text())["world_size"] == 2
    assert {p.name for p in (out / "step_00000003").glob("train_state_rank*.json")} == {"train_state_rank0.json", "train_state_rank1.json"}


def test_bad_input_is_refused(code_shards, corpus_shards, tmp_path):
    run = tmp_path / "run"
    train_pretrain(config(code_shards, run, "steps=2"), progress=False)
    with pytest.raises(NeuroFMError, match="different model"):
        train_pretrain(config(code_shards, run, "steps=4", "model.d_model=64"), progress=False)
    with pytest.raises(NeuroFMError, match="n_latents=8 but the code shards"):
        train_pretrain(config(code_shards, tmp_path / "x", "model.n_latents=8"), progress=False)
    with pytest.raises(NeuroFMError, match="signal shards, not code shards"):
        train_pretrain(config(corpus_shards, tmp_path / "y"), progress=False)
    with pytest.raises(NeuroFMError, match=r"windows of \d+ time patches but model.max_patches=2"):
        train_pretrain(config(code_shards, tmp_path / "z", "model.max_patches=2"), progress=False)
    with pytest.raises(NeuroFMError, match="longer than this model's max_patches=2"):
        MaskedCodeModel(PretrainModelConfig(n_latents=2, levels=1, codes_per_level=4, max_patches=2))(
            torch.zeros(1, 3, 2, 1, dtype=torch.long), torch.zeros(1, dtype=torch.long), torch.zeros(1, 3, 2, dtype=torch.bool))
    manifest_path = code_shards.parent / "other_codes"
    import shutil

    shutil.copytree(code_shards, manifest_path)
    manifest = json.loads((manifest_path / "manifest.json").read_text())
    manifest["tokenizer"]["sha256"] = "0" * 64
    (manifest_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(NeuroFMError, match="another tokenizer"):
        train_pretrain(config(manifest_path, run, "steps=4"), progress=False)
    with pytest.raises(ConfigError, match="Did you mean 'micro_batch'"):
        load_config(PretrainConfig, None, ["micro_bach=3"])


def test_launch_rendering():
    single = render_launch(LaunchConfig())
    assert single["command"].startswith("neurofm pretrain train --config configs/pretrain_tiny.yaml")
    node = render_launch(LaunchConfig(gpus_per_node=8))
    assert node["command"].startswith("torchrun --standalone --nproc-per-node=8 -m neurofm.cli pretrain train")
    ds = render_launch(LaunchConfig(nodes=2, gpus_per_node=4, launcher="deepspeed", hosts=["a", "b"]))
    assert ds["hostfile"] == "a slots=4\nb slots=4\n" and "--num_nodes=2" in ds["command"]
    slurm = render_launch(load_config(LaunchConfig, ROOT / "configs/launch_4x8.yaml"))
    script = slurm["neurofm-pretrain.sbatch"]
    assert "#SBATCH --nodes=4" in script and "#SBATCH --gpus-per-node=8" in script and '"--rdzv-endpoint=$MASTER_ADDR:$MASTER_PORT"' in script
    assert slurm["command"] == "sbatch neurofm-pretrain.sbatch"
    for name in ("launch_1x1", "launch_1x8", "launch_4x8"):
        assert render_launch(load_config(LaunchConfig, ROOT / f"configs/{name}.yaml"))["command"]
    with pytest.raises(ConfigError, match="needs 2 hosts"):
        load_config(LaunchConfig, None, ["nodes=2", "launcher=deepspeed"])


@pytest.mark.parametrize("preset", ["tiny", "base", "large", "xl"])
def test_pretrain_presets(preset):
    cfg = load_config(PretrainConfig, ROOT / f"configs/pretrain_{preset}.yaml")
    params = cfg.model.parameter_count()
    expected = {"tiny": (1e5, 5e6), "base": (2e7, 1e8), "large": (2.5e8, 4e8), "xl": (1e9, 2e9)}[preset]
    assert expected[0] <= params <= expected[1]


def test_resume_on_another_number_of_ranks_uses_a_universal_checkpoint(code_shards, tmp_path):
    out = tmp_path / "run"
    overrides = [f"codes={code_shards}", f"out={out}", *TINY]
    common = ["--config", str(ROOT / "configs/pretrain_tiny.yaml"), "--quiet", *overrides]
    train_pretrain(load_config(PretrainConfig, ROOT / "configs/pretrain_tiny.yaml", [*overrides, "steps=3"]), progress=False)
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    result = subprocess.run([torchrun, "--standalone", "--nproc-per-node=2", "-m", "neurofm.cli", "pretrain", "train", *common, "steps=6",
                             "--allow-changed", "steps"],
                            env=clean_env(), capture_output=True, text=True, timeout=300)
    done = out / "DONE.json"
    assert done.is_file(), result.stderr[-3000:]
    assert json.loads(done.read_text())["world_size"] == 2 and "1 → 2 ranks" in result.stderr
    assert (out / "step_00000003_universal").is_dir()
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]  # the step count carries on
    assert {p.name for p in (out / "step_00000006").glob("train_state_rank*.json")} == {"train_state_rank0.json", "train_state_rank1.json"}


def test_bf16_asymmetric_checkpointed_time_masking_trains_and_exports(code_shards, tmp_path):
    run = tmp_path / "run"
    metrics = train_pretrain(config(code_shards, run, "steps=3", "zero_stage=2", "precision=bf16", "model.asymmetric=true",
                                    "model.decoder_d_model=16", "model.masking=time", "model.activation_checkpointing=true"),
                             progress=False)
    assert np.isfinite(metrics["loss"])
    model = from_pretrained(export_release(run, tmp_path / "release"))
    assert model.cfg.asymmetric and hasattr(model, "decoder")
    probe = probe_logits(model, code_shards)
    assert np.allclose(probe, json.loads((run / "DONE.json").read_text())["probe"], atol=0.1)  # bf16 engine vs fp32 release


def test_code_embeddings_start_from_the_tokenizers_codebooks(code_shards, tmp_path):
    from neurofm.pretrain.train import code_manifest, tokenizer_codebooks

    codebooks = tokenizer_codebooks(code_manifest(code_shards), code_shards)  # [L, V, c]
    levels, v, c = codebooks.shape
    model = MaskedCodeModel(PretrainModelConfig(d_model=32, n_layers=1, n_heads=2, n_latents=4, levels=levels, codes_per_level=v))
    model.init_code_embeddings(codebooks, seed=3)
    codes = torch.randint(0, v, (20, levels))
    tokens = sum(table(codes[:, level]) for level, table in enumerate(model.code_embeddings))  # [20, D]
    quantized = sum(codebooks[level][codes[:, level]] for level in range(levels))  # [20, c]
    # a token's input is a linear image of its quantized latent: solve for the map, check it fits exactly
    fit = torch.linalg.lstsq(quantized.double(), tokens.double()).solution
    assert torch.allclose(quantized.double() @ fit, tokens.double(), atol=1e-5)
    assert torch.stack([t.weight for t in model.code_embeddings]).pow(2).mean().sqrt().item() == pytest.approx(1.0, rel=1e-4)
    with pytest.raises(ValueError, match="do not fit"):
        model.init_code_embeddings(codebooks[:, :2], seed=3)


def test_masked_latent_regression_targets_the_quantized_latents_and_trains(code_shards, tmp_path):
    from neurofm.pretrain.train import code_manifest, tokenizer_codebooks

    codebooks = tokenizer_codebooks(code_manifest(code_shards), code_shards)  # [L, V, c]
    levels, v, _ = codebooks.shape
    cfg = PretrainModelConfig(d_model=32, n_layers=1, n_heads=2, n_latents=4, levels=levels, codes_per_level=v, latent_loss=1.0)
    model = MaskedCodeModel(cfg)
    model.init_code_embeddings(codebooks, seed=3)
    model.set_latent_targets(codebooks, seed=3)
    codes = torch.randint(0, v, (2, 8, 4, levels))
    # the target of a token is what its input started as: the same linear image of its quantized latent
    tokens = sum(table(codes[..., level]) for level, table in enumerate(model.code_embeddings)).flatten(1, 2)
    assert torch.allclose(model.quantized_latents(codes), tokens, atol=1e-6)
    mask = make_mask(2, 8, 4, 0.5, "random", torch.Generator().manual_seed(1))
    n_masked = masked_tokens(8, 4, 0.5, "random")
    logits, latents = model(codes, torch.tensor([0, 3]), mask, 32 - n_masked, with_latents=True)
    assert logits.shape == (2, 32, levels, v) and latents.shape == (2, 32, 32)
    target = model.quantized_latents(codes)
    assert masked_latent_loss(torch.zeros_like(target), target, mask).item() == pytest.approx(1.0)
    perfect = torch.where(mask.flatten(1)[..., None], target, torch.randn_like(target))  # right where masked only
    assert masked_latent_loss(perfect, target, mask, n_masked).item() == pytest.approx(0.0, abs=1e-10)
    assert masked_latent_loss(latents, target, mask, n_masked).item() == pytest.approx(masked_latent_loss(latents, target, mask).item())
    assert "latent_tables" not in model.state_dict()  # rebuilt from the tokenizer, never saved
    mae = MaskedCodeModel(PretrainModelConfig(**{**vars(cfg), "asymmetric": True, "decoder_d_model": 16}))  # the GPU presets' layout
    assert mae(codes, torch.tensor([0, 3]), mask, 32 - n_masked, with_latents=True)[1].shape == (2, 32, 32)

    run = tmp_path / "run"
    train_pretrain(config(code_shards, run, "steps=30", "lr=3e-3", "model.latent_loss=1.0"), progress=False)
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    first, last = np.mean([r["latent_unexplained"] for r in log[:3]]), np.mean([r["latent_unexplained"] for r in log[-3:]])
    assert last < first and last < 1.0, (first, last)  # it learns to predict masked latents from visible ones
    release = from_pretrained(export_release(run, tmp_path / "release"))
    assert release.cfg.latent_loss == 1.0 and hasattr(release, "latent_head")
    assert np.allclose(probe_logits(release, code_shards), json.loads((run / "DONE.json").read_text())["probe"], atol=1e-5)
    # a longer schedule resumes: the targets are rebuilt from the tokenizer, the trajectory carries on
    train_pretrain(config(code_shards, run, "steps=32", "lr=3e-3", "model.latent_loss=1.0", "allow_changed=[steps]"), progress=False)
    assert np.isfinite(json.loads((run / "DONE.json").read_text())["latent_unexplained"])


class _RunsCode:
    """A pickle payload: unpickling it calls ``pathlib.Path.touch`` on a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (pathlib.Path(self.marker),)


@pytest.mark.parametrize("stage", [0, 1])
def test_a_crafted_checkpoint_is_refused_without_running_its_code(code_shards, tmp_path, stage):
    run = tmp_path / "run"
    train_pretrain(config(code_shards, run, "steps=2", f"zero_stage={stage}"), progress=False)
    tag = run / "step_00000002"
    export_release(run, tmp_path / "release")  # the run as made loads weights-only
    marker = tmp_path / "code_ran"
    for target in sorted(tag.glob("*.pt")):
        original = target.read_bytes()
        with weights_only_loads(target):  # our own checkpoint: it loads weights-only
            state = torch.load(target, weights_only=True)
        state["payload"] = _RunsCode(marker)
        torch.save(state, target)
        with pytest.raises(NeuroFMError, match="not plain tensors"):
            export_release(run, tmp_path / "other_release")
        with pytest.raises(NeuroFMError, match="not plain tensors"):
            train_pretrain(config(code_shards, run, "steps=4", f"zero_stage={stage}", "allow_changed=[steps]"), progress=False)
        assert not marker.exists() and not (tmp_path / "other_release").exists()
        target.write_bytes(original)


def test_export_never_writes_over_its_run_and_replaces_a_release_only_when_asked(code_shards, tmp_path):
    from neurofm.cli import main

    run = tmp_path / "run"
    train_pretrain(config(code_shards, run, "steps=2"), progress=False)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    assert main(["export", "--run", str(run), "--out", str(run), "--overwrite"]) == 1
    assert main(["export", "--run", str(run), "--out", str(tmp_path)]) == 1
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "release")]) == 0
    written = (tmp_path / "release" / "model.safetensors").stat().st_mtime_ns
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "release")]) == 1
    assert (tmp_path / "release" / "model.safetensors").stat().st_mtime_ns == written
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "release"), "--overwrite"]) == 0


def test_a_deepspeed_start_after_a_killed_build_does_not_hang(code_shards, tmp_path):
    """The reproduction: the op's build folder with the lock a killed builder leaves; training must start.
    (Runs after this file's other DeepSpeed tests, which build the op into the cache when it is not there.)"""
    import shutil

    from neurofm.pretrain.extension_locks import extensions_root

    built = sorted(extensions_root().rglob("deepspeed_shm_comm/*.so"))
    if not built:
        pytest.skip("DeepSpeed's CPU communication op was not built on this machine")
    root = tmp_path / "extensions"
    shutil.copytree(built[0].parent, root / "deepspeed_shm_comm", ignore=shutil.ignore_patterns("lock"))
    (root / "deepspeed_shm_comm" / "lock").touch()
    env = {**clean_env(), "TORCH_EXTENSIONS_DIR": str(root)}
    result = subprocess.run([sys.executable, "-m", "neurofm.cli", "pretrain", "train", "--quiet", "--config",
                             str(ROOT / "configs/pretrain_tiny.yaml"), f"codes={code_shards}", f"out={tmp_path / 'run'}", *TINY,
                             "steps=1"], env=env, capture_output=True, text=True, timeout=180)
    assert (tmp_path / "run" / "DONE.json").is_file(), result.stderr[-2000:]
    assert "left by an interrupted extension build" in result.stderr
    assert not (root / "deepspeed_shm_comm" / "lock").exists()


def test_a_resume_with_other_training_settings_is_refused_unless_allowed(code_shards, tmp_path):
    run = tmp_path / "run"
    train_pretrain(config(code_shards, run, "steps=2"), progress=False)
    for changed in ("lr=3e-3", "seed=5", "micro_batch=2"):
        with pytest.raises(NeuroFMError, match=f"other settings.*'{changed.split('=')[0]}'"):
            train_pretrain(config(code_shards, run, "steps=2", changed), progress=False)
    with pytest.raises(NeuroFMError, match="--allow-changed steps"):
        train_pretrain(config(code_shards, run, "steps=3"), progress=False)
    assert train_pretrain(config(code_shards, run, "steps=3", "allow_changed=[steps]", "log_every=5"), progress=False)["step"] == 3


def test_two_nodes_on_one_machine_run_the_rendered_torchrun_commands_then_resume_on_one(code_shards, tmp_path):
    """The exact command `neurofm launch pretrain` renders for 2 nodes, started twice (node 0 and node 1: one
    CPU rank each, gloo, c10d rendezvous on 127.0.0.1); then the checkpoint resumes on one node."""
    from conftest import free_port, run_as_two_nodes

    out = tmp_path / "run"
    launch = LaunchConfig(config=[str(ROOT / "configs/pretrain_tiny.yaml")], nodes=2, gpus_per_node=1, launcher="torchrun",
                          master_addr="127.0.0.1", master_port=free_port(), overrides=[f"codes={code_shards}", f"out={out}", *TINY, "steps=3"])
    command = render_launch(launch)["command"]
    assert command.startswith("torchrun --nnodes=2 --nproc-per-node=1 --rdzv-backend=c10d")
    logs = run_as_two_nodes(command)
    done = out / "DONE.json"  # the success marker, not the exit codes alone
    assert done.is_file(), logs[0][-2000:] + logs[1][-2000:]
    assert json.loads(done.read_text())["world_size"] == 2
    assert {p.name for p in (out / "step_00000003").glob("train_state_rank*.json")} == {"train_state_rank0.json", "train_state_rank1.json"}
    metrics = train_pretrain(config(code_shards, out, "steps=5", "allow_changed=[steps]"), progress=False)  # one node, one rank
    assert metrics["step"] == 5 and json.loads(done.read_text())["world_size"] == 1
