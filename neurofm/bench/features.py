"""Raw features of windows, the baseline a user would pick instead of a foundation model.

Per channel: the mean amplitude in consecutive bins after the window's event (event-locked windows),
the log-variance of the window and the log power in standard frequency bands; plus the log power
spectrum averaged over channels in 1-Hz bins (for rhythm frequencies). Channel sets differ between
devices (and between recordings of one device, by their bad channels), so features are laid out over
the union of a device's channel names; a channel a window lacks is NaN, imputed inside the probe's
pipeline from training windows only. The benchmark offers the probe these features whole and the
spectrum alone (:func:`neurofm.bench.embeddings.raw_columns`).
"""

from __future__ import annotations

import numpy as np
from scipy import signal as sps

from neurofm.data_shards.windows import event_onset
from neurofm.finetune.config import EVENT_SPAN_SECONDS

#: Band edges in Hz for per-channel log band powers.
BANDS = ((1, 4), (4, 8), (8, 13), (13, 20), (20, 30), (30, 45))
#: Event-locked amplitude bins, seconds after the event: four equal bins over the span ``event`` pooling
#: keeps of the embeddings (0 … 0.4 s), so the raw baseline and the embeddings read the same latencies.
EVENT_BINS = tuple((round(i * EVENT_SPAN_SECONDS / 4, 6), round((i + 1) * EVENT_SPAN_SECONDS / 4, 6)) for i in range(4))
SPECTRUM_HZ = (2.0, 40.0)
#: Frequencies (Hz) of the channel-averaged log spectrum, the last features of every window.
SPECTRUM_GRID = np.arange(SPECTRUM_HZ[0], SPECTRUM_HZ[1] + 0.5, 1.0)


def window_features(signal: np.ndarray, sfreq: float, event_onset: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Features of one window.

    Parameters
    ----------
    signal : ndarray, shape (channels, samples)
        Valid samples only, in the shards' robust-scaled units.
    sfreq : float
        Sampling rate in Hz.
    event_onset : float | None
        Seconds from the window's start to its event (no event-locked bins when None).

    Returns
    -------
    per_channel : ndarray, shape (channels, len(EVENT_BINS) + 1 + len(BANDS))
        Event-locked bin means, log-variance, log band powers.
    spectrum : ndarray, shape (n_freqs,)
        Channel-averaged log power in 1-Hz bins over ``SPECTRUM_HZ`` (NaN for slow signals such as fMRI,
        whose "bands" are the means of equal time bins instead).
    """
    c, t = signal.shape
    amplitudes = np.full((c, len(EVENT_BINS)), np.nan)
    if event_onset is not None:
        for j, (a, b) in enumerate(EVENT_BINS):
            start, stop = int(round((event_onset + a) * sfreq)), int(round((event_onset + b) * sfreq))
            if 0 <= start < stop <= t:
                amplitudes[:, j] = signal[:, start:stop].mean(axis=1)
    log_var = np.log(signal.var(axis=1) + 1e-12)[:, None]
    grid = SPECTRUM_GRID
    if sfreq <= 2 * BANDS[-1][1] or t < sfreq / 2:
        # slow signals (fMRI) or very short windows: no bands to speak of; the mean of equal time bins
        # instead, so every window has the same feature layout
        bins = np.array_split(np.arange(t), len(BANDS))
        bands = np.stack([signal[:, b].mean(axis=1) if len(b) else np.full(c, np.nan) for b in bins], axis=1)
        return np.concatenate([amplitudes, log_var, bands], axis=1), np.full(len(grid), np.nan)
    freqs, psd = sps.welch(signal, fs=sfreq, nperseg=min(t, int(sfreq)), axis=1)
    bands = np.stack([np.log(psd[:, (freqs >= a) & (freqs < b)].mean(axis=1) + 1e-12) for a, b in BANDS], axis=1)
    spectrum = np.interp(grid, freqs, np.log(psd.mean(axis=0) + 1e-12))
    return np.concatenate([amplitudes, log_var, bands], axis=1), spectrum


def device_features(windows: list[tuple[np.ndarray, dict]], labels: list[str] | None = None) -> np.ndarray:
    """Feature matrix [windows, features] of windows of one device, channels aligned by name.

    ``windows``: (signal [channels, valid samples], meta) pairs; ``meta['channels']`` names the rows.
    Missing channels are NaN (impute them inside the probe pipeline).
    """
    names = sorted({name for _, meta in windows for name in meta["channels"]})
    column = {name: i for i, name in enumerate(names)}
    rows = []
    for signal, meta in windows:
        per_channel, spectrum = window_features(signal, meta["sfreq"], event_onset(meta, labels))
        grid = np.full((len(names), per_channel.shape[1]), np.nan)
        grid[[column[n] for n in meta["channels"]]] = per_channel
        rows.append(np.concatenate([grid.ravel(), spectrum]))
    return np.stack(rows)


def feature_sets(features: np.ndarray) -> list[np.ndarray]:
    """The candidate feature sets of a :func:`device_features` matrix: every feature, and the channel-averaged
    spectrum alone (a rhythm's frequency lives in its ~40 values, which the ~10 per channel drown under a shared
    penalty); every feature only for slow signals (fMRI), which have no spectrum."""
    spectrum = features[:, -len(SPECTRUM_GRID):]
    return [features] if np.isnan(spectrum).all() else [features, spectrum]


__all__ = ["BANDS", "EVENT_BINS", "SPECTRUM_GRID", "device_features", "feature_sets", "window_features"]
