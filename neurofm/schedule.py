"""The learning-rate schedule every training loop uses: linear warm-up, then cosine decay."""

from __future__ import annotations

import math


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float = 0.1) -> float:
    """LR multiplier at ``step``: (step+1)/warmup during warm-up, then cosine from 1 down to ``min_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
