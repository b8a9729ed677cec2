"""fMRI → parcel time series, each parcel a ``bold`` sensor at its centroid.

A 4-D NIfTI run (nibabel) is reduced to parcels: the user's atlas (a label image on the same grid)
when given, otherwise a data-driven Ward parcellation of the EPI brain mask (nilearn's
``compute_epi_mask``; scikit-learn's ``FeatureAgglomeration`` with grid connectivity, which is what
nilearn's ``Parcellations(method="ward")`` runs). Parcel means are linearly detrended here; the
preprocessing step resamples them to the configured TR with MNE and z-scores each parcel.

Coordinates: images whose sform/qform code says template space (aligned, Talairach, MNI: codes 2–4)
are taken as MNI millimetres and moved into MNE's head frame through the fsaverage head↔MRI
transform that ships with MNE. Scanner-space images (code 1) have no known transform to the head
frame: their centroids stay in scanner metres and the report says so.
"""

from __future__ import annotations

from pathlib import Path

import mne
import nibabel as nib
import numpy as np
from scipy import signal

from neurofm.data_shards.config import InputSpec
from neurofm.data_shards.positions import BRAIN_TYPES, read_positions_table, user_type
from neurofm.errors import RecordingError


def mni_to_head(points_m: np.ndarray) -> np.ndarray:
    """MNI (fsaverage MRI) coordinates in metres → MNE head frame, shape (n, 3)."""
    trans = mne.read_trans(Path(mne.__file__).parent / "data" / "fsaverage" / "fsaverage-trans.fif")
    if trans["from"] == mne.io.constants.FIFF.FIFFV_COORD_HEAD:
        trans = mne.transforms.invert_transform(trans)
    return mne.transforms.apply_trans(trans, points_m)


def _parcel_raw(names: list[str], series: np.ndarray, positions_head: np.ndarray, tr: float) -> mne.io.RawArray:
    """Parcel series [parcels, volumes] as a RawArray of misc channels at 1/TR Hz with head-frame locs."""
    info = mne.create_info(names, 1.0 / tr, "misc")
    for ch, pos in zip(info["chs"], positions_head):
        ch["loc"][:3] = pos
        ch["coord_frame"] = mne.io.constants.FIFF.FIFFV_COORD_HEAD
    return mne.io.RawArray(series, info, verbose="error")


def events_file(path: Path, spec: InputSpec) -> Path | None:
    """The events table of a run: ``spec.events``, else a BIDS ``*_events.tsv`` beside it (the run's name
    with ``_bold`` or the extension replaced by ``_events.tsv``)."""
    if spec.events:
        return Path(spec.events)
    name = path.name
    for ext in (".nii.gz", ".nii", ".csv"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    stem = name[: -len("_bold")] if name.endswith("_bold") else name
    candidate = path.with_name(f"{stem}_events.tsv")
    return candidate if candidate.is_file() else None


def read_events_table(path: Path, run: Path) -> mne.Annotations:
    """A BIDS events table (tab-separated; ``onset`` and ``duration`` in seconds, the label from
    ``trial_type``, else ``value``, else ``event``) → annotations."""
    import pandas as pd

    try:
        table = pd.read_csv(path, sep="\t")
    except Exception as err:  # pandas raises several types for damaged files
        raise RecordingError(f"{path} (events of {run}) cannot be read as a tab-separated table: {err}") from None
    if "onset" not in table.columns:
        raise RecordingError(f"{path} (events of {run}) has no 'onset' column; BIDS events tables need onset and duration in seconds.")
    label = next((c for c in ("trial_type", "value") if c in table.columns), None)
    onsets = pd.to_numeric(table["onset"], errors="coerce")
    durations = pd.to_numeric(table["duration"], errors="coerce").fillna(0.0) if "duration" in table.columns else onsets * 0.0
    if onsets.isna().any():
        raise RecordingError(f"{path}: onset must be a number of seconds in every row (row {int(onsets.isna().idxmax()) + 2}).")
    labels = table[label].astype(str).tolist() if label else ["event"] * len(table)
    return mne.Annotations(onsets.to_numpy(float), durations.to_numpy(float), labels)


def _with_events(raw: mne.io.RawArray, path: Path, spec: InputSpec, report: dict) -> mne.io.RawArray:
    table = events_file(path, spec)
    if table is not None:
        if not table.is_file():
            raise RecordingError(f"Events table {table} of {path} does not exist; fix inputs[].events.")
        raw.set_annotations(read_events_table(table, path))
        report["events_file"] = str(table)
    return raw


def _tr_seconds(img, path: Path, spec: InputSpec) -> float:
    if spec.tr_seconds:
        return float(spec.tr_seconds)
    tr = float(img.header.get_zooms()[3])
    unit = img.header.get_xyzt_units()[1]
    tr = tr / 1000.0 if unit == "msec" else tr
    if not tr > 0:
        raise RecordingError(f"{path} does not state its repetition time; set tr_seconds on this input.")
    return tr


def _brain_mask(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, str]:
    """Brain mask of a run: nilearn's EPI mask, or its background mask when the EPI heuristic keeps
    under a tenth of the voxels (already skull-stripped or cropped runs have no dark background)."""
    import warnings

    from nilearn.masking import compute_background_mask, compute_epi_mask

    img = nib.Nifti1Image(data, affine)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mask = np.asarray(compute_epi_mask(img).dataobj).astype(bool)
        if mask.sum() >= 0.1 * mask.size:
            return mask, "epi"
        mask = np.asarray(compute_background_mask(img).dataobj).astype(bool)
    return mask & (data.std(axis=3) > 0), "background"


def _ward_labels(data: np.ndarray, mask: np.ndarray, n_parcels: int) -> np.ndarray:
    """Ward parcellation of the masked voxels; returns a label volume (0 = outside, 1..n inside)."""
    from sklearn.cluster import FeatureAgglomeration
    from sklearn.feature_extraction.image import grid_to_graph

    voxels = data[mask]  # [voxels, volumes]
    voxels = (voxels - voxels.mean(1, keepdims=True)) / (voxels.std(1, keepdims=True) + 1e-12)
    connectivity = grid_to_graph(*mask.shape, mask=mask)
    n_clusters = max(2, min(n_parcels, int(mask.sum()) // 10))
    ward = FeatureAgglomeration(n_clusters=n_clusters, connectivity=connectivity, linkage="ward")
    ward.fit(voxels.T)
    labels = np.zeros(mask.shape, int)
    labels[mask] = ward.labels_ + 1
    return labels


def shared_parcellation(path: Path, img, data: np.ndarray, store: Path, n_parcels: int) -> tuple[np.ndarray, dict]:
    """Labels [x, y, z] of the parcellation shared by every run of one dataset, stored at ``store``.

    The first run read fits it (Ward on its brain mask) and writes it there (atomically); later runs
    load it, resampled to their grid (nearest neighbour) when their grid differs, so parcel k is the
    same patch of brain in every run and subject of the dataset.
    """
    if store.is_file():
        stored = nib.load(store)
        if stored.shape[:3] == data.shape[:3] and np.allclose(stored.affine, img.affine, atol=1e-3):
            labels = np.asarray(stored.dataobj).astype(int)
        else:
            from nilearn.image import resample_to_img

            target = nib.Nifti1Image(np.zeros(data.shape[:3], dtype=np.int16), img.affine)
            labels = np.asarray(resample_to_img(stored, target, interpolation="nearest", force_resample=True,
                                                copy_header=True).dataobj).astype(int)
        return labels, {"shared_parcellation": str(store), "parcels": int(labels.max())}
    mask, method = _brain_mask(data, img.affine)
    labels = _ward_labels(data, mask, n_parcels)
    store.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(labels.astype(np.int16), img.affine)
    partial = store.with_name(store.name + ".partial.nii.gz")
    nib.save(image, partial)
    partial.replace(store)
    return labels, {"shared_parcellation": str(store), "fitted_on": path.name, "ward_parcels": int(labels.max()),
                    "mask_voxels": int(mask.sum()), "mask": method}


def read_nifti(path: Path, spec: InputSpec, n_parcels: int = 64, detrend: bool = True, parcellation: Path | None = None):
    """Read a 4-D NIfTI run into a :class:`~neurofm.data_shards.readers.Recording` of parcels.

    Parcels: ``spec.atlas``; else the dataset's shared Ward parcellation stored at ``parcellation``
    (see :func:`shared_parcellation`); else a Ward parcellation of this run alone."""
    from neurofm.data_shards.readers import Recording, _annotation_events

    try:
        img = nib.load(path)
        data = np.asarray(img.dataobj, dtype=np.float64)
    except Exception as err:  # nibabel raises several types for damaged files
        raise RecordingError(f"{path} cannot be read as NIfTI ({type(err).__name__}: {err}).") from None
    if data.ndim != 4 or data.shape[3] < 2:
        raise RecordingError(f"{path} must be a 4-D fMRI run (x, y, z, volumes); got shape {data.shape}.")
    if not np.isfinite(data).all():
        raise RecordingError(f"{path} holds NaN or infinite voxels; mask or fix them before building shards.")
    if np.ptp(data, axis=3).max() == 0:  # before any parcellation is fitted (and stored for the dataset) on it
        raise RecordingError(f"{path}: every voxel is constant over time (an empty or all-zero image); this run holds no BOLD to shard.")
    tr = _tr_seconds(img, path, spec)
    report: dict = {"tr_seconds_source": tr}
    if spec.atlas:
        atlas = nib.load(spec.atlas)
        if atlas.shape[:3] != data.shape[:3] or not np.allclose(atlas.affine, img.affine, atol=1e-3):
            raise RecordingError(
                f"Atlas {spec.atlas} (shape {atlas.shape[:3]}) does not match the grid of {path} (shape "
                f"{data.shape[:3]}, affine differs or not). Resample it to the run first, e.g. "
                "nilearn.image.resample_to_img(atlas, run, interpolation='nearest')."
            )
        labels = np.asarray(atlas.dataobj).astype(int)
        report["parcellation"] = {"atlas": str(spec.atlas)}
    elif parcellation is not None:
        labels, report["parcellation"] = shared_parcellation(path, img, data, parcellation, n_parcels)
    else:
        mask, method = _brain_mask(data, img.affine)
        labels = _ward_labels(data, mask, n_parcels)
        report["parcellation"] = {"ward_parcels": int(labels.max()), "mask_voxels": int(mask.sum()), "mask": method}
    parcel_ids = [int(i) for i in np.unique(labels) if i > 0]
    series = np.stack([data[labels == i].mean(axis=0) for i in parcel_ids])  # [parcels, volumes]
    if detrend:
        series = signal.detrend(series, axis=1)
    flat = series.std(axis=1) < 1e-8 * (np.abs(series).max() + 1e-30)
    if flat.all():
        raise RecordingError(f"{path}: every parcel has a constant signal; this run holds no BOLD to shard.")
    centroids_vox = np.stack([np.argwhere(labels == i).mean(axis=0) for i in parcel_ids])
    centroids_mm = nib.affines.apply_affine(img.affine, centroids_vox)
    code = int(max(img.header["sform_code"], img.header["qform_code"]))
    if code >= 2:
        positions = mni_to_head(centroids_mm / 1000.0)
        report["coord_frame"] = "MNI (template) mm → head via fsaverage"
    else:
        positions = centroids_mm / 1000.0
        report["coord_frame"] = "scanner (no transform to head known; scanner metres kept)"
    names = [f"parcel-{i:03d}" for i in parcel_ids]
    report["dropped_flat_parcels"] = [n for n, f in zip(names, flat) if f]
    keep = ~flat
    raw = _with_events(_parcel_raw([n for n, k in zip(names, keep) if k], series[keep], positions[keep], tr), path, spec, report)
    return Recording(source=path, modality="fmri", inst=raw, events=_annotation_events(raw), report=report, spec=spec)


def read_roi_table(path: Path, spec: InputSpec, detrend: bool = True):
    """Read an ROI time-series table (CSV: one column per ROI, one row per volume).

    Needs ``spec.positions`` (ROI name → x, y, z in MNI mm or m) and ``spec.tr_seconds``. ROIs
    typed non-brain through ``channel_types`` (e.g. white matter, ventricles) are dropped.
    """
    import csv

    from neurofm.data_shards.readers import Recording, _annotation_events

    if not spec.positions or not spec.tr_seconds:
        raise RecordingError(
            f"{path} is an ROI table: set positions (a name,x,y,z table of ROI centroids, MNI) and "
            "tr_seconds on this input."
        )
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    try:
        header, values = rows[0], np.asarray(rows[1:], dtype=np.float64).T  # [rois, volumes]
    except (ValueError, IndexError):
        raise RecordingError(f"{path} is not a numeric ROI table with a header row of ROI names.") from None
    dropped = [n for n in header if user_type(n, spec.channel_types) not in (None, *BRAIN_TYPES)]
    table, unit = read_positions_table(spec.positions)
    missing = [n for n in header if n not in dropped and n not in table]
    if missing and spec.missing_positions == "raise":
        raise RecordingError(
            f"{path}: ROI(s) {', '.join(missing)} have no position in {spec.positions}; add them, type them "
            "non-brain with channel_types, or set missing_positions: drop."
        )
    keep = [i for i, n in enumerate(header) if n not in dropped and n not in missing]
    series = signal.detrend(values[keep], axis=1) if detrend else values[keep]
    positions = mni_to_head(np.stack([table[header[i]] for i in keep]))
    report: dict = {}
    raw = _with_events(_parcel_raw([header[i] for i in keep], series, positions, spec.tr_seconds), path, spec, report)
    report |= {
        "coord_frame": "MNI (template) → head via fsaverage",
        "positions": {"file": str(spec.positions), "unit": unit},
        "dropped_non_brain": {n: "non-brain ROI" for n in dropped},
        "dropped_without_position": missing,
    }
    return Recording(source=path, modality="fmri", inst=raw, events=_annotation_events(raw), report=report, spec=spec)
