"""The embedded default of `make demo`: package-shipped data resolves, configs layer, CLI runs."""

from __future__ import annotations

import json

from neurofm.cli import main
from neurofm.config import load_config
from neurofm.data_shards import build_shards
from neurofm.data_shards.config import ShardsConfig
from neurofm.data_shards.readers import expand_inputs, package_path
from tests.conftest import ROOT, SHARED


def test_package_shipped_recordings_exist_and_build(tmp_path):
    config = load_config(ShardsConfig, ROOT / "configs/demo.yaml", ["simulate=null", f"out={tmp_path / 'out'}"])
    paths = [p for spec in config.inputs for p, _, _ in expand_inputs(spec, ROOT)]
    assert [p.name for p in paths] == ["functional.nii", "fmri1.nii.gz", "fmri2.nii.gz", "fmri_timeseries.csv"]
    assert all(p.is_file() for p in paths)
    manifest = build_shards(config, progress=False)
    assert manifest["statistics"]["fmri"]["recordings"] == 4
    assert manifest["statistics"]["fmri"]["sensors_without_position"] == 0


def test_missing_package_is_named():
    import pytest

    from neurofm.errors import RecordingError

    with pytest.raises(RecordingError, match="package 'nosuchpkg' is not installed"):
        package_path("pkg:nosuchpkg/data/x.nii")


def test_configs_layer_inputs_add_up():
    config = load_config(ShardsConfig, [ROOT / "configs/demo.yaml", ROOT / "configs/shared_data.yaml"], [f"root={SHARED}"])
    assert len(config.inputs) == 4 + len(load_config(ShardsConfig, ROOT / "configs/shared_data.yaml").inputs)
    assert config.simulate is not None and config.simulate.hours == 0.1666
    assert config.root == str(SHARED) and config.out == "runs/shared/shards"  # later files win for scalars


def test_simulate_command(tmp_path, capsys):
    out = tmp_path / "sim"
    code = main(["simulate", "--hours", "0.005", "--modalities", "ecog,fmri", "--out", str(out), "--quiet",
                 "--cache-dir", str(tmp_path / "gains"), "simulate.fmri_run_seconds=30"])
    assert code == 0
    assert "sensors without positions: 0" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert {r["modality"] for r in manifest["recordings"]} == {"ieeg", "fmri"}
    assert main(["simulate", "--hours", "0", "--out", str(tmp_path / "x")]) == 1
    assert "simulate.hours must be positive" in capsys.readouterr().err
