"""Figures shared by probing and finetuning (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def save_confusion(matrix: np.ndarray, classes: list[str], path: Path, title: str | None = None) -> None:
    """Confusion matrix [true, predicted] with counts in the cells, written to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.8, 3.2))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


__all__ = ["save_confusion"]
