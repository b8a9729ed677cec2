"""The sensor table: every kept channel described by its physics, never by its name.

``sensors.npy`` in a signal shard holds one row per channel with the features of
:data:`SENSOR_FEATURES` (float32):

====== ===================================================================================
column meaning
====== ===================================================================================
0–2    position x, y, z in metres, MNE's head frame (origin between the ears, +x right,
       +y nasion, +z up)
3–5    orientation: unit coil normal (magnetometers, axial gradiometers) or gradient
       direction (planar gradiometers and bipolar EEG derivations, which both measure a
       difference across space: for ``A-B`` the unit vector from B to A, the position being
       their midpoint); 0 for other electrodes and fMRI parcels
6–11   one-hot sensor kind in the order of :data:`KINDS`
====== ===================================================================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import mne
import numpy as np

KINDS = ("eeg", "meg_mag", "meg_grad", "seeg", "ecog", "bold")
SENSOR_FEATURES = ("x", "y", "z", "ox", "oy", "oz") + tuple(f"kind_{k}" for k in KINDS)

#: MNE channel type → NeuroFM sensor kind. Axial gradiometers (KIT, CTF) are typed ``mag`` by MNE
#: and are ``meg_mag`` here; their orientation is the coil normal. DBS contacts count as sEEG.
MNE_TYPE_TO_KIND = {"eeg": "eeg", "mag": "meg_mag", "grad": "meg_grad", "seeg": "seeg", "ecog": "ecog", "dbs": "seeg"}

#: Channel names that denote non-brain signals whatever type the file gives them (EDF has no types).
NON_BRAIN_NAME_PATTERNS = (
    (re.compile(r"^(ECG|EKG)", re.I), "ecg"),
    (re.compile(r"^([HVLRI]?EOG|EOG)|EOG$", re.I), "eog"),
    (re.compile(r"^(LOC|ROC)\b", re.I), "eog"),  # left / right outer canthus (clinical and sleep EEG)
    (re.compile(r"^EMG", re.I), "emg"),
    (re.compile(r"^(STI|STATUS$|TRIG)", re.I), "stim"),
    (re.compile(r"^(RESP|SAO2|SPO2|PLETH|TEMP)", re.I), "misc"),  # polysomnography's other sensors
    (re.compile(r"^(EVENT|MARKER)\b", re.I), "misc"),  # a recorder's marker trace (Sleep-EDF's "Event marker")
    (re.compile(r"^(PHOTIC|IBI$|BURSTS$|SUPPR$)", re.I), "misc"),  # photic stimulator, a monitor's derived traces (TUH)
    (re.compile(r"^EXG\d+$", re.I), "misc"),  # BioSemi external inputs
    (re.compile(r"^(POL )?DC\d+$", re.I), "misc"),  # Nihon Kohden DC (analogue) inputs
    (re.compile(r"^-+\d*$"), "misc"),  # unnamed placeholder inputs ("-", and MNE's "--0" for repeats; CHB-MIT)
)


def non_brain_type(name: str) -> str | None:
    """The MNE type a channel name denotes when it is clearly not a brain signal, else ``None``."""
    for pattern, ch_type in NON_BRAIN_NAME_PATTERNS:
        if pattern.search(name.strip()):
            return ch_type
    return None


def clean_channel_name(name: str) -> str:
    """Reduce a channel label to the electrode name a montage uses.

    ``'Fc5.'`` → ``'Fc5'``, ``'EEG Fp1-Ref'`` → ``'Fp1'``, ``'EEG T3-LE'`` → ``'T3'``, ``'EEG_Cz_REF'`` →
    ``'Cz'``, ``'Fp1 (ref)'`` → ``'Fp1'``, ``'C3-CAR'`` → ``'C3'``, ``'Fp1-0'`` → ``'Fp1'``: a recording system's
    prefix, its reference suffix (linked ears or mastoids, average, common average, a numbered reference) and
    MNE's suffix for a repeated label go. Case is left alone: montages are matched case-insensitively.
    """
    name = name.strip().rstrip(".").strip()
    name = re.sub(r"^EEG[\s_-]+", "", name, flags=re.I)
    name = _REPEAT_SUFFIX.sub("", name)
    name = _REFERENCE_SUFFIX.sub("", name)
    return name.strip()


#: MNE's suffix for a label the file repeats (``Fp1`` twice → ``Fp1-0``, ``Fp1-1``).
_REPEAT_SUFFIX = re.compile(r"(?<=[A-Za-z0-9'])-\d+$")


#: A reference named after the electrode: ``-Ref``, ``_REF``, ``:ref``, `` (ref)``, ``-LE``, ``-AVG``, ``-CAR``, ``-M1``, ``-A1A2``, ``-Ref2``.
_REFERENCE_SUFFIX = re.compile(r"(?:\s*[-_:]\s*|\s*(?=\())\(?(?:REF\d*|LE|RE|AVG|AV|AR|CAR|M1|M2|A1A2|A1|A2|LM)\)?$", re.I)


#: An electrode name: a letter, then letters, digits or a prime (10-05 names, ``Nz``, ``M1``, ``O'1``).
_ELECTRODE = r"[A-Za-z][A-Za-z0-9']*"
_BIPOLAR = re.compile(rf"^({_ELECTRODE})-({_ELECTRODE})(?:-\d+)?$")


def bipolar_pair(name: str) -> tuple[str, str] | None:
    """The (anode, cathode) electrode names of a bipolar derivation label, else ``None``.

    ``'FP1-F7'`` → ``('FP1', 'F7')``, ``'EEG Fpz-Cz'`` → ``('Fpz', 'Cz')``; MNE's suffix for a repeated
    label (``'T8-P8-1'``) is ignored. Reference suffixes that :func:`clean_channel_name` strips (``-Ref``,
    ``-A2`` …) make a monopolar name, not a pair."""
    match = _BIPOLAR.match(clean_channel_name(name))
    return (match.group(1), match.group(2)) if match else None


def set_bipolar(ch: dict, anode: np.ndarray, cathode: np.ndarray) -> None:
    """Make ``ch`` (an entry of ``info['chs']``) a bipolar lead between two head-frame positions (m): the
    anode in ``loc[:3]``, the cathode in ``loc[3:6]`` (where MNE keeps an EEG channel's reference
    electrode), MNE's bipolar coil type — what :func:`is_bipolar` recognises."""
    ch["loc"][:3], ch["loc"][3:6] = anode, cathode
    ch["coil_type"] = mne.io.constants.FIFF.FIFFV_COIL_EEG_BIPOLAR
    ch["coord_frame"] = mne.io.constants.FIFF.FIFFV_COORD_HEAD


def is_bipolar(ch: dict) -> bool:
    """An EEG lead recorded between two placed electrodes: MNE's bipolar coil type with the cathode's
    position in ``loc[3:6]`` (where MNE keeps an EEG channel's reference electrode)."""
    return (ch["kind"] == mne.io.constants.FIFF.FIFFV_EEG_CH and ch["coil_type"] == mne.io.constants.FIFF.FIFFV_COIL_EEG_BIPOLAR
            and has_position(np.asarray(ch["loc"][3:6], float)))


@dataclass
class SensorTable:
    """Physical description of the kept channels of one recording.

    Attributes
    ----------
    names : list of str
        Channel names as in the source file, shape (n_channels,).
    kinds : list of str
        One of :data:`KINDS` per channel.
    positions : ndarray, shape (n_channels, 3)
        Metres, head frame.
    orientations : ndarray, shape (n_channels, 3)
        Unit vectors, or zeros where a sensor has none.
    """

    names: list[str]
    kinds: list[str]
    positions: np.ndarray
    orientations: np.ndarray

    def __len__(self) -> int:
        return len(self.names)

    def features(self) -> np.ndarray:
        """Feature matrix of :data:`SENSOR_FEATURES`, shape (n_channels, 12), float32."""
        one_hot = np.zeros((len(self), len(KINDS)), np.float32)
        one_hot[np.arange(len(self)), [KINDS.index(k) for k in self.kinds]] = 1.0
        return np.concatenate([self.positions, self.orientations, one_hot], axis=1).astype(np.float32)


def _head_frame_loc(ch: dict, dev_head_t: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Position (m) and orientation of one channel in the head frame."""
    loc = np.asarray(ch["loc"], float)
    pos = loc[:3].copy()
    orientation = np.zeros(3)
    if is_bipolar(ch):
        cathode = loc[3:6]
        span = pos - cathode
        norm = np.linalg.norm(span)
        return (pos + cathode) / 2, span / norm if norm > 0 else orientation
    if ch["kind"] == mne.io.constants.FIFF.FIFFV_MEG_CH:
        orientation = loc[3:6] if ch["coil_type"] in _PLANAR_COILS else loc[9:12]
        if dev_head_t is not None and ch["coord_frame"] == mne.io.constants.FIFF.FIFFV_COORD_DEVICE:
            pos = mne.transforms.apply_trans(dev_head_t, pos)
            orientation = dev_head_t[:3, :3] @ orientation
        norm = np.linalg.norm(orientation)
        orientation = orientation / norm if norm > 0 else orientation
    return pos, orientation


# Neuromag-122's planar gradiometer coil is the one whose FIFF name does not say PLANAR.
_PLANAR_COILS = {
    c for name, c in vars(mne.io.constants.FIFF).items() if name.startswith("FIFFV_COIL") and "PLANAR" in name
} | {mne.io.constants.FIFF.FIFFV_COIL_NM_122}


def has_position(pos: np.ndarray) -> bool:
    """True when a position is finite and not MNE's all-zero "unknown" placeholder."""
    return bool(np.all(np.isfinite(pos)) and np.any(pos != 0))


def sensor_table(info: mne.Info, modality: str) -> SensorTable:
    """Build the sensor table of every channel in ``info`` (call after non-brain channels are dropped).

    Parameters
    ----------
    info : mne.Info
        Channels typed eeg/mag/grad/seeg/ecog/dbs, or (fMRI) misc channels holding parcel centroids.
    modality : str
        ``fmri`` makes every channel a ``bold`` sensor.
    """
    dev_head_t = info["dev_head_t"]["trans"] if info["dev_head_t"] is not None else None
    names, kinds, positions, orientations = [], [], [], []
    for idx, ch in enumerate(info["chs"]):
        kind = "bold" if modality == "fmri" else MNE_TYPE_TO_KIND[mne.channel_type(info, idx)]
        pos, orientation = _head_frame_loc(ch, dev_head_t)
        names.append(ch["ch_name"])
        kinds.append(kind)
        positions.append(pos)
        orientations.append(orientation)
    return SensorTable(
        names=names,
        kinds=kinds,
        positions=np.asarray(positions, np.float32).reshape(-1, 3),
        orientations=np.asarray(orientations, np.float32).reshape(-1, 3),
    )
