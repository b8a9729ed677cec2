"""Shard building: content of the shards, the manifest, atomic writes, resume and bad input."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from neurofm.config import load_config
from neurofm.data_shards import ShardIndex, build_shards, verify_shards
from neurofm.data_shards.config import ShardsConfig
from neurofm.data_shards.writer import ShardWriter
from neurofm.errors import NeuroFMError, RecordingError, ShardError
from tests.conftest import SHARED, write_eeg_fif


def _samples(out: Path) -> list[dict]:
    index = ShardIndex(out)
    return [index[i] for i in range(len(index))]


def _by_source(samples, name):
    return [s for s in samples if s["meta"]["source"].endswith(name)]


def test_every_shared_recording_becomes_positioned_windows(shared_shards):
    manifest = json.loads((shared_shards / "manifest.json").read_text())
    assert manifest["complete"] and not manifest["skipped"]
    assert len(manifest["recordings"]) == 24
    stats = manifest["statistics"]
    assert set(stats) == {"eeg", "meg", "ieeg", "fmri"}
    assert all(m["sensors_without_position"] == 0 for m in stats.values())
    assert sum(s["samples"] for s in manifest["shards"]) == sum(r["n_windows"] for r in manifest["recordings"])
    for shard in manifest["shards"]:
        data = (shared_shards / shard["name"]).read_bytes()
        assert len(data) == shard["bytes"] and hashlib.sha256(data).hexdigest() == shard["sha256"]
    edf = next(r for r in manifest["recordings"] if r["source"].endswith("eegmmidb_S088R10.edf"))
    assert edf["sha256"] == hashlib.sha256(b"eegmmidb_S088R10.edf" + (SHARED / "eeg/eegmmidb_S088R10.edf").read_bytes()).hexdigest()
    assert edf["n_windows"] == 62 and edf["kinds"] == {"eeg": 64}
    assert edf["positions"]["sources"]["montage colin27_1005"]["channels"] == 64
    assert not list(shared_shards.glob("*.partial"))


def test_window_contents_and_events(shared_shards):
    samples = _samples(shared_shards)
    edf = _by_source(samples, "eegmmidb_S088R10.edf")
    assert len(edf) == 62
    first = edf[0]
    assert first["signal"].shape == (64, 512) and first["signal"].dtype == np.float32
    assert first["sensors"].shape == (64, 12)
    assert first["meta"]["sfreq"] == 256.0 and first["meta"]["modality"] == "eeg"
    labels = Counter(e["label"] for s in edf for e in s["meta"]["events"])
    assert labels == {"T0": 19, "T1": 10, "T2": 9}  # 124 s, 62 windows of 2 s: every annotation lands once
    for s in edf:
        assert all(0 <= e["onset"] < 2.0 for e in s["meta"]["events"])
    # windows follow each other: onsets 0, 2, 4 … s
    assert [s["meta"]["window_onset"] for s in edf[:3]] == [0.0, 2.0, 4.0]


def test_epochs_and_evoked_become_one_sample_each(shared_shards):
    samples = _samples(shared_shards)
    n400 = _by_source(samples, "n400_words-epo.fif")
    assert len(n400) == 200
    assert Counter(s["meta"]["labels"]["event"] for s in n400) == {"related": 100, "unrelated": 100}
    assert all("cue" in s["meta"]["labels"] and "association" in s["meta"]["labels"] for s in n400)
    # 60 samples at 50 Hz (-0.2 … 0.98 s) = 1.2 s → 307 samples at 256 Hz in a 2 s window, zero-padded
    valid = n400[0]["meta"]["n_valid_samples"]
    assert valid == 307 and n400[0]["meta"]["window_samples"] == 512
    assert np.all(n400[0]["signal"][:, valid:] == 0)
    evoked = _by_source(samples, "sample_audvis-ave.fif.gz")
    assert [s["meta"]["labels"]["condition"] for s in evoked] == ["Left Auditory", "Right Auditory", "Left visual", "Right visual"]


def test_fmri_windows_at_the_configured_tr(corpus_shards):
    samples = _samples(corpus_shards)
    run = _by_source(samples, "functional.nii")  # nibabel's test run: in ../shared/data and in nibabel's wheel
    # 20 volumes at 2 s = 40 s; windows of 16 s (8 volumes) with 50 % overlap → starts 0, 8, 16, 24 s
    assert len(run) == 4 and run[0]["signal"].shape == (64, 8)
    assert set(run[0]["meta"]["kinds"]) == {"bold"}
    assert np.argmax(run[0]["sensors"][:, 6:], axis=1).tolist() == [5] * 64


def _small_config(tmp_path, out: str = "out", **overrides) -> ShardsConfig:
    """Three generated recordings (in tmp_path/recs) of 50, 40 and 10 two-second windows, 16 samples per shard."""
    recs = tmp_path / "recs"
    if not recs.is_dir():
        recs.mkdir()
        for i, seconds in enumerate((100, 80, 20)):
            write_eeg_fif(recs / f"rec{i}_raw.fif", seconds, n_channels=16, seed=i)
    inputs = "inputs=[" + ", ".join(f"{{path: '{recs / f'rec{i}_raw.fif'}'}}" for i in range(3)) + "]"
    items = [inputs, f"out={tmp_path / out}", "samples_per_shard=16"]
    return load_config(ShardsConfig, None, items + [f"{k}={v}" for k, v in overrides.items()])


def _shard_hashes(out: Path) -> list[str]:
    return [s["sha256"] for s in json.loads((out / "manifest.json").read_text())["shards"]]


def test_interrupted_build_resumes_to_identical_shards(tmp_path, monkeypatch):
    straight = _small_config(tmp_path, "a")
    build_shards(straight, progress=False)
    expected = _shard_hashes(Path(straight.out))

    config = _small_config(tmp_path, "b")
    original = ShardWriter.write
    calls = {"n": 0}

    def dying_write(self, key, files):
        calls["n"] += 1
        if calls["n"] == 75:  # in the middle of the second recording, mid-shard
            raise KeyboardInterrupt
        original(self, key, files)

    monkeypatch.setattr(ShardWriter, "write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        build_shards(config, progress=False)
    out = Path(config.out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert not manifest["complete"] and len(manifest["shards"]) == 4  # 74 samples written → 4 full shards
    assert not list(out.glob("*.partial"))  # the open shard was dropped, never left looking valid
    (out / "shard-000004.tar.partial").write_bytes(b"left by a SIGKILL")  # as if killed harder
    monkeypatch.setattr(ShardWriter, "write", original)
    build_shards(config, progress=False)
    assert _shard_hashes(out) == expected
    assert verify_shards(out) == []


def test_rebuild_with_other_settings_needs_overwrite(tmp_path):
    config = _small_config(tmp_path)
    build_shards(config, progress=False)
    again = build_shards(config, progress=False)  # complete and identical: nothing to do
    assert again["complete"]
    other = _small_config(tmp_path, **{"eeg.h_freq": 30})
    with pytest.raises(ShardError, match="other settings.*--overwrite"):
        build_shards(other, progress=False)
    assert build_shards(other, overwrite=True, progress=False)["settings"]["eeg"]["h_freq"] == 30.0


def _config_for(tmp_path, path: Path, **overrides) -> ShardsConfig:
    items = [f"inputs=[{{path: '{path}'}}]", f"out={tmp_path / 'out'}"]
    return load_config(ShardsConfig, None, items + [f"{k}={v}" for k, v in overrides.items()])


def test_truncated_edf_is_named_and_leaves_no_shard(shared, tmp_path):
    data = (shared / "eeg/eegmmidb_S088R10.edf").read_bytes()
    truncated = tmp_path / "cut.edf"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(RecordingError, match=r"cut.edf is damaged.*does not match the file size"):
        build_shards(_config_for(tmp_path, truncated), progress=False)
    assert not list((tmp_path / "out").glob("shard-*"))


def test_file_that_is_not_a_recording(tmp_path):
    fake = tmp_path / "notes.edf"
    fake.write_text("these are my notes\n" * 50)
    with pytest.raises(RecordingError, match=r"notes.edf cannot be read as a recording"):
        build_shards(_config_for(tmp_path, fake), progress=False)
    assert not list((tmp_path / "out").glob("shard-*"))


def test_empty_folder_and_no_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecordingError, match=r"empty holds no recordings"):
        build_shards(_config_for(tmp_path, tmp_path / "empty"), progress=False)
    with pytest.raises(NeuroFMError, match="No inputs"):
        build_shards(load_config(ShardsConfig, None, [f"out={tmp_path / 'o'}"]), progress=False)


def test_folder_inputs_find_every_format_and_one_entry_per_recording(tmp_path):
    """Folder formats (EGI .mff, CTF .ds) are one recording each, never searched inside; Curry, eXimia,
    Nihon Kohden and 4D (BTi) files are found; a BrainVision recording is its .vhdr, not also its .eeg."""
    from neurofm.data_shards.config import InputSpec
    from neurofm.data_shards.readers import expand_inputs, read_recording

    recs = tmp_path / "recs"
    layout = {
        "a.mff": ["signal1.bin", "info.xml", "inner.edf"],
        "b.ds": ["b.meg4", "b.res4"],
        "c": ["c.vhdr", "c.eeg", "c.vmrk"],
        "d": ["d.EEG", "d.21E", "d.PNT", "d.LOG"],
        "e": ["e.cdt", "e.cdt.dpa"],
        "f": ["f.dap", "f.dat", "f.rs3"],
        "g": ["g.nxe", "notes.txt"],
        "h": ["c,rfDC", "config", "hs_file", "e,rfhp1.0Hz,COH"],  # HCP's 4D layout: the COH run locates head coils
        "i": ["c,rfDC"],  # no config beside it: not a 4D acquisition
    }
    for folder, files in layout.items():
        (recs / folder).mkdir(parents=True)
        for name in files:
            (recs / folder / name).write_bytes(b"")
    found = [p.relative_to(recs).as_posix() for p, _, _ in expand_inputs(InputSpec(path=str(recs)), tmp_path)]
    assert found == ["a.mff", "b.ds", "c/c.vhdr", "d/d.EEG", "e/e.cdt", "f/f.dap", "g/g.nxe", "h/c,rfDC"]
    assert [p for p, _, _ in expand_inputs(InputSpec(path=str(recs / "a.mff")), tmp_path)] == [recs / "a.mff"]
    # a 4D file goes to MNE's BTi reader with its config (mne.io.read_raw does not take it): an empty one is refused by name
    with pytest.raises(RecordingError, match=r"c,rfDC cannot be read as a recording \(OSError"):  # not "Unsupported file type"
        read_recording(recs / "h" / "c,rfDC", InputSpec(path="h/c,rfDC"))


def test_on_error_skip_records_the_bad_file_and_goes_on(tmp_path):
    fake = tmp_path / "recs" / "broken.edf"
    fake.parent.mkdir()
    fake.write_bytes(b"\x00" * 300)
    write_eeg_fif(fake.parent / "good_raw.fif", 10, n_channels=8)
    manifest = build_shards(_config_for(tmp_path, fake.parent, on_error="skip"), progress=False)
    assert [s["source"] for s in manifest["skipped"]] == [str(fake)]
    assert "cannot be read" in manifest["skipped"][0]["error"]
    assert manifest["statistics"]["eeg"]["recordings"] == 1


def test_signal_dtype_float16(tmp_path):
    config = _config_for(tmp_path, write_eeg_fif(tmp_path / "three_raw.fif", 10, n_channels=3), signal_dtype="float16")
    build_shards(config, progress=False)
    with tarfile.open(next((tmp_path / "out").glob("shard-*.tar"))) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".signal.npy"))
        array = np.load(io.BytesIO(tar.extractfile(member).read()), allow_pickle=False)
    assert array.dtype == np.float16 and array.shape == (3, 512)


def test_a_second_build_into_one_out_is_refused_and_a_dead_writers_lock_is_stale(tmp_path):
    import subprocess
    import sys
    import time

    config = _small_config(tmp_path)
    out = Path(config.out)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom neurofm.outputs import writer_lock\n"
                               f"with writer_lock({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(NeuroFMError, match=r"is being written by .*\"pid\": %d" % holder.pid):
            build_shards(config, progress=False)
        assert not list(out.glob("shard-*"))
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    assert build_shards(config, progress=False)["complete"]  # the killed writer's lock file is stale


def _mixed_config(tmp_path):
    """Three generated FIF recordings, a broken EDF (skipped) and simulated EEG, MEG and fMRI: a build config
    maker ``config(out)`` and the expected number of recordings."""
    from neurofm.data_shards.config import SimulateConfig

    fif = [write_eeg_fif(tmp_path / f"rec{i}_raw.fif", seconds, n_channels=8, seed=i) for i, seconds in enumerate((30, 12, 20))]
    broken = tmp_path / "broken.edf"
    broken.write_bytes(b"\0" * 300)

    def config(out):
        cfg = load_config(ShardsConfig, None, ["inputs=[" + ", ".join(f"{{path: '{p}'}}" for p in [*fif, broken]) + "]",
                                               f"out={tmp_path / out}", "samples_per_shard=8", "on_error=skip"])
        cfg.simulate = SimulateConfig(hours=0.015, modalities=["eeg", "meg", "fmri"], recording_seconds=10, fmri_run_seconds=40, subjects=1)
        return cfg

    return config, broken


def _serial_bytes(config, out: Path) -> dict[str, bytes]:
    """Build serially into ``out``, return every shard's and the manifest's bytes, and remove ``out``."""
    serial = build_shards(config(out.name), progress=False)
    names = [s["name"] for s in serial["shards"]] + ["manifest.json"]
    expected = {name: (out / name).read_bytes() for name in names}
    shutil.rmtree(out)
    return expected


def _assert_same_bytes(out: Path, expected: dict[str, bytes]) -> None:
    for name, payload in expected.items():
        assert (out / name).read_bytes() == payload, name
    assert not (out / ".staging").exists()


@pytest.mark.parametrize("workers", [2, 4])
def test_a_build_on_dask_workers_is_byte_identical_to_the_serial_build(tmp_path, workers):
    """One task per recording, run by the driver and a local Dask cluster; the driver packs them in order."""
    config, broken = _mixed_config(tmp_path)
    expected = _serial_bytes(config, tmp_path / "out")
    manifest = build_shards(config("out"), progress=False, workers=workers)  # into the same folder: the manifest names it
    assert len(manifest["recordings"]) >= 6 and [s["source"] for s in manifest["skipped"]] == [str(broken)]
    _assert_same_bytes(tmp_path / "out", expected)


def test_a_worker_killed_mid_recording_costs_only_that_recordings_retry(tmp_path):
    """SIGKILL a Dask worker while it stages a recording (its staging tar open): Dask reruns that task on a
    worker and the shards are byte-identical to the serial build's."""
    import threading
    import time

    import psutil
    from dask.distributed import LocalCluster

    config, _ = _mixed_config(tmp_path)
    expected = _serial_bytes(config, tmp_path / "out")
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    killed, stop = [], threading.Event()
    workers_before = {child.pid for child in psutil.Process().children(recursive=True)}

    def kill_a_worker_mid_recording():
        while not stop.is_set() and not killed:
            for child in psutil.Process().children(recursive=True):
                try:
                    staging = [f.path for f in child.open_files() if f.path.endswith(".tar.partial")]
                except psutil.Error:
                    continue
                if staging:
                    child.kill()
                    killed.append((child.pid, staging[0]))
                    return
            time.sleep(0.005)

    watcher = threading.Thread(target=kill_a_worker_mid_recording)
    watcher.start()
    try:
        build_shards(config("out"), progress=False, scheduler=cluster.scheduler_address)
    finally:
        stop.set()
        watcher.join()
        cluster.close()
    assert killed, "no worker was caught with a staging tar open"
    pid, staging = killed[0]
    assert pid in workers_before and Path(staging).parent.name == ".staging"
    _assert_same_bytes(tmp_path / "out", expected)


def test_an_unreachable_scheduler_is_a_clear_error_within_seconds(tmp_path):
    import time

    started = time.perf_counter()
    with pytest.raises(NeuroFMError, match="Cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        build_shards(_small_config(tmp_path), progress=False, scheduler="tcp://127.0.0.1:9")
    assert time.perf_counter() - started < 30


def test_launch_shards_renders_the_slurm_job_of_a_cluster_section(capsys):
    from neurofm.cli import main

    assert main(["launch", "shards", "--config", "configs/demo.yaml", "--config", "configs/shards_slurm.yaml", "--dry-run",
                 "cluster.jobs=2", "cluster.account=neuro"]) == 0
    script = capsys.readouterr().out
    assert "#SBATCH -p cpu" in script and "#SBATCH --cpus-per-task=8" in script and "#SBATCH -A neuro" in script
    assert "#SBATCH --exclusive" in script and "--nworkers 8" in script and "--nthreads 1" in script
    assert main(["launch", "shards", "--config", "configs/demo.yaml", "--dry-run"]) == 1  # no cluster section


def test_worker_processes_keep_glibc_malloc_settings(monkeypatch, capsys):
    """Dask's nannies set MALLOC_TRIM_THRESHOLD_, which made every task 1.5x slower; ours unset it — in a
    local cluster's workers and in the environment a batch job's nanny reads its Dask config from. A task and
    the driver keep one thread per BLAS/OpenMP pool while the cluster runs."""
    import contextlib
    import os
    import re
    import socket
    import subprocess
    import sys
    import time
    import warnings

    from neurofm.cli import main
    from neurofm.data_shards.parallel import DaskExecutor

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    with socket.socket() as held, warnings.catch_warnings(record=True) as caught:  # another cluster holds Dask's 8787
        warnings.simplefilter("always")
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with contextlib.suppress(OSError):
            held.bind(("", 8787))
            held.listen()
        executor = DaskExecutor(1)
        while not executor.ready():  # it starts in the background
            time.sleep(0.05)
    assert not [w for w in caught if "already in use" in str(w.message)]  # its dashboard takes a free port, silently
    try:
        assert list(executor.client.run(os.environ.get, "MALLOC_TRIM_THRESHOLD_").values()) == [None]
        assert list(executor.client.run(os.environ.get, "OMP_NUM_THREADS").values()) == ["1"]  # Dask's other settings stay
        from threadpoolctl import threadpool_info

        assert {pool["num_threads"] for pool in executor.submit(threadpool_info).result()} == {1}
        assert {pool["num_threads"] for pool in threadpool_info()} == {1}
    finally:
        executor.close()
    assert main(["launch", "shards", "--config", "configs/demo.yaml", "--config", "configs/shards_slurm.yaml", "--dry-run"]) == 0
    name, value = re.search(r'export (DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON)="(.*)"', capsys.readouterr().out).groups()
    code = "from distributed.nanny import _get_env_variables as g; print(sorted(g('distributed.nanny.pre-spawn-environ')))"
    job_env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")} | {name: value}
    seen = subprocess.run([sys.executable, "-c", code], env=job_env, capture_output=True, text=True, check=True).stdout
    assert "OMP_NUM_THREADS" in seen and "MALLOC_TRIM_THRESHOLD_" not in seen


def test_a_worker_staging_a_recording_file_does_not_load_torch(tmp_path):
    """A Dask worker of the build only reads, preprocesses and stages recordings: it must not pay torch's
    import (≈ 1.3 s and 120 MB per worker process) through the package's modules. A fresh interpreter
    stages a generated FIF recording the way a worker does."""
    import subprocess
    import sys

    fif = write_eeg_fif(tmp_path / "rec_raw.fif", 12, n_channels=8, seed=0)
    script = (
        "import sys\n"
        "from neurofm.data_shards.config import InputSpec, ShardsConfig\n"
        "from neurofm.data_shards.build import list_sources\n"
        "from neurofm.data_shards.parallel import run_recording\n"
        f"cfg = ShardsConfig(inputs=[InputSpec(path={str(fif)!r})], out={str(tmp_path / 'out')!r})\n"
        f"entry = run_recording(cfg, list_sources(cfg)[0], 0, {str(tmp_path)!r})\n"
        "print(entry['n_windows'], 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    windows, torch_loaded = done.stdout.split()
    assert int(windows) > 0 and torch_loaded == "False"


def test_settings_added_later_leave_the_hash_of_earlier_shard_sets_alone():
    """A shard set built before a setting existed must keep its hash (else a rerun of the same build is
    refused as 'other settings'): a later setting at its old-behaviour value is left out of the hash, any
    other value enters it."""
    from neurofm.data_shards.build import settings_hash
    from neurofm.data_shards.config import EventEpochs, InputSpec, SimulateConfig

    config = ShardsConfig(out="x", simulate=SimulateConfig())
    # the hash shard sets of the default simulator settings were written with before simulate.fmri_epochs existed
    assert settings_hash(config) == "ad191a1738e31846", "a new setting changed old shard sets' hash: add it to LATER_SETTINGS"
    config.simulate.fmri_epochs = EventEpochs(events=["visual"], tmin=0.0, tmax=16.0)
    assert settings_hash(config) != "ad191a1738e31846"
    # ... and of inputs, written before inputs[].rename_events existed
    inputs = ShardsConfig(out="x", inputs=[InputSpec(path="a.fif"), InputSpec(path="b.edf")])
    assert settings_hash(inputs) == "dd2b2edead5b8479", "a new input setting changed old shard sets' hash: add it to LATER_SETTINGS"
    inputs.inputs[1].rename_events = {"stim/1": "left"}
    assert settings_hash(inputs) != "dd2b2edead5b8479"


def _fif_with_triggers(path: Path, triggers: dict[float, int], sfreq: float = 256.0, crop_start: float = 2.0) -> Path:
    """A biosemi64 FIF with a stim channel holding ``triggers`` (seconds → code) and a measurement date,
    cropped so that its first sample is not sample 0 (the frames of annotations and triggers differ)."""
    import mne

    montage = mne.channels.make_standard_montage("biosemi64")
    info = mne.create_info(montage.ch_names[:16] + ["STI 014"], sfreq, ["eeg"] * 16 + ["stim"])
    n = int(30 * sfreq)
    rng = np.random.default_rng(0)
    data = np.vstack([rng.normal(0, 10e-6, (16, n)), np.zeros((1, n))])
    for t, code in triggers.items():
        data[16, int(t * sfreq): int(t * sfreq) + 5] = code
    raw = mne.io.RawArray(data, info, verbose="error").set_montage(montage, on_missing="ignore")
    raw.set_meas_date(1_700_000_000)
    raw.set_annotations(mne.Annotations([4.0], [1.0], ["rest"], orig_time=raw.info["meas_date"]))
    raw.crop(tmin=crop_start).save(path, overwrite=True, verbose="error")
    return path


def test_trigger_codes_become_events_that_epochs_and_rename_events_use(tmp_path):
    """A trigger on a stim channel is an event like an annotation: ``epochs`` cuts windows at it (here
    renamed by ``rename_events``), at its own time in a recording whose first sample is not 0."""
    from neurofm.data_shards.config import EventEpochs, InputSpec

    triggers = {5.0: 1, 9.5: 2, 14.0: 1, 18.25: 2, 23.0: 1}
    _fif_with_triggers(tmp_path / "ssvep_raw.fif", triggers)
    out = tmp_path / "shards"
    config = ShardsConfig(out=str(out), root=str(tmp_path), inputs=[InputSpec(
        path="ssvep_raw.fif", rename_events={"stim/1": "f12", "stim/2": "f15"},
        epochs=EventEpochs(events=["f12", "f15"], tmin=-0.5, tmax=1.5))])
    build_shards(config, progress=False)
    metas = [s["meta"] for s in _samples(out)]
    assert Counter(m["labels"]["event"] for m in metas) == {"f12": 3, "f15": 2}
    assert all(m["layout"] == "epochs" and m["events"][0]["onset"] == 0.5 for m in metas)
    # continuous windows list the renamed trigger at its time after the crop, beside the file's annotation
    build_shards(ShardsConfig(out=str(tmp_path / "continuous"), root=str(tmp_path), inputs=[InputSpec(
        path="ssvep_raw.fif", rename_events={"stim/1": "f12", "stim/2": "f15"})]), progress=False)
    events = [(round(m["window_onset"] + e["onset"], 3), e["label"]) for m in (s["meta"] for s in _samples(tmp_path / "continuous"))
              for e in m["events"]]
    assert sorted(events) == sorted([(2.0, "rest")] + [(round(t - 2.0, 3), {1: "f12", 2: "f15"}[c]) for t, c in triggers.items()])


def _egi_mff(path: Path, events: dict[float, str], sfreq: int = 250, seconds: int = 20) -> Path:
    """A continuous EGI MFF folder (HydroCel GSN 128: 128 electrodes and the flat reference VREF) written by
    mffpy, EGI's own reader/writer, with ``events`` (seconds → code) in its event track."""
    import datetime

    import mffpy
    from mffpy.bin_writer import BinWriter

    start = datetime.datetime(2024, 1, 1, 12, 0, tzinfo=datetime.timezone.utc)
    writer = mffpy.Writer(str(path))
    writer.addxml("fileInfo", recordTime=start)
    writer.add_coordinates_and_sensor_layout("HydroCel GSN 128 1.0")
    data = np.random.default_rng(0).normal(0, 10, (129, sfreq * seconds)).astype(np.float32)  # µV
    data[-1] = 0  # VREF: the reference electrode reads zero
    signal = BinWriter(sampling_rate=sfreq, data_type="EEG")
    signal.add_block(data)
    writer.addbin(signal)
    writer.addxml("eventTrack", name="Events", trackType="EVNT", events=[
        dict(beginTime=start + datetime.timedelta(seconds=t), duration=1000, code=code, label=code, description="",
             sourceDevice="Experiment") for t, code in events.items()])
    writer.write()
    return path


def test_egi_mff_folder_builds_with_its_positions_and_events_once(tmp_path):
    """EGI's MFF (a folder) found in a folder input, read with its own electrode positions, its flat reference
    left out, and each event cut once — MNE gives MFF events both as annotations and as stim channels."""
    from neurofm.data_shards.config import EventEpochs, InputSpec

    (tmp_path / "recs").mkdir()
    _egi_mff(tmp_path / "recs" / "sub-01.mff", {3.0: "fac1", 7.5: "hou1", 12.0: "fac1", 16.0: "hou1"})
    out = tmp_path / "shards"
    build_shards(ShardsConfig(out=str(out), root=str(tmp_path), inputs=[InputSpec(
        path="recs", epochs=EventEpochs(events=["fac1", "hou1"], tmin=-0.5, tmax=1.5))]), progress=False)
    samples = _samples(out)
    assert Counter(s["meta"]["labels"]["event"] for s in samples) == {"fac1": 2, "hou1": 2}
    sensors = samples[0]["sensors"]
    assert sensors.shape[0] == 128  # VREF is flat
    radius = np.linalg.norm(sensors[:, :3], axis=1)
    assert 0.06 < radius.min() and radius.max() < 0.15  # the net's own positions, in metres
    build_shards(ShardsConfig(out=str(tmp_path / "continuous"), root=str(tmp_path), inputs=[InputSpec(path="recs")]),
                 progress=False)
    labels = [e["label"] for s in _samples(tmp_path / "continuous") for e in s["meta"]["events"]]
    assert sorted(labels) == ["fac1", "fac1", "hou1", "hou1"]


def test_rename_events_naming_no_event_of_the_file_is_a_clear_error(tmp_path):
    from neurofm.data_shards.config import InputSpec

    _fif_with_triggers(tmp_path / "a_raw.fif", {5.0: 1})
    config = ShardsConfig(out=str(tmp_path / "shards"), root=str(tmp_path),
                          inputs=[InputSpec(path="a_raw.fif", rename_events={"stim/7": "left"})])
    with pytest.raises(NeuroFMError, match=r"rename_events names none of its event labels \(rest, stim/1\)"):
        build_shards(config, progress=False)
