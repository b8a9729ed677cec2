"""Channel names, montage matching, positions tables and the missing-position error."""

from __future__ import annotations

import mne
import numpy as np
import pytest

from neurofm.data_shards.config import InputSpec
from neurofm.data_shards.positions import read_positions_table, resolve_positions, type_channels
from neurofm.data_shards.readers import read_recording
from neurofm.data_shards.sensors import bipolar_pair, clean_channel_name, non_brain_type, sensor_table
from neurofm.errors import NeuroFMError, SensorPositionError


@pytest.mark.parametrize(
    "raw,clean",
    [("Fc5.", "Fc5"), ("Fcz.", "Fcz"), ("EEG Fp1-Ref", "Fp1"), ("EEG T3-LE", "T3"), (" Cz ", "Cz"), ("O1..", "O1"), ("C3-A2", "C3"),
     ("EEG_Cz_REF", "Cz"), ("EEG-Fp1", "Fp1"), ("Fp1_REF", "Fp1"), ("Fp1 (Ref)", "Fp1"), ("Fpz(ref)", "Fpz"), ("Fp1:Ref", "Fp1"),
     ("C3-CAR", "C3"), ("F3-Ref1", "F3"), ("Fp1-A1A2", "Fp1"), ("A1", "A1"), ("EEG A2", "A2"), ("Ref", "Ref"), ("EEG1", "EEG1"),
     ("FP1-F7", "FP1-F7"), ("Fp1-0", "Fp1"), ("EEG T1-REF", "T1"), ("T8-P8-1", "T8-P8")],
)
def test_clean_channel_name(raw, clean):
    assert clean_channel_name(raw) == clean


@pytest.mark.parametrize(
    "name,kind",
    [("EKG1", "ecg"), ("ECG ECG1", "ecg"), ("LEOG", "eog"), ("HEOG", "eog"), ("STI 014", "stim"), ("Status", "stim"),
     ("EXG3", "misc"), ("SaO2 X9", "misc"), ("POL DC03", "misc"), ("-", "misc"), ("--1", "misc"), ("Event marker", "misc"), ("TEMP", "misc"), ("LOC-REF", "eog"),
     ("ROC", "eog"), ("PHOTIC-REF", "misc"), ("BURSTS", "misc"), ("LOCK1", None), ("Fp1", None),
     ("C3", None), ("O'12", None), ("FP1-F7", None)],
)
def test_non_brain_names(name, kind):
    assert non_brain_type(name) == kind


@pytest.mark.parametrize(
    "name,pair",
    [("FP1-F7", ("FP1", "F7")), ("EEG Fpz-Cz", ("Fpz", "Cz")), ("T8-P8-1", ("T8", "P8")), ("FT9-FT10", ("FT9", "FT10")),
     ("C3-A2", None), ("EEG Fp1-Ref", None), ("C3-CAR", None), ("Fp1", None), ("-", None), ("1-2", None)],
)
def test_bipolar_labels(name, pair):
    assert bipolar_pair(name) == pair


def _raw(names, types="eeg", sfreq=100.0, seconds=4.0, seed=0):
    rng = np.random.default_rng(seed)
    info = mne.create_info(names, sfreq, types)
    return mne.io.RawArray(rng.normal(0, 1e-5, (len(names), int(sfreq * seconds))), info, verbose="error")


def test_montage_match_uses_cleaned_case_folded_names(tmp_path):
    raw = _raw(["Fc5.", "CZ", "EEG O1-Ref"])
    report = resolve_positions(raw, source=tmp_path / "x.edf", modality="eeg", spec=InputSpec(path="x"))
    montage = mne.channels.make_standard_montage("colin27_1005")
    ref = mne.create_info(montage.ch_names, 100.0, "eeg")
    ref.set_montage(montage)
    expected = {ch["ch_name"]: ch["loc"][:3] for ch in ref["chs"]}
    assert np.allclose(raw.info["chs"][0]["loc"][:3], expected["FC5"])
    assert np.allclose(raw.info["chs"][1]["loc"][:3], expected["Cz"])
    assert np.allclose(raw.info["chs"][2]["loc"][:3], expected["O1"])
    assert report["sources"]["montage colin27_1005"]["channels"] == 3


def test_clinical_site_names_take_the_template_site_they_stand_for(tmp_path):
    """TUH's anterior temporal T1/T2 sit at FT9/FT10, the 10-10 O9/O10 at the 10-05 I1/I2, and a label the
    file repeats (MNE's Fp1-0, Fp1-1) at its electrode."""
    raw = _raw(["EEG T1-REF", "EEG T2-REF", "O9", "O10", "Fp1-0", "Fp1-1"])
    report = resolve_positions(raw, source=tmp_path / "x.edf", modality="eeg", spec=InputSpec(path="x"))
    assert report["sources"]["montage colin27_1005"]["channels"] == 6
    expected = _template("FT9", "FT10", "I1", "I2", "Fp1", "Fp1")
    assert np.allclose([ch["loc"][:3] for ch in raw.info["chs"]], expected)


def test_egi_numbers_without_positions_get_the_nets_montage_named_and_then_read(tmp_path):
    names = [f"E{i}" for i in range(1, 129)]
    with pytest.raises(SensorPositionError, match=r"EGI net's electrode numbers \(E1 … E128\).*montage: GSN-HydroCel-128"):
        resolve_positions(_raw(names), source=tmp_path / "x.set", modality="eeg", spec=InputSpec(path="x"))
    raw = _raw(names)
    report = resolve_positions(raw, source=tmp_path / "x.set", modality="eeg", spec=InputSpec(path="x", montage="GSN-HydroCel-128"))
    assert report["sources"]["montage GSN-HydroCel-128"]["channels"] == 128
    with pytest.raises(SensorPositionError) as err:  # other unknown names get no such hint
        resolve_positions(_raw(["Xq1", "Xq2"]), source=tmp_path / "x.set", modality="eeg", spec=InputSpec(path="x"))
    assert "EGI" not in str(err.value)


def _template(*names):
    montage = mne.channels.make_standard_montage("colin27_1005")
    ref = mne.create_info(montage.ch_names, 100.0, "eeg")
    ref.set_montage(montage)
    return [next(ch["loc"][:3] for ch in ref["chs"] if ch["ch_name"] == n) for n in names]


def test_bipolar_labels_become_leads_between_their_two_electrodes(tmp_path):
    raw = _raw(["FP1-F7", "EEG Fpz-Cz", "Cz", "-"])
    type_channels(raw, {}, tmp_path / "r.edf")
    raw.drop_channels(["-"])  # a placeholder input is not a brain channel
    report = resolve_positions(raw, source=tmp_path / "r.edf", modality="eeg", spec=InputSpec(path="x"))
    assert report["sources"]["montage colin27_1005"]["channels"] == 1
    assert report["sources"]["bipolar pairs of montage colin27_1005"]["channels"] == 2
    sensors = sensor_table(raw.info, "eeg")
    fp1, f7, fpz, cz = _template("Fp1", "F7", "Fpz", "Cz")
    # a bipolar lead sits between its electrodes and points from the cathode to the anode (a potential
    # gradient, like a planar gradiometer's direction); a monopolar electrode has no orientation
    assert np.allclose(sensors.positions[0], (fp1 + f7) / 2, atol=1e-6)
    assert np.allclose(sensors.orientations[0], (fp1 - f7) / np.linalg.norm(fp1 - f7), atol=1e-5)
    assert np.allclose(sensors.positions[1], (fpz + cz) / 2, atol=1e-6)
    assert np.allclose(sensors.positions[2], cz, atol=1e-6) and not sensors.orientations[2].any()
    assert sensors.kinds == ["eeg"] * 3


def test_a_bipolar_label_with_an_unknown_electrode_still_needs_a_position(tmp_path):
    raw = _raw(["FP1-F7", "FP1-Xq9"])
    with pytest.raises(SensorPositionError, match="FP1-Xq9"):
        resolve_positions(raw, source=tmp_path / "r.edf", modality="eeg", spec=InputSpec(path="x"))


def test_missing_position_error_names_channel_and_remedies(tmp_path):
    raw = _raw(["Fz", "Xyz1"])
    with pytest.raises(SensorPositionError) as err:
        resolve_positions(raw, source=tmp_path / "rec.edf", modality="eeg", spec=InputSpec(path="x"))
    message = str(err.value)
    assert "rec.edf" in message and "Xyz1" in message
    for remedy in ("montage", "electrodes.tsv", "positions", "missing_positions: drop"):
        assert remedy in message
    assert isinstance(err.value, NeuroFMError)


def test_drop_mode_reports_dropped_channels(tmp_path):
    raw = _raw(["Fz", "Xyz1"])
    report = resolve_positions(raw, source=tmp_path / "r.edf", modality="eeg", spec=InputSpec(path="x", missing_positions="drop"))
    assert raw.ch_names == ["Fz"] and report["dropped_without_position"] == ["Xyz1"]


def test_positions_table_units_and_priority(tmp_path):
    table = tmp_path / "pos.csv"
    table.write_text("name,x,y,z\nA1x,10,20,30\nB2x,n/a,n/a,n/a\nC3,-40,0,50\n")
    positions, unit = read_positions_table(table)
    assert unit == "mm" and np.allclose(positions["A1x"], [0.01, 0.02, 0.03]) and "B2x" not in positions
    raw = _raw(["A1x", "C3"])
    report = resolve_positions(raw, source=tmp_path / "r.edf", modality="eeg", spec=InputSpec(path="x", positions=str(table)))
    # the user's table wins over the template montage, also for a 10-20 name
    assert np.allclose(raw.info["chs"][1]["loc"][:3], [-0.04, 0.0, 0.05])
    assert report["sources"]["positions file"]["channels"] == 2
    bad = tmp_path / "bad.tsv"
    bad.write_text("label\tx\n")
    with pytest.raises(SensorPositionError, match="must have columns name, x, y, z"):
        read_positions_table(bad)


def test_intracranial_contacts_never_take_scalp_montage_positions(tmp_path):
    raw = _raw(["C3", "C4"], types="ecog")
    with pytest.raises(SensorPositionError, match="C3"):
        resolve_positions(raw, source=tmp_path / "r.edf", modality="ieeg", spec=InputSpec(path="x"))


def test_channel_types_mapping_exact_name_beats_convention_and_glob_does_not(tmp_path):
    raw = _raw(["EKG1", "A1", "A2", "EOG"])
    type_channels(raw, {"EOG": "seeg", "*": "seeg"}, tmp_path / "r.edf")
    assert raw.get_channel_types() == ["ecg", "seeg", "seeg", "seeg"]
    with pytest.raises(NeuroFMError, match="Allowed types"):
        type_channels(raw, {"*": "brain"}, tmp_path / "r.edf")


def test_edf_ieeg_without_types_is_a_clear_error(shared):
    with pytest.raises(NeuroFMError, match=r"typed EEG.*channel_types"):
        read_recording(shared / "ieeg/sub-pat01_acq-seeg_ieeg.edf", InputSpec(path="x"))


def test_rename_unknown_channel_is_named(shared):
    with pytest.raises(NeuroFMError, match="rename_channels names channel"):
        read_recording(shared / "eeg/eeglab_tutorial.set", InputSpec(path="x", rename_channels={"EEG 999": "Fz"}))


def test_electrodes_table_type_column_types_ieeg_contacts(shared, tmp_path):
    """An EDF has no sEEG type; a BIDS electrodes table with a type column supplies it."""
    import shutil

    edf = tmp_path / "sub-01_ieeg.edf"
    shutil.copy(shared / "ieeg/sub-pat01_acq-ecog_ieeg.edf", edf)
    rows = (shared / "ieeg/sub-pat01_acq-ecog_electrodes.tsv").read_text().splitlines()
    typed = [rows[0] + "\ttype"] + [r + ("\tgrid" if r.startswith("C") else "\tstrip") for r in rows[1:]]
    (tmp_path / "sub-01_electrodes.tsv").write_text("\n".join(typed) + "\n")
    # BTM/BTP contacts are not in the table: the user types them; they have no position and are dropped
    rec = read_recording(edf, InputSpec(path="x", channel_types={"BT*": "ecog"}, missing_positions="drop"))
    assert rec.modality == "ieeg" and set(rec.inst.get_channel_types()) == {"ecog"} and len(rec.inst.ch_names) == 64
    assert {"EKGL", "EKGR"} <= set(rec.report["dropped_non_brain"])


def test_a_bipolar_edf_builds_into_oriented_eeg_sensors(tmp_path):
    """The real path for a double-banana EDF (CHB-MIT, Sleep-EDF style): MNE's EDF writer and reader,
    the shard build, the sensor rows."""
    from neurofm.config import load_config
    from neurofm.data_shards import build_shards
    from neurofm.data_shards.config import ShardsConfig
    from neurofm.data_shards.dataset import ShardIndex

    names = ["FP1-F7", "F7-T7", "T7-P7", "P7-O1", "FP2-F8", "F8-T8", "T8-P8", "P8-O2", "FZ-CZ", "CZ-PZ", "-", "ECG"]
    raw = _raw(names, sfreq=256.0, seconds=6.0)
    mne.export.export_raw(tmp_path / "chb.edf", raw, fmt="edf", physical_range=(-1e-3, 1e-3), verbose="error")
    config = load_config(ShardsConfig, None, [f"inputs=[{{path: '{tmp_path / 'chb.edf'}'}}]", f"out={tmp_path / 'out'}"])
    manifest = build_shards(config, progress=False)
    (recording,) = manifest["recordings"]
    assert recording["kinds"] == {"eeg": 10}  # the placeholder and the ECG are not brain channels
    sample = ShardIndex(tmp_path / "out")[0]
    sensors = sample["sensors"]
    assert sensors.shape[0] == 10
    orientation = sensors[:, 3:6]
    assert np.allclose(np.linalg.norm(orientation, axis=1), 1.0, atol=1e-5)
    assert np.all(np.linalg.norm(sensors[:, :3], axis=1) > 0.03)  # midpoints on the head, not the origin
