"""Masking strategies over a window's (time patch × latent) code tokens.

Every window of a batch masks exactly ``round(ratio · count)`` of the units the strategy works on,
so the asymmetric model can gather visible tokens densely. All randomness comes from the generator
passed in (its state is saved with each checkpoint).
"""

from __future__ import annotations

import torch


def masked_tokens(patches: int, latents: int, ratio: float, strategy: str) -> int:
    """Tokens :func:`make_mask` masks per window (known without looking at the mask: no device sync)."""
    units = {"random": patches * latents, "time": patches, "latent": latents}.get(strategy)
    if units is None:
        raise ValueError(f"unknown masking strategy {strategy!r}")
    n_units = min(units - 1, max(1, round(ratio * units)))
    return n_units * {"random": 1, "time": latents, "latent": patches}[strategy]


def make_mask(batch: int, patches: int, latents: int, ratio: float, strategy: str, generator: torch.Generator) -> torch.Tensor:
    """Boolean mask [B, P, K], True = masked.

    - ``random``: round(ratio·P·K) tokens per window;
    - ``time``: round(ratio·P) whole time patches (all their latents);
    - ``latent``: round(ratio·K) whole latents (across every patch).
    """
    if strategy == "random":
        units, shape = patches * latents, (batch, patches, latents)
    elif strategy == "time":
        units, shape = patches, (batch, patches, 1)
    elif strategy == "latent":
        units, shape = latents, (batch, 1, latents)
    else:
        raise ValueError(f"unknown masking strategy {strategy!r}")
    n_masked = min(units - 1, max(1, round(ratio * units)))
    scores = torch.rand(batch, units, generator=generator)
    ranks = scores.argsort(dim=1).argsort(dim=1)
    mask = (ranks < n_masked).reshape(shape)
    return mask.expand(batch, patches, latents).contiguous()
