"""Simulated recordings: plan them for H hours, then make each one as an MNE object with ground truth.

A recording is a function of (seed, modality, device, subject, index) only: ``plan_recordings`` lays
out which recordings make up the requested hours, and ``simulate_recording`` makes one, so shards can
be written in any order and rebuilt identically. Electrophysiology is ``gain @ region activity`` plus
sensor noise, line noise at the site's frequency, one flat and one noisy channel, and (EEG) eye blinks;
fMRI is the regions' BOLD at the site's TR. The result goes through the same checks as a file read
from disk (:func:`neurofm.data_shards.readers.finish_recording`).
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import mne
import numpy as np

import neurofm
from neurofm.data_shards.config import InputSpec, SimulateConfig
from neurofm.data_shards.simulate import activity, geometry
from neurofm.data_shards.simulate.forward import region_gain
from neurofm.data_shards.sensors import is_bipolar

#: Per-site sampling rate (Hz) and line frequency (Hz), cycled through in order.
SITES = {
    "eeg": [(512.0, 50.0), (256.0, 60.0), (500.0, 60.0)],
    "meg": [(600.0, 50.0), (600.0, 60.0), (500.0, 60.0)],
    "seeg": [(1024.0, 50.0)],
    "ecog": [(1000.0, 60.0)],
    "fmri": [(1 / 2.0, 0.0), (1 / 1.5, 0.0)],
}
SITES_ORDER = list(SITES)
SENSOR_NOISE = {"eeg": 1e-6, "seeg": 2e-6, "ecog": 2e-6, "mag": 5e-15, "grad": 3e-13}
LINE_NOISE = {"eeg": 3e-6, "seeg": 5e-6, "ecog": 5e-6, "mag": 5e-14, "grad": 2e-12}
BLINK = 100e-6  # V at the eyes
EYES = np.array([[-0.032, 0.085, -0.03], [0.032, 0.085, -0.03]])  # relative to the sphere centre, m


@dataclass(frozen=True)
class SimulatedSpec:
    """One simulated recording: enough to make it again, bit for bit."""

    modality: str
    device: str
    site: int
    subject: int
    index: int
    seconds: float
    seed: int
    sources: str = ""  # the modality whose sources and site this recording shares ("": its own)

    @property
    def name(self) -> str:
        return f"simulated/{self.modality}_{self.device}/sub-{self.subject:02d}_run-{self.index:04d}"

    @property
    def source_modality(self) -> str:
        """The modality that keys the sources (random stream) and the site (sampling rate, line)."""
        return self.sources or self.modality

    def checksum(self) -> str:
        fields = {k: v for k, v in asdict(self).items() if k != "sources" or v}  # older specs keep their hash
        text = json.dumps({**fields, "neurofm": neurofm.__version__}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


def scene(spec: SimulatedSpec) -> str:
    """What decides a recording's sources (everything but the device): recordings of one scene are views of
    the same brain activity through different sensors."""
    return f"{spec.source_modality}/sub-{spec.subject:02d}_run-{spec.index:04d}/seed-{spec.seed}/{spec.seconds}s/site-{spec.site}"


def _devices(config: SimulateConfig, modality: str) -> list[str]:
    if modality == "eeg":
        for name in config.eeg_montages:
            geometry.check_montage(name)
        return list(config.eeg_montages)
    if modality == "meg":
        for name in config.meg_helmets:
            geometry.check_helmet(name)
        return list(config.meg_helmets)
    return {"seeg": ["shafts"], "ecog": ["grid"], "fmri": ["tr2.0", "tr1.5"]}[modality]


def plan_recordings(config: SimulateConfig) -> list[SimulatedSpec]:
    """The recordings that make up ``config.hours``: split evenly over modalities, each modality's
    share cut into equal recordings of at most ``recording_seconds`` (``fmri_run_seconds``), cycling
    through devices and subjects (with ``device_views``, each EEG/MEG recording on every device)."""
    plan = []
    per_modality = config.hours * 3600 / len(config.modalities)
    for modality in config.modalities:
        devices = _devices(config, modality)
        length = config.fmri_run_seconds if modality == "fmri" else config.recording_seconds
        count = max(1, int(np.ceil(per_modality / length - 1e-9)))
        seconds = round(max(per_modality / count, 30.0 if modality == "fmri" else 2.0), 3)
        if config.device_views and modality in ("eeg", "meg"):
            # one scene, every device (same RNG key: same sources); with meeg_views MEG shares EEG's scenes
            joint = config.meeg_views and modality == "meg" and "eeg" in config.modalities
            sources, scenes = ("eeg", len(_devices(config, "eeg"))) if joint else ("", len(devices))
            for index in range(max(1, count // len(devices))):
                site, subject = index % scenes, config.first_subject + index % config.subjects
                plan.extend(SimulatedSpec(modality, device, site, subject, index, seconds, config.seed, sources) for device in devices)
            continue
        for index in range(count):
            site = index % len(devices)
            subject = config.first_subject + (index // len(devices)) % config.subjects
            plan.append(SimulatedSpec(modality, devices[site], site, subject, index, seconds, config.seed))
    return plan


@functools.lru_cache(maxsize=16)
def _head(subject: int, seed: int, spacing_mm: float, n_regions: int) -> geometry.Head:
    return geometry.make_head(subject, seed, spacing_mm, n_regions)


def project(gain: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """gain [channels, regions] @ sources [regions, time], on a GPU when torch sees one (float64 there
    too, so results match the CPU's to rounding), else with NumPy."""
    import torch

    if not torch.cuda.is_available():
        return gain @ sources
    g, x = (torch.from_numpy(a).to("cuda") for a in (gain, sources))
    return (g @ x).cpu().numpy()


def _sensor_info(spec: SimulatedSpec, head: geometry.Head, sfreq: float) -> mne.Info:
    if spec.modality == "eeg":
        return geometry.eeg_info(spec.device, head, sfreq)
    if spec.modality == "meg":
        return geometry.meg_info(spec.device, head, sfreq, spec.seed)
    if spec.modality == "seeg":
        return geometry.positions_info(geometry.seeg_positions(head, spec.seed), sfreq, "seeg")
    return geometry.positions_info(geometry.ecog_positions(head, spec.seed), sfreq, "ecog")


def _site(spec: SimulatedSpec) -> tuple[float, float]:
    """Sampling rate and line frequency (Hz) of the recording's site."""
    sites = SITES[spec.source_modality]
    return sites[spec.site % len(sites)]


def recording_gain(spec: SimulatedSpec, config: SimulateConfig) -> tuple[np.ndarray, mne.Info, list[str]]:
    """The true forward model of one simulated electrophysiology recording (not fMRI): the gain of every
    region, shape (n_channels, n_regions), in V or T per A·m; the sensors (``mne.Info``, at the site's
    sampling rate); and the region names the ground truth refers to. :func:`simulate_raw` projects the
    sources through exactly this gain."""
    if spec.modality == "fmri":
        raise ValueError("simulated fMRI has no gain matrix: its channels are the regions themselves")
    head = _head(spec.subject, spec.seed, config.source_spacing_mm, config.n_regions)
    sfreq, _ = _site(spec)
    if spec.device in geometry.BIPOLAR_MONTAGES:  # leads are differences of their electrodes' gains
        electrode_montage, _ = geometry.BIPOLAR_MONTAGES[spec.device]
        electrodes = geometry.eeg_info(electrode_montage, head, sfreq)
        info, derivation = geometry.bipolar_leads(spec.device, electrodes)
        return derivation @ region_gain(electrodes, head, electrode_montage, config.cache_dir), info, list(head.region_names)
    info = _sensor_info(spec, head, sfreq)
    return region_gain(info, head, spec.device, config.cache_dir), info, list(head.region_names)


def _add_nuisances(data: np.ndarray, info: mne.Info, spec: SimulatedSpec, head, line_freq: float, rng, scenario) -> dict:
    """Sensor noise, line noise, one flat and one noisy channel, eye blinks (EEG). Returns the bad channels."""
    types = np.asarray(info.get_channel_types())
    sfreq, n = info["sfreq"], data.shape[1]
    brain_std = data.std(axis=1)
    t = np.arange(n) / sfreq
    line = np.sin(2 * np.pi * line_freq * t + rng.uniform(0, 2 * np.pi))
    for kind in sorted(set(types)):  # sorted: set order follows the per-process string hash seed
        rows = types == kind
        data[rows] += SENSOR_NOISE[kind] * rng.standard_normal((rows.sum(), n))
        data[rows] += LINE_NOISE[kind] * rng.uniform(0.5, 1.5, (rows.sum(), 1)) * line
    if spec.modality == "eeg":
        def eye_weight(positions):  # [channels, 3] → [channels]
            return np.exp(-np.min(np.linalg.norm(positions[:, None] - (head.r0 + EYES)[None], axis=2), axis=1) / 0.03)

        weight = eye_weight(np.stack([ch["loc"][:3] for ch in info["chs"]]))
        bipolar = np.array([is_bipolar(ch) for ch in info["chs"]])
        if bipolar.any():  # a lead records its anode's blink minus its cathode's
            weight[bipolar] -= eye_weight(np.stack([ch["loc"][3:6] for ch in info["chs"]]))[bipolar]
        blink = np.sin(np.linspace(0, np.pi, int(0.3 * sfreq)))
        onset = rng.uniform(2.0, 6.0)
        while onset < n / sfreq - 0.3:
            start = int(onset * sfreq)
            data[:, start : start + len(blink)] += BLINK * weight[:, None] * blink[None, : n - start]
            scenario.events.append((round(onset, 4), 0.3, "blink"))
            onset += rng.uniform(3.0, 8.0)
    bad: dict[str, str] = {}
    if len(info.ch_names) >= 8:
        flat, noisy = rng.choice(len(info.ch_names), 2, replace=False)
        data[flat] = 0.0
        peers = types == types[noisy]  # a broken channel: ~80x its kind's median within a 45 Hz band
        data[noisy] += 200 * np.median(brain_std[peers]) * rng.standard_normal(n)
        bad = {info.ch_names[flat]: "flat", info.ch_names[noisy]: "noisy"}
    return bad


def simulate_raw(spec: SimulatedSpec, config: SimulateConfig) -> tuple[mne.io.RawArray, dict]:
    """Make one simulated recording: an MNE ``RawArray`` (annotations = events) and its ground truth."""
    head = _head(spec.subject, spec.seed, config.source_spacing_mm, config.n_regions)
    sfreq, line_freq = _site(spec)
    rng = np.random.default_rng([spec.seed, 23, SITES_ORDER.index(spec.source_modality), spec.index])
    if spec.modality == "fmri":
        scenario = activity.make_scenario(head, rng, spec.seconds, blocks=True)
        n_volumes = int(spec.seconds * sfreq)
        bold, _ = activity.bold_signal(head, scenario, 1 / sfreq, n_volumes, rng)
        info = mne.create_info([f"parcel-{k + 1:03d}" for k in range(head.n_regions)], sfreq, "misc")
        for ch, centroid in zip(info["chs"], head.region_centroids()):
            ch["loc"][:3] = centroid
            ch["coord_frame"] = mne.io.constants.FIFF.FIFFV_COORD_HEAD
        raw = mne.io.RawArray(bold, info, verbose="error")
        bad: dict[str, str] = {}
    else:
        gain, info, _ = recording_gain(spec, config)
        n = int(round(spec.seconds * sfreq))
        scenario = activity.make_scenario(head, rng, spec.seconds)
        data = project(gain, activity.region_activity(head, scenario, sfreq, n, rng))  # [channels, time]
        bad = _add_nuisances(data, info, spec, head, line_freq, rng, scenario)
        with info._unlock():
            info["line_freq"] = line_freq
        raw = mne.io.RawArray(data, info, verbose="error")
    onsets, durations, names = zip(*sorted(scenario.events)) if scenario.events else ((), (), ())
    raw.set_annotations(mne.Annotations(list(onsets), list(durations), list(names)))
    truth = {
        **scenario.labels(head),
        "device": spec.device,
        "scene": scene(spec),
        "subject": spec.subject,
        "head_radius_m": round(head.head_radius, 5),
        "bad_channels": bad,
    }
    return raw, truth


def simulate_recording(spec: SimulatedSpec, config: SimulateConfig):
    """One simulated recording as a :class:`~neurofm.data_shards.readers.Recording`."""
    from neurofm.data_shards.readers import finish_recording

    raw, truth = simulate_raw(spec, config)
    modality = "ieeg" if spec.modality in ("seeg", "ecog") else spec.modality
    epochs = config.fmri_epochs if modality == "fmri" else config.epochs
    recording = finish_recording(raw, Path(spec.name), InputSpec(path=spec.name, modality=modality, epochs=epochs), modality=modality)
    recording.labels = truth
    return recording
