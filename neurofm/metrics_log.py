"""A training loop's metrics as JSON lines, one per logged step, that a resume never repeats.

A run killed after logging step 130 but checkpointed at step 100 resumes at 100 and logs 101 … again:
:class:`MetricsLog` cuts the file back to the resumed step when it opens it (rewritten atomically), so
every step appears once and the curve is the one an uninterrupted run would have written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class MetricsLog:
    """``path``: the JSONL file; ``resumed_step``: the step the run continues from (0: a fresh run);
    ``enabled``: False on ranks other than 0 (nothing is read or written)."""

    def __init__(self, path: str | Path, resumed_step: int = 0, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        if enabled and self.path.is_file():
            kept = [line for line in self.path.read_text().splitlines() if _step(line) <= resumed_step]
            tmp = self.path.with_name(self.path.name + ".partial")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, self.path)

    def write(self, metrics: dict) -> None:
        """Append one record (it must hold ``step``)."""
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(metrics) + "\n")


def _step(line: str) -> float:
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return float("inf")  # a torn last line of a killed run: dropped


__all__ = ["MetricsLog"]
