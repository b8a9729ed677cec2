"""Configs of masked-code pretraining: the model and the DeepSpeed training run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(kw_only=True)
class PretrainModelConfig:
    """Architecture of :class:`~neurofm.pretrain.model.MaskedCodeModel`.

    Parameters
    ----------
    d_model, n_layers, n_heads, mlp_ratio : int / float
        The (encoder) transformer.
    n_latents, levels, codes_per_level : int
        K, L and V of the code shards (checked against their tokenizer; 0 = take them from the shards).
    channel_tokens : list of str
        Tokenizer families whose windows have one token per channel per patch rather than K latents (the
        code shards' tokenizer says; e.g. ``[bold]`` with ``bold_tokens: channels``). Their tokens share one
        learned "channel token" embedding in place of the latent-index embedding: they are a set per patch.
    max_patches : int
        Longest window in time patches.
    mask_ratio : float
        Fraction of code tokens masked per window.
    masking : 'random' | 'time' | 'latent'
        Mask random tokens, whole time patches, or whole latents across the window.
    asymmetric : bool
        The encoder sees only visible tokens; a light decoder (``decoder_d_model``,
        ``decoder_layers``) fills in mask tokens and predicts the masked codes (MAE-style).
    activation_checkpointing : bool
        Recompute each block's activations in the backward pass (saves memory).
    code_embedding_init : 'tokenizer' | 'random'
        Start each level's code embedding table from the tokenizer's codebook for that level (through one
        fixed orthonormal map into ``d_model``), so a token's input is a linear image of its quantized
        latent from step 0; or from random vectors.
    latent_loss : float
        Weight of masked latent regression beside the masked-code cross-entropy: a linear head also
        predicts each masked token's quantized latent (the sum of its code vectors in the tokenizer's
        codebooks, through the same fixed orthonormal map into ``d_model``); the term is the squared error
        over the batch's mean squared target (the fraction of the masked latents' power left unexplained).
        0 = masked codes alone.
    """

    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    mlp_ratio: float = 4.0
    n_latents: int = 0
    levels: int = 0
    codes_per_level: int = 0
    channel_tokens: list[str] = field(default_factory=list)
    max_patches: int = 64
    mask_ratio: float = 0.5
    masking: Literal["random", "time", "latent"] = "random"
    asymmetric: bool = False
    decoder_d_model: int = 64
    decoder_layers: int = 2
    activation_checkpointing: bool = False
    code_embedding_init: Literal["tokenizer", "random"] = "tokenizer"
    latent_loss: float = 0.0

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(f"d_model ({self.d_model}) / n_heads ({self.n_heads}) must be an even integer (rotary positions).")
        if not 0 < self.mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in (0, 1); got {self.mask_ratio}.")
        if self.latent_loss < 0:
            raise ValueError(f"latent_loss must be ≥ 0; got {self.latent_loss}.")
        if self.decoder_d_model % self.n_heads:
            raise ValueError(f"decoder_d_model ({self.decoder_d_model}) must be divisible by n_heads ({self.n_heads}).")

    def parameter_count(self) -> int:
        """Approximate parameter count of the encoder blocks (12·d²·layers)."""
        return 12 * self.d_model**2 * self.n_layers


@dataclass(kw_only=True)
class PretrainConfig:
    """``neurofm pretrain train``: data, DeepSpeed settings, schedule, checkpoints.

    Parameters
    ----------
    codes : str
        Code shard folder (``neurofm tokenizer encode``).
    out : str
        Run folder: DeepSpeed checkpoints (one ``step_NNNNNNNN`` tag each, ``latest`` names the last
        complete one), ``train_log.jsonl``, TensorBoard events, ``DONE.json`` at the end.
    micro_batch, grad_accum : int
        Windows per rank per micro-step; micro-steps per optimizer step.
    zero_stage : int
        DeepSpeed ZeRO stage (0–3; 0 = plain data parallelism, e.g. for one GPU).
    precision : 'bf16' | 'autocast_bf16' | 'fp32'
        ``bf16``: DeepSpeed's bf16 mode (bf16 weights, fp32 master copy in the optimizer);
        ``autocast_bf16``: fp32 weights with ``torch.autocast`` to bf16 (DeepSpeed's ``torch_autocast``);
        ``fp32``: no mixed precision (CPU runs).
    compile : bool
        ``torch.compile`` the model.
    modality_weights : dict | None
        Sampling weights per modality.
    num_workers : int
        DataLoader worker processes that read and collate micro-batches (0: in the training process);
        the batches are the same for any count, so a resume may change it.
    allow_changed : list of str
        Settings a resume may change on purpose (e.g. ``steps`` for a longer schedule); any other
        setting that changes the trajectory must equal the checkpoint's (``--allow-changed KEY``).
    """

    codes: str = "runs/demo/codes"
    out: str = "runs/demo/pretrain"
    model: PretrainModelConfig = field(default_factory=PretrainModelConfig)
    steps: int = 200
    micro_batch: int = 16
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.05
    warmup_steps: int = 20
    grad_clip: float = 1.0
    zero_stage: int = 1
    precision: Literal["bf16", "autocast_bf16", "fp32"] = "fp32"
    compile: bool = False
    modality_weights: dict[str, float] | None = None
    log_every: int = 10
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    seed: int = 0
    tensorboard: bool = True
    num_workers: int = 0
    allow_changed: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 0 <= self.zero_stage <= 3:
            raise ValueError(f"zero_stage must be 0, 1, 2 or 3; got {self.zero_stage}.")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be ≥ 0; got {self.num_workers}.")
        if self.steps < 1 or self.micro_batch < 1 or self.grad_accum < 1:
            raise ValueError("steps, micro_batch and grad_accum must be at least 1.")
