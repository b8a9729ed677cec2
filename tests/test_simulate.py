"""The simulator: physics sanity, ground truth through the shards path, determinism, bad input."""

from __future__ import annotations

import os
from collections import Counter

import mne
import numpy as np
import pytest

from neurofm.config import load_config
from neurofm.data_shards import ShardIndex, build_shards
from neurofm.data_shards.config import InputSpec, ShardsConfig, SimulateConfig
from neurofm.data_shards.readers import read_recording
from neurofm.data_shards.simulate import activity, geometry, plan_recordings, simulate_raw
from neurofm.data_shards.simulate.forward import region_gain, source_gain
from neurofm.data_shards.simulate.recordings import SimulatedSpec
from neurofm.errors import ConfigError


@pytest.fixture(scope="module")
def head():
    return geometry.make_head(subject=0, seed=0)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("gains")


def _radial(head, s):
    direction = head.source_rr[s] - head.r0
    return direction / np.linalg.norm(direction)


def test_eeg_source_near_an_electrode_peaks_at_that_electrode(head):
    info = geometry.eeg_info("biosemi64", head, 256.0)
    gain = source_gain(info, head)  # [channels, sources, 3]
    electrodes = np.stack([ch["loc"][:3] for ch in info["chs"]])
    radius = np.linalg.norm(head.source_rr - head.r0, axis=1)
    for name in ("Oz", "Cz", "T7", "Fp2"):
        target = electrodes[info.ch_names.index(name)]
        shallow = np.flatnonzero(radius > radius.max() - 0.012)  # sources just under the skull
        s = shallow[np.argmin(np.linalg.norm(head.source_rr[shallow] - target, axis=1))]
        topography = np.abs(gain[:, s] @ _radial(head, s))
        nearest = np.argmin(np.linalg.norm(electrodes - (head.r0 + _radial(head, s) * head.head_radius), axis=1))
        assert np.argmax(topography) == nearest
        assert np.linalg.norm(electrodes[nearest] - target) < 0.03


def test_radial_dipole_is_silent_in_meg_but_not_in_eeg(head):
    meg = source_gain(geometry.meg_info("neuromag306", head, 600.0, seed=0), head)
    eeg = source_gain(geometry.eeg_info("biosemi64", head, 256.0), head)
    mags = [i for i, t in enumerate(geometry.meg_info("neuromag306", head, 600.0, 0).get_channel_types()) if t == "mag"]
    s = int(np.argmax(np.linalg.norm(head.source_rr - head.r0, axis=1)))
    radial = _radial(head, s)
    tangential = np.cross(radial, [0.0, 0.0, 1.0] if abs(radial[2]) < 0.9 else [1.0, 0.0, 0.0])
    tangential /= np.linalg.norm(tangential)
    meg_ratio = np.linalg.norm(meg[mags, s] @ radial) / np.linalg.norm(meg[mags, s] @ tangential)
    eeg_ratio = np.linalg.norm(eeg[:, s] @ radial) / np.linalg.norm(eeg[:, s] @ tangential)
    assert meg_ratio < 1e-6 and eeg_ratio > 0.5


def test_meg_helmets_put_coils_outside_the_head_pointing_out(head):
    for helmet, n in (("neuromag306", 306), ("ctf275", 275), ("kit157", 157), ("neuromag122", 122), ("magnes3600", 248),
                      ("magnes2500", 148)):
        info = geometry.meg_info(helmet, head, 600.0, seed=0)
        assert len(info.ch_names) == n
        dev_head = info["dev_head_t"]["trans"]
        rr = mne.transforms.apply_trans(dev_head, np.stack([ch["loc"][:3] for ch in info["chs"]]))
        normals = np.stack([ch["loc"][9:12] for ch in info["chs"]]) @ dev_head[:3, :3].T
        distance = np.linalg.norm(rr - head.r0, axis=1)
        assert distance.min() > head.head_radius and distance.max() < 0.2
        outward = np.sum(normals * (rr - head.r0) / distance[:, None], axis=1)
        assert np.median(outward) > 0.8


def test_alpha_rhythm_peaks_at_its_frequency(cache):
    config = SimulateConfig(hours=0.01, cache_dir=str(cache))
    raw, truth = simulate_raw(SimulatedSpec("eeg", "biosemi64", 0, 0, 0, 60.0, 0), config)
    psd = raw.compute_psd(fmin=2.0, fmax=40.0, picks=["O1", "Oz", "O2", "POz"], n_fft=2048, verbose="error")
    spectrum, freqs = psd.get_data().mean(axis=0), psd.freqs
    assert abs(freqs[np.argmax(spectrum)] - truth["alpha_hz"]) < 0.5
    assert truth["alpha_regions"] and all(r.split("-")[0] in ("occipital", "parietal") for r in truth["alpha_regions"])


def test_bold_lags_neural_activity_by_the_haemodynamic_delay(head):
    rng = np.random.default_rng(0)
    scenario = activity.make_scenario(head, rng, 300.0, blocks=True)
    bold, drive = activity.bold_signal(head, scenario, tr=0.5, n_volumes=600, rng=rng, dt=0.1)
    k = scenario.condition_regions[scenario.events[0][2]][0]
    neural = drive[k, ::5][:600] - drive[k].mean()
    response = bold[k] - bold[k].mean()
    lags = np.arange(0, 30)  # volumes of 0.5 s
    corr = [np.corrcoef(neural[: 600 - lag], response[lag:])[0, 1] for lag in lags]
    assert 3.5 <= lags[int(np.argmax(corr))] * 0.5 <= 7.0


def test_same_seed_same_data_other_seed_other_data(cache):
    config = SimulateConfig(hours=0.01, cache_dir=str(cache))
    spec = SimulatedSpec("ecog", "grid", 0, 1, 3, 10.0, 5)
    a, truth_a = simulate_raw(spec, config)
    b, truth_b = simulate_raw(spec, config)
    assert np.array_equal(a.get_data(), b.get_data()) and truth_a == truth_b
    c, _ = simulate_raw(SimulatedSpec("ecog", "grid", 0, 1, 3, 10.0, 6), config)
    assert not np.allclose(a.get_data(), c.get_data())


def test_gains_are_cached(head, cache):
    info = geometry.eeg_info("classic_1020", head, 256.0)
    first = region_gain(info, head, "classic_1020", cache)
    files = list(cache.glob("classic_1020-*.npz"))
    assert len(files) == 1
    assert np.array_equal(region_gain(info, head, "classic_1020", cache), first)


def test_plan_splits_hours_over_modalities_and_devices():
    config = SimulateConfig(hours=0.5, modalities=["eeg", "meg", "fmri"], recording_seconds=100.0, fmri_run_seconds=240.0)
    plan = plan_recordings(config)
    for modality in ("eeg", "meg", "fmri"):
        assert sum(p.seconds for p in plan if p.modality == modality) == pytest.approx(600.0)
    assert {p.device for p in plan if p.modality == "meg"} == {"neuromag306", "ctf275", "kit157"}
    assert plan == plan_recordings(config)


def test_simulated_recordings_go_through_the_shards_path_with_their_ground_truth(tmp_path, cache):
    config = load_config(ShardsConfig, None, [
        f"simulate={{hours: 0.03, recording_seconds: 20, cache_dir: '{cache}'}}", f"out={tmp_path / 'out'}",
    ])
    manifest = build_shards(config, progress=False)
    recordings = manifest["recordings"]
    assert {r["modality"] for r in recordings} == {"eeg", "meg", "ieeg", "fmri"}
    assert {k for r in recordings for k in r["kinds"]} == {"eeg", "meg_mag", "meg_grad", "seeg", "ecog", "bold"}
    for r in recordings:  # the detector finds exactly the channels the simulator broke
        assert r["bad_channels"] == r["ground_truth"]["bad_channels"], r["source"]
    index = ShardIndex(tmp_path / "out")
    samples = [index[i] for i in range(len(index))]
    eeg = [s for s in samples if s["meta"]["modality"] == "eeg"]
    assert all("alpha_hz" in s["meta"]["labels"] for s in eeg)
    events = Counter(e["label"] for s in eeg for e in s["meta"]["events"])
    assert {"auditory", "visual", "somatosensory", "blink"} <= set(events)
    subjects = {s["meta"]["subject"] for s in samples}
    assert {"00", "01"} <= subjects


@pytest.mark.parametrize("helmet,n_channels,kinds", [("magnes3600", 248, {"meg_mag"}), ("neuromag122", 122, {"meg_grad"})])
def test_the_other_helmets_simulate_through_the_forward_model_into_sensor_rows(cache, helmet, n_channels, kinds):
    """Magnes magnetometers and Neuromag-122 planar pairs: a forward model, a finite field, and sensor rows
    whose orientation is the coil normal (magnetometers) or the gradient direction, tangential (planar)."""
    from neurofm.data_shards.sensors import sensor_table

    raw, _ = simulate_raw(SimulatedSpec("meg", helmet, 1, 0, 1, 4.0, 0), SimulateConfig(hours=0.01, cache_dir=str(cache)))
    data = raw.get_data()
    assert data.shape[0] == n_channels and np.isfinite(data).all() and data.std() > 0
    table = sensor_table(raw.info, "meg")
    assert set(table.kinds) == kinds
    rows = table.features()
    head_centre = rows[:, :3].mean(0)
    radial = (rows[:, :3] - head_centre) / np.linalg.norm(rows[:, :3] - head_centre, axis=1, keepdims=True)
    along = np.abs(np.sum(rows[:, 3:6] * radial, axis=1))
    assert np.median(along) > 0.8 if kinds == {"meg_mag"} else np.median(along) < 0.3


def test_a_bipolar_montage_records_differences_of_its_electrodes_as_oriented_leads(tmp_path, cache):
    """double_banana: each lead's gain is its anode's minus its cathode's (the classic 10-20 electrodes'
    forward model); saved as FIF and read back, the leads keep their bipolar sensor rows."""
    from neurofm.data_shards.sensors import sensor_table
    from neurofm.data_shards.simulate.recordings import recording_gain

    config = SimulateConfig(hours=0.01, cache_dir=str(cache))
    bipolar, electrodes = SimulatedSpec("eeg", "double_banana", 1, 0, 1, 6.0, 0), SimulatedSpec("eeg", "classic_1020", 1, 0, 1, 6.0, 0)
    gain, info, _ = recording_gain(bipolar, config)
    electrode_gain, electrode_info, _ = recording_gain(electrodes, config)
    row = {name: i for i, name in enumerate(electrode_info.ch_names)}
    assert info.ch_names[0] == "Fp1-F7" and len(info.ch_names) == 18
    assert np.allclose(gain[0], electrode_gain[row["Fp1"]] - electrode_gain[row["F7"]])
    raw, _ = simulate_raw(bipolar, config)
    raw.save(tmp_path / "bipolar_raw.fif", verbose="error")
    table = sensor_table(read_recording(tmp_path / "bipolar_raw.fif", InputSpec(path="x")).inst.info, "eeg")
    fp1, f7 = (electrode_info["chs"][row[n]]["loc"][:3] for n in ("Fp1", "F7"))
    assert np.allclose(table.positions[0], (fp1 + f7) / 2, atol=1e-6)
    assert np.allclose(table.orientations[0], (fp1 - f7) / np.linalg.norm(fp1 - f7), atol=1e-5)


def test_a_simulated_recording_saved_as_fif_reads_back_the_same(tmp_path, cache):
    raw, _ = simulate_raw(SimulatedSpec("meg", "ctf275", 1, 0, 1, 10.0, 0), SimulateConfig(hours=0.01, cache_dir=str(cache)))
    path = tmp_path / "sim_raw.fif"
    raw.save(path, verbose="error")
    rec = read_recording(path, InputSpec(path="x"))
    assert rec.modality == "meg" and rec.inst.ch_names == raw.ch_names
    assert Counter(e["label"] for e in rec.events) == Counter(raw.annotations.description)


@pytest.mark.parametrize(
    "override,message",
    [("simulate.hours=0", "hours must be positive"),
     ("simulate.modalities=[eeg, nirs]", "modalities must be some of"),
     ("simulate.eeg_montages=[biosemi65]", "Unknown EEG montage 'biosemi65'"),
     ("simulate.meg_helmets=[babymeg]", "Unknown MEG helmet 'babymeg'")],
)
def test_bad_simulation_settings_are_clear_errors(override, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        config = load_config(ShardsConfig, None, ["simulate={hours: 0.01}", override, f"out={tmp_path}"])
        build_shards(config, progress=False)


def test_projection_matches_numpy():
    from neurofm.data_shards.simulate.recordings import project

    rng = np.random.default_rng(0)
    gain, sources = rng.normal(size=(64, 32)), rng.normal(size=(32, 500))
    assert np.allclose(project(gain, sources), gain @ sources)


def test_a_simulated_meg_recording_does_not_depend_on_the_processes_hash_seed():
    """Dask workers are separate processes with their own string-hash seeds: set order must not leak in."""
    import subprocess
    import sys

    def run(seed: int, code: str) -> str:
        env = {**os.environ, "PYTHONHASHSEED": str(seed), "OMP_NUM_THREADS": "1"}
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, check=True).stdout

    orders = {seed: run(seed, "print(list({'mag', 'grad', 'eeg'}))") for seed in range(12)}
    a, b = next((x, y) for x in orders for y in orders if orders[x] != orders[y])
    code = ("import hashlib; from neurofm.data_shards.config import SimulateConfig; "
            "from neurofm.data_shards.simulate import plan_recordings, simulate_recording; "
            "cfg = SimulateConfig(hours=0.003, modalities=['meg'], recording_seconds=10, subjects=1); "
            "rec = simulate_recording(plan_recordings(cfg)[0], cfg); "
            "print(hashlib.sha256(rec.inst.get_data().tobytes()).hexdigest(), sorted(rec.labels.items()))")
    assert run(a, code) == run(b, code)
