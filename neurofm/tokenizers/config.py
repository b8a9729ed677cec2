"""Configs of the sensor-aware tokenizer: the model, and its training run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

#: Modality families: each has its own temporal front end and output head (their time scales differ).
FAMILIES = ("electro", "bold")


@dataclass(kw_only=True)
class TokenizerModelConfig:
    """Architecture of :class:`~neurofm.tokenizers.model.SensorTokenizer`.

    Parameters
    ----------
    d_model, n_heads : int
        Width and attention heads everywhere.
    n_latents : int
        K: latent tokens per time patch, whatever the channel count.
    electro_patch_samples : int
        Samples per patch for EEG/MEG/iEEG (64 at 256 Hz = 0.25 s).
    bold_patch_samples : int
        Volumes per patch for fMRI (4 at TR 2 s = 8 s).
    electro_sfreq, bold_tr_seconds : float
        The rates the signal shards were built at (for bitrates).
    fourier_bands : int
        Frequencies of the Fourier features of sensor positions (wavelengths 2 m down to 2 m / 2^(bands-1)).
    encoder_layers, decoder_layers : int
        Latent self-attention blocks after compression; decoder cross-attention blocks.
    temporal_layers : int
        Attention blocks across time patches (per latent) before quantization.
    max_patches : int
        Longest window in patches (temporal position embedding size).
    quantizer : 'rvq' | 'fsq'
        Residual VQ with EMA codebooks and dead-code restarts, or residual FSQ.
    code_dim : int
        Dimension the quantizer works in.
    codebook_size : int
        Codes per RVQ level (FSQ: the product of ``fsq_levels``).
    levels : int
        Residual quantization levels.
    fsq_levels : list of int
        FSQ levels per code dimension.
    commitment_weight, ema_decay, dead_code_threshold : float
        RVQ commitment loss weight, EMA decay, and usage (EMA count) below which a code is restarted.
    spatial_field : bool
        A linear path beside the attention: K signed spatial filters, functions of the sensors, map the
        channels to the latents' starting values and the latents back to the channels
        (:class:`~neurofm.tokenizers.model.SpatialField`). Off by default: it lifts held-out
        reconstruction above the same-bitrate PCA codec but the release's evoked decoding falls (see
        benchmarks/RESULTS.md, representation candidates). Checkpoints written before it existed load
        with it off.
    bold_tokens : 'latents' | 'channels'
        What an fMRI window's tokens are. ``latents``: K latents per patch, like EEG/MEG. ``channels``: one
        token per parcel (region) per patch — a channel-wise code, so the token count follows the parcels
        and nothing has to route independent regions through K position-addressed latents (held-out
        simulated fMRI: PCC 0.97–1.00 against 0.55 with 16 latents, the same-bitrate PCA codec 0.96;
        benchmarks/RESULTS.md item 28). Channel tokens see each other through ``encoder_layers`` /
        ``decoder_layers`` self-attention blocks over the parcels of a patch. The default; checkpoints
        written before it existed load with ``latents``.
    spectrum_readout : bool
        A training head that reads each EEG/MEG/iEEG window's log spectrum (1–45 Hz, 1-Hz bins) linearly
        from its quantized latents averaged over patches (:class:`~neurofm.tokenizers.model.SpectrumReadout`),
        scored with weight ``loss.spectrum_readout``. Off in checkpoints written before it existed.
    """

    d_model: int = 64
    n_heads: int = 4
    n_latents: int = 8
    electro_patch_samples: int = 64
    bold_patch_samples: int = 4
    electro_sfreq: float = 256.0
    bold_tr_seconds: float = 2.0
    fourier_bands: int = 8
    encoder_layers: int = 1
    decoder_layers: int = 1
    temporal_layers: int = 1
    max_patches: int = 64
    quantizer: Literal["rvq", "fsq"] = "rvq"
    code_dim: int = 32
    codebook_size: int = 256
    levels: int = 4
    fsq_levels: list[int] = field(default_factory=lambda: [8, 5, 5, 5])
    commitment_weight: float = 0.25
    ema_decay: float = 0.99
    dead_code_threshold: float = 2.0
    spatial_field: bool = False
    bold_tokens: Literal["latents", "channels"] = "channels"
    spectrum_readout: bool = False

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads}).")
        for name in ("n_latents", "electro_patch_samples", "bold_patch_samples", "levels", "codebook_size", "code_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1; got {getattr(self, name)}.")
        if self.bold_tokens not in ("latents", "channels"):
            raise ValueError(f"bold_tokens must be 'latents' or 'channels'; got {self.bold_tokens!r}.")

    def patch_samples(self, family: str) -> int:
        return self.electro_patch_samples if family == "electro" else self.bold_patch_samples

    def patch_seconds(self, family: str) -> float:
        if family == "electro":
            return self.electro_patch_samples / self.electro_sfreq
        return self.bold_patch_samples * self.bold_tr_seconds

    @property
    def codes_per_level(self) -> int:
        if self.quantizer == "fsq":
            size = 1
            for level in self.fsq_levels:
                size *= level
            return size
        return self.codebook_size

    def channel_tokens(self, family: str) -> bool:
        """Whether ``family``'s windows get one token per channel per patch (else K latents)."""
        return family == "bold" and self.bold_tokens == "channels"

    @property
    def channel_token_families(self) -> list[str]:
        """The families whose windows get one token per channel (what code shards and releases record)."""
        return [f for f in FAMILIES if self.channel_tokens(f)]

    def tokens_per_patch(self, family: str, n_channels: int) -> int:
        """Tokens of one time patch of a window of ``n_channels`` channels: C with channel tokens, else K."""
        return n_channels if self.channel_tokens(family) else self.n_latents

    def bits_per_second(self, family: str, n_channels: int) -> float:
        """Bitrate of one window's codes: tokens per patch × levels × log2(codebook) bits per patch."""
        import math

        return self.tokens_per_patch(family, n_channels) * self.levels * math.log2(self.codes_per_level) / self.patch_seconds(family)


@dataclass(kw_only=True)
class LossConfig:
    """Weights of the reconstruction losses (time L1, time MSE, 1 − correlation, log-spectrum L1, and
    L1 of the slow waveform: means of ``slow_samples``-sample blocks, which is where evoked responses
    live — 16 samples are 62.5 ms at 256 Hz), and of the view losses between windows that record the
    same sources on two devices (``view_consistency``: their latents should agree; ``view_reconstruction``:
    one view's latents should reconstruct the other's channels; they need shards built with
    ``simulate.device_views``, see :func:`~neurofm.tokenizers.losses.view_losses`), and of the spectrum
    read-out (``spectrum_readout``: a window's log spectrum read linearly from its patch-averaged codes;
    needs ``model.spectrum_readout``, see :func:`~neurofm.tokenizers.losses.spectrum_readout_loss`)."""

    time_l1: float = 1.0
    time_mse: float = 0.0
    correlation: float = 0.5
    spectrum: float = 0.5
    slow: float = 0.0
    slow_samples: int = 16
    view_consistency: float = 0.0
    view_reconstruction: float = 0.0
    spectrum_readout: float = 0.0

    def __post_init__(self) -> None:
        if self.slow_samples < 1:
            raise ValueError(f"loss.slow_samples must be ≥ 1; got {self.slow_samples}.")
        if self.view_consistency < 0 or self.view_reconstruction < 0 or self.spectrum_readout < 0:
            raise ValueError("loss.view_consistency, loss.view_reconstruction and loss.spectrum_readout must be ≥ 0.")

    @property
    def views(self) -> bool:
        """Whether training pairs views of one scene."""
        return self.view_consistency > 0 or self.view_reconstruction > 0


@dataclass(kw_only=True)
class TokenizerTrainConfig:
    """``neurofm tokenizer train``: data, optimisation, checkpointing.

    Parameters
    ----------
    shards : str
        Signal shard folder.
    out : str
        The tokenizer (``config.json``, ``model.safetensors``), updated at every checkpoint; the resumable
        checkpoints themselves (with optimizer and train state) go to ``<out>.checkpoints/``.
    steps, batch_size : int
        Optimiser steps and windows per batch (batches hold one modality family). Under ``torchrun``
        (data parallelism with DDP) ``batch_size`` is the global batch, split over the processes.
    bucket_by_channels : bool
        Batches also hold windows of similar channel counts (one power-of-two class: ≤ 16, 32, 64 …),
        so a 19-channel EEG window is not padded to a 306-channel MEG one.
    lr, weight_decay, warmup_steps, grad_clip : float / int
        AdamW with linear warm-up then cosine decay; gradient norm clipping.
    channel_dropout : float
        Fraction of each window's channels hidden from the encoder (the decoder still reconstructs
        all of them), so missing channels are tolerated.
    sparse_montages : float
        Fraction of training windows cut down to a random sparse montage — 2 to ``SPARSE_MONTAGE_CHANNELS``
        of their channels, for encoder and loss alike — so the tokenizer also learns headbands and
        few-channel clinical montages from dense recordings (0: off).
    eval_fraction : float
        Last fraction of each recording's windows held out for ``tokenizer eval``.
    modality_weights : dict | None
        Sampling weights per modality (default: in proportion to the data).
    log_every, checkpoint_every : int
        Steps between log lines / checkpoints.
    keep_checkpoints : int
        Checkpoints kept in ``<out>.checkpoints/`` (the newest).
    seed : int
        Seed of initialisation, data order and channel dropout.
    device : 'auto' | 'cpu' | 'cuda'
        Where to train (``auto``: a GPU when torch sees one).
    num_workers : int
        DataLoader worker processes that read and collate batches (0: in the training process); the
        batches are the same for any count, so a resume may change it.
    autocast_bf16 : bool
        Run the model's forward under bf16 autocast (GPUs; the loss and the weights stay fp32).
    tensorboard : bool
        Also log the metrics as TensorBoard scalars in ``<out>.tensorboard/`` (the JSONL log is
        ``<out>.log.jsonl``).
    allow_changed : list of str
        Settings a resume may change on purpose (e.g. ``steps`` for a longer schedule); any other
        setting that changes the trajectory must equal the checkpoint's (``--allow-changed KEY``).
    """

    shards: str = "runs/demo/shards"
    out: str = "runs/demo/tokenizer"
    model: TokenizerModelConfig = field(default_factory=TokenizerModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    steps: int = 300
    batch_size: int = 16
    bucket_by_channels: bool = True
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 30
    grad_clip: float = 1.0
    channel_dropout: float = 0.2
    sparse_montages: float = 0.0
    eval_fraction: float = 0.2
    modality_weights: dict[str, float] | None = None
    log_every: int = 25
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = 0
    autocast_bf16: bool = False
    tensorboard: bool = True
    allow_changed: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be ≥ 0; got {self.num_workers}.")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be at least 1.")
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be ≥ 1 (the checkpoint a resume starts from); got {self.keep_checkpoints}.")
        if not 0 <= self.channel_dropout < 1:
            raise ValueError(f"channel_dropout must be in [0, 1); got {self.channel_dropout}.")
        if not 0 <= self.sparse_montages <= 1:
            raise ValueError(f"sparse_montages is a fraction of windows, in [0, 1]; got {self.sparse_montages}.")
        if not 0 < self.eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in (0, 1); got {self.eval_fraction}.")
        if (self.loss.spectrum_readout > 0) != self.model.spectrum_readout:
            raise ValueError("loss.spectrum_readout > 0 needs the read-out head, model.spectrum_readout=true (and the head needs a "
                             f"weight); got loss.spectrum_readout={self.loss.spectrum_readout}, "
                             f"model.spectrum_readout={self.model.spectrum_readout}.")
