"""Source activity with known ground truth: 1/f background, alpha and beta rhythms, evoked responses,
and BOLD through a haemodynamic response.

Region time courses are dipole moments in A·m. Typical magnitudes: 10 nA·m of background per region,
alpha 25 nA·m, beta 10 nA·m, evoked peaks 40 nA·m — giving tens of µV on the scalp and hundreds of fT
at the magnetometers, as real recordings do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from neurofm.data_shards.simulate.geometry import Head

BACKGROUND = 10e-9
ALPHA = 25e-9
BETA = 10e-9
EVOKED = 40e-9
#: Condition → lobe whose regions respond.
CONDITIONS = {"auditory": "temporal", "visual": "occipital", "somatosensory": "central"}


def pink_noise(rng: np.random.Generator, n_signals: int, n_samples: int) -> np.ndarray:
    """Unit-variance noise with a 1/f power spectrum, shape (n_signals, n_samples)."""
    spectrum = np.fft.rfft(rng.standard_normal((n_signals, n_samples)), axis=1)
    freqs = np.arange(spectrum.shape[1], dtype=float)
    freqs[0] = 1.0
    signal = np.fft.irfft(spectrum / np.sqrt(freqs), n=n_samples, axis=1)
    return signal / signal.std(axis=1, keepdims=True)


def oscillation(rng: np.random.Generator, n_samples: int, sfreq: float, freq: float) -> np.ndarray:
    """A rhythm at ``freq`` Hz whose amplitude waxes and wanes over seconds (unit peak envelope)."""
    t = np.arange(n_samples) / sfreq
    envelope = pink_noise(rng, 1, n_samples)[0]
    kernel = np.hanning(max(3, int(sfreq)))  # smooth over ~1 s: bursts, not sample noise
    envelope = np.convolve(envelope, kernel / kernel.sum(), mode="same")
    envelope = (envelope - envelope.min()) / (np.ptp(envelope) + 1e-12)
    return envelope * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))


def evoked_waveform(sfreq: float, seconds: float = 0.6) -> np.ndarray:
    """An N100/P200-like response (unit peak): a negative deflection at 100 ms, a positive at 200 ms."""
    t = np.arange(int(seconds * sfreq)) / sfreq
    wave = -np.exp(-((t - 0.1) ** 2) / (2 * 0.02**2)) + 0.7 * np.exp(-((t - 0.2) ** 2) / (2 * 0.04**2))
    return wave / np.abs(wave).max()


def canonical_hrf(dt: float, seconds: float = 32.0) -> np.ndarray:
    """SPM's double-gamma haemodynamic response sampled every ``dt`` s (unit peak, peak near 5 s)."""
    t = np.arange(0, seconds, dt)
    hrf = stats.gamma.pdf(t, 6) - stats.gamma.pdf(t, 16) / 6
    return hrf / hrf.max()


@dataclass
class Scenario:
    """What happens in one simulated recording, recorded as its ground truth."""

    alpha_hz: float
    beta_hz: float
    alpha_regions: list[int]
    beta_regions: list[int]
    condition_regions: dict[str, list[int]]
    events: list[tuple[float, float, str]] = field(default_factory=list)  # onset s, duration s, condition

    def labels(self, head: Head) -> dict:
        names = head.region_names
        return {
            "simulated": True,
            "alpha_hz": round(self.alpha_hz, 3),
            "beta_hz": round(self.beta_hz, 3),
            "alpha_regions": [names[k] for k in self.alpha_regions],
            "beta_regions": [names[k] for k in self.beta_regions],
            "condition_regions": {c: [names[k] for k in ks] for c, ks in self.condition_regions.items()},
        }


def _regions_in(head: Head, *lobes: str) -> list[int]:
    """Regions of any of ``lobes``; the most central region if a small head has none."""
    regions = [k for k, n in enumerate(head.region_names) if n.split("-")[0] in lobes]
    return regions or [int(np.argmin(np.linalg.norm(head.region_centroids() - head.r0, axis=1)))]


def make_scenario(head: Head, rng: np.random.Generator, seconds: float, *, blocks: bool = False) -> Scenario:
    """Rhythms and events of one recording: events every 1.5–3 s (or 12 s blocks for fMRI)."""
    condition_regions = {c: _regions_in(head, lobe) for c, lobe in CONDITIONS.items()}
    events, t = [], float(rng.uniform(0.5, 2.0))
    names = list(CONDITIONS)
    while t < seconds - (12.0 if blocks else 0.7):
        condition = names[int(rng.integers(len(names)))]
        duration = 12.0 if blocks else 0.0
        events.append((round(t, 4), duration, condition))
        t += duration + (rng.uniform(10.0, 16.0) if blocks else rng.uniform(1.5, 3.0))
    return Scenario(
        alpha_hz=float(rng.uniform(8.5, 11.5)),
        beta_hz=float(rng.uniform(16.0, 24.0)),
        alpha_regions=_regions_in(head, "occipital", "parietal"),
        beta_regions=_regions_in(head, "central"),
        condition_regions=condition_regions,
        events=events,
    )


def region_activity(head: Head, scenario: Scenario, sfreq: float, n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Dipole moment of every region, shape (n_regions, n_samples), A·m."""
    activity = BACKGROUND * pink_noise(rng, head.n_regions, n_samples)
    for k in scenario.alpha_regions:
        activity[k] += ALPHA * oscillation(rng, n_samples, sfreq, scenario.alpha_hz)
    for k in scenario.beta_regions:
        activity[k] += BETA * oscillation(rng, n_samples, sfreq, scenario.beta_hz)
    wave = EVOKED * evoked_waveform(sfreq)
    for onset, _, condition in scenario.events:
        start = int(round(onset * sfreq))
        stop = min(n_samples, start + len(wave))
        for k in scenario.condition_regions[condition]:
            activity[k, start:stop] += wave[: stop - start]
    return activity


def bold_signal(head: Head, scenario: Scenario, tr: float, n_volumes: int, rng: np.random.Generator, dt: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """BOLD of every region sampled every ``tr`` s, and the neural drive behind it at ``dt`` resolution.

    Returns
    -------
    bold : ndarray, shape (n_regions, n_volumes)
        Percent signal around a baseline of 100.
    drive : ndarray, shape (n_regions, n_fine)
        Neural activity (block boxcars plus slow spontaneous fluctuations), arbitrary units.
    """
    n_fine = int(round(n_volumes * tr / dt))
    drive = 0.3 * pink_noise(rng, head.n_regions, n_fine)
    for onset, duration, condition in scenario.events:
        start, stop = int(onset / dt), int((onset + duration) / dt)
        for k in scenario.condition_regions[condition]:
            drive[k, start:stop] += 1.0
    hrf = canonical_hrf(dt)
    response = np.stack([np.convolve(d, hrf)[:n_fine] for d in drive]) * dt
    step = int(round(tr / dt))
    bold = 100 + 2.0 * response[:, ::step][:, :n_volumes] + 0.3 * rng.standard_normal((head.n_regions, n_volumes))
    return bold, drive
