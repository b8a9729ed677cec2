"""Shared fixtures: the real recordings in ../shared/data and one shard build of all of them."""

from __future__ import annotations

from pathlib import Path

import mne
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SHARED_CONFIG = ROOT / "configs" / "shared_data.yaml"

mne.set_log_level("ERROR")

needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"{SHARED} is absent: these tests read the project's real recordings there"
)


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent: these tests read the project's real recordings there")
    return SHARED


def shared_config(**overrides):
    """configs/shared_data.yaml with root pointing at ../shared/data and optional overrides."""
    from neurofm.config import load_config
    from neurofm.data_shards.config import ShardsConfig

    items = [f"root={SHARED}"] + [f"{k}={v}" for k, v in overrides.items()]
    return load_config(ShardsConfig, SHARED_CONFIG, items)


@pytest.fixture(scope="session")
def shared_shards(tmp_path_factory, shared) -> Path:
    """Every recording of ../shared/data built once into shards (about 10 s)."""
    import os

    from neurofm.data_shards import build_shards

    out = tmp_path_factory.mktemp("shared_shards")
    cwd = os.getcwd()
    os.chdir(ROOT)  # the config's positions file is relative to the project root
    try:
        build_shards(shared_config(out=str(out)), progress=False)
    finally:
        os.chdir(cwd)
    return out


@pytest.fixture(autouse=True)
def _project_cwd(monkeypatch):
    """Run every test from the project root, as `make test` does."""
    monkeypatch.chdir(ROOT)


@pytest.fixture(scope="session")
def code_shards(shared_shards, tmp_path_factory) -> Path:
    """Code shards of every ../shared/data window, from a small tokenizer trained for a few steps."""
    from neurofm.config import load_config
    from neurofm.tokenizers.config import TokenizerTrainConfig
    from neurofm.tokenizers.encode import encode_shards
    from neurofm.tokenizers.train import train_tokenizer

    root = tmp_path_factory.mktemp("codes")
    cfg = load_config(TokenizerTrainConfig, None, [
        f"shards={shared_shards}", f"out={root / 'tokenizer'}", "steps=5", "batch_size=8", "model.d_model=32",
        "model.n_heads=2", "model.n_latents=4", "model.code_dim=8", "model.codebook_size=16", "model.levels=2",
    ])
    train_tokenizer(cfg, progress=False)
    encode_shards(root / "tokenizer", shared_shards, root / "codes", progress=False)
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
