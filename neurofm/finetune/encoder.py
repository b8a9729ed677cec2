"""``BrainEncoder``: a release as a feature extractor for raw windows of any montage.

Windows are tokenized on the fly by the release's bundled tokenizer (always frozen, in eval mode: its
codes are discrete, and training mode would move its codebooks); the masked-code encoder then runs
with nothing masked. ``forward`` gives one layer's token states with gradients (for finetuning);
``layer_embeddings`` gives every layer's pooled embedding without them (for probing).

Token order: time patch major, latent minor (N = P · K tokens), as in pretraining.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from torch import nn

from neurofm.errors import NeuroFMError
from neurofm.finetune.config import EVENT_SPAN_SECONDS, TOKEN_POOLINGS
from neurofm.data_shards.modalities import MODALITY_IDS
from neurofm.pretrain.export import from_pretrained
from neurofm.pretrain.model import MaskedCodeModel, encoder_hidden_states
from neurofm.tokenizers.checkpoint import load_tokenizer


class BrainEncoder(nn.Module):
    """Tokenizer + encoder of a release directory (see :meth:`from_pretrained`)."""

    def __init__(self, tokenizer, model: MaskedCodeModel):
        super().__init__()
        cfg = model.cfg
        if ((tokenizer.cfg.n_latents, tokenizer.cfg.levels, tokenizer.cfg.codes_per_level) != (cfg.n_latents, cfg.levels, cfg.codes_per_level)
                or set(tokenizer.cfg.channel_token_families) != set(cfg.channel_tokens)):
            raise NeuroFMError("The release's tokenizer does not match its model (latents, levels, codebook or channel tokens differ).")
        self.tokenizer = tokenizer.eval().requires_grad_(False)
        self.model = model.eval()

    @classmethod
    def from_pretrained(cls, release: str | Path) -> BrainEncoder:
        release = Path(release)
        if not (release / "tokenizer" / "model.safetensors").is_file():
            raise NeuroFMError(f"{release} has no tokenizer/ directory; export the release with `neurofm export`.")
        return cls(load_tokenizer(release / "tokenizer"), from_pretrained(release))

    def train(self, mode: bool = True) -> BrainEncoder:
        super().train(mode)
        self.tokenizer.eval()
        return self

    @property
    def channel_tokens(self) -> tuple[str, ...]:
        """The tokenizer families whose windows get one token per channel (see ``bold_tokens``)."""
        return tuple(self.model.cfg.channel_tokens)

    @property
    def n_layers(self) -> int:
        """Embeddings per window: the input embedding and every block's output."""
        return self.model.cfg.n_layers + 1

    @property
    def d_model(self) -> int:
        return self.model.cfg.d_model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def codes(self, signal, sensors, channel_mask, family: str) -> torch.Tensor:
        """signal [B, C, T], sensors [B, C, 12], channel_mask [B, C] → codes [B, P, K, L] (long), on
        the encoder's device (inputs are moved there). With channel tokens (K = C) the windows must not be
        padded: the model has no padding mask, so a padded channel's token would enter every embedding."""
        return self._quantize(signal, sensors, channel_mask, family)[1]

    def _quantize(self, signal, sensors, channel_mask, family: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantized latents [B, P, K, D_tok] and codes [B, P, K, L] of the windows, on the encoder's device."""
        if self.tokenizer.cfg.channel_tokens(family) and not bool(channel_mask.all()):
            raise NeuroFMError(f"A batch of {family} windows with different channel counts: this release gives them one token per "
                               "channel, so batch windows of one channel count (one parcellation) together.")
        inputs = (t.to(self.device) for t in (signal, sensors, channel_mask))
        return self.tokenizer.quantize(self.tokenizer.encode(*inputs, family))[:2]

    def valid_tokens(self, codes: torch.Tensor, n_valid_samples: torch.Tensor, window_samples: int) -> torch.Tensor:
        """Tokens whose time patch holds recorded signal (not zero padding): [B, N] bool."""
        p, k = codes.shape[1], codes.shape[2]
        patch = window_samples / p
        valid_patches = torch.ceil(n_valid_samples.float().to(codes.device) / patch).clamp(1, p)
        return rearrange((torch.arange(p, device=codes.device)[None] < valid_patches[:, None])[..., None].expand(-1, -1, k), "b p k -> b (p k)")

    def hidden_states(self, codes: torch.Tensor, modality: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        """[input, block 1, …] token states [B, N, D] up to layer ``upto`` (default: all; the last
        layer, ``n_layers − 1``, is the final normed output)."""
        return encoder_hidden_states(self.model, codes, modality, upto)

    def forward(self, codes: torch.Tensor, modality: torch.Tensor, layer: int = -1) -> torch.Tensor:
        """codes [B, P, K, L], modality [B] → token states of ``layer`` [B, N, D] (−1: the last)."""
        layer = layer % self.n_layers
        return self.hidden_states(codes, modality, layer)[layer]

    @staticmethod
    def modality_ids(modalities: list[str]) -> torch.Tensor:
        return torch.tensor([MODALITY_IDS[m] for m in modalities])

    @torch.no_grad()
    def layer_embeddings(self, signal, sensors, channel_mask, family: str, modalities: list[str],
                         n_valid_samples: torch.Tensor | None = None, pooling: str = "mean",
                         anchors: list[float | None] | None = None, event_span: float = EVENT_SPAN_SECONDS) -> torch.Tensor:
        """signal [B, C, T], sensors [B, C, 12], channel_mask [B, C] → embeddings [layers, B, F] of every
        layer, pooled over the tokens that hold signal (``n_valid_samples`` [B]; default: all) — see
        :func:`pool_tokens` for ``pooling`` and F; ``anchors``: each window's event in seconds from its
        start (:func:`neurofm.data_shards.windows.event_onset`), for ``event`` pooling, which keeps the patches
        of ``event_span`` seconds after it (:func:`event_patches`). Runs on the encoder's device; returned on the CPU."""
        codes = self.codes(signal, sensors, channel_mask, family)
        pool = self._pooler(codes, signal.shape[2], family, n_valid_samples, pooling, anchors, event_span)
        states = self.hidden_states(codes, self.modality_ids(modalities).to(self.device))
        return torch.stack([pool(h) for h in states]).cpu()

    @torch.no_grad()
    def tokenizer_embeddings(self, signal, sensors, channel_mask, family: str, n_valid_samples: torch.Tensor | None = None,
                             pooling: str = "mean", anchors: list[float | None] | None = None,
                             event_span: float = EVENT_SPAN_SECONDS) -> torch.Tensor:
        """The tokenizer alone: its quantized latents [B, P, K, D_tok], pooled like ``layer_embeddings`` → [B, F]."""
        quantized, codes = self._quantize(signal, sensors, channel_mask, family)
        pool = self._pooler(codes, signal.shape[2], family, n_valid_samples, pooling, anchors, event_span)
        return pool(rearrange(quantized, "b p k d -> b (p k) d")).cpu()

    def _pooler(self, codes: torch.Tensor, window_samples: int, family: str, n_valid_samples, pooling: str, anchors,
                event_span: float = EVENT_SPAN_SECONDS):
        """states [B, N, D] → [B, F]: :func:`pool_tokens` with these windows' valid tokens and event patches."""
        n_valid = n_valid_samples if n_valid_samples is not None else torch.full((len(codes),), window_samples)
        valid = self.valid_tokens(codes, n_valid, window_samples)
        events = None
        if pooling == "event":
            if anchors is None:
                raise NeuroFMError("'event' pooling needs each window's event (anchors); pass event_onset(meta) of every window.")
            events = event_patches(anchors, self.tokenizer.cfg.patch_seconds(family), codes.shape[1], event_span).to(codes.device)
        return lambda states: pool_tokens(states, valid, pooling, codes.shape[2], events)


def resolve_pooling(pooling: str, manifest: dict, channel_tokens: tuple[str, ...] = ()) -> str:
    """``auto`` → ``event`` when every window of a shard set is locked to an event (epochs, evoked
    conditions) and of one tokenizer family; ``cov`` when every window is a continuous EEG/MEG/iEEG window
    (no event to lock to, so what a label can mean is a state — rhythms, their power and frequency — and
    ``cov`` is phase-invariant and of one size whatever the window's length or channels: the alpha frequency
    R² 0.79–0.80 against −0.04 with ``flat``; a seizure's onset, 36 windows, 0.72 against 0.83 on one release;
    benchmarks/RESULTS.md items 24 and 44);
    else ``flat`` when every window has one token count (one family and one window length, and one channel
    count for a family in ``channel_tokens``, whose windows have a token per channel); else ``mean`` (flat
    vectors of different lengths do not stack). Others as given."""
    from neurofm.data_shards.batches import modality_window
    from neurofm.data_shards.modalities import FAMILY_OF_MODALITY

    if pooling != "auto":
        return pooling
    recordings = manifest.get("recordings", [])
    families = {FAMILY_OF_MODALITY[r["modality"]] for r in recordings}
    layouts = {r.get("layout", "continuous") for r in recordings}
    if recordings and len(families) == 1 and "continuous" not in layouts:
        return "event"
    if recordings and families == {"electro"} and layouts == {"continuous"}:
        return "cov"
    windows = {(modality_window(manifest, r["modality"]), r.get("n_channels") if FAMILY_OF_MODALITY[r["modality"]] in channel_tokens else 0)
               for r in recordings}
    return "flat" if len(windows) == 1 and None not in {w for w, _ in windows} else "mean"


def event_patches(anchors: list[float | None], patch_seconds: float, n_patches: int,
                  span_seconds: float = EVENT_SPAN_SECONDS) -> torch.Tensor:
    """[B, M] indices of the time patches that overlap [anchor, anchor + span) of each window, in order,
    then −1; M = ceil(span / patch) + 1, the most patches such a span can overlap, so every window gets
    one layout. A window without an event (anchor None) or whose span lies outside it gets only −1."""
    if not span_seconds > 0:
        raise NeuroFMError(f"the event span must be a positive number of seconds (--event-span); got {span_seconds}.")
    m = math.ceil(span_seconds / patch_seconds - 1e-9) + 1
    out = torch.full((len(anchors), m), -1, dtype=torch.long)
    for i, anchor in enumerate(anchors):
        if anchor is None:
            continue
        first = max(math.floor(anchor / patch_seconds + 1e-9), 0)
        stop = min(math.ceil((anchor + span_seconds) / patch_seconds - 1e-9), n_patches)
        if stop > first:
            out[i, : stop - first] = torch.arange(first, stop)
    return out


def pool_tokens(states: torch.Tensor, valid: torch.Tensor, pooling: str, n_latents: int,
                events: torch.Tensor | None = None) -> torch.Tensor:
    """states [B, N, D], valid [B, N] (tokens holding signal), ``events`` [B, M] (``event`` pooling:
    :func:`event_patches`) → [B, F].

    - ``mean``: the mean over valid tokens, F = D;
    - ``time``: the mean over the latents of each time patch, patches kept in order (padding patches
      are zeros), F = P · D — a time-resolved embedding, so an evoked response keeps its latency;
    - ``flat``: no pooling, every token in order (padding tokens are zeros), F = N · D — time-resolved
      and latent-resolved;
    - ``power``: per latent and feature, the log variance of its state over the valid patches, F = K · D —
      invariant to phase and latency, so a rhythm's frequency and power become linear features (the
      alpha-frequency R² of a release rose from −0.15 with ``flat`` to 0.60; benchmarks/RESULTS.md);
    - ``event``: every token of the M patches ``events`` names (the span after the window's event),
      in order (zeros for −1 and padding), F = M · K · D — ``flat`` without the patches far from the
      event, which only add noise dimensions to a probe (evoked condition 0.80 with ``flat``, 0.95 with
      ``event``; benchmarks/RESULTS.md);
    - ``cov``: :func:`covariance_pooling`, F = D' (D' + 1) / 2 with D' = 2 · min(D, COV_MAX_FEATURES / 2) —
      which state features vary together over the window, within a patch and from one patch to the next,
      invariant to phase and latency (the alpha-frequency R² of three releases rose from 0.52–0.58 with
      ``power`` to 0.71–0.75 with the covariance of single patches, 0.79–0.80 with patch pairs; benchmarks/RESULTS.md).
    """
    weights = valid.to(states.dtype)[..., None]
    if pooling == "flat":
        return rearrange(states * weights, "b n d -> b (n d)")
    if pooling == "mean":
        return (states * weights).sum(1) / weights.sum(1).clamp(min=1)
    if pooling == "time":
        per_patch = rearrange(states * weights, "b (p k) d -> b p k d", k=n_latents).sum(2)
        count = rearrange(weights, "b (p k) one -> b p k one", k=n_latents).sum(2).clamp(min=1)
        return rearrange(per_patch / count, "b p d -> b (p d)")
    if pooling == "event":
        if events is None:
            raise NeuroFMError("'event' pooling needs the patches of each window's event (see event_patches).")
        per_patch = rearrange(states * weights, "b (p k) d -> b p k d", k=n_latents)
        picked = per_patch[torch.arange(len(per_patch), device=per_patch.device)[:, None], events.clamp(min=0)]
        return rearrange(picked * (events >= 0)[..., None, None].to(states.dtype), "b m k d -> b (m k d)")
    if pooling == "power":
        per_patch = rearrange(states, "b (p k) d -> b p k d", k=n_latents)
        w = rearrange(weights, "b (p k) one -> b p k one", k=n_latents)
        count = w.sum(1).clamp(min=1)
        mean = (per_patch * w).sum(1) / count
        variance = (((per_patch - mean[:, None]) ** 2) * w).sum(1) / count
        return rearrange(torch.log(variance + 1e-6), "b k d -> b (k d)")
    if pooling == "cov":
        return covariance_pooling(states, valid, n_latents)
    raise NeuroFMError(f"unknown pooling '{pooling}'; use one of {', '.join(TOKEN_POOLINGS)}.")


#: ``cov`` pooling works on at most this many features — a token's state and its successor's, so at most half as
#: many state features (wider models are first projected onto a fixed orthonormal basis) — and a window's vector
#: stays at 128 · 129 / 2 = 8,256 numbers.
COV_MAX_FEATURES = 128


def covariance_pooling(states: torch.Tensor, valid: torch.Tensor, n_latents: int) -> torch.Tensor:
    """states [B, N, D], valid [B, N] → [B, F (F + 1) / 2], F = 2 · min(D, COV_MAX_FEATURES / 2): the
    time-delay covariance of a window's token states — of each latent's state in one patch stacked on its
    state in the next — over the window's valid patch pairs, each latent's mean over the patches removed
    first (so a latent's offset and the phase or latency of a rhythm do not enter), estimated with
    Ledoit–Wolf shrinkage (a window has about as many tokens as features) and mapped to the tangent space
    at the identity under the log-Euclidean metric (the matrix logarithm's upper triangle, off-diagonal
    terms × √2: a space where Euclidean distances, hence linear probes, respect the geometry of covariance
    matrices) — the covariance features of Riemannian BCI decoding (pyRiemann), taken over a release's
    token states instead of channels.

    A rhythm drives the features that describe its waveform within a patch together, so which features
    co-vary says where the window's power sits; how a patch's state relates to the next one's says how far
    the rhythm's phase advanced in between, i.e. its frequency at a finer step than a patch resolves
    (alpha peak frequency R² 0.725–0.741 → 0.791–0.800 on three releases; benchmarks/RESULTS.md item 44). This is
    the time-delay ("Hankel") covariance of pyRiemann's ``TimeDelayCovariances`` with a delay of one patch,
    built here because that estimator wraps the last patch around onto the first. Wider models
    (D > COV_MAX_FEATURES / 2) are first projected onto a fixed orthonormal basis (seeded, the same for
    every window and run). A window with fewer than two valid patches has no variation: its covariance is
    the small floor 1e-6 · I, never a NaN."""
    from pyriemann.geometry.covariance import covariances
    from pyriemann.geometry.tangentspace import tangent_space

    per_patch = rearrange(states.detach().to(torch.float64), "b (p k) d -> b p k d", k=n_latents)
    w = rearrange(valid.to(torch.float64), "b (p k) -> b p k", k=n_latents)[..., None]
    centred = (per_patch - (per_patch * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp(min=1)) * w
    width = min(states.shape[-1], COV_MAX_FEATURES // 2)
    if states.shape[-1] > width:
        basis, _ = torch.linalg.qr(torch.randn(states.shape[-1], width, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
        centred = centred @ basis.to(centred.device)
    pairs = torch.cat([centred[:, :-1], centred[:, 1:]], dim=-1)  # [B, P − 1, K, 2 · width]
    pair_valid = (w[:, :-1, :, 0] * w[:, 1:, :, 0]) > 0
    tokens = rearrange(pairs, "b p k d -> b (p k) d").cpu().numpy()
    kept = rearrange(pair_valid, "b p k -> b (p k)").cpu().numpy()
    varies = pair_valid.any(2).any(1).cpu().numpy()  # two valid patches or more
    features = 2 * width
    matrices = np.stack([covariances(x[m].T[None], estimator="lwf")[0] if v else np.zeros((features, features))
                         for x, m, v in zip(tokens, kept, varies)]) + 1e-6 * np.eye(features)
    return torch.from_numpy(tangent_space(matrices, np.eye(features), metric="logeuclid")).to(states.device, states.dtype)


__all__ = ["BrainEncoder", "covariance_pooling", "event_patches", "pool_tokens", "resolve_pooling"]
