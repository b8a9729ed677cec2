"""`neurofm shards verify / inspect / build` through the real command line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from neurofm.cli import main
from neurofm.data_shards import verify_shards
from tests.conftest import ROOT, SHARED


@pytest.fixture
def shards_copy(corpus_shards, tmp_path):
    copy = tmp_path / "shards"
    shutil.copytree(corpus_shards, copy)
    return copy


def test_verify_passes_on_a_good_build(corpus_shards, capsys):
    assert verify_shards(corpus_shards) == []
    assert main(["shards", "verify", str(corpus_shards)]) == 0
    assert "OK" in capsys.readouterr().out


def test_verify_names_a_corrupt_tar(shards_copy, capsys):
    shard = shards_copy / "shard-000002.tar"
    data = bytearray(shard.read_bytes())
    data[100_000:100_064] = b"\xff" * 64  # flip bytes inside a sample
    shard.write_bytes(bytes(data))
    assert main(["shards", "verify", str(shards_copy)]) == 1
    out = capsys.readouterr().out
    assert "BAD shard-000002.tar" in out and "sha256 differs" in out
    assert "shard-000000.tar" not in out


def test_verify_names_truncated_and_missing_shards(shards_copy):
    shard = shards_copy / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[:20_000])
    (shards_copy / "shard-000003.tar").unlink()
    (shards_copy / "shard-000009.tar.partial").write_bytes(b"x")
    problems = verify_shards(shards_copy)
    by_shard = {}
    for p in problems:
        by_shard.setdefault(p["shard"], []).append(p["problem"])
    assert any("size" in p for p in by_shard["shard-000001.tar"])
    assert by_shard["shard-000003.tar"] == ["missing"]
    assert "not listed in manifest.json" in by_shard["shard-000009.tar.partial"][0]
    assert "shard-000000.tar" not in by_shard


def test_verify_names_a_bad_sample_inside_a_tar_with_matching_checksum(shards_copy):
    """A sample whose array is wrong is named even when the manifest was rewritten to match."""
    import hashlib
    import io
    import tarfile

    import numpy as np

    shard = shards_copy / "shard-000000.tar"
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    bad_key = members[0][0].name.split(".")[0]
    buffer = io.BytesIO()
    np.save(buffer, np.full((3, 5), np.nan, np.float32))
    with tarfile.open(shard, "w") as tar:
        for member, payload in members:
            if member.name == f"{bad_key}.signal.npy":
                payload = buffer.getvalue()
                member.size = len(payload)
            tar.addfile(member, io.BytesIO(payload))
    manifest = json.loads((shards_copy / "manifest.json").read_text())
    manifest["shards"][0].update(bytes=shard.stat().st_size, sha256=hashlib.sha256(shard.read_bytes()).hexdigest())
    (shards_copy / "manifest.json").write_text(json.dumps(manifest))
    problems = verify_shards(shards_copy)
    assert [(p["shard"], p["sample"]) for p in problems] == [("shard-000000.tar", bad_key)]


def test_inspect_summary(corpus_shards, capsys):
    assert main(["shards", "inspect", str(corpus_shards)]) == 0
    text = capsys.readouterr().out
    assert "sensors without positions: 0" in text
    for modality in ("eeg", "meg", "ieeg", "fmri"):
        assert f"\n{modality} " in text
    assert main(["shards", "inspect", "--json", str(corpus_shards)]) == 0
    summary = json.loads(capsys.readouterr().out)
    manifest = json.loads((corpus_shards / "manifest.json").read_text())
    assert summary["recordings"] == len(manifest["recordings"])
    assert summary["modalities"]["eeg"]["windows"] == sum(r["n_windows"] for r in manifest["recordings"] if r["modality"] == "eeg")


def test_unknown_config_key_on_the_command_line_is_a_clean_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "neurofm.cli", "shards", "build", "--config", str(ROOT / "configs/shared_data.yaml"),
         "--out", str(tmp_path / "o"), f"root={SHARED}", "eeg.hfreq=30"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert result.returncode == 1
    assert "error: Unknown config key 'eeg.hfreq'" in result.stderr and "Did you mean 'h_freq'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [["shards"], ["shards", "build"], ["shards", "inspect"], ["shards", "verify"]])
def test_help_is_complete(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "usage: neurofm" in text and len(text.splitlines()) > 5
    if command == ["shards", "build"]:
        assert "--config" in text and "--overwrite" in text and "dotted.key=value" in text
