"""The masked-code transformer: predict masked tokenizer codes from the visible ones.

Shape legend::

    B  windows      P  time patches      K  latents per patch      L  RVQ levels
    V  codes per level      N = P · K tokens per window      D  width

A token is one (patch, latent) pair. Its input is the sum of its L level embeddings (one table per
level), its latent-index embedding and its window's modality embedding; its time enters through rotary
positions (the patch index) inside attention, so every latent of a patch shares a time. A masked token
replaces its code embeddings by a learned mask embedding (it keeps latent index, modality and time:
the model is asked "what was latent k at time p?"). A window whose tokenizer family has channel tokens
(``channel_tokens``: one token per parcel) has K = C tokens per patch, and one shared channel-token
embedding stands in for the latent index. The head predicts all L levels of every masked
token; the loss is their cross-entropy. With ``latent_loss`` a second linear head also regresses each
masked token's quantized latent (the continuous vector its codes stand for), so the encoder is asked to
keep what the codes carry, not only which code is likeliest.

With ``asymmetric`` the encoder runs on the visible tokens only; a narrow decoder gets the encoder's
outputs back in place, mask embeddings elsewhere, and predicts the masked codes (MAE). Every window
of a batch masks the same number of tokens, so visible tokens gather into a dense tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from neurofm.data_shards.modalities import FAMILY_OF_MODALITY, MODALITY_IDS
from neurofm.errors import NeuroFMError
from neurofm.pretrain.config import PretrainModelConfig


def rotary(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rotate pairs of channels of x [B, H, N, Dh] by angles position · 10000^(−2i/Dh); positions [B, N]."""
    dh = x.shape[-1]
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dh, 2, device=x.device, dtype=torch.float32) / dh))
    angles = positions[:, None, :, None].float() * inv_freq  # [B, 1, N, Dh/2]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


class Block(nn.Module):
    """Pre-norm transformer block: rotary self-attention (PyTorch SDPA), then an MLP."""

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: float):
        super().__init__()
        self.n_heads = n_heads
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        hidden = int(mlp_ratio * d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_model))

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(self.norm1(x)), "b n (three h d) -> three b h n d", three=3, h=self.n_heads)
        q, k = rotary(q, positions), rotary(k, positions)
        x = x + self.proj(rearrange(F.scaled_dot_product_attention(q, k, v), "b h n d -> b n (h d)"))
        return x + self.mlp(self.norm2(x))


class Stack(nn.Module):
    """Blocks in sequence, with optional activation checkpointing."""

    def __init__(self, d_model: int, n_layers: int, n_heads: int, mlp_ratio: float, checkpointing: bool):
        super().__init__()
        self.blocks = nn.ModuleList(Block(d_model, n_heads, mlp_ratio) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.checkpointing = checkpointing

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            if self.checkpointing and self.training:
                x = checkpoint(block, x, positions, use_reentrant=False)
            else:
                x = block(x, positions)
        return self.norm(x)


class MaskedCodeModel(nn.Module):
    """See the module docstring. ``forward`` returns logits [B, N, L, V]; no training logic inside."""

    def __init__(self, cfg: PretrainModelConfig):
        super().__init__()
        if not (cfg.n_latents and cfg.levels and cfg.codes_per_level):
            raise ValueError("n_latents, levels and codes_per_level must be set (from the code shards).")
        self.cfg = cfg
        d = cfg.d_model
        self.code_embeddings = nn.ModuleList(nn.Embedding(cfg.codes_per_level, d) for _ in range(cfg.levels))
        self.latent_embedding = nn.Embedding(cfg.n_latents, d)
        if cfg.channel_tokens:  # a shared "channel token" embedding for the families with one token per channel
            self.channel_embedding = nn.Parameter(torch.randn(d) * 0.02)
            self.register_buffer("channel_modality", torch.tensor([FAMILY_OF_MODALITY[m] in cfg.channel_tokens for m in sorted(
                MODALITY_IDS, key=MODALITY_IDS.get)]), persistent=False)
        self.modality_embedding = nn.Embedding(len(MODALITY_IDS), d)
        self.mask_embedding = nn.Parameter(torch.randn(d) * 0.02)
        self.encoder = Stack(d, cfg.n_layers, cfg.n_heads, cfg.mlp_ratio, cfg.activation_checkpointing)
        if cfg.asymmetric:
            dd = cfg.decoder_d_model
            self.decoder_in = nn.Linear(d, dd)
            self.decoder_mask = nn.Parameter(torch.randn(dd) * 0.02)
            self.decoder_context = nn.Linear(d, dd)  # latent index + modality, for the mask tokens
            self.decoder = Stack(dd, cfg.decoder_layers, cfg.n_heads, cfg.mlp_ratio, cfg.activation_checkpointing)
            head_in = dd
        else:
            head_in = d
        self.head = nn.Linear(head_in, cfg.levels * cfg.codes_per_level)
        if cfg.latent_loss > 0:
            self.latent_head = nn.Linear(head_in, d)
            # targets, not weights: rebuilt from the tokenizer by set_latent_targets, never saved
            self.register_buffer("latent_tables", torch.zeros(cfg.levels, cfg.codes_per_level, d), persistent=False)

    def codebook_image(self, codebooks: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """codebooks [L, V, c] through one fixed orthonormal map into D, scaled to unit RMS over all levels
        (their relative sizes kept) → [L, V, D]: the sum of a token's level vectors is then a linear image of
        its quantized latent."""
        levels, v, c = codebooks.shape
        if (levels, v) != (self.cfg.levels, self.cfg.codes_per_level) or c > self.cfg.d_model:
            raise ValueError(f"codebooks {tuple(codebooks.shape)} do not fit {self.cfg.levels} levels × "
                             f"{self.cfg.codes_per_level} codes in d_model={self.cfg.d_model}.")
        generator = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(self.cfg.d_model, c, generator=generator))  # [D, c], orthonormal columns
        tables = codebooks.float() @ q.T  # [L, V, D]
        return tables / tables.pow(2).mean().sqrt().clamp(min=1e-12)

    @torch.no_grad()
    def init_code_embeddings(self, codebooks: torch.Tensor, seed: int = 0) -> None:
        """Level l's table ← :meth:`codebook_image` of codebooks [L, V, c] (a token's input is then a
        linear image of the tokenizer's quantized latent)."""
        tables = self.codebook_image(codebooks, seed)
        for level, table in enumerate(self.code_embeddings):
            table.weight.copy_(tables[level])

    @torch.no_grad()
    def set_latent_targets(self, codebooks: torch.Tensor, seed: int = 0) -> None:
        """The regression targets of ``latent_loss``: :meth:`codebook_image` of codebooks [L, V, c]."""
        self.latent_tables.copy_(self.codebook_image(codebooks, seed))

    def quantized_latents(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, P, K, L] → the latent-regression targets [B, N, D] (needs ``latent_loss`` > 0)."""
        flat = rearrange(codes, "b p k l -> b (p k) l")
        return sum(self.latent_tables[level][flat[..., level]] for level in range(self.cfg.levels))

    def _context(self, b: int, p: int, k: int, modality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent-index (or channel-token) + modality embedding [B, N, D] and time positions [B, N] of every
        token of windows of ``p`` patches × ``k`` tokens."""
        if p > self.cfg.max_patches:  # rotary positions would extrapolate past what the model was trained on
            raise NeuroFMError(f"A window of {p} time patches is longer than this model's max_patches={self.cfg.max_patches}; "
                               "cut the windows shorter (shards window_seconds), or pretrain with a larger model.max_patches.")
        latent_index = torch.arange(k, device=modality.device).clamp(max=self.cfg.n_latents - 1)  # channel tokens: replaced below
        latent = self.latent_embedding(latent_index).repeat(p, 1)[None]  # [1, N, D]
        if self.cfg.channel_tokens:  # per window, without a host sync: which windows' tokens are channels
            latent = torch.where(self.channel_modality[modality][:, None, None], self.channel_embedding.to(latent.dtype), latent)
        context = latent + self.modality_embedding(modality)[:, None]
        positions = torch.arange(p, device=modality.device).repeat_interleave(k)[None].expand(b, -1)
        return context, positions

    def forward(self, codes: torch.Tensor, modality: torch.Tensor, mask: torch.Tensor, n_visible: int | None = None,
                with_latents: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """codes [B, P, K, L] (long), modality [B] (long), mask [B, P, K] (True = masked) → logits [B, N, L, V];
        with ``with_latents`` (needs ``latent_loss`` > 0) also the predicted quantized latents [B, N, D].

        ``n_visible``: unmasked tokens per window, when the caller knows it (``masking.masked_tokens``);
        otherwise it is read off the mask, which costs a device sync (and a graph break when compiled).
        """
        b, p = codes.shape[:2]
        flat = rearrange(codes, "b p k l -> b (p k) l")
        masked = rearrange(mask, "b p k -> b (p k)")
        tokens = sum(table(flat[..., level]) for level, table in enumerate(self.code_embeddings))
        context, positions = self._context(b, p, codes.shape[2], modality)
        if not self.cfg.asymmetric:
            x = torch.where(masked[..., None], self.mask_embedding.to(tokens.dtype), tokens) + context
            out = self.encoder(x, positions)
        else:
            if n_visible is None:
                n_visible = int((~masked[0]).sum())
            order = torch.argsort(masked.to(torch.int8), dim=1, stable=True)  # visible tokens first
            visible = order[:, :n_visible]
            gather = lambda t: torch.gather(t, 1, visible[..., None].expand(-1, -1, t.shape[-1]))  # noqa: E731
            encoded = self.encoder(gather(tokens + context), torch.gather(positions, 1, visible))
            full = self.decoder_mask.to(encoded.dtype).expand(b, masked.shape[1], -1) + self.decoder_context(context)
            full = full.scatter(1, visible[..., None].expand(-1, -1, full.shape[-1]), self.decoder_in(encoded).to(full.dtype))
            out = self.decoder(full, positions)
        logits = rearrange(self.head(out), "b n (l v) -> b n l v", l=self.cfg.levels)
        return (logits, self.latent_head(out)) if with_latents else logits


def encoder_hidden_states(model: MaskedCodeModel, codes: torch.Tensor, modality: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
    """Encoder layer outputs for unmasked windows: [input, block 1, …, block n (normed)], each [B, N, D];
    with ``upto``, only layers 0 … upto are computed (the last one, n, is the normed output)."""
    n_blocks = len(model.encoder.blocks)
    last = n_blocks if upto is None else upto
    b, p = codes.shape[:2]
    flat = rearrange(codes, "b p k l -> b (p k) l")
    context, positions = model._context(b, p, codes.shape[2], modality)
    x = sum(table(flat[..., level]) for level, table in enumerate(model.code_embeddings)) + context
    states = [x]
    for block in model.encoder.blocks[:last]:
        x = block(x, positions)
        states.append(x)
    if last == n_blocks:
        states[-1] = model.encoder.norm(x)
    return states


def _masked_rows(values: torch.Tensor, masked: torch.Tensor, n_masked: int | None) -> torch.Tensor:
    """values [B, N, …] at the masked tokens (masked [B, N]) → [M, …], in token order. With ``n_masked``
    (the same for every window) the rows are gathered without a device sync; the result is the same."""
    if n_masked is None:
        return values[masked]
    index = torch.argsort(masked.to(torch.int8), dim=1, descending=True, stable=True)[:, :n_masked]  # masked first
    index = index.view(*index.shape, *([1] * (values.dim() - 2))).expand(-1, -1, *values.shape[2:])
    return torch.gather(values, 1, index).flatten(0, 1)


def masked_latent_loss(predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, n_masked: int | None = None) -> torch.Tensor:
    """Squared error of the predicted quantized latents at masked tokens over their mean squared value
    (the fraction of the masked latents' power left unexplained; 1 = predicting zeros).

    predicted, target [B, N, D]; mask [B, P, K].
    """
    masked = rearrange(mask, "b p k -> b (p k)")
    chosen, wanted = _masked_rows(predicted, masked, n_masked).float(), _masked_rows(target, masked, n_masked).float()
    return (chosen - wanted).pow(2).mean() / wanted.pow(2).mean().clamp(min=1e-12)


def masked_code_loss(logits: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor, n_masked: int | None = None,
                     per_window: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy over every level at masked tokens; and masked accuracy per level [L].

    logits [B, N, L, V], codes [B, P, K, L], mask [B, P, K]. With ``n_masked`` (masked tokens per
    window, the same for every window) the masked tokens are gathered without a device sync; the
    result is the same. ``per_window`` (needs ``n_masked``) gives the accuracy of each window [B, L],
    whose mean over windows is the accuracy per level.
    """
    if per_window and n_masked is None:
        raise ValueError("per_window accuracy needs n_masked (the same number of masked tokens in every window).")
    target = rearrange(codes, "b p k l -> b (p k) l")
    masked = rearrange(mask, "b p k -> b (p k)")
    chosen_logits, chosen_target = _masked_rows(logits, masked, n_masked), _masked_rows(target, masked, n_masked)  # [M, L, V], [M, L]
    loss = F.cross_entropy(chosen_logits.float().flatten(0, 1), chosen_target.flatten())
    hits = (chosen_logits.argmax(-1) == chosen_target).float()  # [M, L]
    if per_window:
        return loss, rearrange(hits, "(b m) l -> b m l", m=n_masked).mean(1)
    return loss, hits.mean(0)
