"""Finetuning model: encoder (frozen, last-k, full or LoRA) → (layer mix) → pooling → subject adapters → head.

Heads end in a layer named ``final_layer`` and can be re-sized with ``reset_head(n_outputs)``.

- :class:`ClassificationHead`: dropout, ``final_layer`` Linear(D → classes); cross-entropy.
- :class:`ContrastiveHead` (vision, text, speech): optional MLP, ``final_layer`` Linear(→ target
  dimension), and a learned logit scale s = log(1/τ) (τ initial temperature; logits = exp(s) · cosine,
  s ≤ log 100). Loss: symmetric InfoNCE between brain and target embeddings, negatives gathered across
  processes; an optional MSE term.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from neurofm.errors import ConfigError, NeuroFMError
from neurofm.finetune.config import FinetuneConfig
from neurofm.finetune.encoder import BrainEncoder


class Pooling(nn.Module):
    """Token states [B, N, D] and valid-token mask [B, N] → [B, D]."""

    def __init__(self, kind: str, d: int, n_heads: int = 4):
        super().__init__()
        self.kind = kind
        if kind == "query":
            self.query = nn.Parameter(torch.randn(1, 1, d) * 0.02)
            self.attention = nn.MultiheadAttention(d, math.gcd(n_heads, d), batch_first=True)
        elif kind == "attention":
            self.score = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1))

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        if self.kind == "mean":
            w = valid[..., None].to(tokens.dtype)
            return (tokens * w).sum(1) / w.sum(1).clamp(min=1)
        if self.kind == "query":
            out, _ = self.attention(self.query.expand(len(tokens), -1, -1), tokens, tokens, key_padding_mask=~valid)
            return out[:, 0]
        scores = self.score(tokens)[..., 0].masked_fill(~valid, float("-inf"))
        return (scores.softmax(dim=1)[..., None] * tokens).sum(1)


class LayerMix(nn.Module):
    """Every layer's token states → one learned softmax-weighted sum of them, each layer-normed (no affine)
    first so that the un-normed residual streams of the middle blocks and the normed last layer weigh
    alike (SUPERB's weighted-sum read-out). Weights start uniform."""

    def __init__(self, n_layers: int):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(n_layers))

    @property
    def weights(self) -> torch.Tensor:
        """[layers] softmax weights, summing to 1."""
        return self.logits.softmax(0)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """states [B, layers, N, D] → [B, N, D]."""
        if states.shape[1] != len(self.logits):
            raise NeuroFMError(f"The layer mix was built for {len(self.logits)} layers but got {states.shape[1]}.")
        normed = F.layer_norm(states.float(), states.shape[-1:])
        return torch.einsum("l,blnd->bnd", self.weights, normed)


class SubjectAdapters(nn.Module):
    """One D × D linear layer per subject, identity at start, applied to the pooled embedding."""

    def __init__(self, subjects: list[str], d: int):
        super().__init__()
        self.d = d
        self.names: list[str] = []
        self.layers = nn.ModuleList()
        for s in subjects:
            self.add_subject(s)

    def add_subject(self, name: str) -> None:
        if name in self.names:
            return
        layer = nn.Linear(self.d, self.d)
        with torch.no_grad():
            layer.weight.copy_(torch.eye(self.d))
            layer.bias.zero_()
        self.names.append(name)
        self.layers.append(layer)

    def forward(self, x: torch.Tensor, subjects: list[str]) -> torch.Tensor:
        unknown = sorted(set(subjects) - set(self.names))
        if unknown:
            raise NeuroFMError(f"Subject(s) {unknown[:5]} have no adapter (known: {self.names[:10]}); add them with "
                               "adapters.train_only=[...] and init_from=<this run>, or disable adapters.")
        index = {n: i for i, n in enumerate(self.names)}
        out = torch.empty_like(x)
        for name in set(subjects):
            rows = torch.tensor([i for i, s in enumerate(subjects) if s == name], device=x.device)
            out[rows] = self.layers[index[name]](x[rows])
        return out


class ClassificationHead(nn.Module):
    def __init__(self, d: int, n_classes: int, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.final_layer = nn.Linear(d, n_classes)

    def reset_head(self, n_outputs: int) -> None:
        self.final_layer = nn.Linear(self.final_layer.in_features, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_layer(self.dropout(x))


class ContrastiveHead(nn.Module):
    def __init__(self, d: int, target_dim: int, hidden: int = 0, dropout: float = 0.1, temperature: float = 0.07,
                 learn_temperature: bool = True):
        super().__init__()
        self.body = nn.Sequential(nn.Dropout(dropout), nn.Linear(d, hidden), nn.GELU()) if hidden else nn.Dropout(dropout)
        self.final_layer = nn.Linear(hidden or d, target_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / temperature)), requires_grad=learn_temperature)

    def reset_head(self, n_outputs: int) -> None:
        self.final_layer = nn.Linear(self.final_layer.in_features, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_layer(self.body(x))


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` over all processes, gradients flowing back to each process's own rows."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()) or torch.distributed.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x))


def clip_loss(brain: torch.Tensor, target: torch.Tensor, ids: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE with logits = scale · cosine. brain, target [B, D]; ids [B] stimulus ids
    (rows of one stimulus are all positives of each other, so repeated category-level targets are not
    treated as negatives)."""
    brain, target, ids = gather_with_grad(brain), gather_with_grad(target), gather_with_grad(ids)
    logits = scale * F.normalize(brain, dim=-1) @ F.normalize(target, dim=-1).T
    positives = (ids[:, None] == ids[None, :]).float()
    positives = positives / positives.sum(1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, positives) + F.cross_entropy(logits.T, positives))


class FinetuneModel(nn.Module):
    """codes → encoder layer → pooling → (adapters) → head output."""

    def __init__(self, encoder: BrainEncoder, cfg: FinetuneConfig, n_outputs: int, subjects: list[str]):
        super().__init__()
        self.encoder, self.cfg = encoder, cfg
        d = encoder.d_model
        if cfg.layer != "mix" and not -encoder.n_layers <= cfg.layer < encoder.n_layers:
            raise ConfigError(f"layer={cfg.layer}, but the release's encoder has {encoder.n_layers} layers (the input embedding "
                              f"and {encoder.n_layers - 1} blocks): choose 0 … {encoder.n_layers - 1}, −1 for the last, or 'mix'.")
        self.layer_mix = LayerMix(encoder.n_layers) if cfg.layer == "mix" else None
        self.pooling = Pooling(cfg.pooling, d)
        self.adapters = SubjectAdapters(subjects, d) if cfg.adapters.enabled else None
        if cfg.task == "classification":
            self.head: nn.Module = ClassificationHead(d, n_outputs, cfg.dropout)
        else:
            self.head = ContrastiveHead(d, n_outputs, cfg.head_hidden, cfg.dropout, cfg.temperature, cfg.learn_temperature)
        self.prefix_lm = None
        if cfg.lm:
            if cfg.task != "text":
                raise ConfigError(f"lm (text generation) goes with task=text, not task={cfg.task}.")
            from neurofm.finetune.prefix_lm import BrainPrefixLM

            self.prefix_lm = BrainPrefixLM(cfg.lm, d, cfg.lm_prefix_tokens)
        set_trainable(self, cfg)

    def token_states(self, codes: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        """What the encoder hands the head: the token states of ``cfg.layer`` [B, N, D], or of every layer
        [B, layers, N, D] for a layer mix."""
        if self.layer_mix is None:
            return self.encoder(codes, modality, self.cfg.layer)
        return torch.stack(self.encoder.hidden_states(codes, modality), dim=1)

    def embed(self, codes, modality, valid, subjects: list[str] | None = None) -> torch.Tensor:
        """Pooled (and adapted) brain embedding [B, D]. ``codes`` [B, P, K, L] long — or a frozen encoder's
        token states, float, computed once (:meth:`token_states`; ``Windows.with_states``)."""
        if codes.is_floating_point():
            states = codes
        else:
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.cfg.mode != "frozen"):
                states = self.token_states(codes, modality)
        tokens = self.layer_mix(states) if self.layer_mix is not None else states
        x = self.pooling(tokens.float(), valid)
        if self.adapters is not None:
            x = self.adapters(x, subjects)
        return x

    def forward(self, codes, modality, valid, subjects: list[str] | None = None, texts: list[str] | None = None):
        """Head output [B, outputs]; for contrastive heads exp(s) (s ≤ log 100), else None; with
        ``texts`` and a prefix LM, the LM loss of the texts, else None. Everything is computed in
        ``forward`` so that DDP sees every parameter used inside the model."""
        embedding = self.embed(codes, modality, valid, subjects)
        out = self.head(embedding)
        scale = self.head.logit_scale.clamp(max=math.log(100)).exp() if isinstance(self.head, ContrastiveHead) else None
        lm_loss = self.prefix_lm.loss(embedding, texts) if self.prefix_lm is not None and texts is not None else None
        return out, scale, lm_loss


def set_trainable(model: FinetuneModel, cfg: FinetuneConfig) -> None:
    """Freeze / unfreeze per ``cfg.mode`` (LoRA layers are injected here) and ``adapters.train_only``."""
    encoder = model.encoder.model
    encoder.requires_grad_(cfg.mode == "full")
    if cfg.mode == "last_k":
        blocks = encoder.encoder.blocks
        if not 1 <= cfg.last_k <= len(blocks):
            raise ConfigError(f"last_k={cfg.last_k} but the encoder has {len(blocks)} blocks; choose 1 … {len(blocks)}.")
        for block in blocks[len(blocks) - cfg.last_k :]:
            block.requires_grad_(True)
        encoder.encoder.norm.requires_grad_(True)
    elif cfg.mode == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        lora = LoraConfig(r=cfg.lora.rank, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                          target_modules=cfg.lora.target_modules)
        inject_adapter_in_model(lora, encoder.encoder)
        for name, p in encoder.named_parameters():
            p.requires_grad_("lora_" in name)
    if cfg.adapters.train_only:
        if model.adapters is None:
            raise ConfigError("adapters.train_only is set but adapters.enabled is false.")
        model.requires_grad_(False)
        for name in cfg.adapters.train_only:
            model.adapters.add_subject(name)
            model.adapters.layers[model.adapters.names.index(name)].requires_grad_(True)


def trainable_state(model: FinetuneModel) -> dict[str, torch.Tensor]:
    """Everything finetuning may change: head, pooling, adapters and the encoder's trainable tensors."""
    keep = {n for n, p in model.named_parameters() if p.requires_grad}
    keep |= {n for n, _ in model.named_parameters() if n.startswith(("head.", "layer_mix.", "pooling.", "adapters.", "prefix_lm.project.")) or "lora_" in n}
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if n in keep}


__all__ = ["ClassificationHead", "ContrastiveHead", "FinetuneModel", "LayerMix", "Pooling", "SubjectAdapters", "clip_loss", "set_trainable"]
