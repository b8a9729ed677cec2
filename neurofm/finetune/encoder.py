"""``BrainEncoder``: a release as a feature extractor for raw windows of any montage.

Windows are tokenized on the fly by the release's bundled tokenizer; the masked-code encoder runs with
nothing masked; every layer's token states are mean-pooled into one embedding per window.
"""

from __future__ import annotations

from pathlib import Path

import torch

from neurofm.errors import NeuroFMError
from neurofm.pretrain.config import MODALITY_IDS
from neurofm.pretrain.export import from_pretrained
from neurofm.pretrain.model import encoder_hidden_states
from neurofm.tokenizers.checkpoint import load_tokenizer


class BrainEncoder:
    """Tokenizer + encoder of a release directory (see :func:`from_pretrained`)."""

    def __init__(self, tokenizer, model):
        self.tokenizer, self.model = tokenizer.eval(), model.eval()
        cfg = model.cfg
        if (tokenizer.cfg.n_latents, tokenizer.cfg.levels, tokenizer.cfg.codes_per_level) != (cfg.n_latents, cfg.levels, cfg.codes_per_level):
            raise NeuroFMError("The release's tokenizer does not match its model (latents, levels or codebook differ).")

    @classmethod
    def from_pretrained(cls, release: str | Path) -> BrainEncoder:
        release = Path(release)
        if not (release / "tokenizer" / "model.safetensors").is_file():
            raise NeuroFMError(f"{release} has no tokenizer/ directory; export the release with `neurofm export`.")
        return cls(load_tokenizer(release / "tokenizer"), from_pretrained(release))

    @property
    def n_layers(self) -> int:
        """Embeddings per window: the input embedding and every block's output."""
        return self.model.cfg.n_layers + 1

    @torch.no_grad()
    def layer_embeddings(self, signal, sensors, channel_mask, family: str, modalities: list[str]) -> torch.Tensor:
        """signal [B, C, T], sensors [B, C, 12], channel_mask [B, C] → embeddings [layers, B, D] (mean over tokens)."""
        codes = self.tokenizer.quantize(self.tokenizer.encode(signal, sensors, channel_mask, family))[1]
        modality = torch.tensor([MODALITY_IDS[m] for m in modalities])
        return torch.stack([h.mean(dim=1) for h in encoder_hidden_states(self.model, codes, modality)])
