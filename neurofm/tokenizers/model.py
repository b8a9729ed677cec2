"""The sensor-aware tokenizer: any montage, any modality → K latent tokens per time patch → codes.

Shape legend::

    B  windows in a batch          C  channels (padded to the batch's largest count)
    T  samples per window          S  samples per patch        P = T / S  time patches
    K  latent tokens per patch     D  model width              L  residual quantization levels

Order of the parts, as data flows:

1. ``SensorEncoder``: position (Fourier features), orientation and kind of each sensor → [B, C, D].
2. ``PatchEncoder`` (one per modality family): each channel's patch of S samples → [B, C, P, D],
   plus its sensor embedding.
3. ``SpatialCompressor``: K learned queries cross-attend over the C channels of each patch (padded
   channels masked out) → [B, P, K, D]. No channel order enters anywhere, so shuffling channels gives
   the same latents, and any channel count works. With ``spatial_field`` the queries start from
   ``SpatialField``'s K virtual channels: signed spatial filters that are functions of the sensor
   (a linear path, so whatever a PCA of the channels keeps, the latents can keep).
4. ``TemporalMixer``: each latent attends across the P patches of its window.
5. ``Quantizer``: residual VQ (EMA codebooks, k-means init, dead-code restarts) or residual FSQ from
   ``vector-quantize-pytorch`` → codes [B, P, K, L].
6. ``SensorDecoder``: every sensor's embedding attends to the K quantized latents of each patch and a
   family head turns the result into that channel's S samples → [B, C, T]; with ``spatial_field``
   the field's linear back-projection of the latents is added.
7. ``SpectrumReadout`` (training only, with ``spectrum_readout``): a linear read-out of each window's
   log spectrum from its quantized latents averaged over patches → [B, F].

With ``bold_tokens: channels`` (the default) an fMRI window skips 3 and 6: each parcel's patch is its own
token (``ChannelTokens`` lets the parcels of a patch attend to each other before quantization and again
before each parcel's output head), so its codes are [B, P, C, L] — a token per parcel, K = C.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange, reduce, repeat
from torch import nn

from neurofm.data_shards.sensors import KINDS, SENSOR_FEATURES
from neurofm.errors import NeuroFMError
from neurofm.tokenizers.config import FAMILIES, TokenizerModelConfig

N_FEATURES = len(SENSOR_FEATURES)


class SensorEncoder(nn.Module):
    """Sensor features [B, C, 12] (position m, orientation, kind one-hot) → embeddings [B, C, D]."""

    def __init__(self, d_model: int, bands: int):
        super().__init__()
        # wavelengths from 2 m down to 2 m / 2^(bands-1): whole-head layout down to ~cm spacing
        self.register_buffer("freqs", 2 * math.pi * (2.0 ** torch.arange(bands)) / 2.0, persistent=False)
        in_dim = 3 * 2 * bands + 3 + 3 + len(KINDS)
        self.mlp = nn.Sequential(nn.Linear(in_dim, d_model), nn.GELU(), nn.Linear(d_model, d_model))

    def forward(self, sensors: torch.Tensor) -> torch.Tensor:
        position, orientation, kind = sensors[..., :3], sensors[..., 3:6], sensors[..., 6:]
        angles = rearrange(position[..., None] * self.freqs, "... xyz f -> ... (xyz f)")
        features = torch.cat([angles.sin(), angles.cos(), position * 10.0, orientation, kind], dim=-1)
        return self.mlp(features)


class PatchEncoder(nn.Module):
    """One channel's patch of S samples → [D] (a family's temporal front end)."""

    def __init__(self, patch_samples: int, d_model: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(patch_samples, d_model), nn.GELU(), nn.Linear(d_model, d_model), nn.LayerNorm(d_model))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:  # [..., S] → [..., D]
        return self.net(patches)


class CrossBlock(nn.Module):
    """Queries attend to a set (with a padding mask), then an MLP; pre-norm residual."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.norm_q, self.norm_kv, self.norm_mlp = nn.LayerNorm(d_model), nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, q: torch.Tensor, kv: torch.Tensor, ignore: torch.Tensor | None = None) -> torch.Tensor:
        kv = self.norm_kv(kv)
        q = q + self.attn(self.norm_q(q), kv, kv, key_padding_mask=ignore, need_weights=False)[0]
        return q + self.mlp(self.norm_mlp(q))


class SelfBlock(CrossBlock):
    """Self-attention block."""

    def forward(self, x: torch.Tensor, ignore: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x, x, ignore)


class SpatialCompressor(nn.Module):
    """K latent queries cross-attend over the channels of each patch: [B·P, C, D] → [B·P, K, D]."""

    def __init__(self, cfg: TokenizerModelConfig):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(cfg.n_latents, cfg.d_model) * 0.02)
        self.cross = CrossBlock(cfg.d_model, cfg.n_heads)
        self.blocks = nn.ModuleList(SelfBlock(cfg.d_model, cfg.n_heads) for _ in range(cfg.encoder_layers))

    def forward(self, channels: torch.Tensor, ignore: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
        """channels [N, C, D], ignore [N, C] (True = padding), start [N, K, D] added to the queries."""
        queries = repeat(self.queries, "k d -> n k d", n=channels.shape[0])
        latents = self.cross(queries if start is None else queries + start, channels, ignore)
        for block in self.blocks:
            latents = block(latents)
        return latents


class SpatialField(nn.Module):
    """A linear path between channels and latents through K signed spatial filters of the sensors.

    Filter k's weight on a channel is a linear function of that channel's sensor embedding (position,
    orientation, kind), so the filters are fields over sensor space and apply to any montage. Encoding
    averages filter × signal over the real channels (an integral over the field, comparable between
    19 and 306 sensors) into K virtual channels, [B, P, K, S] → projected to [B, P, K, D]; decoding
    projects each latent back to S samples and spreads it over the channels by the same kind of field.
    """

    def __init__(self, cfg: TokenizerModelConfig):
        super().__init__()
        self.encode_filters = nn.Linear(cfg.d_model, cfg.n_latents)
        self.decode_filters = nn.Linear(cfg.d_model, cfg.n_latents)
        self.course_in = nn.ModuleDict({f: nn.Linear(cfg.patch_samples(f), cfg.d_model) for f in FAMILIES})
        self.course_out = nn.ModuleDict({f: nn.Linear(cfg.d_model, cfg.patch_samples(f)) for f in FAMILIES})

    def encode(self, patches: torch.Tensor, sensor_embedding: torch.Tensor, channel_mask: torch.Tensor, family: str) -> torch.Tensor:
        """patches [B, C, P, S], sensor_embedding [B, C, D], channel_mask [B, C] → [B, P, K, D]."""
        weights = self.encode_filters(sensor_embedding) * channel_mask[..., None]  # [B, C, K]
        virtual = torch.einsum("bck,bcps->bpks", weights, patches)
        virtual = virtual / channel_mask.sum(1).clamp(min=1)[:, None, None, None]
        return self.course_in[family](virtual)

    def decode(self, latents: torch.Tensor, sensor_embedding: torch.Tensor, family: str) -> torch.Tensor:
        """latents [B, P, K, D], sensor_embedding [B, C, D] → [B, C, P·S]."""
        courses = self.course_out[family](latents)  # [B, P, K, S]
        spread = torch.einsum("bck,bpks->bcps", self.decode_filters(sensor_embedding), courses)
        return rearrange(spread, "b c p s -> b c (p s)")


class ChannelTokens(nn.Module):
    """The channel-wise path of a family with one token per channel (see ``bold_tokens``).

    Encoding: each channel's patch state (patch features + sensor embedding) attends to the other channels
    of its patch, [B, C, P, D] → tokens [B, P, C, D]. Decoding: each quantized token plus its channel's
    sensor embedding attends to the other tokens of its patch, then a head gives the channel's samples,
    [B, P, C, D] → [B, C, P·S]. Padded channels (``channel_mask`` False) are never attended to.
    """

    def __init__(self, cfg: TokenizerModelConfig, family: str):
        super().__init__()
        self.encoder = nn.ModuleList(SelfBlock(cfg.d_model, cfg.n_heads) for _ in range(cfg.encoder_layers))
        self.decode_in = nn.Linear(cfg.d_model, cfg.d_model)
        self.decoder = nn.ModuleList(SelfBlock(cfg.d_model, cfg.n_heads) for _ in range(cfg.decoder_layers))
        self.head = nn.Sequential(nn.LayerNorm(cfg.d_model), nn.Linear(cfg.d_model, cfg.patch_samples(family)))

    @staticmethod
    def _mix(blocks: nn.ModuleList, x: torch.Tensor, channel_mask: torch.Tensor | None) -> torch.Tensor:
        """x [B, P, C, D] through ``blocks`` over the channels of each patch."""
        b, p = x.shape[:2]
        ignore = None if channel_mask is None else repeat(~channel_mask, "b c -> (b p) c", p=p)
        x = rearrange(x, "b p c d -> (b p) c d")
        for block in blocks:
            x = block(x, ignore)
        return rearrange(x, "(b p) c d -> b p c d", b=b)

    def encode(self, channels: torch.Tensor, channel_mask: torch.Tensor) -> torch.Tensor:
        return self._mix(self.encoder, rearrange(channels, "b c p d -> b p c d"), channel_mask)

    def decode(self, quantized: torch.Tensor, sensor_embedding: torch.Tensor, channel_mask: torch.Tensor | None) -> torch.Tensor:
        x = self._mix(self.decoder, self.decode_in(quantized) + sensor_embedding[:, None], channel_mask)
        return rearrange(self.head(x), "b p c s -> b c (p s)")


class TemporalMixer(nn.Module):
    """Each latent attends across the patches of its window: [B, P, K, D] → [B, P, K, D]."""

    def __init__(self, cfg: TokenizerModelConfig):
        super().__init__()
        self.position = nn.Parameter(torch.randn(cfg.max_patches, cfg.d_model) * 0.02)
        self.blocks = nn.ModuleList(SelfBlock(cfg.d_model, cfg.n_heads) for _ in range(cfg.temporal_layers))

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        b, p, k, _ = latents.shape
        x = rearrange(latents + self.position[:p, None], "b p k d -> (b k) p d")
        for block in self.blocks:
            x = block(x)
        return rearrange(x, "(b k) p d -> b p k d", b=b, k=k)


class SpectrumReadout(nn.Module):
    """A linear read-out of a window's spectrum from its quantized latents averaged over its patches.

    A training head only (:func:`~neurofm.tokenizers.losses.spectrum_readout_loss` scores it): the mean
    over patches does not depend on a rhythm's phase, so for the read-out to succeed the codes must carry
    where a window's power sits (a rhythm's frequency) in a form that survives averaging — which a
    reconstruction loss alone does not ask for. [B, P, K, D] and the valid patches [B, P] → [B, F], F the
    1-Hz bins of :data:`~neurofm.tokenizers.losses.SPECTRUM_BAND_HZ`.
    """

    def __init__(self, cfg: TokenizerModelConfig):
        super().__init__()
        from neurofm.tokenizers.losses import SPECTRUM_BAND_HZ

        low, high = SPECTRUM_BAND_HZ
        self.linear = nn.Linear(cfg.n_latents * cfg.d_model, high - low + 1)

    def forward(self, quantized: torch.Tensor, valid_patches: torch.Tensor) -> torch.Tensor:
        weights = valid_patches.float()[..., None, None]
        mean = (quantized * weights).sum(1) / weights.sum(1).clamp(min=1)  # [B, K, D]
        return self.linear(rearrange(mean, "b k d -> b (k d)"))


class Quantizer(nn.Module):
    """Residual VQ or residual FSQ on a projection of the latents; codes [..., L]."""

    def __init__(self, cfg: TokenizerModelConfig):
        super().__init__()
        from loguru import logger as vq_logger
        from vector_quantize_pytorch import ResidualFSQ, ResidualVQ

        vq_logger.disable("vector_quantize_pytorch")  # its k-means init warns about small first batches

        self.project_in = nn.Linear(cfg.d_model, cfg.code_dim)
        self.project_out = nn.Linear(cfg.code_dim, cfg.d_model)
        if cfg.quantizer == "rvq":
            self.residual = ResidualVQ(
                dim=cfg.code_dim, num_quantizers=cfg.levels, codebook_size=cfg.codebook_size, decay=cfg.ema_decay,
                kmeans_init=True, kmeans_iters=10, threshold_ema_dead_code=cfg.dead_code_threshold,
                commitment_weight=cfg.commitment_weight,
            )
        else:
            self.residual = ResidualFSQ(dim=cfg.code_dim, levels=list(cfg.fsq_levels), num_quantizers=cfg.levels)
        self.kind = cfg.quantizer

    def forward(self, z: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z [N, M, D] → quantized [N, M, D], codes [N, M, L], commitment loss (scalar). ``mask`` [N, M]
        (False = a padding token): RVQ neither learns its codebooks from those tokens nor counts their loss."""
        out = self.residual(self.project_in(z), mask=mask) if self.kind == "rvq" and mask is not None else self.residual(self.project_in(z))
        if self.kind == "rvq":
            quantized, codes, commit = out
            commit = commit.sum()
        else:
            quantized, codes = out
            commit = quantized.new_zeros(())
        return self.project_out(quantized), codes, commit

    def from_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [N, M, L] → quantized latents [N, M, D]."""
        return self.project_out(self.residual.get_output_from_indices(codes))


class SensorDecoder(nn.Module):
    """Every sensor's embedding attends to the K latents of each patch → that channel's samples."""

    def __init__(self, cfg: TokenizerModelConfig):
        super().__init__()
        self.query = nn.Linear(cfg.d_model, cfg.d_model)
        self.blocks = nn.ModuleList(CrossBlock(cfg.d_model, cfg.n_heads) for _ in range(cfg.decoder_layers))
        self.heads = nn.ModuleDict({f: nn.Linear(cfg.d_model, cfg.patch_samples(f)) for f in FAMILIES})

    def forward(self, latents: torch.Tensor, sensor_embedding: torch.Tensor, family: str) -> torch.Tensor:
        b, p = latents.shape[:2]
        queries = repeat(self.query(sensor_embedding), "b c d -> (b p) c d", p=p)
        kv = rearrange(latents, "b p k d -> (b p) k d")
        for block in self.blocks:
            queries = block(queries, kv)
        patches = self.heads[family](queries)  # [(B P), C, S]
        return rearrange(patches, "(b p) c s -> b c (p s)", b=b, p=p)


class SensorTokenizer(nn.Module):
    """The whole tokenizer; see the module docstring. A plain module: no training logic inside."""

    def __init__(self, cfg: TokenizerModelConfig):
        super().__init__()
        self.cfg = cfg
        self.sensor_encoder = SensorEncoder(cfg.d_model, cfg.fourier_bands)
        self.patch_encoders = nn.ModuleDict({f: PatchEncoder(cfg.patch_samples(f), cfg.d_model) for f in FAMILIES})
        self.compressor = SpatialCompressor(cfg)
        self.temporal = TemporalMixer(cfg)
        self.quantizer = Quantizer(cfg)
        self.decoder = SensorDecoder(cfg)
        self.channel_tokens = nn.ModuleDict({f: ChannelTokens(cfg, f) for f in cfg.channel_token_families})
        self.field = SpatialField(cfg) if cfg.spatial_field else None
        self.spectrum = SpectrumReadout(cfg) if cfg.spectrum_readout else None

    def encode(self, signal: torch.Tensor, sensors: torch.Tensor, channel_mask: torch.Tensor, family: str) -> torch.Tensor:
        """signal [B, C, T], sensors [B, C, 12], channel_mask [B, C] (True = real channel) → latents [B, P, K, D]
        (with channel tokens, [B, P, C, D]: a padded channel's token is there, to be ignored)."""
        check_window(signal, sensors, channel_mask, self.cfg, family)
        s = self.cfg.patch_samples(family)
        patches = rearrange(signal, "b c (p s) -> b c p s", s=s)
        sensor_embedding = self.sensor_encoder(sensors)
        channels = self.patch_encoders[family](patches) + sensor_embedding[:, :, None]  # [B, C, P, D]
        if family in self.channel_tokens:
            return self.temporal(self.channel_tokens[family].encode(channels, channel_mask))
        p = channels.shape[2]
        ignore = repeat(~channel_mask, "b c -> (b p) c", p=p)
        start = None
        if self.field is not None:
            start = rearrange(self.field.encode(patches, sensor_embedding, channel_mask, family), "b p k d -> (b p) k d")
        latents = self.compressor(rearrange(channels, "b c p d -> (b p) c d"), ignore, start)
        return self.temporal(rearrange(latents, "(b p) k d -> b p k d", p=p))

    def quantize(self, latents: torch.Tensor, token_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """latents [B, P, K, D] → quantized [B, P, K, D], codes [B, P, K, L], commitment loss; ``token_mask``
        [B, K] (False = a padded channel's token) keeps padding out of the codebooks and the loss."""
        b, p = latents.shape[:2]
        mask = None if token_mask is None else repeat(token_mask, "b k -> b (p k)", p=p)
        quantized, codes, commit = self.quantizer(rearrange(latents, "b p k d -> b (p k) d"), mask)
        unflat = "b (p k) ... -> b p k ..."
        return rearrange(quantized, unflat, p=p), rearrange(codes, unflat, p=p), commit

    def decode(self, quantized: torch.Tensor, sensors: torch.Tensor, family: str, channel_mask: torch.Tensor | None = None) -> torch.Tensor:
        """quantized [B, P, K, D], sensors [B, C, 12] → signal [B, C, T] for every given sensor. With channel
        tokens the tokens are the channels' own (K = C) and ``channel_mask`` [B, C] marks the real ones."""
        sensor_embedding = self.sensor_encoder(sensors)
        if family in self.channel_tokens:
            return self.channel_tokens[family].decode(quantized, sensor_embedding, channel_mask)
        signal = self.decoder(quantized, sensor_embedding, family)
        if self.field is not None:
            signal = signal + self.field.decode(quantized, sensor_embedding, family)
        return signal

    def decode_codes(self, codes: torch.Tensor, sensors: torch.Tensor, family: str, channel_mask: torch.Tensor | None = None) -> torch.Tensor:
        """codes [B, P, K, L] → signal [B, C, T] (``channel_mask`` as in :meth:`decode`)."""
        b, p = codes.shape[:2]
        quantized = rearrange(self.quantizer.from_codes(rearrange(codes, "b p k l -> b (p k) l")), "b (p k) d -> b p k d", p=p)
        return self.decode(quantized, sensors, family, channel_mask)

    def forward(self, signal, sensors, channel_mask, family, encoder_mask=None, views=None, time_mask=None) -> dict[str, torch.Tensor]:
        """Encode (seeing ``encoder_mask`` channels, default all; with channel tokens a hidden channel keeps its
        own token and is hidden from the others'), quantize, reconstruct every channel.

        Returns the reconstruction [B, C, T], the codes [B, P, K, L], the commitment loss and the
        latents before and after quantization [B, P, K, D]. ``views`` [M, 2] (rows a, b recording the
        same sources on other devices): also each row a's quantized latents decoded on row b's sensors, as
        ``view_reconstruction`` [M, C, T]. With the spectrum read-out, EEG/MEG/iEEG windows also get
        ``spectrum_readout`` [B, F] (``time_mask`` [B, T]: the valid samples, default all).
        """
        latents = self.encode(signal, sensors, channel_mask if encoder_mask is None else encoder_mask, family)
        token_mask = channel_mask if family in self.channel_tokens else None
        quantized, codes, commit = self.quantize(latents, token_mask)
        out = {"reconstruction": self.decode(quantized, sensors, family, token_mask), "codes": codes, "commit_loss": commit, "latents": latents,
               "quantized": quantized}
        if views is not None and family not in self.channel_tokens:  # views pair EEG/MEG windows only
            out["view_reconstruction"] = self.decode(quantized[views[:, 0]], sensors[views[:, 1]], family)
        if self.spectrum is not None and family == "electro":
            valid = torch.ones(signal.shape[0], signal.shape[2], device=signal.device) if time_mask is None else time_mask.float()
            out["spectrum_readout"] = self.spectrum(quantized, reduce(valid, "b (p s) -> b p", "max", s=self.cfg.patch_samples(family)))
        return out


def check_window(signal: torch.Tensor, sensors: torch.Tensor, channel_mask: torch.Tensor, cfg: TokenizerModelConfig, family: str, where: str = "input") -> None:
    """Clear errors for inputs the tokenizer cannot encode (see the tokenizer issue's bad-input list)."""
    if family not in FAMILIES:
        raise NeuroFMError(f"{where}: unknown modality family '{family}'; expected one of {', '.join(FAMILIES)}.")
    if signal.ndim != 3 or sensors.ndim != 3 or sensors.shape[:2] != signal.shape[:2] or sensors.shape[2] != N_FEATURES:
        raise NeuroFMError(
            f"{where}: expected signal [B, C, T] and sensors [B, C, {N_FEATURES}]; got {tuple(signal.shape)} and {tuple(sensors.shape)}."
        )
    if signal.shape[1] == 0 or not channel_mask.any(dim=1).all():
        raise NeuroFMError(f"{where}: a window has no sensors; every window needs at least one channel with its sensor row.")
    s = cfg.patch_samples(family)
    if signal.shape[2] % s or signal.shape[2] // s > cfg.max_patches:
        raise NeuroFMError(
            f"{where}: windows of {signal.shape[2]} samples do not split into patches of {s} ({family}_patch_samples) "
            f"or exceed max_patches={cfg.max_patches}; rebuild shards with a window length that is a multiple of {s}."
        )
    if not torch.isfinite(signal).all():
        raise NeuroFMError(f"{where}: the signal holds NaN or infinite values; rebuild the shards (the shard builder rejects them).")
    kinds = sensors[..., 6:][channel_mask]
    valid = ((kinds == 0) | (kinds == 1)).all(dim=-1) & (kinds.sum(dim=-1) == 1)
    if not valid.all():
        raise NeuroFMError(
            f"{where}: {int((~valid).sum())} sensor row(s) have no valid kind (columns 6–11 must one-hot one of "
            f"{', '.join(KINDS)})."
        )
