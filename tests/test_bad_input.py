"""The bad-input corpus: every malformed input a user or a colleague's folder can hand a command is one
clean line naming the file or key — exit status 1, no traceback — and leaves no half-written output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from neurofm.cli import main


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _manifest_list(w, f):
    (w / "m").mkdir()
    (w / "m" / "manifest.json").write_text("[1, 2, 3]")
    return ["shards", "inspect", str(w / "m")], "m/manifest.json is not a NeuroFM shard manifest"


def _manifest_wrong_shards(w, f):
    (w / "m").mkdir()
    (w / "m" / "manifest.json").write_text(json.dumps({"shards": 5, "recordings": [], "complete": True}))
    return ["shards", "verify", str(w / "m")], "'shards' is int, not a list"


def _release_weights_not_safetensors(w, f):
    rel = _copy(f["release"], w / "rel")
    (rel / "model.safetensors").write_bytes(b"garbage" * 10)
    return ["probe", "--release", str(rel), "--shards", str(f["corpus"]), "--out", str(w / "out"), "--label-key", "modality"], \
        "rel/model.safetensors is not a readable safetensors file"


def _release_config_not_json(w, f):
    rel = _copy(f["release"], w / "rel")
    (rel / "config.json").write_text("{not json")
    return ["probe", "--release", str(rel), "--shards", str(f["corpus"]), "--out", str(w / "out"), "--label-key", "modality"], \
        "rel/config.json is not valid JSON"


def _release_weights_of_another_shape(w, f):
    rel = _copy(f["release"], w / "rel")
    state = load_file(str(rel / "model.safetensors"))
    state["head.weight"] = torch.zeros(3, 3)
    save_file(state, str(rel / "model.safetensors"))
    return ["probe", "--release", str(rel), "--shards", str(f["corpus"]), "--out", str(w / "out"), "--label-key", "modality"], \
        "rel/model.safetensors does not match its config (size mismatch for head.weight"


def _tokenizer_config_without_model(w, f):
    tok = _copy(f["release"] / "tokenizer", w / "tok")
    config = json.loads((tok / "config.json").read_text())
    del config["model"]
    (tok / "config.json").write_text(json.dumps(config))
    return ["tokenizer", "eval", "--checkpoint", str(tok), "--shards", str(f["corpus"]), "--out", str(w / "out")], \
        "tok/config.json has no 'model' settings"


def _garbage_optimizer_state(w, f):
    import shutil

    trained = f["codes"].parent / "tokenizer"  # the code shards' tokenizer, with the checkpoints of its training
    tok = _copy(trained, w / "tok")
    shutil.copytree(trained.with_name("tokenizer.checkpoints"), w / "tok.checkpoints")
    tag = (w / "tok.checkpoints" / "latest").read_text().strip()
    (w / "tok.checkpoints" / tag / "optimizer.pt").write_bytes(b"not a torch file")
    settings = json.loads((tok / "config.json").read_text())["training"]  # resume with the settings it was made with
    (w / "tok.yaml").write_text(json.dumps(settings))
    return ["tokenizer", "train", "--config", str(w / "tok.yaml"), f"out={tok}"], "optimizer.pt is damaged"


def _tokenizer_out_that_training_did_not_write(w, f):
    tok = _copy(f["release"] / "tokenizer", w / "tok")
    return ["tokenizer", "train", "--config", "configs/tokenizer_tiny.yaml", f"shards={f['corpus']}", f"out={tok}", "steps=1"], \
        "already holds a tokenizer"


def _code_shards_for_signal(w, f):
    return ["tokenizer", "eval", "--checkpoint", str(f["release"] / "tokenizer"), "--shards", str(f["codes"]), "--out", str(w / "out")], \
        "holds code shards (tokenizer output)"


def _out_is_a_file(w, f):
    (w / "out").write_text("my notes")
    return ["tokenizer", "eval", "--checkpoint", str(f["release"] / "tokenizer"), "--shards", str(f["corpus"]), "--out", str(w / "out")], \
        "is a file, not a folder"


def _nan_setting(w, f):
    return ["simulate", "--out", str(w / "out"), "--hours", "0.01", "clip=.nan"], "clip must be a finite number"


def _window_shorter_than_a_patch(w, f):
    return ["simulate", "--out", str(w / "out"), "--hours", "0.01", "eeg.window_seconds=0.001"], "windows need at least 16"


def _empty_latest(w, f):
    run = _copy(f["run"], w / "run")
    (run / "latest").write_text("")
    return ["export", "--run", str(run), "--out", str(w / "out")], "holds no complete pretraining checkpoint"


def _dangling_latest(w, f):
    run = _copy(f["run"], w / "run")
    (run / "latest").write_text("step_09999999")
    return ["export", "--run", str(run), "--out", str(w / "out")], "holds no complete pretraining checkpoint"


def _export_onto_its_run(w, f):
    run = _copy(f["run"], w / "run")
    return ["export", "--run", str(run), "--out", str(run), "--overwrite"], "is or contains the input --run"


def _changed_shard(w, f):
    shards = _copy(f["corpus"], w / "shards")
    shard = shards / "shard-000000.tar"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one bit pattern changed
    shard.write_bytes(bytes(data))
    return ["tokenizer", "eval", "--checkpoint", str(f["release"] / "tokenizer"), "--shards", str(shards), "--out", str(w / "out")], \
        "shard-000000.tar changed since it was written"


def _sample_rows_differ_from_sensor_rows(w, f):
    import numpy as np

    from neurofm.data_shards import ShardIndex
    from neurofm.data_shards.writer import ShardWriter, encode_npy, write_json_atomic

    good = ShardIndex(f["corpus"])[0]
    manifest = {**good_manifest(f["corpus"]), "shards": [], "complete": False}
    manifest["recordings"] = [{**manifest["recordings"][0], "first_sample": 0, "n_windows": 1}]
    (w / "shards").mkdir()
    writer = ShardWriter(w / "shards", 4, manifest)
    writer.write("bad", {"signal.npy": encode_npy(good["signal"][:-1]), "sensors.npy": encode_npy(good["sensors"]),
                         "meta.json": json.dumps(good["meta"]).encode()})
    writer.close_shard()
    manifest["complete"] = True
    write_json_atomic(w / "shards" / "manifest.json", manifest)
    assert np.asarray(good["signal"]).shape[0] == good["sensors"].shape[0]
    return ["probe", "--release", str(f["release"]), "--shards", str(w / "shards"), "--out", str(w / "out"), "--label-key", "modality"], \
        "sample bad has a signal of shape"


def _fmri_forced_onto_eeg(w, f):
    return ["simulate", "--out", str(w / "out"), "--hours", "0.01", "inputs=[{path: rec.edf, modality: fmri}]"], \
        "modality: fmri cannot apply to rec.edf"


def _all_zero_nifti(w, f):
    import nibabel as nib
    import numpy as np

    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 20), np.float32), np.eye(4)), w / "zero.nii")
    (w / "c.yaml").write_text(f"inputs: [{{path: '{w / 'zero.nii'}'}}]\n")
    return ["shards", "build", "--config", str(w / "c.yaml"), "--out", str(w / "out"), "--workers", "1", "--quiet"], \
        "zero.nii: every voxel is constant over time"


def _brainvision_cut(w, keep_bytes):
    from conftest import SHARED

    source = SHARED / "eeg" / "brainvision"
    if not source.is_dir():
        pytest.skip(f"{source} is absent: this case cuts the project's BrainVision recording")
    folder = _copy(source, w / "bv")
    for f in folder.iterdir():
        f.chmod(0o644)
    data = (folder / "test.eeg").read_bytes()
    (folder / "test.eeg").write_bytes(data[: keep_bytes(len(data))])
    (w / "c.yaml").write_text(f"inputs: [{{path: '{folder / 'test.vhdr'}'}}]\n")
    return ["shards", "build", "--config", str(w / "c.yaml"), "--out", str(w / "out"), "--workers", "1", "--quiet"]


def _brainvision_truncated(w, f):  # 7.9 s cut to 16 ms: read as a whole 16-ms recording before
    return _brainvision_cut(w, lambda n: 32 * 2 * 16), "markers run past the end of the data"


def _brainvision_cut_mid_sample(w, f):  # markers still inside the data, but a partial last sample
    return _brainvision_cut(w, lambda n: n - 32 * 2 * 10 - 3), "is not a whole number of samples of 32 channels"


def good_manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


CASES = [_manifest_list, _manifest_wrong_shards, _release_weights_not_safetensors, _release_config_not_json,
         _release_weights_of_another_shape, _tokenizer_config_without_model, _garbage_optimizer_state, _tokenizer_out_that_training_did_not_write, _code_shards_for_signal,
         _out_is_a_file, _nan_setting, _window_shorter_than_a_patch, _empty_latest, _dangling_latest, _export_onto_its_run,
         _changed_shard, _sample_rows_differ_from_sensor_rows, _fmri_forced_onto_eeg, _all_zero_nifti, _brainvision_truncated,
         _brainvision_cut_mid_sample]


@pytest.fixture(scope="module")
def folders(release, code_shards, corpus_shards):
    return {"release": release, "codes": code_shards, "corpus": corpus_shards, "run": release.parent / "run"}


@pytest.mark.parametrize("case", CASES, ids=[c.__name__.strip("_") for c in CASES])
def test_bad_input_is_one_clean_line(case, folders, tmp_path, capsys):
    argv, expected = case(tmp_path, folders)
    before = {p for p in tmp_path.rglob("*")}
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ") and expected in err, err
    # nothing half-written: no new files or folders beside the inputs the case made (an output's lock file
    # <out>.lock stays by design: removing it would race with the next writer)
    after = {p for p in tmp_path.rglob("*") if p.suffix != ".lock"}
    assert after <= before, sorted(map(str, after - before))
