"""Tokenizer reconstruction beside a same-bitrate PCA codec, per modality.

The baseline: a rank-r SVD of each window (its own PCA), the spatial maps U (C × r) and the component
time courses (decimated to T' samples) both uniformly quantized to b bits, every transmitted number
counted: bits = r · (C + T') · b + 32 · r. For each modality the best (r, T', b) whose bits fit the
tokenizer's bits per window is chosen on the evaluated windows themselves (an oracle choice, in the
baseline's favour). Metrics: mean channel PCC and pooled R² over valid samples, and the log-spectrum
error of the tokenizer (:func:`neurofm.tokenizers.evaluate.window_metrics`).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import signal as sps

from neurofm.bench.embeddings import device_of
from neurofm.data_shards.dataset import ShardIndex
from neurofm.tokenizers.checkpoint import load_tokenizer
from neurofm.data_shards.batches import ordered_batches

#: (rank, decimation factor T/T', bits) searched for the PCA codec.
PCA_GRID = tuple(itertools.product((1, 2, 3, 4, 6, 8), (1, 2, 4, 8, 16), (3, 4, 6, 8)))


def quantize(x: np.ndarray, bits: int) -> np.ndarray:
    """Uniform quantization of x to 2^bits levels over [-max|x|, max|x|] (the scale costs 32 bits)."""
    scale = np.abs(x).max() + 1e-12
    levels = 2**bits - 1
    return np.round((x / scale + 1) / 2 * levels) / levels * 2 * scale - scale


def pca_codec(window: np.ndarray, rank: int, t_prime: int, bits: int, svd: tuple | None = None) -> np.ndarray:
    """Rank-r SVD of a window [C, T]; quantized maps and decimated, quantized time courses → [C, T].
    ``svd``: the window's ``np.linalg.svd(window, full_matrices=False)`` if already computed."""
    c, t = window.shape
    u, s, vt = np.linalg.svd(window, full_matrices=False) if svd is None else svd
    rank = min(rank, len(s))
    maps = quantize(u[:, :rank], bits)
    courses = s[:rank, None] * vt[:rank]  # [r, T]
    low = sps.resample(courses, t_prime, axis=1) if t_prime < t else courses
    courses = quantize(low, bits)
    courses = sps.resample(courses, t, axis=1) if t_prime < t else courses
    return maps @ courses


def pcc_sse_sst(original: np.ndarray, reconstruction: np.ndarray) -> tuple[float, int, float, float]:
    """Sum of channel PCCs, channel count, residual and total sums of squares of one window [C, T]."""
    o = original - original.mean(1, keepdims=True)
    r = reconstruction - reconstruction.mean(1, keepdims=True)
    denom = np.sqrt((o**2).sum(1) * (r**2).sum(1))
    pcc = np.where(denom > 0, (o * r).sum(1) / np.maximum(denom, 1e-12), 0.0)
    return float(pcc.sum()), len(pcc), float(((original - reconstruction) ** 2).sum()), float((o**2).sum())


def best_pca(items: list[np.ndarray], budget_bits) -> dict | None:
    """The best PCA codec (by PCC) whose bits per window fit ``budget_bits`` (one budget for all windows
    [C, T], or one per window), over windows [C, T]."""
    from threadpoolctl import threadpool_limits

    best = None
    with threadpool_limits(limits=1, user_api="blas"):  # small SVDs: BLAS threads only contend (100× slower beside a busy process)
        svds = [np.linalg.svd(window, full_matrices=False) for window in items]  # one per window, not per setting
    for rank, frac, bits in PCA_GRID:
        total = np.zeros(4)
        for window, svd, budget in zip(items, svds, np.broadcast_to(budget_bits, len(items))):
            c, t = window.shape
            t_prime = max(2, t // frac)
            if rank * (c + t_prime) * bits + 32 * rank > budget:
                break
            total += pcc_sse_sst(window, pca_codec(window, rank, t_prime, bits, svd))
        else:
            if total[1] and (best is None or total[0] / total[1] > best["pcc"]):
                best = {"pcc": total[0] / total[1], "r2": 1 - total[2] / total[3], "rank": rank, "decimation": frac, "bits": bits}
    return best


def spread_rows(index: ShardIndex, max_windows: int) -> np.ndarray:
    """Up to ``max_windows`` sample indices per modality, spread evenly over that modality's windows (so a
    modality with few windows, such as fMRI, is not crowded out by one with many)."""
    rows = []
    for modality in sorted(set(index.modality_of)):
        windows = np.flatnonzero(index.modality_of == modality)
        rows.append(windows[np.unique(np.linspace(0, len(windows) - 1, min(max_windows, len(windows))).astype(int))])
    return np.sort(np.concatenate(rows)) if rows else np.zeros(0, dtype=int)


def tokenizer_vs_pca(checkpoint: str | Path, shards: str | Path, out: str | Path, max_windows: int = 400, indices=None) -> dict:
    """Per modality: the tokenizer's PCC, R² and spectral error on (up to ``max_windows`` per modality)
    windows of ``shards`` — or on the sample ``indices`` given — beside the best same-bitrate PCA codec."""
    from neurofm.tokenizers.evaluate import evaluate_tokenizer

    model = load_tokenizer(checkpoint)
    index = ShardIndex(shards)
    rows = spread_rows(index, max_windows) if indices is None else np.asarray(indices)
    metrics = evaluate_tokenizer(checkpoint, shards, out, indices=rows)
    windows, devices = defaultdict(list), defaultdict(set)
    for batch in ordered_batches(index, rows, 32):
        for i, meta in enumerate(batch.metas):
            devices[meta["modality"]].add(device_of(meta))
            c, t = int(batch.channel_mask[i].sum()), int(batch.time_mask[i].sum())
            windows[meta["modality"]].append((batch.signal[i, :c, :t].numpy().astype(np.float64), batch.signal.shape[2] / meta["sfreq"]))
    result = {}
    for modality, items in sorted(windows.items()):
        family = "bold" if modality == "fmri" else "electro"
        budgets = [model.cfg.bits_per_second(family, len(w)) * seconds for w, seconds in items]
        tok = metrics["modalities"][modality]
        result[modality] = {"tokenizer": {k: tok[k] for k in ("pcc", "r2", "spectral_error", "windows")},
                            "bits_per_second": tok["bits_per_second"], "pca": best_pca([w for w, _ in items], budgets),
                            "devices": sorted(devices[modality])}
    return result


__all__ = ["best_pca", "pca_codec", "quantize", "spread_rows", "tokenizer_vs_pca"]
