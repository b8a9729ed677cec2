"""Every recording in ../shared/data read with the shared config: real facts about each file.

This is the readers' conformance test: each file must come out with typed, positioned brain channels
only, and ``test_every_shared_recording_is_in_the_config`` fails when a recording is added to
../shared/data without joining configs/shared_data.yaml (and so this table).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import mne
import numpy as np
import pytest

from neurofm.data_shards.readers import _is_recording_path, expand_inputs, read_recording
from neurofm.data_shards.sensors import KINDS, has_position, sensor_table
from tests.conftest import SHARED, needs_shared, shared_config

# file → (modality, layout, source sfreq, kinds, dropped non-brain (subset), events/labels expected)
FACTS = {
    "eegmmidb_S088R10.edf": ("eeg", "continuous", 128.0, {"eeg": 64}, [], {"T0": 19, "T1": 10, "T2": 9}),
    "eeglab_tutorial.set": ("eeg", "continuous", 128.0, {"eeg": 30}, ["EOG1", "EOG2"], {"square": 80, "rt": 74}),
    "test.vhdr": ("eeg", "continuous", 1000.0, {"eeg": 26}, ["HL", "HR", "Vb", "ReRef"], {"Stimulus/S255": 5}),
    "biosemi_test.bdf": ("eeg", "continuous", 2048.0, {"eeg": 66}, ["EXG1", "LEOG", "Status"], {}),
    "clinical_chtypes.edf": ("eeg", "continuous", 200.0, {"eeg": 27}, ["ECG1", "ECG2", "POL DC01"], {"A1+A2 OFF": 1}),
    "n400_words-epo.fif": ("eeg", "epochs", 50.0, {"eeg": 32}, [], {}),
    "sub-1_ses-1_run-1_raw.fif": ("eeg", "continuous", 256.0, {"eeg": 4}, ["STI"], {"face": 89, "house": 108}),
    "sample_audvis_trunc_raw_sss.fif": ("meg", "continuous", 300.307, {"grad": 204, "mag": 102, "eeg": 60}, ["EOG 061", "STI 014"], {}),
    "sample_audvis-ave.fif.gz": ("meg", "evoked", 600.615, {"grad": 204, "mag": 102, "eeg": 60}, ["EOG 061"], {}),
    "elekta_3ch_raw.fif": ("meg", "continuous", 1000.0, {"mag": 1, "grad": 2}, ["STI101"], {}),
    "kit_test.sqd": ("meg", "continuous", 1000.0, {"mag": 157}, ["MEG 158", "MISC 001"], {"stim/255": 3}),
    "somMDYO-18av.ds": ("meg", "continuous", 1250.0, {"mag": 144}, ["BG1-606"], {}),
    "sub-pat01_acq-seeg_ieeg.edf": ("ieeg", "continuous", 1000.0, {"seeg": 88}, ["EKG1", "EKG2", "DC01"], {"test annotation": 2}),
    "sub-pat01_acq-ecog_ieeg.edf": ("ieeg", "continuous", 999.412, {"ecog": 64}, ["EKGL", "EKGR"], {"eeg sz start": 1}),
    "sub-pt1_ses-02_task-monitor_acq-ecog_run-01_clip2.lay": ("eeg", "continuous", 200.0, {"eeg": 23}, ["POL DC01"], {"seizure": 2}),
    "nitime_fmri1.nii.gz": ("fmri", "continuous", 1 / 1.35, {"misc": 64}, [], {}),
    "nitime_fmri2.nii.gz": ("fmri", "continuous", 1 / 1.35, {"misc": 64}, [], {}),
    "nibabel_functional.nii": ("fmri", "continuous", 0.5, {"misc": 64}, [], {}),
    "nitime_fmri_timeseries.csv": ("fmri", "continuous", 1 / 1.89, {"misc": 28}, ["WM", "Vent", "Brain"], {}),
}


def _recordings():
    if not SHARED.is_dir():
        return []
    config = shared_config()
    return [(p, s) for spec in config.inputs for p, s, _ in expand_inputs(spec, Path(config.root))]


def _read(path, spec):
    return read_recording(path, spec, fmri_config=shared_config().fmri)


@needs_shared
def test_every_shared_recording_is_in_the_config():
    listed = {p.resolve() for p, _ in _recordings()}
    on_disk = {p.resolve() for p in SHARED.rglob("*") if _is_recording_path(p) and ".ds" not in str(p.parent)}
    on_disk |= {p.resolve() for p in SHARED.rglob("*.csv")}
    assert on_disk - listed == set(), "add new recordings to configs/shared_data.yaml and to FACTS"
    muse = [p for p in listed if "muse_n170" in str(p)]
    assert len(muse) == 6


@needs_shared
@pytest.mark.parametrize("path,spec", _recordings(), ids=lambda x: x.name if isinstance(x, Path) else "")
def test_reader_conformance(path, spec):
    """Typed, positioned brain channels only; facts of the file; sensor table well formed."""
    facts = FACTS.get(path.name) or FACTS["sub-1_ses-1_run-1_raw.fif"]
    modality, layout, sfreq, kinds, dropped, events = facts
    rec = _read(path, spec)
    assert rec.modality == modality and rec.layout == layout
    inst = rec.inst[0] if isinstance(rec.inst, list) else rec.inst
    assert inst.info["sfreq"] == pytest.approx(sfreq, rel=1e-3)
    assert dict(Counter(inst.get_channel_types())) == kinds
    assert set(dropped) <= set(rec.report.get("dropped_non_brain", {}))
    found = Counter(e["label"] for e in rec.events)
    for label, count in events.items():
        if "muse" not in str(path) or path.name == "sub-1_ses-1_run-1_raw.fif":
            assert found[label] == count, label
    table = sensor_table(inst.info, modality)
    assert len(table) == len(inst.ch_names)
    assert all(has_position(p) for p in table.positions), "every kept channel has a position"
    assert set(table.kinds) <= set(KINDS)
    radius = np.linalg.norm(table.positions, axis=1)
    if modality in ("eeg", "meg"):  # scalp electrodes and MEG coils sit 5–20 cm from the head origin
        assert radius.min() > 0.04 and radius.max() < 0.2
    features = table.features()
    assert features.shape == (len(table), 12) and features.dtype == np.float32
    assert np.allclose(features[:, 6:].sum(axis=1), 1.0)


@needs_shared
def test_meg_orientations_follow_the_coil_definitions(shared):
    spec = next(s for p, s in _recordings() if p.name == "sample_audvis_trunc_raw_sss.fif")
    rec = _read(shared / "meg/sample_audvis_trunc_raw_sss.fif", spec)
    table = sensor_table(rec.inst.info, "meg")
    kinds = np.asarray(table.kinds)
    norms = np.linalg.norm(table.orientations, axis=1)
    assert np.allclose(norms[kinds != "eeg"], 1.0, atol=1e-5) and np.allclose(norms[kinds == "eeg"], 0.0)
    # magnetometer normals point away from the head centre; planar gradients are tangential
    mags, grads = kinds == "meg_mag", kinds == "meg_grad"
    radial = table.positions / np.linalg.norm(table.positions, axis=1, keepdims=True)
    assert np.median(np.sum(radial[mags] * table.orientations[mags], axis=1)) > 0.8
    assert np.median(np.abs(np.sum(radial[grads] * table.orientations[grads], axis=1))) < 0.35
    # the two gradiometers of a triplet share a position but measure orthogonal gradients
    assert np.allclose(table.positions[0], table.positions[1], atol=1e-4)
    assert abs(np.dot(table.orientations[0], table.orientations[1])) < 1e-3


@needs_shared
def test_ieeg_positions_come_from_the_electrodes_table_in_metres(shared):
    specs = {p.name: s for p, s in _recordings()}
    seeg = _read(shared / "ieeg/sub-pat01_acq-seeg_ieeg.edf", specs["sub-pat01_acq-seeg_ieeg.edf"])
    sources = seeg.report["positions"]["sources"]
    assert sources["electrodes.tsv"]["unit"] == "mm" and sources["electrodes.tsv"]["channels"] == 88
    first = seeg.inst.info["chs"][seeg.inst.ch_names.index("L'1")]["loc"][:3]
    assert np.allclose(first, [4.52036e-3, 61.73e-3, 66.4995e-3])
    ecog = _read(shared / "ieeg/sub-pat01_acq-ecog_ieeg.edf", specs["sub-pat01_acq-ecog_ieeg.edf"])
    assert ecog.report["positions"]["sources"]["electrodes.tsv"]["unit"] == "m"
    assert sorted(ecog.report["positions"]["dropped_without_position"])[:2] == ["BTM1", "BTM2"]
    onset = next(e["onset"] for e in ecog.events if e["label"] == "eeg sz start")
    assert onset == pytest.approx(10.23, abs=0.01)


@needs_shared
def test_lab_marked_bad_channels_are_dropped_and_reported(shared):
    spec = next(s for p, s in _recordings() if p.name == "somMDYO-18av.ds")
    rec = _read(shared / "meg/somMDYO-18av.ds", spec)
    assert "MRT11-606" in rec.report["bad_in_file"] and "MRT11-606" not in rec.inst.ch_names


@needs_shared
def test_epochs_keep_their_events_and_metadata(shared):
    spec = next(s for p, s in _recordings() if p.name == "n400_words-epo.fif")
    rec = _read(shared / "eeg/n400_words-epo.fif", spec)
    assert isinstance(rec.inst, mne.BaseEpochs) and len(rec.inst) == 200
    assert Counter(rec.inst.events[:, 2]) == {6: 100, 7: 100}
    assert {"cue", "association", "FAS"} <= set(rec.inst.metadata.columns)


@needs_shared
def test_trigger_codes_of_a_real_file_can_be_renamed_and_epoched(shared, tmp_path):
    """The real-file twin of the stim-channel test in test_shards: KIT's trigger channel → ``stim/255``
    (at 0, 0.281 and 1.564 s of a 2-s file: the first has no 0.1 s before it, so two epochs)."""
    from neurofm.data_shards import ShardIndex, build_shards
    from neurofm.data_shards.config import EventEpochs, InputSpec, ShardsConfig

    spec = InputSpec(path="meg/kit_test.sqd", rename_events={"stim/255": "tone"}, epochs=EventEpochs(events=["tone"], tmin=-0.1, tmax=0.4))
    assert Counter(e["label"] for e in _read(shared / spec.path, spec).events) == {"tone": 3}
    build_shards(ShardsConfig(out=str(tmp_path / "shards"), root=str(shared), inputs=[spec]), progress=False)
    index = ShardIndex(tmp_path / "shards")
    assert [index[i]["meta"]["labels"]["event"] for i in range(len(index))] == ["tone"] * 2
