"""Preprocessing with MNE: band-pass, notch, resampling, bad-channel detection, robust scaling.

The output, :class:`Prepared`, holds the scaled signal as segments (a whole continuous recording,
one epoch, or one evoked condition), each with the events or labels that belong to it, ready to be
cut into windows.

Scaling: each sensor kind of a recording is divided by its robust scale — the median over that
kind's channels of each channel's interquartile range / 1.349 (the standard deviation of a normal
variable with that IQR) — then clipped to ±``clip``. The scales, in the kind's physical unit (V for
EEG/iEEG, T for magnetometers, T/m for gradiometers), go into every ``meta.json``, so
``signal * scale`` gives physical units back. fMRI parcels are z-scored per parcel instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import mne
import numpy as np

from neurofm.config import from_dict, to_dict
from neurofm.data_shards.config import BadChannelDetection, EventEpochs, ElectrophysiologyPreprocess, FmriPreprocess, ShardsConfig
from neurofm.data_shards.readers import Recording, data_chunks
from neurofm.data_shards.sensors import SensorTable, sensor_table
from neurofm.errors import RecordingError


@dataclass
class Segment:
    """A stretch of scaled signal: ``data`` [channels, time]; ``onset`` in s within the recording
    (continuous) or of the epoch's first sample relative to its event (epochs); ``events`` and
    ``labels`` as they go into ``meta.json``."""

    data: np.ndarray
    onset: float = 0.0
    events: list[dict] = field(default_factory=list)
    labels: dict = field(default_factory=dict)


@dataclass
class Prepared:
    """A preprocessed recording: its sensors, segments, scales and what was done to it."""

    recording: Recording
    sensors: SensorTable
    sfreq: float
    segments: list[Segment]
    scales: dict[str, float]
    bad_channels: dict[str, str]
    settings: dict
    window_seconds: float
    overlap: float
    clip_fraction: float


def effective_settings(config: ShardsConfig, recording: Recording, input_index: int):
    """The modality's preprocessing settings with this input's ``preprocess`` overrides applied."""
    base = getattr(config, recording.modality)
    overrides = recording.spec.preprocess if recording.spec else {}
    if not overrides:
        return base
    return from_dict(type(base), {**to_dict(base), **overrides}, prefix=f"inputs[{input_index}].preprocess")


def _check_band(settings: ElectrophysiologyPreprocess, sfreq: float, source: Path, modality: str) -> None:
    nyquist = sfreq / 2
    for name in ("h_freq", "l_freq"):
        value = getattr(settings, name)
        if value is not None and value >= nyquist:
            raise RecordingError(
                f"{source}: sampling rate {sfreq:g} Hz is too low for the requested band ({name} = {value:g} Hz "
                f"must stay below the Nyquist frequency {nyquist:g} Hz). Set inputs[].preprocess.{name} below "
                f"{nyquist:g} for this file, or {modality}.{name} for every {modality} file."
            )


#: Power-line frequencies in use, Hz (60 in the Americas and parts of Asia, 50 elsewhere).
LINE_FREQUENCIES = (50.0, 60.0)
#: How far a line peak must stand over the spectrum 2–5 Hz beside it (power ratio, median over channels).
LINE_PEAK_RATIO = 4.0


def line_frequency(raw: mne.io.BaseRaw, fallback: float) -> tuple[float, str]:
    """The power-line frequency of a continuous recording, Hz, and where it came from: the file's
    ``line_freq`` (``"file"``); else the one of :data:`LINE_FREQUENCIES` whose spectral peak stands at least
    :data:`LINE_PEAK_RATIO` times over its surroundings (``"data"``; Welch over up to 60 s of up to 32
    channels, before any filter); else ``fallback`` (``"setting"``). EDF, CTF and many other formats do not
    state it, and a 60-Hz recording notched at 50 Hz keeps its hum wherever the band reaches 60 Hz."""
    if raw.info.get("line_freq"):
        return float(raw.info["line_freq"]), "file"
    sfreq = raw.info["sfreq"]
    n = min(raw.n_times, int(60 * sfreq))
    if sfreq / 2 <= max(LINE_FREQUENCIES) + 6 or n < 4 * sfreq:
        return fallback, "setting"
    picks = np.unique(np.linspace(0, len(raw.ch_names) - 1, min(32, len(raw.ch_names))).astype(int))
    start = (raw.n_times - n) // 2
    data = raw.get_data(picks=picks, start=start, stop=start + n)
    psd, freqs = mne.time_frequency.psd_array_welch(data, sfreq, fmin=40.0, fmax=70.0, n_fft=int(2 * sfreq), verbose="error")
    ratios = {}
    for f0 in LINE_FREQUENCIES:
        distance = np.abs(freqs - f0)
        peak = psd[:, distance <= 0.5].max(axis=1)
        side = np.median(psd[:, (distance >= 2) & (distance <= 5)], axis=1)
        ratios[f0] = float(np.median(peak[side > 0] / side[side > 0])) if (side > 0).any() else 0.0
    best = max(ratios, key=ratios.get)
    return (best, "data") if ratios[best] >= LINE_PEAK_RATIO else (fallback, "setting")


def _filter_resample(inst, settings: ElectrophysiologyPreprocess, source: Path, modality: str) -> tuple[object, dict]:
    """The filtered, notched and resampled recording, and the line frequency it was notched at (``{}``:
    not notched)."""
    sfreq = inst.info["sfreq"]
    _check_band(settings, sfreq, source, modality)
    notched = {}
    if settings.notch and isinstance(inst, mne.io.BaseRaw):
        line, origin = line_frequency(inst, settings.line_freq)  # on the raw data: the band-pass may remove the hum
        harmonics = np.arange(line, sfreq / 2 - 1, line)
        notched = {"line_freq": line, "line_freq_from": origin} if len(harmonics) else {}
    # n_jobs=1, not MNE's default None: with None, MNE's FIR filter gathers every filtered channel in a list
    # before writing them back — a second copy of the whole recording (an hour of 306-ch MEG at 1 kHz: 8.8 GB)
    if settings.l_freq is not None or settings.h_freq is not None:
        inst.filter(settings.l_freq, settings.h_freq, picks="all", n_jobs=1, verbose="error")
    if notched:
        inst.notch_filter(harmonics, picks="all", n_jobs=1, verbose="error")
    if sfreq != settings.sfreq:
        inst.resample(settings.sfreq, n_jobs=1, verbose="error")
    return inst, notched


def detect_bad_channels(data: np.ndarray, kinds: list[str], config: BadChannelDetection) -> dict[int, str]:
    """Flat and noisy channels, judged within each sensor kind by their robust spread (IQR / 1.349).

    Parameters
    ----------
    data : ndarray, shape (n_channels, n_times)
    kinds : list of str
        Kind of every channel.

    Returns
    -------
    dict
        Channel index → ``'flat'`` or ``'noisy'``.
    """
    # interquartile spread, not the SD: sparse artefacts (eye blinks) must not make a channel "noisy"
    q75, q25 = np.percentile(data, [75, 25], axis=1)
    std = (q75 - q25) / 1.349
    bad: dict[int, str] = {}
    for kind in sorted(set(kinds)):  # sorted: set order follows the per-process string hash seed
        idx = np.flatnonzero(np.asarray(kinds) == kind)
        median = np.median(std[idx])
        for i in idx:
            if std[i] <= config.flat_ratio * median or std[i] == 0:
                bad[i] = "flat"
        good = [i for i in idx if i not in bad]
        if len(good) >= 4:  # a robust z-score needs a few channels to compare with
            log_std = np.log(std[good])
            mad = np.median(np.abs(log_std - np.median(log_std))) * 1.4826
            if mad > 0:
                z = (log_std - np.median(log_std)) / mad
                bad.update({good[j]: "noisy" for j in np.flatnonzero(z > config.noisy_z)})
    return bad


def _event_epochs(raw, spec: EventEpochs, source: Path):
    """Filtered continuous recording → ``mne.Epochs`` around the annotations named in ``spec.events``."""
    present = sorted(set(raw.annotations.description))
    event_id = {name: i + 1 for i, name in enumerate(spec.events) if name in present}
    if not event_id:
        raise RecordingError(
            f"{source}: none of the epoch events {spec.events} is among its annotations {present[:20]}; "
            "fix inputs[].epochs.events (trigger codes on stim channels read as stim/<code>; inputs[].rename_events names them)."
        )
    events, _ = mne.events_from_annotations(raw, event_id=event_id, verbose="error")
    return mne.Epochs(raw, events, event_id, tmin=spec.tmin, tmax=spec.tmax, baseline=None, preload=True, picks="all",
                      reject_by_annotation=False, on_missing="ignore", verbose="error")


def _constant_channels(recording: Recording) -> list[int]:
    """Indices of channels whose raw samples never change (scanned chunk by chunk, :func:`data_chunks`)."""
    insts = recording.inst if isinstance(recording.inst, list) else [recording.inst]
    low = high = None
    for inst in insts:
        for chunk in data_chunks(inst):
            low = chunk.min(axis=1) if low is None else np.minimum(low, chunk.min(axis=1))
            high = chunk.max(axis=1) if high is None else np.maximum(high, chunk.max(axis=1))
    return [] if low is None else [int(i) for i in np.flatnonzero(high == low)]


def _joined(arrays: list[np.ndarray]) -> np.ndarray:
    """[channels, time] arrays side by side in time; a single array as it is (a continuous recording: no
    copy of it)."""
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=1)


def robust_scale(data: np.ndarray) -> float:
    """Median over channels of IQR / 1.349; ``data`` is [channels, time]."""
    q75, q25 = np.percentile(data, [75, 25], axis=1)
    return float(np.median((q75 - q25) / 1.349))


def prepare(recording: Recording, config: ShardsConfig, input_index: int = 0) -> Prepared:
    """Filter, resample, drop bad channels and scale one recording (see module docstring)."""
    settings = effective_settings(config, recording, input_index)
    source, modality = recording.source, recording.modality
    constant = _constant_channels(recording)  # before filtering: a filter turns a DC offset into ringing
    notched: dict = {}  # the line frequency a continuous recording was notched at
    if recording.layout == "evoked":
        insts = [_filter_resample(ev, settings, source, modality)[0] for ev in recording.inst]
        arrays = [ev.data for ev in insts]
        info = insts[0].info
    elif modality == "fmri":
        inst = recording.inst
        if abs(inst.info["sfreq"] - 1 / settings.tr_seconds) > 1e-9:
            inst.resample(1.0 / settings.tr_seconds, verbose="error")
        if recording.spec is not None and recording.spec.epochs is not None:
            recording.inst = inst = _event_epochs(inst, recording.spec.epochs, source)
        insts, arrays, info = [inst], list(inst.get_data()) if recording.layout == "epochs" else [inst.get_data()], inst.info
    else:
        inst, notched = _filter_resample(recording.inst, settings, source, modality)
        if recording.spec is not None and recording.spec.epochs is not None:
            if recording.layout != "continuous":
                raise RecordingError(
                    f"{source} holds {recording.layout} already; inputs[].epochs cuts continuous recordings only. "
                    "Remove epochs from this input."
                )
            recording.inst = inst = _event_epochs(inst, recording.spec.epochs, source)
        insts = [inst]
        arrays = list(inst.get_data()) if recording.layout == "epochs" else [inst.get_data()]
        info = inst.info
    sensors = sensor_table(info, modality)
    concatenated = _joined(arrays)  # [channels, all time]
    if modality == "fmri":
        bad_idx: dict[int, str] = {}
    else:
        bad_idx = {i: "flat" for i in constant} | detect_bad_channels(concatenated, sensors.kinds, config.bad_channels)
    if len(bad_idx) == len(sensors):
        raise RecordingError(
            f"{source}: every channel is flat or constant; the recording holds no signal (check the file "
            "and its gain/unit settings)."
        )
    keep = np.array([i not in bad_idx for i in range(len(sensors))])
    sensors = SensorTable(
        names=[n for n, k in zip(sensors.names, keep) if k],
        kinds=[n for n, k in zip(sensors.kinds, keep) if k],
        positions=sensors.positions[keep],
        orientations=sensors.orientations[keep],
    )
    if not keep.all():
        arrays = [a[keep] for a in arrays]
    scales = {}
    kept_all = _joined(arrays)
    if modality == "fmri":
        mean, std = kept_all.mean(axis=1, keepdims=True), kept_all.std(axis=1, keepdims=True)
        arrays = [(a - mean) / std for a in arrays]
        scales["bold"] = 1.0
    else:
        divisor = np.ones((len(sensors), 1))
        for kind in sorted(set(sensors.kinds)):
            rows = np.asarray(sensors.kinds) == kind
            scales[kind] = robust_scale(kept_all[rows])
            if not scales[kind] > 0:
                raise RecordingError(f"{source}: the {kind} channels are constant; nothing to scale.")
            divisor[rows] = scales[kind]
        arrays = [a / divisor for a in arrays]
    # the arrays are this function's own (scaled copies): count and clip in place
    clipped = sum(np.count_nonzero(a > config.clip) + np.count_nonzero(a < -config.clip) for a in arrays)
    total = sum(a.size for a in arrays)
    for a in arrays:
        np.clip(a, -config.clip, config.clip, out=a)
    segments = _segments(recording, insts, arrays)
    if isinstance(settings, FmriPreprocess):
        sfreq = 1.0 / settings.tr_seconds
    else:
        sfreq = settings.sfreq
    return Prepared(
        recording=recording,
        sensors=sensors,
        sfreq=sfreq,
        segments=segments,
        scales=scales,
        bad_channels={info["ch_names"][i]: why for i, why in bad_idx.items()},
        settings=to_dict(settings) | notched,
        window_seconds=settings.window_seconds,
        overlap=settings.overlap,
        clip_fraction=clipped / max(total, 1),
    )


def _segments(recording: Recording, insts: list, arrays: list[np.ndarray]) -> list[Segment]:
    if recording.layout == "evoked":
        return [
            Segment(data=a, onset=float(ev.times[0]), labels={"condition": ev.comment, "nave": int(ev.nave)})
            for ev, a in zip(insts, arrays)
        ]
    if recording.layout == "epochs":
        epochs = insts[0]
        names = {code: name for name, code in epochs.event_id.items()}
        metadata = epochs.metadata.to_dict("records") if epochs.metadata is not None else [{}] * len(epochs)
        return [
            Segment(
                data=a,
                onset=float(epochs.tmin),
                labels=_with_defaults({"event": names.get(int(code), str(code)), "event_code": int(code), **_plain(row)}, recording.labels),
            )
            for a, code, row in zip(arrays, epochs.events[:, 2], metadata)
        ]
    return [Segment(data=arrays[0], onset=0.0, events=recording.events, labels=recording.labels)]


def _with_defaults(labels: dict, defaults: dict) -> dict:
    """``labels`` first (an epoch's event names its window), then recording-level keys it lacks."""
    return {**labels, **{k: v for k, v in defaults.items() if k not in labels}}


def _plain(row: dict) -> dict:
    """Metadata row with JSON-friendly values."""
    out = {}
    for key, value in row.items():
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, float) and not np.isfinite(value):
            value = None
        out[str(key)] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
    return out


__all__ = ["Prepared", "Segment", "detect_bad_channels", "prepare", "robust_scale"]
