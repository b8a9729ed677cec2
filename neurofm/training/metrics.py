"""A training loop's metrics: JSON lines (and TensorBoard scalars) per logged step, never repeated on resume.

A run killed after logging step 130 but checkpointed at step 100 resumes at 100 and logs 101 … again:
:class:`MetricsLog` cuts the JSONL file back to the resumed step when it opens it (rewritten
atomically), and TensorBoard's ``purge_step`` drops the events past it, so every step appears once
and the curve is the one an uninterrupted run would have written. Every loop (tokenizer, pretraining,
finetuning) logs through it, on rank 0 only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from neurofm.data_shards.writer import write_text_atomic


class MetricsLog:
    """``path``: the JSONL file; ``resumed_step``: the step the run continues from (0: a fresh run);
    ``enabled``: False on ranks other than 0 (nothing is read or written); ``tensorboard``: a folder for
    TensorBoard event files (None: JSONL only).

    Every number in a record becomes a scalar named by its key (``group/name`` keys group them in
    TensorBoard); a list of numbers becomes ``key/0``, ``key/1`` …, a dict ``key/name``; anything else stays in the JSONL only.
    """

    def __init__(self, path: str | Path, resumed_step: int = 0, enabled: bool = True, tensorboard: str | Path | None = None):
        self.path = Path(path)
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        if self.path.is_file():
            kept = [line for line in self.path.read_text().splitlines() if _step(line) <= resumed_step]
            write_text_atomic(self.path, "".join(line + "\n" for line in kept))
        if tensorboard is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(tensorboard), purge_step=resumed_step + 1 if resumed_step else None)

    def write(self, metrics: dict) -> None:
        """Append one record (it must hold ``step``)."""
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(metrics) + "\n")
        if self.writer is not None:
            for name, value in scalars(metrics):
                self.writer.add_scalar(name, value, metrics["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def scalars(metrics: dict, prefix: str = "") -> list[tuple[str, float]]:
    """The finite numbers of a record as (name, value), lists spread over ``name/i`` and dicts over
    ``name/key``; ``step`` left out."""
    out = []
    for key, value in metrics.items():
        if key == "step" and not prefix:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.extend(scalars(value, f"{name}/"))
            continue
        values = list(enumerate(value)) if isinstance(value, (list, tuple)) else [(None, value)]
        for i, v in values:
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                out.append((name if i is None else f"{name}/{i}", float(v)))
    return out


def _step(line: str) -> float:
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return float("inf")  # a torn last line of a killed run: dropped


__all__ = ["MetricsLog", "scalars"]
