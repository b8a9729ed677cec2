"""Output folders: never over an input, never over a result without --overwrite, whole or not at all."""

from __future__ import annotations

import errno

import pytest

from neurofm.errors import NeuroFMError
from neurofm.outputs import check_output, replaced_folder


def test_an_output_that_is_or_holds_an_input_is_refused_even_with_overwrite(tmp_path):
    run = tmp_path / "runs" / "pretrain"
    run.mkdir(parents=True)
    (run / "latest").write_text("step_1")
    for out in (run, tmp_path / "runs", tmp_path / "runs" / ".." / "runs"):
        with pytest.raises(NeuroFMError, match="is or contains the input --run"):
            check_output(out, {"--run": run}, overwrite=True)
    assert (run / "latest").read_text() == "step_1"
    assert check_output(run / "release", {"--run": run}, overwrite=False) == run / "release"  # inside the input is fine


def test_an_existing_result_needs_overwrite_and_a_file_is_refused(tmp_path):
    out = tmp_path / "release"
    assert check_output(out, {}, overwrite=False) == out  # absent
    out.mkdir()
    assert check_output(out, {}, overwrite=False) == out  # empty
    (out / "config.json").write_text("{}")
    with pytest.raises(NeuroFMError, match="already holds a result; pass --overwrite"):
        check_output(out, {}, overwrite=False)
    assert check_output(out, {}, overwrite=True) == out
    (tmp_path / "file").write_text("x")
    with pytest.raises(NeuroFMError, match="is a file"):
        check_output(tmp_path / "file", {}, overwrite=True)


def test_replaced_folder_keeps_the_old_result_until_the_new_one_is_whole(tmp_path):
    out = tmp_path / "release"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with replaced_folder(out) as tmp:
            (tmp / "new.txt").write_text("half")
            raise RuntimeError("killed mid-write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["release"] and (out / "old.txt").is_file()
    with pytest.raises(NeuroFMError, match="No space left"):
        with replaced_folder(out):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["release"] and (out / "old.txt").is_file()
    with replaced_folder(out) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["release"]
    # a crash between the two renames left only <out>.replaced: the next call puts it back first
    out.rename(tmp_path / "release.replaced")
    with pytest.raises(RuntimeError):
        with replaced_folder(out):
            raise RuntimeError
    assert (out / "new.txt").is_file()


def test_a_full_disk_during_a_shard_build_is_one_line_and_leaves_nothing_half_written(tmp_path, monkeypatch, capsys):
    from conftest import write_eeg_fif

    from neurofm.cli import main
    from neurofm.data_shards import writer

    (tmp_path / "in").mkdir()
    for i in range(2):
        write_eeg_fif(tmp_path / "in" / f"rec{i}_raw.fif", seconds=30.0, seed=i)
    (tmp_path / "c.yaml").write_text(f"inputs: [{{path: '{tmp_path / 'in'}'}}]\nsamples_per_shard: 8\n")
    argv = ["shards", "build", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "out"), "--workers", "1", "--quiet"]
    real, written = writer.ShardWriter.write, {"n": 0}

    def full_disk(self, key, files):
        written["n"] += 1
        if written["n"] == 20:  # two shards of 8 are finished, the third is half-written
            raise OSError(errno.ENOSPC, "No space left on device", str(self.out / (self._name + ".partial")))
        return real(self, key, files)

    monkeypatch.setattr(writer.ShardWriter, "write", full_disk)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no space left on the device") and "Traceback" not in err
    assert not list((tmp_path / "out").rglob("*.partial"))
    monkeypatch.setattr(writer.ShardWriter, "write", real)
    assert main(argv) == 0  # space freed: the same command finishes the build
    assert main(["shards", "verify", str(tmp_path / "out")]) == 0
