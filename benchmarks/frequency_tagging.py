"""Frequency tagging (steady-state evoked responses) through a release, beside raw features.

A steady-state visual response — the visual regions following a flicker at one of two frequencies — is
decoded from log spectra at ~0.9 balanced accuracy in real recordings; the question is whether a
release's frozen embeddings keep the frequency. This script:

1. simulates EEG recordings of subjects no release has seen (``--first-subject``; the simulator's heads,
   rhythms, blinks, noise and bad channels) on each ``--montages`` device and adds, at every trial, a
   steady-state response of the visual regions at one of ``--frequencies`` (amplitude ``--amplitude``
   A·m, 40 % of the simulator's alpha rhythm by default; a 200-ms build-up, 80-ms latency, locked to the
   flicker's onset; the onset's transient is the same for every class), written as FIF files whose
   trigger channel carries the class codes — as a stimulus PC writes them;
2. builds event-locked shards through ``inputs[].rename_events`` and ``inputs[].epochs`` (``--tmin``,
   ``--tmax``);
3. runs ``neurofm probe`` on each device for every ``--poolings`` entry (``event`` once per
   ``--event-spans`` value) and prints, per device and pooling, the release's best and last layer, the
   best random-weights layer and the raw-feature baselines — per-channel features, and the
   channel-averaged log spectrum alone (grouped CV over recordings).

Usage: python benchmarks/frequency_tagging.py --release runs/bench_win4/release --work runs/freq_tagging
       [--montages biosemi64 GSN-HydroCel-129] [--frequencies 12 15] [--event-spans 0.4 3.0]
       [--poolings event time cov]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import mne
import numpy as np

from neurofm.data_shards import build_shards
from neurofm.data_shards.config import EventEpochs, InputSpec, ShardsConfig, SimulateConfig
from neurofm.data_shards.simulate import activity
from neurofm.data_shards.simulate.recordings import SimulatedSpec, project, recording_gain, simulate_raw
from neurofm.finetune.probe import probe_release


def tagged_recording(spec: SimulatedSpec, config: SimulateConfig, frequencies: list[float], amplitude: float,
                     flicker_seconds: float, rng: np.random.Generator) -> mne.io.RawArray:
    """One simulated recording with a flicker every 4.5–5.5 s; stim channel codes 1, 2, … name its frequency."""
    raw, truth = simulate_raw(spec, config)
    gain, _, names = recording_gain(spec, config)
    visual = [names.index(r) for r in truth["condition_regions"]["visual"]]
    sfreq, n = raw.info["sfreq"], raw.n_times
    sources = np.zeros((len(names), n))
    stim = np.zeros((1, n))
    transient = activity.EVOKED * activity.evoked_waveform(sfreq)
    t = 1.0
    while t < spec.seconds - flicker_seconds - 1.5:
        code = int(rng.integers(len(frequencies))) + 1
        start = int(t * sfreq)
        tt = np.arange(int(flicker_seconds * sfreq)) / sfreq
        steady = amplitude * np.minimum(1.0, tt / 0.2) * np.sin(2 * np.pi * frequencies[code - 1] * (tt - 0.08))
        for k in visual:
            sources[k, start:start + len(tt)] += steady
            sources[k, start:start + len(transient)] += transient
        stim[0, start:start + 5] = code
        t += rng.uniform(4.5, 5.5)
    data = np.vstack([raw.get_data() + project(gain, sources), stim])
    info = mne.create_info(raw.ch_names + ["STI 014"], sfreq, raw.get_channel_types() + ["stim"])
    with info._unlock():
        info["chs"][: len(raw.ch_names)] = raw.info["chs"]
    return mne.io.RawArray(data, info, verbose="error")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--release", required=True)
    parser.add_argument("--work", default="runs/freq_tagging")
    parser.add_argument("--montages", nargs="+", default=["biosemi64", "GSN-HydroCel-129"])
    parser.add_argument("--frequencies", nargs="+", type=float, default=[12.0, 15.0])
    parser.add_argument("--amplitude", type=float, default=0.4 * activity.ALPHA, help="A·m per visual region")
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--first-subject", type=int, default=70)
    parser.add_argument("--recording-seconds", type=float, default=90.0)
    parser.add_argument("--flicker-seconds", type=float, default=3.0)
    parser.add_argument("--tmin", type=float, default=-0.5)
    parser.add_argument("--tmax", type=float, default=3.5)
    parser.add_argument("--poolings", nargs="+", default=["event", "time", "cov"])
    parser.add_argument("--event-spans", nargs="+", type=float, default=[0.4, 3.0])
    parser.add_argument("--seed", type=int, default=2001)
    args = parser.parse_args()

    work = Path(args.work)
    config = SimulateConfig(modalities=["eeg"], seed=args.seed)
    names = {f"stim/{i + 1}": f"f{f:g}" for i, f in enumerate(args.frequencies)}
    started, rows = time.time(), []
    for site, montage in enumerate(args.montages):
        recordings = work / "recordings" / montage
        recordings.mkdir(parents=True, exist_ok=True)
        for subject in range(args.first_subject, args.first_subject + args.subjects):
            path = recordings / f"sub-{subject}_raw.fif"
            if not path.exists():
                spec = SimulatedSpec("eeg", montage, site, subject, 0, args.recording_seconds, args.seed)
                raw = tagged_recording(spec, config, args.frequencies, args.amplitude, args.flicker_seconds,
                                       np.random.default_rng([args.seed, site, subject]))
                raw.save(path, verbose="error")
        shards = work / "shards" / montage
        shards_config = ShardsConfig(out=str(shards), root=str(recordings), inputs=[InputSpec(
            path="*_raw.fif", dataset=f"tagging_{montage}", rename_events=names,
            epochs=EventEpochs(events=list(names.values()), tmin=args.tmin, tmax=args.tmax))])
        shards_config.eeg.window_seconds = args.tmax - args.tmin  # epochs longer than a window are cropped to it
        build_shards(shards_config, progress=False)
        for pooling in args.poolings:
            for span in args.event_spans if pooling == "event" else [None]:
                label = f"event {span:g} s" if span is not None else pooling
                extra = {"event_span": span} if span is not None else {}
                m = probe_release(args.release, shards, work / "probes" / montage / label.replace(" ", "_"),
                                  labels=list(names.values()), pooling=pooling, device="cpu", **extra)
                scores = [r["balanced_accuracy"] for r in m["layers"]]
                rows.append({"device": montage, "pooling": label, "windows": m["windows"], "release_best": max(scores),
                             "best_layer": int(np.argmax(scores)), "release_last": scores[-1],
                             "random_best": max(r["random_weights"]["balanced_accuracy"] for r in m["layers"]),
                             "raw": m["raw_features"]["balanced_accuracy"],
                             "raw_spectrum": m["raw_spectrum"]["balanced_accuracy"]})
                print(json.dumps(rows[-1]), flush=True)
    print("\n| device | pooling | windows | release (best layer) | release (last) | random weights (best) | raw features | raw spectrum |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['device']} | {r['pooling']} | {r['windows']} | {r['release_best']:.3f} ({r['best_layer']}) | "
              f"{r['release_last']:.3f} | {r['random_best']:.3f} | {r['raw']:.3f} | {r['raw_spectrum']:.3f} |")
    summary = {"release": args.release, "machine": platform.node(), "seconds": round(time.time() - started),
               "settings": vars(args), "rows": rows}
    (work / "results.json").write_text(json.dumps(summary, indent=1))
    print(f"\n{round(time.time() - started)} s; {work / 'results.json'}")


if __name__ == "__main__":
    main()
