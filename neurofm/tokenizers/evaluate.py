"""``evaluate_tokenizer``: reconstruction quality of a checkpoint on held-out windows.

Metrics per modality and per recording, over real channels and valid samples:

- ``pcc``: mean Pearson correlation between each channel's original and reconstruction;
- ``r2``: 1 − residual sum of squares / total sum of squares (all channels pooled);
- ``spectral_error``: mean |log10 PSD(reconstruction) − log10 PSD(original)| over 1–45 Hz (fMRI: all
  frequencies), in decades (Welch PSD per channel);
- ``bits_per_second``: bitrate of the codes of one window (with channel tokens, at the windows' mean
  channel count);
- code ``usage`` (fraction of each level's codebook used) and ``perplexity`` per level.

Also writes one PNG per modality with a few channels of one window, original against reconstruction.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from scipy import signal as sps

from neurofm.data_shards.dataset import ShardIndex
from neurofm.devices import resolve_device
from neurofm.distributed import barrier, map_batches, process_group
from neurofm.tokenizers.checkpoint import load_tokenizer, read_config
from neurofm.data_shards.batches import require_signal, split_indices
from neurofm.tokenizers.usage import check_shards_fit, code_usage, count_codes
from neurofm.outputs import output_folder, refuse_file


def window_metrics(original: np.ndarray, reconstruction: np.ndarray, fs: float, family: str) -> dict:
    """Metrics of one window, both [C, T] (valid samples only)."""
    o = original - original.mean(axis=1, keepdims=True)
    r = reconstruction - reconstruction.mean(axis=1, keepdims=True)
    denom = np.sqrt((o**2).sum(1) * (r**2).sum(1))
    pcc = np.where(denom > 0, (o * r).sum(1) / np.maximum(denom, 1e-12), 0.0)
    sse, sst = float(((original - reconstruction) ** 2).sum()), float(((original - original.mean(1, keepdims=True)) ** 2).sum())
    nperseg = min(original.shape[1], 128 if family == "electro" else original.shape[1])
    freqs, p_o = sps.welch(original, fs=fs, nperseg=nperseg, axis=1)
    _, p_r = sps.welch(reconstruction, fs=fs, nperseg=nperseg, axis=1)
    band = (freqs >= 1) & (freqs <= 45) if family == "electro" else freqs > 0
    spectral = np.abs(np.log10(p_r[:, band] + 1e-12) - np.log10(p_o[:, band] + 1e-12)).mean() if band.any() else np.nan
    return {"pcc_sum": float(pcc.sum()), "channels": len(pcc), "sse": sse, "sst": sst, "spectral_sum": float(spectral) * len(pcc)}


def _finish(acc: dict) -> dict:
    return {
        "pcc": acc["pcc_sum"] / max(acc["channels"], 1),
        "r2": 1 - acc["sse"] / acc["sst"] if acc["sst"] > 0 else float("nan"),
        "spectral_error": acc["spectral_sum"] / max(acc["channels"], 1),
        "windows": acc["windows"],
    }


def evaluate_tokenizer(checkpoint: str | Path, shards: str | Path, out: str | Path, *, batch_size: int = 16, max_windows: int | None = None,
                       plot: bool = True, indices=None, device: str = "auto") -> dict:
    """Evaluate ``checkpoint`` on the held-out windows of ``shards`` (or on the windows ``indices``,
    e.g. of recordings it never trained on) on ``device``; write ``metrics.json`` and PNGs to ``out``.
    Under ``torchrun`` each process evaluates every world-th batch; rank 0 sums them in order (the
    metrics of one process) and writes; other ranks return ``{}``."""
    torch_device = resolve_device(device)
    model = load_tokenizer(checkpoint).to(torch_device)
    config = read_config(checkpoint)
    eval_fraction = config.get("training", {}).get("eval_fraction", 0.2)
    index = ShardIndex(shards)
    require_signal(index)
    check_shards_fit(index, model.cfg)
    held_out = np.asarray(indices) if indices is not None else split_indices(index, eval_fraction)[1]
    if max_windows is not None:
        held_out = held_out[:max_windows]
    out = refuse_file(out, "--out")
    seen: set[str] = set()

    @torch.no_grad()
    def evaluate(batch):
        result = model(*(t.to(torch_device) for t in (batch.signal, batch.sensors, batch.channel_mask)), batch.family)
        codes, reconstruction = result["codes"].cpu().numpy(), result["reconstruction"].cpu()
        windows, examples = [], {}
        for i, meta in enumerate(batch.metas):
            c, t = int(batch.channel_mask[i].sum()), int(batch.time_mask[i].sum())
            original, rebuilt = batch.signal[i, :c, :t].numpy(), reconstruction[i, :c, :t].numpy()
            windows.append((meta, window_metrics(original, rebuilt, meta["sfreq"], batch.family)))
            if meta["modality"] not in seen:  # this process's first window of a modality: a plot candidate
                seen.add(meta["modality"])
                examples[meta["modality"]] = (original, rebuilt, meta)
        return codes, windows, examples

    results = map_batches(index, held_out, batch_size, evaluate)
    world = process_group()[1]
    if results is None:  # ranks other than 0: rank 0 writes
        barrier(world)
        return {}
    blank = lambda: {"pcc_sum": 0.0, "channels": 0, "sse": 0.0, "sst": 0.0, "spectral_sum": 0.0, "windows": 0}  # noqa: E731
    by_modality, by_recording = defaultdict(blank), defaultdict(blank)
    counts = np.zeros((model.cfg.levels, model.cfg.codes_per_level), dtype=np.int64)
    examples: dict[str, tuple] = {}
    for codes, windows, candidates in results:  # in plan order: the sums of one process
        count_codes(counts, codes)
        for meta, m in windows:
            for acc in (by_modality[meta["modality"]], by_recording[meta["source"]]):
                for key, value in m.items():
                    acc[key] += value
                acc["windows"] += 1
        for modality, example in candidates.items():
            examples.setdefault(modality, example)
    bits = {m: model.cfg.bits_per_second("bold" if m == "fmri" else "electro", acc["channels"] / max(acc["windows"], 1))
            for m, acc in by_modality.items()}
    metrics = {
        "checkpoint": str(checkpoint),
        "shards": str(shards),
        "held_out_windows": int(len(held_out)),
        "modalities": {m: {**_finish(acc), "bits_per_second": bits[m]} for m, acc in sorted(by_modality.items())},
        "recordings": {r: _finish(acc) for r, acc in sorted(by_recording.items())},
        "codes": code_usage(counts),
    }
    output_folder(out, "--out")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    if plot:
        for modality, (original, reconstruction, meta) in examples.items():
            plot_reconstruction(original, reconstruction, meta, out / f"reconstruction_{modality}.png")
    barrier(world)
    return metrics


def plot_reconstruction(original: np.ndarray, reconstruction: np.ndarray, meta: dict, path: Path, n_channels: int = 4) -> None:
    """Original (black) against reconstruction (red) for a few channels of one window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks = np.linspace(0, original.shape[0] - 1, min(n_channels, original.shape[0])).astype(int)
    t = np.arange(original.shape[1]) / meta["sfreq"]
    fig, axes = plt.subplots(len(picks), 1, figsize=(8, 1.6 * len(picks)), sharex=True, squeeze=False)
    for ax, ch in zip(axes[:, 0], picks):
        ax.plot(t, original[ch], color="black", lw=0.8, label="original")
        ax.plot(t, reconstruction[ch], color="tab:red", lw=0.8, label="reconstruction")
        ax.set_ylabel(meta["channels"][ch], rotation=0, ha="right", fontsize=8)
    axes[0, 0].legend(loc="upper right", fontsize=7)
    axes[0, 0].set_title(f"{meta['modality']}: {meta['source']} (robust-scaled units)", fontsize=9)
    axes[-1, 0].set_xlabel("time in window (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
