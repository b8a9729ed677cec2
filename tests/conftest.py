"""Shared fixtures: one shard build of a corpus of every modality — the real recordings in
../shared/data when they are there, else the embedded default of `make demo` (package-shipped fMRI
plus the simulator) — and a tokenizer, code shards and a release made from it."""

from __future__ import annotations

from pathlib import Path

import mne
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SHARED_CONFIG = ROOT / "configs" / "shared_data.yaml"
EMBEDDED_CONFIG = ROOT / "configs" / "demo.yaml"

mne.set_log_level("ERROR")

needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"{SHARED} is absent: these tests read the project's real recordings there"
)


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent: these tests read the project's real recordings there")
    return SHARED


def write_eeg_fif(path: Path, seconds: float, sfreq: float = 256.0, n_channels: int = 64, seed: int = 0) -> Path:
    """A FIF recording of ``n_channels`` biosemi64 electrodes (positions in the file) holding pink-ish
    noise of ~10 µV: a stand-in recording for tests of stages rather than of a file format."""
    import numpy as np

    montage = mne.channels.make_standard_montage("biosemi64")
    info = mne.create_info(montage.ch_names[:n_channels], sfreq, "eeg")
    rng = np.random.default_rng(seed)
    data = np.cumsum(rng.normal(0, 1e-6, (n_channels, int(seconds * sfreq))), axis=1)
    data -= mne.filter.filter_data(data, sfreq, None, 1.0, verbose="error")  # drop the random walk's drift
    raw = mne.io.RawArray(data, info, verbose="error").set_montage(montage, on_missing="ignore")
    raw.save(path, overwrite=True, verbose="error")
    return path


def clean_env() -> dict:
    """This process's environment without torchrun's variables, one thread, the venv's bin on PATH."""
    import os
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")}
    env["OMP_NUM_THREADS"] = "1"
    env["PATH"] = f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"
    return env


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_as_two_nodes(command: str, timeout: int = 300) -> list[str]:
    """Start a rendered multi-node command twice on this machine (node 0 and node 1); their logs."""
    import subprocess

    nodes = [subprocess.Popen(command, shell=True, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    return [node.communicate(timeout=timeout)[0] for node in nodes]


def torchrun_processes(n: int, code: str, *args, timeout: int = 300, check: bool = True):
    """Run ``python -c code args…`` as ``n`` torchrun processes on this machine (gloo, one thread each;
    with n = 1 the single-process reference under the same thread count)."""
    import os
    import subprocess
    import sys

    env = clean_env()
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    result = subprocess.run([torchrun, "--standalone", f"--nproc-per-node={n}", "--no-python", sys.executable, "-c", code,
                             *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0 or not check, result.stderr[-3000:]
    return result


def one_and_two_processes(code: str, out: Path, *args) -> list[Path]:
    """Run ``code`` (its last argument: an output folder) as 1 and as 2 torchrun processes; the two folders."""
    folders = [out / "1", out / "2"]
    for n, folder in zip((1, 2), folders):
        torchrun_processes(n, code, *args, folder)
    return folders


def shared_config(**overrides):
    """configs/shared_data.yaml with root pointing at ../shared/data and optional overrides."""
    from neurofm.config import load_config
    from neurofm.data_shards.config import ShardsConfig

    items = [f"root={SHARED}"] + [f"{k}={v}" for k, v in overrides.items()]
    return load_config(ShardsConfig, SHARED_CONFIG, items)


@pytest.fixture(scope="session")
def corpus_shards(tmp_path_factory) -> Path:
    """Shards of EEG, MEG, sEEG/ECoG and fMRI windows, built once (10–20 s): every recording of
    ../shared/data when present; otherwise, as on a user's clone, the embedded default (package-shipped
    fMRI + one minute of simulated recordings per modality)."""
    import os

    from neurofm.config import load_config
    from neurofm.data_shards import build_shards
    from neurofm.data_shards.config import ShardsConfig

    out = tmp_path_factory.mktemp("corpus_shards")
    cwd = os.getcwd()
    os.chdir(ROOT)  # the configs' positions files are relative to the project root
    try:
        if SHARED.is_dir():
            config = shared_config(out=str(out))
        else:
            config = load_config(ShardsConfig, EMBEDDED_CONFIG, [f"out={out}", "simulate.hours=0.0834", "simulate.recording_seconds=30",
                                                                 "samples_per_shard=40"])
        build_shards(config, progress=False)
    finally:
        os.chdir(cwd)
    return out


@pytest.fixture(scope="session")
def shared_shards(corpus_shards, shared) -> Path:
    """``corpus_shards`` for tests of what particular real recordings of ../shared/data become."""
    return corpus_shards


@pytest.fixture(autouse=True)
def _project_cwd(monkeypatch):
    """Run every test from the project root, as `make test` does."""
    monkeypatch.chdir(ROOT)


@pytest.fixture(scope="session")
def code_shards(corpus_shards, tmp_path_factory) -> Path:
    """Code shards of every ``corpus_shards`` window, from a small tokenizer trained for a few steps."""
    from neurofm.config import load_config
    from neurofm.tokenizers.config import TokenizerTrainConfig
    from neurofm.tokenizers.encode import encode_shards
    from neurofm.tokenizers.train import train_tokenizer

    root = tmp_path_factory.mktemp("codes")
    cfg = load_config(TokenizerTrainConfig, None, [
        f"shards={corpus_shards}", f"out={root / 'tokenizer'}", "steps=5", "batch_size=8", "model.d_model=32",
        "model.n_heads=2", "model.n_latents=4", "model.code_dim=8", "model.codebook_size=16", "model.levels=2",
    ])
    train_tokenizer(cfg, progress=False)
    encode_shards(root / "tokenizer", corpus_shards, root / "codes", progress=False)
    return root / "codes"


@pytest.fixture(scope="session")
def release(code_shards, tmp_path_factory) -> Path:
    """A release of a tiny masked-code model trained for two steps on ``code_shards``."""
    from neurofm.config import load_config
    from neurofm.pretrain.config import PretrainConfig
    from neurofm.pretrain.export import export_release
    from neurofm.pretrain.train import train_pretrain

    root = tmp_path_factory.mktemp("release")
    cfg = load_config(PretrainConfig, None, [f"codes={code_shards}", f"out={root / 'run'}", "model.d_model=32", "model.n_layers=2",
                                             "model.n_heads=2", "micro_batch=4", "steps=2", "tensorboard=false"])
    train_pretrain(cfg, progress=False)
    return export_release(root / "run", root / "release")


def small_tokenizer(**overrides):
    """A small SensorTokenizer (seeded), model settings ``overrides`` on top."""
    import torch

    from neurofm.tokenizers.config import TokenizerModelConfig
    from neurofm.tokenizers.model import SensorTokenizer

    torch.manual_seed(0)
    return SensorTokenizer(TokenizerModelConfig(d_model=32, n_heads=2, n_latents=4, code_dim=8, codebook_size=16, levels=2, **overrides))


def load_older_checkpoint(directory: Path, setting: str, **before):
    """A small tokenizer saved as a checkpoint written before model ``setting`` existed (the key left out of
    its config.json), loaded back; ``before``: model settings of the saved tokenizer (what it was then)."""
    import json

    from neurofm.tokenizers.checkpoint import load_tokenizer, save_tokenizer

    save_tokenizer(small_tokenizer(**before), directory)
    config = json.loads((directory / "config.json").read_text())
    del config["model"][setting]
    (directory / "config.json").write_text(json.dumps(config))
    return load_tokenizer(directory)


#: A tokenizer small enough for tests (overrides of ``TokenizerTrainConfig``).
SMALL_TOKENIZER = ["model.d_model=32", "model.n_heads=2", "model.n_latents=4", "model.code_dim=8", "model.codebook_size=16",
                   "model.levels=2", "batch_size=8", "log_every=5", "checkpoint_every=1000"]
#: ``python -c`` code that trains a tokenizer from the overrides in its arguments and ends as the ``neurofm``
#: command does (for torchrun tests).
TOKENIZER_TRAIN_CODE = ("import sys; from neurofm.config import load_config; from neurofm.tokenizers.config import TokenizerTrainConfig; "
                        "from neurofm.tokenizers.train import train_tokenizer; from neurofm.distributed import exit_process; "
                        "train_tokenizer(load_config(TokenizerTrainConfig, None, sys.argv[1:]), progress=False); exit_process(0)")
