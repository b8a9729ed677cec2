"""Typed configs: YAML + dotted overrides; typos and bad values name the field and the fix."""

from __future__ import annotations

import pytest

from neurofm.config import dump_config, load_config
from neurofm.data_shards.config import ShardsConfig
from neurofm.errors import ConfigError, NeuroFMError


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_yaml_and_overrides_fill_typed_fields(tmp_path):
    path = write(tmp_path, "samples_per_shard: 10\ninputs:\n  - path: a.edf\neeg:\n  h_freq: 30\n")
    config = load_config(ShardsConfig, path, ["eeg.l_freq=1", "inputs.0.missing_positions=drop", "meg.sfreq=200"])
    assert config.samples_per_shard == 10
    assert config.eeg.h_freq == 30.0 and isinstance(config.eeg.h_freq, float)
    assert config.eeg.l_freq == 1.0
    assert config.meg.sfreq == 200.0
    assert config.inputs[0].missing_positions == "drop"
    assert config.ieeg.h_freq == 90.0  # untouched defaults stay


def test_unknown_top_level_key_is_named_with_a_suggestion(tmp_path):
    with pytest.raises(ConfigError, match=r"Unknown config key 'samples_per_shrd'.*Did you mean 'samples_per_shard'"):
        load_config(ShardsConfig, write(tmp_path, "samples_per_shrd: 3\n"))


def test_unknown_nested_key_names_the_dotted_path(tmp_path):
    with pytest.raises(ConfigError, match=r"'eeg.hfreq'.*Did you mean 'h_freq'"):
        load_config(ShardsConfig, None, ["eeg.hfreq=30"])
    with pytest.raises(ConfigError, match=r"'inputs\[0\].montge'"):
        load_config(ShardsConfig, write(tmp_path, "inputs:\n  - path: x.edf\n    montge: biosemi64\n"))


def test_wrong_types_and_values_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="samples_per_shard must be an integer"):
        load_config(ShardsConfig, None, ["samples_per_shard=many"])
    with pytest.raises(ConfigError, match=r"Invalid value for 'signal_dtype'.*'float32', 'float16'"):
        load_config(ShardsConfig, None, ["signal_dtype=int8"])
    with pytest.raises(ConfigError, match=r"eeg.overlap must be in \[0, 1\); got 1.5"):
        load_config(ShardsConfig, None, ["eeg.overlap=1.5"])
    with pytest.raises(ConfigError, match=r"meg.h_freq \(200.0 Hz\) must be below half of sfreq"):
        load_config(ShardsConfig, None, ["meg.h_freq=200"])
    with pytest.raises(ConfigError, match="Missing required config key"):
        load_config(ShardsConfig, write(tmp_path, "inputs:\n  - modality: eeg\n"))


def test_bad_files_and_overrides_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(ShardsConfig, tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(ShardsConfig, write(tmp_path, "a: [1, 2\n"))
    with pytest.raises(ConfigError, match="dotted.key=value"):
        load_config(ShardsConfig, None, ["eeg.h_freq"])
    assert issubclass(ConfigError, NeuroFMError)


def test_dump_and_load_round_trip(tmp_path):
    config = load_config(ShardsConfig, None, ["inputs=[{path: a.edf, channel_types: {'*': seeg}}]", "fmri.n_parcels=12"])
    dump_config(config, tmp_path / "round.yaml")
    assert load_config(ShardsConfig, tmp_path / "round.yaml") == config
