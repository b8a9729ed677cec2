"""fMRI: NIfTI runs and ROI tables → parcel sensors at their centroids."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from neurofm.data_shards.config import FmriPreprocess, InputSpec
from neurofm.data_shards.fmri import mni_to_head, read_nifti, read_roi_table
from neurofm.data_shards.sensors import sensor_table
from neurofm.data_shards.readers import package_path
from neurofm.errors import RecordingError

# real BOLD that ships inside installed wheels (also in ../shared/data/fmri): no test here needs ../shared
FUNCTIONAL = package_path("pkg:nibabel/tests/data/functional.nii")  # 20 volumes, TR 2 s, MNI space
NITIME_RUN = package_path("pkg:nitime/data/fmri1.nii.gz")
NITIME_ROIS = package_path("pkg:nitime/data/fmri_timeseries.csv")


def test_mni_origin_lands_inside_the_head():
    # MNI (0, 0, 0) is near the anterior commissure: a few cm above and in front of the head origin
    point = mni_to_head(np.zeros((1, 3)))[0]
    assert np.linalg.norm(point) < 0.06


def test_ward_parcels_of_a_real_run():
    rec = read_nifti(FUNCTIONAL, InputSpec(path="x"), n_parcels=20)
    raw = rec.inst
    assert raw.info["sfreq"] == pytest.approx(0.5) and raw.n_times == 20
    assert len(raw.ch_names) == 20
    table = sensor_table(raw.info, "fmri")
    assert set(table.kinds) == {"bold"} and np.allclose(table.orientations, 0)
    assert np.all(np.linalg.norm(table.positions, axis=1) < 0.15)  # MNI image: parcels inside the head
    assert rec.report["coord_frame"].startswith("MNI")
    # detrended: no parcel keeps a linear trend
    t = np.arange(raw.n_times)
    slopes = np.polyfit(t, raw.get_data().T, 1)[0]
    assert np.allclose(slopes, 0, atol=1e-6 * np.abs(raw.get_data()).max())


def test_user_atlas_gives_one_sensor_per_label_and_mismatch_is_an_error(tmp_path):
    img = nib.load(NITIME_RUN)
    labels = np.zeros(img.shape[:3], np.int16)
    labels[:5, :, :9], labels[5:, :, :9], labels[:, :, 9:] = 1, 2, 3
    atlas = tmp_path / "atlas.nii.gz"
    nib.save(nib.Nifti1Image(labels, img.affine), atlas)
    rec = read_nifti(NITIME_RUN, InputSpec(path="x", atlas=str(atlas)))
    assert rec.inst.ch_names == ["parcel-001", "parcel-002", "parcel-003"]
    expected = img.get_fdata()[labels == 2].mean(axis=0)
    expected = expected - np.polyval(np.polyfit(np.arange(40), expected, 1), np.arange(40))
    assert np.allclose(rec.inst.get_data()[1], expected)
    wrong = tmp_path / "wrong.nii.gz"
    nib.save(nib.Nifti1Image(labels[:, :, :10], img.affine), wrong)
    with pytest.raises(RecordingError, match=r"wrong.nii.gz.*does not match the grid.*resample_to_img"):
        read_nifti(NITIME_RUN, InputSpec(path="x", atlas=str(wrong)))


def test_roi_table_needs_positions_and_tr(tmp_path):
    csv = NITIME_ROIS
    with pytest.raises(RecordingError, match="positions.*tr_seconds"):
        read_roi_table(csv, InputSpec(path="x"))
    partial = tmp_path / "rois.tsv"
    partial.write_text("name\tx\ty\tz\nLCau\t-13\t10\t10\nRCau\t14\t12\t10\n")
    with pytest.raises(RecordingError, match="LPut"):
        read_roi_table(csv, InputSpec(path="x", positions=str(partial), tr_seconds=1.89))
    rec = read_roi_table(csv, InputSpec(path="x", positions=str(partial), tr_seconds=1.89, missing_positions="drop", channel_types={"WM": "misc"}))
    assert rec.inst.ch_names == ["LCau", "RCau"] and rec.inst.n_times == 250
    assert "WM" in rec.report["dropped_non_brain"]


def test_three_d_image_and_nan_voxels_are_errors(tmp_path):
    img = nib.load(FUNCTIONAL)
    volume = tmp_path / "one_volume.nii"
    nib.save(nib.Nifti1Image(img.get_fdata()[..., 0], img.affine), volume)
    with pytest.raises(RecordingError, match="must be a 4-D fMRI run"):
        read_nifti(volume, InputSpec(path="x"))
    data = img.get_fdata()
    data[3, 3, 1, 5] = np.nan
    nan_run = tmp_path / "nan.nii"
    nib.save(nib.Nifti1Image(data.astype(np.float32), img.affine), nan_run)
    with pytest.raises(RecordingError, match="nan.nii holds NaN"):
        read_nifti(nan_run, InputSpec(path="x"))


def test_csv_declared_as_electrophysiology_is_refused_not_read_as_parcels(tmp_path):
    from pathlib import Path

    from neurofm.data_shards.readers import read_recording

    csv = tmp_path / "eeg_table.csv"
    csv.write_text("Fz,Cz\n1,2\n3,4\n")
    with pytest.raises(RecordingError, match="declares modality: eeg"):
        read_recording(Path(csv), InputSpec(path=str(csv), modality="eeg"), None)


def _run_with_events(tmp_path):
    import shutil
    from importlib.resources import files

    run = tmp_path / "sub-01_task-faces_bold.nii"
    shutil.copy(files("nibabel") / "tests" / "data" / "functional.nii", run)  # 20 volumes, TR 2 s, MNI
    (tmp_path / "sub-01_task-faces_events.tsv").write_text("onset\tduration\ttrial_type\n4.0\t2.0\tface\n20.0\t2.0\thouse\n")
    return run


def test_fmri_events_table_beside_a_run_labels_its_windows(tmp_path):
    from neurofm.data_shards import ShardIndex, build_shards
    from neurofm.data_shards.config import ShardsConfig

    run = _run_with_events(tmp_path)
    build_shards(ShardsConfig(inputs=[InputSpec(path=str(run))], out=str(tmp_path / "s"), fmri=FmriPreprocess(n_parcels=8)), progress=False)
    index = ShardIndex(tmp_path / "s")
    events = [(index[i]["meta"]["window_onset"], e["label"], e["onset"]) for i in range(len(index)) for e in index[i]["meta"]["events"]]
    assert (0.0, "face", 4.0) in events and (16.0, "house", 4.0) in events and (8.0, "house", 12.0) in events


def test_fmri_epochs_cut_event_locked_windows(tmp_path):
    from neurofm.data_shards import ShardIndex, build_shards
    from neurofm.data_shards.config import EventEpochs, ShardsConfig

    run = _run_with_events(tmp_path)
    spec = InputSpec(path=str(run), epochs=EventEpochs(events=["face", "house"], tmin=0.0, tmax=14.0))
    build_shards(ShardsConfig(inputs=[spec], out=str(tmp_path / "s"), fmri=FmriPreprocess(n_parcels=8)), progress=False)
    index = ShardIndex(tmp_path / "s")
    metas = [index[i]["meta"] for i in range(len(index))]
    assert [m["labels"]["event"] for m in metas] == ["face", "house"] and all(m["layout"] == "epochs" for m in metas)
    assert metas[0]["n_valid_samples"] == 8  # 0 … 14 s at TR 2 s: 8 volumes of a 16-s window


def test_epochs_on_an_epochs_file_are_refused(tmp_path):
    import mne

    from neurofm.data_shards import build_shards
    from neurofm.data_shards.config import EventEpochs, ShardsConfig
    from neurofm.errors import NeuroFMError

    info = mne.create_info(["Fz", "Cz", "Pz"], 100.0, "eeg")
    path = tmp_path / "words-epo.fif"
    mne.EpochsArray(np.random.default_rng(0).normal(0, 1e-5, (4, 3, 100)), info, verbose="error").save(path, verbose="error")
    spec = InputSpec(path=str(path), epochs=EventEpochs(events=["x"]), preprocess={"h_freq": 20})
    with pytest.raises(NeuroFMError, match="continuous recordings only"):
        build_shards(ShardsConfig(inputs=[spec], out=str(tmp_path / "s")), progress=False)


def test_runs_of_one_dataset_share_one_parcellation(tmp_path):

    from importlib.resources import files

    from neurofm.data_shards import ShardIndex, build_shards
    from neurofm.data_shards.config import ShardsConfig

    data = tmp_path / "study"
    data.mkdir()
    img = nib.load(files("nibabel") / "tests" / "data" / "functional.nii")
    rng = np.random.default_rng(0)
    for run in (1, 2):  # the same grid, different noise: separately fitted Ward parcels would differ
        noisy = np.asarray(img.dataobj, dtype=np.float32) * (1 + 0.05 * rng.standard_normal(img.shape).astype(np.float32))
        nib.save(nib.Nifti1Image(noisy, img.affine, img.header), data / f"sub-0{run}_task-rest_bold.nii")
    config = ShardsConfig(inputs=[InputSpec(path=str(data), dataset="study")], out=str(tmp_path / "s"), fmri=FmriPreprocess(n_parcels=8))
    manifest = build_shards(config, progress=False)
    stored = tmp_path / "s" / "parcellations" / "study.nii.gz"
    assert stored.is_file()
    first, second = (r["parcellation"] for r in manifest["recordings"])
    assert first["shared_parcellation"] == second["shared_parcellation"] == str(stored)
    index = ShardIndex(tmp_path / "s")
    sensors = {index[i]["meta"]["source"]: index[i]["sensors"] for i in range(len(index))}
    a, b = sensors.values()
    assert a.shape == b.shape and np.allclose(a, b)  # parcel k sits at the same centroid in both runs
