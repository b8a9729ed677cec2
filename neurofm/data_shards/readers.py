"""Readers: any recording on disk → a :class:`Recording` holding an MNE object with typed, positioned
brain channels only, plus the events found in it.

Electrophysiology goes through MNE (``mne.io.read_raw`` for EDF/BDF/FIF/SET/VHDR/CTF/KIT/Persyst …,
``mne.read_epochs``, ``mne.read_evokeds``) and mne-bids for BIDS folders; fMRI through nibabel (see
:mod:`neurofm.data_shards.fmri`). Adding a format that MNE reads needs nothing here; a new kind of
container is one ``_read_*`` function registered in :func:`read_recording`.
"""

from __future__ import annotations

import contextlib
import glob
import io
import hashlib
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import mne
import numpy as np

from neurofm.data_shards.config import BTI_PREFIXES, FMRI_EXTENSIONS, RAW_EXTENSIONS, RECORDING_FOLDERS, FmriPreprocess, InputSpec
from neurofm.data_shards.positions import (
    BRAIN_TYPES,
    electrode_types,
    find_electrodes_table,
    resolve_positions,
    type_channels,
)
from neurofm.errors import NeuroFMError, RecordingError

#: MNE warnings that mean the file is damaged; they become errors instead of silently shorter data.
FATAL_WARNINGS = ("does not match the file size", "truncated", "file is incomplete")
FATAL_HINTS = {"outside data range": " (markers run past the end of the data: the data file is shorter than recorded, "
                                     "i.e. truncated)."}


@dataclass
class Recording:
    """One recording ready for preprocessing.

    Attributes
    ----------
    source : Path
        The recording's main file (or folder, for CTF ``.ds`` and BIDS entries).
    modality : str
        ``eeg``, ``meg``, ``ieeg`` or ``fmri``.
    inst : mne.io.BaseRaw | mne.BaseEpochs | list of mne.Evoked
        Brain channels only, each with a head-frame position. fMRI parcels are ``misc`` channels of
        a ``RawArray`` sampled at 1/TR.
    events : list of dict
        Continuous recordings: ``{"onset": s from the first sample, "duration": s, "label": str}``.
    report : dict
        Provenance: dropped channels and why, where positions came from, coordinate frames.
    spec : InputSpec
        The input entry this recording came from.
    labels : dict
        Recording-level labels copied into every window's ``meta.json`` (simulation ground truth).
    """

    source: Path
    modality: str
    inst: object
    events: list[dict] = field(default_factory=list)
    report: dict = field(default_factory=dict)
    spec: InputSpec | None = None
    labels: dict = field(default_factory=dict)

    @property
    def layout(self) -> str:
        if isinstance(self.inst, list):
            return "evoked"
        return "epochs" if isinstance(self.inst, mne.BaseEpochs) else "continuous"


def _is_recording_path(path: Path) -> bool:
    name = path.name.lower()
    if path.is_dir():
        return name.endswith(RECORDING_FOLDERS)
    if name.endswith(".eeg"):
        return _is_nihon_kohden(path)
    return name.endswith(RAW_EXTENSIONS + FMRI_EXTENSIONS) or _is_bti(path)


def _is_bti(path: Path) -> bool:
    """A 4D Neuroimaging / BTi processed data file (``c,rfDC``, ``e,rfhp0.1Hz`` — HCP's MEG): a ``c,rf``/``e,rf``
    name with the acquisition's ``config`` file beside it; not a head-coil localisation run (``…,COH``)."""
    name = path.name.lower()
    return name.startswith(BTI_PREFIXES) and ",coh" not in name and (path.parent / "config").is_file()


def _is_nihon_kohden(path: Path) -> bool:
    """A Nihon Kohden ``.eeg`` has its channel-name file (``.21e``) beside it; BrainVision's has a ``.vhdr``."""
    stem = path.name[: -len(".eeg")].lower()
    return any(p.name.lower() == f"{stem}.21e" for p in path.parent.iterdir())


def expand_inputs(spec: InputSpec, root: Path) -> list[tuple[Path, InputSpec, object]]:
    """Turn one input entry into ``(path, spec, bids_path_or_None)`` items, sorted for determinism.

    ``pkg:PACKAGE/inner/path`` names a file shipped inside an installed package (the embedded demo
    data: nibabel's and nitime's real fMRI runs).
    """
    path = package_path(spec.path) if spec.path.startswith("pkg:") else Path(spec.path)
    path = path if path.is_absolute() else root / path
    if path.is_dir() and (path / "dataset_description.json").is_file():
        import mne_bids

        bids_paths = mne_bids.find_matching_paths(
            path, datatypes=["eeg", "meg", "ieeg"], suffixes=["eeg", "meg", "ieeg"], ignore_json=True
        )
        bids_paths = [p for p in bids_paths if p.extension not in (".tsv", ".json")]
        if not bids_paths:
            raise RecordingError(f"BIDS folder {path} holds no eeg/meg/ieeg recordings that mne-bids can find.")
        return [(Path(p.fpath), spec, p) for p in sorted(bids_paths, key=lambda p: str(p.fpath))]
    if path.is_dir() and not path.name.lower().endswith(RECORDING_FOLDERS):
        found = sorted(p for p in path.rglob("*") if _is_recording_path(p) and not _inside_recording_folder(p, path))
        if not found:
            raise RecordingError(
                f"Folder {path} holds no recordings (looked for {', '.join(RAW_EXTENSIONS + FMRI_EXTENSIONS)} "
                "Nihon Kohden .eeg beside its .21e, and 4D c,rf… files beside their config); "
                "point the input at a folder of recordings or at a file."
            )
        return [(p, spec, None) for p in found]
    if any(ch in spec.path for ch in "*?["):
        found = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
        if not found:
            raise RecordingError(f"Input pattern {path} matches no files; fix inputs[].path.")
        return [(p, spec, None) for p in found]
    if not path.exists():
        raise RecordingError(f"Input {path} does not exist; fix inputs[].path (relative paths start at 'root').")
    return [(path, spec, None)]


def package_path(spec_path: str) -> Path:
    """The file behind ``pkg:PACKAGE/inner/path``."""
    import importlib.resources
    import importlib.util

    package, _, inner = spec_path[len("pkg:") :].partition("/")
    if importlib.util.find_spec(package) is None:
        raise RecordingError(f"Input {spec_path}: package '{package}' is not installed; `pip install {package}`.")
    return Path(str(importlib.resources.files(package).joinpath(inner)))


def _inside_recording_folder(p: Path, top: Path) -> bool:
    return any(part.lower().endswith(RECORDING_FOLDERS) for part in p.relative_to(top).parts[:-1])


def source_checksum(path: Path) -> str:
    """sha256 of a recording and its companion files (same stem: .fdt, .eeg/.vmrk, .dat, .21e/.pnt; a whole .ds or .mff;
    a 4D file's config and hs_file)."""
    digest = hashlib.sha256()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
    elif _is_bti(path):
        files = [path] + [path.parent / n for n in ("config", "hs_file") if (path.parent / n).is_file()]
    else:
        stem = path.name.split(".")[0]
        files = sorted(p for p in path.parent.iterdir() if p.is_file() and p.name.split(".")[0] == stem)
    for f in files:
        digest.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _mne_read(fn, path: Path, fatal: tuple[str, ...] = (), **kwargs):
    """Call an MNE reader, turning its failures and damage warnings (``FATAL_WARNINGS`` and ``fatal``)
    into :class:`RecordingError`."""
    # Some MNE readers print to stdout (Persyst: "Unable to process birthdate"); keep stdout clean.
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("always")
        try:
            inst = fn(path, verbose="warning", **kwargs)  # "warning": damage is reported as a warning
        except NeuroFMError:
            raise
        except Exception as err:  # MNE raises many types for unreadable files
            raise RecordingError(
                f"{path} cannot be read as a recording ({type(err).__name__}: {err}). Check that the file "
                "is complete and in a format MNE reads (EDF, BDF, FIF, EEGLAB, BrainVision, CTF, KIT, Persyst …)."
            ) from None
    for w in caught:
        if any(s in str(w.message) for s in (*FATAL_WARNINGS, *fatal)):
            hint = next((h for s, h in FATAL_HINTS.items() if s in str(w.message)), "")
            raise RecordingError(
                f"{path} is damaged: {w.message}{hint} Re-export or re-copy the file; nothing was written for it."
            )
    return inst


def _read_raw(path: Path):
    name = path.name.lower()
    if name.endswith((".edf", ".bdf", ".gdf")):
        # EDF labels like "EEG Fp1-Ref" and "ECG ECG1" carry the type before the space.
        return _mne_read(mne.io.read_raw, path, preload=True, infer_types=True)
    if _is_bti(path):  # mne.io.read_raw does not dispatch 4D files; its BTi reader takes the companions
        head_shape = path.parent / "hs_file"
        return _mne_read(mne.io.read_raw_bti, path, config_fname=str(path.parent / "config"),
                         head_shape_fname=str(head_shape) if head_shape.is_file() else None, preload=True)
    if name.endswith(".vhdr"):
        # MNE sizes a BrainVision recording by its .eeg file, so a cut file reads as a short whole one;
        # its markers (in the .vmrk) still run to the original end
        raw = _mne_read(mne.io.read_raw, path, fatal=("outside data range",), preload=True)
        _check_brainvision_size(path, raw)
        return raw
    if name.endswith(".fif"):
        # samples are loaded once the non-brain and bad channels are gone (finish_recording), not before
        return _mne_read(mne.io.read_raw, path, preload=False)
    return _mne_read(mne.io.read_raw, path, preload=True)


BRAINVISION_BYTES = {"INT_16": 2, "UINT_16": 2, "INT_32": 4, "IEEE_FLOAT_32": 4}


def _check_brainvision_size(vhdr: Path, raw) -> None:
    """A binary BrainVision data file must hold whole samples of every channel."""
    header = vhdr.read_text(errors="replace")
    data_file = re.search(r"^DataFile=(.+?)\s*$", header, re.M)
    binary = re.search(r"^BinaryFormat=(\w+)", header, re.M)
    if not data_file or not binary or binary.group(1) not in BRAINVISION_BYTES:
        return
    eeg = vhdr.parent / data_file.group(1)
    frame = BRAINVISION_BYTES[binary.group(1)] * len(raw.ch_names)
    if eeg.is_file() and eeg.stat().st_size % frame:
        raise RecordingError(f"{eeg} is truncated: {eeg.stat().st_size} bytes is not a whole number of samples of "
                             f"{len(raw.ch_names)} channels × {BRAINVISION_BYTES[binary.group(1)]} bytes. Re-copy the file; "
                             "nothing was written for it.")


def _annotation_events(raw: mne.io.BaseRaw) -> list[dict]:
    """Annotations as events with onsets in seconds from the first sample."""
    offset = raw.first_time if raw.annotations.orig_time is not None else 0.0
    return [
        {"onset": float(a["onset"] - offset), "duration": float(a["duration"]), "label": str(a["description"])}
        for a in raw.annotations
    ]


def _stim_annotations(raw: mne.io.BaseRaw) -> mne.Annotations | None:
    """Trigger codes on stim channels (read before those channels are dropped) as zero-length annotations
    named ``stim/<code>``, in the frame of the recording's own annotations — so epochs, window events and
    ``rename_events`` treat a BioSemi ``Status`` or Neuromag ``STI 014`` trigger like an annotation.

    A trigger on the sample of one of the file's own (non-``BAD``) annotations is that event already — EGI's
    reader, for one, gives each event both as an annotation and as a stim channel — and is not repeated."""
    stim = [n for n, t in zip(raw.ch_names, raw.get_channel_types()) if t == "stim"]
    if not stim:
        return None
    try:
        events = mne.find_events(raw, stim_channel=stim, shortest_event=1, initial_event=True, verbose="error")
    except (ValueError, RuntimeError):
        return None
    if not len(events):
        return None
    orig_time = raw.annotations.orig_time  # annotations with an orig_time count from the sample 0, not first_samp
    triggers = mne.annotations_from_events(events, raw.info["sfreq"], event_desc=lambda code: f"stim/{code}",
                                           first_samp=0 if orig_time is not None else raw.first_samp,
                                           orig_time=orig_time)
    marked = np.array([a["onset"] for a in raw.annotations if not a["description"].upper().startswith(("BAD", "EDGE"))])
    if marked.size:
        repeated = [i for i, onset in enumerate(triggers.onset) if np.min(np.abs(marked - onset)) < 0.5 / raw.info["sfreq"]]
        triggers.delete(repeated)
    return triggers if len(triggers) else None


def _rename_events(raw: mne.io.BaseRaw, mapping: dict[str, str], path: Path) -> None:
    """``inputs[].rename_events`` on the annotations (trigger codes included); a mapping none of whose
    labels the recording holds is a typo, not a recording without those events."""
    if not mapping:
        return
    present = set(raw.annotations.description)
    if present and not present & set(mapping):
        raise RecordingError(f"{path}: rename_events names none of its event labels ({', '.join(sorted(present)[:12])}); "
                             "fix inputs[].rename_events (trigger codes read as stim/<code>).")
    raw.annotations.rename({old: new for old, new in mapping.items() if old in present})


def _infer_modality(inst, spec: InputSpec, path: Path, datatype: str | None) -> str:
    if spec.modality:
        return spec.modality
    if datatype:
        return datatype
    suffix = re.search(r"_(eeg|meg|ieeg)$", path.name.split(".")[0])
    if suffix:
        return suffix.group(1)
    types = set(inst.get_channel_types())
    if types & {"mag", "grad"}:
        return "meg"
    if types & {"seeg", "ecog", "dbs"}:
        return "ieeg"
    return "eeg"


def _drop_non_brain(inst) -> dict[str, str]:
    """Drop every channel that is not EEG/MEG/sEEG/ECoG/DBS; return name → type of the dropped ones."""
    dropped = {n: t for n, t in zip(inst.ch_names, inst.get_channel_types()) if t not in BRAIN_TYPES}
    if len(dropped) == len(inst.ch_names):
        raise RecordingError(
            f"{getattr(inst, 'filenames', [''])[0] or 'recording'} has no brain channels (only "
            f"{', '.join(sorted(set(dropped.values())))}); set channel_types to type its brain channels."
        )
    if dropped:
        inst.drop_channels(list(dropped), on_missing="ignore")
    return dropped


def _check_ieeg_typed(inst, path: Path) -> None:
    untyped = [n for n, t in zip(inst.ch_names, inst.get_channel_types()) if t == "eeg"]
    if untyped:
        raise RecordingError(
            f"{path}: {len(untyped)} channel(s) of this iEEG recording are typed EEG ({', '.join(untyped[:5])} …); "
            "EDF has no sEEG/ECoG type. Set channel_types, e.g. {'*': seeg} or {'*': ecog}."
        )


def read_recording(path: Path, spec: InputSpec, bids_path=None, fmri_config: FmriPreprocess | None = None,
                   parcellation: Path | None = None) -> Recording:
    """Read one recording and leave only positioned brain channels.

    Parameters
    ----------
    path : Path
        File (or CTF folder) to read.
    spec : InputSpec
        How to read it (modality, montage, positions, channel types …).
    bids_path : mne_bids.BIDSPath | None
        When the file belongs to a BIDS folder: read through mne-bids (channel types, electrodes,
        events from the sidecars).
    fmri_config : FmriPreprocess | None
        Parcellation and detrending of fMRI inputs (defaults when ``None``).
    parcellation : Path | None
        fMRI without an atlas: where the dataset's shared parcellation is (or is to be) stored.

    Raises
    ------
    RecordingError
        The file is unreadable or damaged, has no brain channels, or has a channel without a position.
    """
    from neurofm.data_shards import fmri

    name = path.name.lower()
    fmri_config = fmri_config or FmriPreprocess()
    if name.endswith(FMRI_EXTENSIONS):
        return fmri.read_nifti(path, spec, n_parcels=fmri_config.n_parcels, detrend=fmri_config.detrend, parcellation=parcellation)
    if name.endswith(".csv"):
        if spec.modality not in (None, "fmri"):
            raise RecordingError(
                f"{path}: a CSV is read as an fMRI ROI table (rows = volumes), but this input declares modality: "
                f"{spec.modality}. Convert {spec.modality} recordings to a format MNE reads (EDF, FIF, BrainVision …), "
                "or declare modality: fmri if the table holds ROI time series."
            )
        return fmri.read_roi_table(path, spec, detrend=fmri_config.detrend)

    if bids_path is not None:
        import mne_bids

        inst = _mne_read(lambda p, **kw: mne_bids.read_raw_bids(bids_path, **kw), path)  # loaded in finish_recording
    elif re.search(r"[-_]epo\.fif(\.gz)?$", name):
        inst = _mne_read(mne.read_epochs, path, preload=True)
    elif re.search(r"[-_]ave\.fif(\.gz)?$", name):
        inst = _mne_read(mne.read_evokeds, path)
    else:
        inst = _read_raw(path)
    return finish_recording(inst, path, spec, datatype=bids_path.datatype if bids_path is not None else None)


def finish_recording(inst, path: Path, spec: InputSpec, *, datatype: str | None = None, modality: str | None = None) -> Recording:
    """Common to every recording, read or simulated: events, channel typing, dropping non-brain and
    lab-marked bad channels, positions, and the NaN check.

    Parameters
    ----------
    inst : mne Raw | Epochs | list of Evoked
        As read. fMRI parcels (``modality='fmri'``) only get the NaN check.
    path : Path
        Where it came from (for messages and provenance).
    spec : InputSpec
        Typing and position options.
    datatype, modality : str | None
        The BIDS datatype, or the modality when the caller knows it.
    """
    events = []
    if isinstance(inst, mne.io.BaseRaw):
        triggers = _stim_annotations(inst)
        if triggers is not None:
            inst.set_annotations(inst.annotations + triggers)
        _rename_events(inst, spec.rename_events, path)
        events = _annotation_events(inst)
    insts = inst if isinstance(inst, list) else [inst]
    if modality == "fmri":
        _check_finite(insts, path)
        return Recording(source=path, modality="fmri", inst=inst, events=events, report={}, spec=spec)
    electrodes = Path(spec.electrodes) if spec.electrodes else find_electrodes_table(path)
    # Types from the electrodes table (depth → sEEG, grid/strip → ECoG) come first; the user's mapping wins.
    table_types = electrode_types(electrodes) if electrodes and electrodes.is_file() else {}
    report: dict = {}
    for one in insts:
        _rename(one, spec.rename_channels, path)
        type_channels(one, {**table_types, **spec.channel_types}, path)
        modality = modality or _infer_modality(one, spec, path, datatype)
        report["dropped_non_brain"] = _drop_non_brain(one)
        report["bad_in_file"] = [b for b in one.info["bads"] if b in one.ch_names]
        if report["bad_in_file"]:  # the lab already marked them; trust it
            one.drop_channels(report["bad_in_file"])
        if modality == "ieeg":
            _check_ieeg_typed(one, path)
        report["positions"] = resolve_positions(one, source=path, modality=modality, spec=spec)
        if isinstance(one, mne.io.BaseRaw) and not one.preload:  # only the channels kept: no full copy on a drop
            _mne_read(lambda p, **kw: one.load_data(**kw), path)
    _check_finite(insts, path)
    return Recording(source=path, modality=modality, inst=inst, events=events, report=report, spec=spec)


def _rename(inst, mapping: dict[str, str], path: Path) -> None:
    unknown = [old for old in mapping if old not in inst.ch_names]
    if unknown:
        raise RecordingError(
            f"{path}: rename_channels names channel(s) {', '.join(unknown)} that the file does not have; "
            f"its channels are {', '.join(inst.ch_names[:8])} …"
        )
    if mapping:
        inst.rename_channels(mapping, verbose="error")


#: Samples read at once when a long continuous recording is scanned (≈ 64 MB of float64 per chunk).
CHUNK_VALUES = 8_000_000


def data_chunks(inst):
    """The samples of ``inst`` as a sequence of [channels, time] arrays: a continuous recording in
    consecutive time chunks of about :data:`CHUNK_VALUES` values (so a scan of an hour of MEG holds one
    chunk at a time, not a float64 copy of the whole recording beside the loaded one); epochs one epoch at a
    time; an evoked response whole."""
    if isinstance(inst, mne.io.BaseRaw):
        step = max(1, CHUNK_VALUES // max(1, len(inst.ch_names)))
        for start in range(0, inst.n_times, step):
            yield inst.get_data(start=start, stop=min(start + step, inst.n_times))
    elif isinstance(inst, mne.BaseEpochs):
        for i in range(len(inst)):
            yield inst.get_data(item=i)[0]
    else:
        yield inst.get_data()


def _check_finite(insts: list, path: Path) -> None:
    for one in insts:
        finite = np.ones(len(one.ch_names), dtype=bool)
        for chunk in data_chunks(one):
            finite &= np.isfinite(chunk).all(axis=1)
        if not finite.all():
            bad = np.asarray(one.ch_names)[~finite]
            raise RecordingError(
                f"{path} holds NaN or infinite samples in {len(bad)} channel(s) ({', '.join(bad[:5])}). "
                "Interpolate or remove those segments (e.g. raw.interpolate_bads, or crop), then rebuild."
            )
