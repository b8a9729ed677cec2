"""Reconstruction losses and metrics, over real channels and valid (unpadded) samples only.

Inputs: ``target`` and ``reconstruction`` [B, C, T], ``channel_mask`` [B, C] (True = real channel)
and ``time_mask`` [B, T] (True where a sample is real, False in a short window's zero padding).
Padded channels are dropped before any arithmetic, so they add neither loss nor gradient.
"""

from __future__ import annotations

import torch
from einops import rearrange, reduce

from neurofm.tokenizers.config import LossConfig

#: Frequencies (Hz, inclusive, 1-Hz bins) of the window spectrum the spectrum read-out predicts.
SPECTRUM_BAND_HZ = (1, 45)


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


def band_log_spectrum(signal: torch.Tensor, channel_mask: torch.Tensor, time_mask: torch.Tensor, sfreq: float) -> torch.Tensor:
    """Each window's log10 power in 1-Hz bins over :data:`SPECTRUM_BAND_HZ`, averaged over its real
    channels (power first, then the log) and centred over the bins (the spectrum's shape, not its
    level), [B, F]. Welch: 1-s Hann segments, half overlapping, those inside the window's valid samples
    only (a window shorter than 1 s: its one zero-padded segment). ``signal`` [B, C, T] at ``sfreq`` Hz."""
    n_fft, hop = int(round(sfreq)), int(round(sfreq)) // 2
    x, valid = signal * time_mask[:, None, :], time_mask.float()
    if x.shape[-1] < n_fft:
        x, valid = (torch.nn.functional.pad(v, (0, n_fft - v.shape[-1])) for v in (x, valid))
    b, c, t = x.shape
    frames = torch.stft(x.reshape(b * c, t).float(), n_fft=n_fft, hop_length=hop, window=torch.hann_window(n_fft, device=x.device),
                        center=False, return_complex=True)  # [B·C, n_fft/2 + 1, segments]
    inside = valid.unfold(-1, n_fft, hop).amin(-1)  # [B, segments]: 1 where a segment holds only valid samples
    inside[:, 0] = torch.where(inside.sum(-1) > 0, inside[:, 0], torch.ones_like(inside[:, 0]))
    low, high = SPECTRUM_BAND_HZ
    power = rearrange(frames.abs().pow(2)[:, round(low * n_fft / sfreq): round(high * n_fft / sfreq) + 1], "(b c) f s -> b c f s", b=b)
    power = (power * inside[:, None, None]).sum(-1) / inside.sum(-1)[:, None, None]  # [B, C, F]
    weights = channel_mask.float()[..., None]
    spectrum = torch.log10((power * weights).sum(1) / weights.sum(1).clamp(min=1) + 1e-12)
    return spectrum - spectrum.mean(-1, keepdim=True)


def spectrum_readout_loss(prediction: torch.Tensor, signal, channel_mask, time_mask, sfreq: float) -> torch.Tensor:
    """Mean squared error (decades²) between the spectrum read-out ``prediction`` [B, F] and the windows'
    centred log spectra (:func:`band_log_spectrum`)."""
    return (prediction - band_log_spectrum(signal, channel_mask, time_mask, sfreq)).pow(2).mean()
