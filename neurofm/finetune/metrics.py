"""Decoding metrics with the definitions the field uses, each with its chance level.

Classification (:func:`classification_metrics`): balanced accuracy (mean per-class recall; chance
1/n_classes), AUROC (binary, or one-vs-rest macro for several classes; chance 0.5), Cohen's kappa
(chance 0) and weighted F1 (chance: the F1 of always predicting by the class frequencies, reported).

Retrieval, from a similarity matrix ``sim`` [n_segments, n_stimuli] between each test segment's
brain embedding and the target embedding of each distinct test stimulus, with ``truth`` [n_segments]
the column of each segment's own stimulus (segments of one stimulus share its target, e.g. the
category-level face / house targets):

- **k-way retrieval top-n** (:func:`k_way_retrieval`): the true stimulus and k − 1 others drawn at
  random; hit if the true one ranks within the top n. Chance n / k; k is capped by the number of test
  stimuli. Averaged over ``repeats`` draws.
- **segment identification top-n** (:func:`segment_identification`): the true stimulus ranked against
  all test stimuli (every test segment's own target when each segment has its own stimulus, as in
  the speech and word sets); hit within the top n. Chance min(n, S) / S for S stimuli.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score, f1_score, roc_auc_score


def classification_metrics(y: np.ndarray, predicted: np.ndarray, proba: np.ndarray, classes: np.ndarray) -> dict:
    """y, predicted [n] (class names), proba [n, n_classes] in the order of ``classes``."""
    present = np.unique(y)
    if len(present) < 2:
        auroc = float("nan")  # undefined with one class in the test set
    elif len(classes) == 2:
        auroc = float(roc_auc_score(y == classes[1], proba[:, 1]))
    else:
        cols = np.searchsorted(classes, present)
        p = proba[:, cols] / np.clip(proba[:, cols].sum(1, keepdims=True), 1e-12, None)
        auroc = float(roc_auc_score(y, p, multi_class="ovr", labels=present))
    return {
        "balanced_accuracy": float(balanced_accuracy_score(y, predicted)),
        "auroc": auroc,
        "kappa": float(cohen_kappa_score(y, predicted)),
        "weighted_f1": float(f1_score(y, predicted, average="weighted")),
    }


def classification_chance(y: np.ndarray, classes: np.ndarray) -> dict:
    """Chance levels of :func:`classification_metrics` for the label distribution ``y``."""
    freq = np.array([(y == c).mean() for c in classes])
    return {"balanced_accuracy": 1 / len(classes), "auroc": 0.5, "kappa": 0.0, "weighted_f1": float((freq**2).sum())}


def _rank_of_truth(sim: np.ndarray, truth: np.ndarray, columns: np.ndarray | None = None) -> np.ndarray:
    """How many candidate stimuli score strictly higher than each segment's own one."""
    own = sim[np.arange(len(sim)), truth]
    higher = sim > own[:, None]
    if columns is not None:
        higher = np.take_along_axis(higher, columns, axis=1)
    return higher.sum(1)


def k_way_retrieval(sim: np.ndarray, truth, k: int, tops=(1, 5), repeats: int = 20, seed: int = 0) -> dict:
    """k-way retrieval top-n accuracies and their chance n/k (see module docstring)."""
    truth = np.asarray(truth)
    n, s = sim.shape
    k = int(min(k, s))
    rng = np.random.default_rng(seed)
    hits = {t: [] for t in tops}
    for _ in range(repeats):
        others = np.stack([rng.permutation(np.delete(np.arange(s), truth[i]))[: k - 1] for i in range(n)])
        rank = _rank_of_truth(sim, truth, others)
        for t in tops:
            hits[t].append(rank < t)
    out: dict = {"k": k}
    for t in tops:
        if t < k:
            out[f"top{t}"] = float(np.mean(hits[t]))
            out[f"top{t}_chance"] = t / k
    return out


def segment_identification(sim: np.ndarray, truth, tops=(1, 5, 10)) -> dict:
    """Identification top-n among all test stimuli, with chance min(n, S)/S (module docstring)."""
    truth = np.asarray(truth)
    s = sim.shape[1]
    rank = _rank_of_truth(sim, truth)
    out: dict = {"segments": int(len(sim)), "stimuli": int(s)}
    for t in tops:
        if t < s:
            out[f"top{t}"] = float((rank < t).mean())
            out[f"top{t}_chance"] = t / s
    return out


__all__ = ["classification_chance", "classification_metrics", "k_way_retrieval", "segment_identification"]
