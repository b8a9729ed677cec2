"""Channel typing and positions: from the file, a positions table, or a montage on cleaned names.

Order of sources for a brain channel without a position in the file:

1. an explicit positions table the user passes (``InputSpec.positions``) — the user said so;
2. a BIDS ``electrodes.tsv`` (``InputSpec.electrodes``, or the ``*_electrodes.tsv`` beside a
   ``*_ieeg.*`` file) — measured for this recording;
3. for scalp EEG only, an MNE standard montage matched on cleaned names (``Fc5.`` → ``FC5``); a
   bipolar label whose two electrodes are both in the montage (``FP1-F7``, ``EEG Fpz-Cz``) becomes a
   bipolar lead (see :func:`neurofm.data_shards.sensors.is_bipolar`).

Recording-specific tables come before the template montage because a measured position beats a
template one. Intracranial contacts never take scalp-montage positions, even when named ``C3``.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import re
from pathlib import Path

import mne
import numpy as np

from neurofm.data_shards.sensors import (MNE_TYPE_TO_KIND, bipolar_pair, clean_channel_name, has_position, non_brain_type,
                                         set_bipolar)
from neurofm.errors import RecordingError, SensorPositionError

BRAIN_TYPES = tuple(MNE_TYPE_TO_KIND)
#: Clinical names of sites a 10-05 template names otherwise (case-folded): the anterior temporal T1/T2 of
#: clinical EEG (TUH among others; about a third of the way from the ear's tragus to the eye's outer canthus)
#: at the 10-10 FT9/FT10 they approximate, and the 10-10 O9/O10 at the 10-05 I1/I2.
TEMPLATE_SYNONYMS = {"t1": "ft9", "t2": "ft10", "o9": "i1", "o10": "i2"}
DEFAULT_MONTAGE = "colin27_1005"  # MNE's 10-05 template (called standard_1005 before MNE 1.13)
ALLOWED_USER_TYPES = BRAIN_TYPES + ("ecg", "eog", "emg", "stim", "misc", "resp", "bio")


def read_positions_table(path: str | Path) -> tuple[dict[str, np.ndarray], str]:
    """Read a ``name, x, y, z`` table (BIDS electrodes.tsv or CSV) into metres.

    Returns
    -------
    positions : dict
        Channel name → position, shape (3,), metres. Rows with ``n/a`` are left out.
    unit : str
        ``'m'`` or ``'mm'``: millimetres are assumed when any coordinate exceeds 1 (a head is smaller
        than a metre), unless a BIDS ``*_coordsystem.json`` beside the table states the unit.
    """
    path = Path(path)
    if not path.is_file():
        raise SensorPositionError(f"Positions file {path} does not exist; fix the path in the input's config.")
    text = path.read_text()
    delimiter = "\t" if "\t" in text.splitlines()[0] else ","
    rows = list(csv.DictReader(text.splitlines(), delimiter=delimiter))
    header = [h.strip().lower() for h in (rows[0].keys() if rows else [])]
    if not {"name", "x", "y", "z"} <= set(header):
        raise SensorPositionError(
            f"Positions file {path} must have columns name, x, y, z (tab- or comma-separated); "
            f"found {header or 'no rows'}."
        )
    positions = {}
    for row in rows:
        row = {k.strip().lower(): (v or "").strip() for k, v in row.items()}
        try:
            positions[row["name"]] = np.array([float(row[c]) for c in "xyz"])
        except ValueError:
            continue  # n/a: this contact has no known position
    unit = _coordsystem_unit(path) or ("mm" if positions and max(np.abs(v).max() for v in positions.values()) > 1 else "m")
    scale = 1e-3 if unit == "mm" else 1e-2 if unit == "cm" else 1.0
    return {name: pos * scale for name, pos in positions.items()}, unit


#: BIDS electrodes.tsv ``type`` values → MNE channel types.
ELECTRODE_TYPES = {"depth": "seeg", "seeg": "seeg", "shaft": "seeg", "grid": "ecog", "strip": "ecog", "ecog": "ecog", "dbs": "dbs"}


def electrode_types(path: str | Path) -> dict[str, str]:
    """Channel name → MNE type from the ``type`` column of a BIDS electrodes table (if it has one)."""
    text = Path(path).read_text()
    delimiter = "\t" if "\t" in text.splitlines()[0] else ","
    types = {}
    for row in csv.DictReader(text.splitlines(), delimiter=delimiter):
        row = {k.strip().lower(): (v or "").strip() for k, v in row.items()}
        kind = ELECTRODE_TYPES.get(row.get("type", "").lower())
        if kind and row.get("name"):
            types[row["name"]] = kind
    return types


def _coordsystem_unit(path: Path) -> str | None:
    stem = re.sub(r"_electrodes\.tsv$", "", path.name)
    for candidate in path.parent.glob(stem.split("_acq-")[0] + "*_coordsystem.json"):
        sidecar = json.loads(candidate.read_text())
        units = sidecar.get("iEEGCoordinateUnits") or sidecar.get("EEGCoordinateUnits")
        if units in ("m", "mm", "cm"):
            return units
    return None


def find_electrodes_table(recording: Path) -> Path | None:
    """The BIDS ``*_electrodes.tsv`` that belongs to ``recording``, if one lies beside it."""
    match = re.match(r"(.+)_(ieeg|eeg)$", recording.stem.split(".")[0])
    if not match:
        return None
    candidate = recording.parent / f"{match.group(1)}_electrodes.tsv"
    return candidate if candidate.is_file() else None


def user_type(name: str, channel_types: dict[str, str]) -> str | None:
    """The type the user's glob mapping gives ``name`` (first matching pattern wins), else ``None``."""
    return next((t for p, t in channel_types.items() if fnmatch.fnmatchcase(name, p)), None)


def type_channels(inst, channel_types: dict[str, str], source: Path) -> None:
    """Set channel types from name conventions, then from the user's glob mapping (first match wins).

    Only channels the file types as EEG or misc are retyped by name conventions (EDF knows no
    other type). An exact channel name in the mapping beats the conventions; a glob pattern such as
    ``'*': seeg`` applies to what the conventions left (so ``EKG1`` stays ECG).
    """
    for pattern, ch_type in channel_types.items():
        if ch_type not in ALLOWED_USER_TYPES:
            raise RecordingError(
                f"{source}: channel_types maps '{pattern}' to '{ch_type}'. Allowed types are "
                f"{', '.join(ALLOWED_USER_TYPES)}."
            )
    mapping = {}
    for name, ch_type in zip(inst.ch_names, inst.get_channel_types()):
        convention = non_brain_type(name) if ch_type in ("eeg", "misc") else None
        new = channel_types.get(name) or convention or user_type(name, channel_types)
        if new and new != ch_type:
            mapping[name] = new
    if mapping:
        inst.set_channel_types(mapping, on_unit_change="ignore", verbose="error")


def _set_positions(inst, positions: dict[str, np.ndarray]) -> None:
    """Write head-frame positions (m) into ``inst.info['chs'][i]['loc'][:3]``."""
    for ch in inst.info["chs"]:
        if ch["ch_name"] in positions:
            ch["loc"][:3] = positions[ch["ch_name"]]
            ch["coord_frame"] = mne.io.constants.FIFF.FIFFV_COORD_HEAD


def _bipolar_positions(names: list[str], montage_name: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(anode, cathode) head-frame positions of the ``names`` that are bipolar labels of two montage electrodes."""
    pairs = {name: pair for name in names if (pair := bipolar_pair(name))}
    electrodes = _montage_positions([e for pair in pairs.values() for e in pair], montage_name)
    return {name: (electrodes[anode], electrodes[cathode]) for name, (anode, cathode) in pairs.items()
            if anode in electrodes and cathode in electrodes}


def _montage_positions(names: list[str], montage_name: str) -> dict[str, np.ndarray]:
    """Head-frame positions of ``names`` matched to a standard montage on cleaned, case-folded names."""
    try:
        montage = mne.channels.make_standard_montage(montage_name)
    except ValueError:
        raise SensorPositionError(
            f"Unknown montage '{montage_name}'. Use one of {', '.join(mne.channels.get_builtin_montages())}."
        ) from None
    # Let MNE do the transform of the montage to the head frame (through its fiducials).
    info = mne.create_info(montage.ch_names, 1000.0, "eeg")
    info.set_montage(montage)
    by_folded = {ch["ch_name"].lower(): ch["loc"][:3].copy() for ch in info["chs"]}
    for name, same_site in TEMPLATE_SYNONYMS.items():
        if name not in by_folded and same_site in by_folded:
            by_folded[name] = by_folded[same_site]
    return {
        name: by_folded[clean_channel_name(name).lower()]
        for name in names
        if clean_channel_name(name).lower() in by_folded
    }


#: EGI nets in MNE's montages by the highest electrode number they name.
EGI_NETS = ((32, "GSN-HydroCel-32"), (64, "GSN-HydroCel-64_1.0"), (128, "GSN-HydroCel-128"), (256, "GSN-HydroCel-256"))


def _montage_hint(names: list[str]) -> str:
    """A montage to suggest when the channels without a position carry an EGI net's numbers (E1 … E256)."""
    numbered = [int(m.group(1)) for n in names if (m := re.fullmatch(r"E(\d+)", clean_channel_name(n), re.I))]
    if len(numbered) < 8 or len(numbered) < 0.8 * len(names):
        return ""
    net = next((name for size, name in EGI_NETS if max(numbered) <= size), EGI_NETS[-1][1])
    return f" They look like an EGI net's electrode numbers (E1 … E{max(numbered)}): give the net's montage, e.g. montage: {net}."


def _fix_file_units(inst, types: dict[str, str]) -> str | None:
    """Electrode positions stored in mm or cm but labelled metres (seen in real files) → metres.

    A head is about 0.1 m in radius: a median electrode radius above 20 means millimetres, above 1
    centimetres. MEG coil positions come from the acquisition system and are left alone.
    """
    chs = [ch for ch in inst.info["chs"] if types[ch["ch_name"]] not in ("mag", "grad") and has_position(ch["loc"][:3])]
    if not chs:
        return None
    radius = float(np.median([np.linalg.norm(ch["loc"][:3]) for ch in chs]))
    if radius <= 1.0:
        return None
    factor, label = (1e-3, "mm → m") if radius > 20 else (1e-2, "cm → m")
    for ch in chs:
        ch["loc"][:3] = ch["loc"][:3] * factor
    return f"positions in the file look like {label.split()[0]} (median radius {radius:g}); converted {label}"


def resolve_positions(inst, *, source: Path, modality: str, spec) -> dict:
    """Give every brain channel of ``inst`` a head-frame position, or raise / drop as configured.

    Parameters
    ----------
    inst : mne Raw | Epochs | Evoked
        Non-brain channels already dropped.
    source : Path
        The recording (for messages).
    modality : str
        ``eeg``, ``meg`` or ``ieeg``.
    spec : InputSpec
        ``positions``, ``electrodes``, ``montage`` and ``missing_positions`` are used.

    Returns
    -------
    report : dict
        Where positions came from (``{"file": [...], "electrodes.tsv": [...], ...}``), the units of
        any table read, and the channels dropped for lack of a position.
    """
    types = dict(zip(inst.ch_names, inst.get_channel_types()))
    # MEG coils always carry their position in the file; electrodes may not.
    missing = [ch["ch_name"] for ch in inst.info["chs"] if not has_position(ch["loc"][:3])]
    report: dict = {"from_file": len(inst.ch_names) - len(missing), "sources": {}}
    rescaled = _fix_file_units(inst, types)
    if rescaled:
        report["file_positions_rescaled"] = rescaled
    tables = []
    if spec.positions:
        tables.append(("positions file", Path(spec.positions)))
    electrodes = Path(spec.electrodes) if spec.electrodes else find_electrodes_table(source)
    if electrodes:
        tables.append(("electrodes.tsv", electrodes))
    for label, table in tables:
        if not missing:
            break
        positions, unit = read_positions_table(table)
        found = {n: positions[n] for n in missing if n in positions}
        if found:
            _set_positions(inst, found)
            report["sources"][label] = {"file": str(table), "unit": unit, "channels": len(found)}
            missing = [n for n in missing if n not in found]
    scalp_missing = [n for n in missing if types[n] == "eeg"]
    if scalp_missing and modality != "ieeg":
        montage_name = spec.montage or DEFAULT_MONTAGE
        found = _montage_positions(scalp_missing, montage_name)
        if found:
            _set_positions(inst, found)
            report["sources"][f"montage {montage_name}"] = {"channels": len(found)}
            missing = [n for n in missing if n not in found]
        pairs = _bipolar_positions([n for n in scalp_missing if n in missing], montage_name)
        if pairs:
            for ch in inst.info["chs"]:
                if ch["ch_name"] in pairs:
                    set_bipolar(ch, *pairs[ch["ch_name"]])
            report["sources"][f"bipolar pairs of montage {montage_name}"] = {"channels": len(pairs)}
            missing = [n for n in missing if n not in pairs]
    if missing:
        if spec.missing_positions == "raise":
            raise SensorPositionError(
                f"{source}: {len(missing)} channel(s) have no position: {', '.join(missing[:10])}"
                f"{' …' if len(missing) > 10 else ''}.{_montage_hint(missing)} Supply positions with a montage (montage: "
                "colin27_1005, matched on cleaned names; bipolar labels such as FP1-F7 on both electrodes), "
                "a BIDS electrodes.tsv (electrodes: PATH), or a positions table with name,x,y,z (positions: PATH); "
                "type non-brain channels with channel_types (e.g. {'POL *': misc}); or set missing_positions: drop "
                "to leave them out."
            )
        inst.drop_channels(missing)
        report["dropped_without_position"] = missing
    return report
