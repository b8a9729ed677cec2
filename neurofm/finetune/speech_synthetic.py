"""A clearly labelled synthetic speech-locked set, for the speech head (no public speech-locked
recording is available offline).

Each of ``n_stimuli`` utterances is 1 s of speech-like audio (voiced syllables: a glottal pulse train
with a random pitch contour through two formant resonators, ~4 syllables/s). Its Whisper log-mel
spectrogram is averaged into ``n_sources`` band envelopes; a fixed forward model (``n_sources``
sources at fixed points inside the head, gain 1/r² to each sensor position, unit-norm columns) projects
them onto the sensors of real background windows, starting 0.2 s into each window, at ``amplitude``
times the background's robust scale (the shards are scaled to ~1). Every stimulus is shown ``repeats``
times on different background windows.

Writes ``audio/<stimulus>.wav`` (targets: ``neurofm targets --kind speech --inputs OUT/audio``),
``shards/`` (signal shards; ``labels.stimulus`` names the WAV, ``labels.synthetic`` is true,
``dataset`` is ``synthetic_speech``) and ``ground_truth.json``: the settings and the accuracy an oracle
reaches that knows the forward model, the envelopes and the amplitude (template matching: the
Gaussian log-likelihood under white noise), for 10-way retrieval and identification among all stimuli
— the achievable level the learned head is compared with.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.io import wavfile
from scipy.signal import lfilter, resample

from neurofm.data_shards.dataset import ShardIndex
from neurofm.data_shards.writer import FORMAT_VERSION, ShardWriter, encode_npy, write_json_atomic
from neurofm.errors import NeuroFMError
from neurofm.finetune.targets import SAMPLE_RATE, SpeechEmbedder
from neurofm.outputs import check_output, replaced_folder

ONSET_SECONDS = 0.2


def utterance(rng: np.random.Generator, seconds: float = 1.0) -> np.ndarray:
    """Speech-like audio [samples] at 16 kHz: voiced syllables through two formant resonators."""
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    f0 = rng.uniform(100, 220) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t + rng.uniform(0, 6)))
    pulses = (np.diff(np.floor(np.cumsum(f0) / SAMPLE_RATE), prepend=0) > 0).astype(float)
    audio = np.zeros(n)
    edges = np.sort(rng.uniform(0, seconds, int(rng.integers(3, 6))))
    edges = np.concatenate([[0], edges, [seconds]])
    for a, b in zip(edges[:-1], edges[1:]):
        i0, i1 = int(a * SAMPLE_RATE), int(b * SAMPLE_RATE)
        if i1 - i0 < 400:
            continue
        segment = pulses[i0:i1]
        for formant in (rng.uniform(300, 900), rng.uniform(900, 2500)):  # two-pole resonators
            r, theta = np.exp(-np.pi * 120 / SAMPLE_RATE), 2 * np.pi * formant / SAMPLE_RATE
            segment = lfilter([1.0], [1, -2 * r * np.cos(theta), r * r], segment)
        audio[i0:i1] = segment * np.hanning(i1 - i0) * rng.uniform(0.5, 1.0)
    return (0.3 * audio / (np.abs(audio).max() + 1e-12)).astype(np.float32)


def band_envelopes(mel: np.ndarray, n_sources: int, samples: int) -> np.ndarray:
    """Log-mel [80, frames] → ``n_sources`` z-scored band envelopes resampled to ``samples``."""
    bands = np.stack([b.mean(axis=0) for b in np.array_split(mel, n_sources, axis=0)])
    bands = resample(bands, samples, axis=1)
    return (bands - bands.mean(1, keepdims=True)) / (bands.std(1, keepdims=True) + 1e-6)


def forward_gain(sensor_xyz: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """[C, S] gains 1/r² from fixed source points to sensor positions (metres), unit-norm columns."""
    r2 = ((sensor_xyz[:, None, :] - sources[None]) ** 2).sum(-1)
    gain = 1.0 / np.maximum(r2, 1e-4)
    return gain / np.linalg.norm(gain, axis=0, keepdims=True)


def _oracle(trials: list[tuple[np.ndarray, np.ndarray, int]], envelopes: np.ndarray, amplitude: float, rng,
            k: int = 10) -> dict:
    """Template-matching accuracy: 10-way top-1 and top-1 among all stimuli."""
    ident, kway = [], []
    s_all = len(envelopes)
    for x, gain, truth in trials:
        templates = amplitude * np.einsum("cs,nst->nct", gain, envelopes[:, :, : x.shape[1]])
        scores = np.einsum("ct,nct->n", x, templates) - 0.5 * (templates**2).sum((1, 2))
        ident.append(scores.argmax() == truth)
        others = rng.permutation(np.delete(np.arange(s_all), truth))[: k - 1]
        kway.append(scores[truth] > scores[others].max())
    return {"identification_top1": float(np.mean(ident)), "identification_chance": 1 / s_all,
            f"{k}_way_top1": float(np.mean(kway)), f"{k}_way_chance": 1 / k}


def synthesize_speech_set(background: str | Path, out: str | Path, *, n_stimuli: int = 40, repeats: int = 6,
                          amplitude: float = 1.0, n_sources: int = 8, min_channels: int = 16, seed: int = 0,
                          overwrite: bool = False) -> dict:
    """Write the synthetic speech set (module docstring) to ``out``; returns ground_truth.json's content.

    An existing ``out`` is replaced only with ``overwrite``.
    """
    out = check_output(out, {"--background": background}, overwrite=overwrite)
    index = ShardIndex(background)
    candidates = [i for i in range(len(index)) if index.modality_of[i] == "eeg"]
    metas = {i: index[i] for i in candidates}
    backgrounds = [i for i in candidates if metas[i]["signal"].shape[0] >= min_channels
                   and metas[i]["meta"].get("n_valid_samples", 0) == metas[i]["meta"]["window_samples"]]
    if len(backgrounds) < 2:
        raise NeuroFMError(f"{background} has fewer than 2 full EEG windows with ≥ {min_channels} channels to use as background.")
    with replaced_folder(out) as work:
        (work / "audio").mkdir()
        rng = np.random.default_rng(seed)
        embedder = SpeechEmbedder("log-mel", None)
        first = metas[backgrounds[0]]["meta"]
        sfreq, window = float(first["sfreq"]), int(first["window_samples"])
        onset = int(ONSET_SECONDS * sfreq)
        envelopes = np.zeros((n_stimuli, n_sources, window))
        names = []
        for s in range(n_stimuli):
            audio = utterance(rng)
            name = f"stim-{s:03d}.wav"
            wavfile.write(work / "audio" / name, SAMPLE_RATE, audio)
            env = band_envelopes(embedder.log_mel(audio), n_sources, int(sfreq))  # 1 s of audio → 1 s of signal
            envelopes[s, :, onset : onset + env.shape[1]] = env[:, : window - onset]
            names.append(name)
        sources = rng.normal(0, 0.03, (n_sources, 3)) + np.array([0, 0, 0.04])  # inside a ~9 cm head, above its centre
        manifest = {"format_version": FORMAT_VERSION, "kind": "signal", "complete": False, "shards": [], "recordings": [],
                    "settings_hash": f"synthetic-speech-{seed}", "settings": {"synthetic_speech": True},
                    "sensor_features": index.manifest["sensor_features"], "skipped": []}
        (work / "shards").mkdir()
        writer = ShardWriter(work / "shards", 256, manifest)
        trials = []
        order = rng.permutation(np.repeat(np.arange(n_stimuli), repeats))
        for trial, s in enumerate(order):
            sample = metas[backgrounds[trial % len(backgrounds)]]
            sensors = sample["sensors"]
            gain = forward_gain(sensors[:, :3], sources)
            signal = (sample["signal"] + amplitude * gain @ envelopes[s]).astype(np.float32)
            meta = {**sample["meta"], "dataset": "synthetic_speech", "source": f"synthetic_speech/{sample['meta']['source']}",
                    "events": [{"onset": ONSET_SECONDS, "duration": 1.0, "label": names[s]}],
                    "labels": {"stimulus": names[s], "synthetic": True, "amplitude": amplitude}}
            writer.write(f"speech_{trial:05d}", {"signal.npy": encode_npy(signal), "sensors.npy": encode_npy(sensors),
                                                 "meta.json": json.dumps(meta).encode()})
            trials.append((sample["signal"] + amplitude * gain @ envelopes[s], gain, int(s)))
        writer.close_shard()
        manifest["recordings"] = [{"source": "synthetic_speech", "dataset": "synthetic_speech", "modality": "eeg",
                                   "first_sample": 0, "n_windows": len(order)}]
        manifest["complete"] = True
        write_json_atomic(work / "shards" / "manifest.json", manifest)
        truth = {"stimuli": n_stimuli, "repeats": repeats, "amplitude": amplitude, "n_sources": n_sources, "seed": seed,
                 "background": str(background), "background_windows": len(backgrounds), "onset_seconds": ONSET_SECONDS,
                 "oracle": _oracle(trials, envelopes, amplitude, rng)}
        write_json_atomic(work / "ground_truth.json", truth)
    return truth


__all__ = ["synthesize_speech_set", "utterance"]
