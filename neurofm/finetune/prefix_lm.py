"""Text generation from brain embeddings: a small local causal LM reads the pooled brain embedding as
``n_prefix`` soft-prompt vectors (a learned linear map D → n_prefix × LM width) and is trained to
continue with the window's text; the LM itself stays frozen. Optional: used when ``FinetuneConfig.lm``
names a local ``transformers`` causal-LM directory (GPT-2, Llama, Qwen … with its tokenizer).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from neurofm.errors import NeuroFMError


class BrainPrefixLM(nn.Module):
    """Frozen causal LM + trainable prefix projection."""

    def __init__(self, lm_dir: str | Path, d_brain: int, n_prefix: int = 4):
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(lm_dir)
        if not (path / "config.json").is_file():
            raise NeuroFMError(f"lm={lm_dir} is not a local transformers model directory (no config.json); NeuroFM never downloads models.")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.lm = AutoModelForCausalLM.from_pretrained(path).eval().requires_grad_(False)
        width = self.lm.get_input_embeddings().embedding_dim
        self.n_prefix = n_prefix
        self.project = nn.Linear(d_brain, n_prefix * width)
        self.eos = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else self.tokenizer.sep_token_id
        if self.eos is None:
            raise NeuroFMError(f"The tokenizer of {lm_dir} has neither an EOS nor a SEP token to end generated text.")

    def train(self, mode: bool = True) -> BrainPrefixLM:
        super().train(mode)
        self.lm.eval()
        return self

    def prefix(self, brain: torch.Tensor) -> torch.Tensor:
        """brain [B, D] → prefix embeddings [B, n_prefix, LM width]."""
        return self.project(brain).view(len(brain), self.n_prefix, -1)

    def loss(self, brain: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """Mean next-token cross-entropy of each text (plus EOS) after its brain prefix."""
        ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] + [self.eos] for t in texts]
        length = max(len(i) for i in ids)
        tokens = torch.full((len(ids), length), self.eos, dtype=torch.long, device=brain.device)
        target = torch.full_like(tokens, -100)
        for row, seq in enumerate(ids):
            tokens[row, : len(seq)] = torch.tensor(seq)
            target[row, : len(seq)] = torch.tensor(seq)
        embeds = torch.cat([self.prefix(brain), self.lm.get_input_embeddings()(tokens)], dim=1)
        logits = self.lm(inputs_embeds=embeds).logits[:, self.n_prefix - 1 : -1]  # position i predicts token i
        return F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), ignore_index=-100)

    @torch.no_grad()
    def generate(self, brain: torch.Tensor, max_new_tokens: int = 8) -> list[str]:
        """Greedy continuation of each brain prefix."""
        out = self.lm.generate(inputs_embeds=self.prefix(brain), attention_mask=torch.ones(len(brain), self.n_prefix, dtype=torch.long,
                                                                                                device=brain.device),
                               max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=self.eos, pad_token_id=self.eos)
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]


__all__ = ["BrainPrefixLM"]
