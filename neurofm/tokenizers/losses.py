"""Reconstruction losses and metrics, over real channels and valid (unpadded) samples only.

Inputs: ``target`` and ``reconstruction`` [B, C, T], ``channel_mask`` [B, C] (True = real channel)
and ``time_mask`` [B, T] (True where a sample is real, False in a short window's zero padding).
Padded channels are dropped before any arithmetic, so they add neither loss nor gradient.
"""

from __future__ import annotations

import torch
from einops import reduce

from neurofm.tokenizers.config import LossConfig


def real_channels(target, reconstruction, channel_mask, time_mask):
    """Flatten to the real channels: target, reconstruction [N, T] and their time weights [N, T]."""
    weights = time_mask[:, None, :].expand_as(channel_mask[:, :, None].expand(-1, -1, time_mask.shape[1]))
    return target[channel_mask], reconstruction[channel_mask], weights[channel_mask].float()


def correlation(target: torch.Tensor, reconstruction: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each row over its weighted samples, [N]."""
    n = weights.sum(-1, keepdim=True).clamp(min=1)
    dt = (target - (target * weights).sum(-1, keepdim=True) / n) * weights
    dr = (reconstruction - (reconstruction * weights).sum(-1, keepdim=True) / n) * weights
    return (dt * dr).sum(-1) / ((dt.pow(2).sum(-1) * dr.pow(2).sum(-1)).clamp_min(1e-12).sqrt())


def log_spectrum(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """log(1 + |rFFT|) of each row with padding zeroed, [N, F]."""
    spectrum = torch.fft.rfft(x * weights, dim=-1)
    return torch.log1p((spectrum.real.pow(2) + spectrum.imag.pow(2) + 1e-12).sqrt())


def block_means(x: torch.Tensor, weights: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Means of consecutive ``k``-sample blocks of each row over its weighted samples, [N, T // k], and
    the blocks' weights (the samples they hold); a last partial block is dropped."""
    k = min(k, x.shape[-1])
    n = x.shape[-1] // k * k
    sums = reduce(x[..., :n] * weights[..., :n], "rows (blocks k) -> rows blocks", "sum", k=k)
    counts = reduce(weights[..., :n], "rows (blocks k) -> rows blocks", "sum", k=k)
    return sums / counts.clamp(min=1), counts


def reconstruction_loss(target, reconstruction, channel_mask, time_mask, weights: LossConfig, share=None) -> dict[str, torch.Tensor]:
    """Time L1 and MSE, 1 − correlation, log-spectrum L1 (and, weighted, the slow waveform's L1),
    averaged over real channels.

    ``share(samples, channels)``, under data parallelism: turns this rank's count of weighted samples
    and of channel rows into its share of the global batch's (times the number of ranks), so that the
    ranks' averaged gradients are the gradients of the global batch's means. The returned terms are
    then this rank's contributions (sum them over ranks and divide by the ranks for the global value).
    """
    t, r, w = real_channels(target, reconstruction, channel_mask, time_mask)
    sample_share, channel_share = share(w.sum(), float(len(t))) if share is not None else (1.0, 1.0)
    l1 = ((r - t).abs() * w).sum() / w.sum().clamp(min=1) * sample_share
    mse = ((r - t).pow(2) * w).sum() / w.sum().clamp(min=1) * sample_share
    corr = correlation(t, r, w).mean() * channel_share
    spectrum = (log_spectrum(r, w) - log_spectrum(t, w)).abs().mean() * channel_share
    total = weights.time_l1 * l1 + weights.time_mse * mse + weights.correlation * (channel_share - corr) + weights.spectrum * spectrum
    terms = {"time_l1": l1, "time_mse": mse, "correlation": corr, "spectrum_l1": spectrum}
    if weights.slow:
        (slow_t, counts), (slow_r, _) = block_means(t, w, weights.slow_samples), block_means(r, w, weights.slow_samples)
        terms["slow_l1"] = ((slow_r - slow_t).abs() * counts).sum() / counts.sum().clamp(min=1) * sample_share
        total = total + weights.slow * terms["slow_l1"]
    return {"total": total, **terms}


def view_losses(latents, view_reconstruction, signal, channel_mask, time_mask, views, weights: LossConfig) -> dict[str, torch.Tensor]:
    """Losses between views of one scene (rows a, b of ``views`` [M, 2] record the same sources on two
    devices; :mod:`neurofm.tokenizers.views`):

    - ``view_consistency``: the squared distance between the two views' latents (before quantization,
      [B, P, K, D]) over the latents' variance across the batch's windows — 0 for identical latents, about
      2 for unrelated windows, whatever the latents' scale and offset;
    - ``view_reconstruction``: the reconstruction loss (:func:`reconstruction_loss`'s total) of row b's
      signal from row a's latents decoded on row b's sensors (``view_reconstruction`` [M, C, T]).
    """
    a, b = views[:, 0], views[:, 1]
    spread = latents.var(dim=0).mean().clamp_min(1e-8)
    consistency = (latents[a] - latents[b]).pow(2).mean() / spread
    cross = reconstruction_loss(signal[b], view_reconstruction, channel_mask[b], time_mask[b], weights)["total"]
    return {"view_consistency": consistency, "view_reconstruction": cross}
