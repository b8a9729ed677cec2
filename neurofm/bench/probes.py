"""Linear probes with honest model selection, shared by every column of the representation benchmark.

Each probe is a pipeline (impute missing features from training rows → standardise → logistic or
ridge regression). Where a column offers several feature sets (one per layer), the layer and the
regularisation strength are chosen together by an inner grouped cross-validation on the training
rows only, so no number is tuned on its own test rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import PCA
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import balanced_accuracy_score, r2_score
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from neurofm.errors import NeuroFMError

#: Inverse regularisation strengths (logistic) and penalties (ridge) searched for every column alike.
LOGISTIC_C = (0.001, 0.01, 0.1, 1.0)
RIDGE_ALPHA = (1.0, 10.0, 100.0, 1000.0, 10000.0)


def make_features():
    """Impute missing features from training rows, standardise, and rotate onto the training rows' span.

    The untruncated PCA (min(n, F) components) changes nothing for an L2-penalised linear model, whose
    solution lies in that span, but makes thousands of features (time- or token-resolved embeddings)
    cost no more than n."""
    return make_pipeline(SimpleImputer(strategy="mean", keep_empty_features=True), StandardScaler(), PCA())


def make_head(kind: str, strength: float):
    """'logistic' (class-balanced) with C = strength, or 'ridge' with alpha = strength."""
    return LogisticRegression(C=strength, max_iter=1000, class_weight="balanced") if kind == "logistic" else Ridge(alpha=strength)


def make_probe(kind: str, strength: float):
    """An unfitted pipeline: :func:`make_features` then :func:`make_head`."""
    return make_pipeline(*[step for _, step in make_features().steps], make_head(kind, strength))


def score(kind: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Balanced accuracy (logistic) or R² (ridge)."""
    return float(balanced_accuracy_score(y_true, y_pred) if kind == "logistic" else r2_score(y_true, y_pred))


def _strengths(kind: str) -> tuple[float, ...]:
    return LOGISTIC_C if kind == "logistic" else RIDGE_ALPHA


@dataclass
class Selected:
    """A fitted probe, the feature set (layer) and strength the inner search chose, its inner score,
    and the inner score of every (layer, strength) pair [layers, strengths]."""

    model: object
    layer: int
    strength: float
    inner_score: float
    table: np.ndarray


def select_and_fit(kind: str, features: list[np.ndarray], y: np.ndarray, groups: np.ndarray, inner_splits: int = 3) -> Selected:
    """Choose layer × strength by grouped CV on these (training) rows, then refit on all of them.

    ``features``: one [n, F_layer] matrix per candidate layer. With fewer than two groups the search
    falls back to the middle strength on the last layer.
    """
    strengths = _strengths(kind)
    table = np.full((len(features), len(strengths)), -np.inf)
    n_groups = len(np.unique(groups))
    if n_groups >= 2:
        splits = [(a, b) for a, b in GroupKFold(n_splits=min(inner_splits, n_groups)).split(features[0], y, groups)
                  if kind != "logistic" or len(np.unique(y[a])) >= 2]
        scores = np.zeros((len(features), len(strengths), len(splits)))
        for s_index, (a, b) in enumerate(splits):
            for layer, x in enumerate(features):
                prep = make_features().fit(x[a])
                xa, xb = prep.transform(x[a]), prep.transform(x[b])
                for j, strength in enumerate(strengths):
                    scores[layer, j, s_index] = score(kind, y[b], make_head(kind, strength).fit(xa, y[a]).predict(xb))
        if splits:
            table = scores.mean(axis=2)
    if np.isfinite(table).any():
        layer, j = np.unravel_index(int(np.argmax(table)), table.shape)
    else:
        layer, j = len(features) - 1, len(strengths) // 2
    model = make_probe(kind, strengths[j]).fit(features[layer], y)
    return Selected(model, int(layer), strengths[j], float(table[layer, j]), table)


def _outer_fold(kind: str, features: list[np.ndarray], y: np.ndarray, groups: np.ndarray, train: np.ndarray,
                test: np.ndarray) -> tuple[int, float, list[np.ndarray]]:
    """One outer fold of :func:`grouped_cv`: the layer and strength the inner search chose and every
    layer's predictions for ``test`` (the chosen layer's are the nested-selection predictions)."""
    selected = select_and_fit(kind, [x[train] for x in features], y[train], groups[train])
    predictions = []
    for layer, x in enumerate(features):
        if layer == selected.layer:
            predictions.append(selected.model.predict(x[test]))
            continue
        strength = _strengths(kind)[int(np.argmax(selected.table[layer]))]
        predictions.append(make_probe(kind, strength).fit(x[train], y[train]).predict(x[test]))
    return selected.layer, selected.strength, predictions


def grouped_cv(kind: str, features: list[np.ndarray], y: np.ndarray, groups: np.ndarray, n_splits: int = 5,
               n_jobs: int = 1) -> dict:
    """Out-of-fold score with nested selection of layer and strength; also every layer's out-of-fold
    score at the strength its own inner search chose (the per-layer curve, descriptive only), and the
    layer and strength chosen in each outer fold (a strength at the end of the searched range says the
    range is too short). The outer folds run in ``n_jobs`` joblib worker processes (-1: every core); the
    scores do not depend on it."""
    from joblib import Parallel, delayed

    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise NeuroFMError(f"Only {n_groups} group(s) of windows; grouped cross-validation needs two or more recordings.")
    outer = list(GroupKFold(n_splits=min(n_splits, n_groups)).split(features[0], y, groups))
    folds = Parallel(n_jobs=min(n_jobs, len(outer)) if n_jobs > 0 else n_jobs)(
        delayed(_outer_fold)(kind, features, y, groups, train, test) for train, test in outer)
    predicted = np.empty(len(y), dtype=y.dtype if kind == "logistic" else float)
    per_layer = [np.empty_like(predicted) for _ in features]
    for (_, test), (layer, _, predictions) in zip(outer, folds):
        predicted[test] = predictions[layer]
        for p, fold_p in zip(per_layer, predictions):
            p[test] = fold_p
    return {"score": score(kind, y, predicted), "layers": [score(kind, y, p) for p in per_layer],
            "chosen_layers": [layer for layer, _, _ in folds], "chosen_strengths": [strength for _, strength, _ in folds],
            "folds": len(outer)}


def transfer(kind: str, train_features: list[np.ndarray], y_train: np.ndarray, groups_train: np.ndarray,
             test_features: list[np.ndarray], y_test: np.ndarray) -> dict:
    """Fit on one set of windows (layer and strength chosen inside it), score on another."""
    selected = select_and_fit(kind, train_features, y_train, groups_train)
    return {"score": score(kind, y_test, selected.model.predict(test_features[selected.layer])), "layer": selected.layer}


def few_labels(features: np.ndarray, y: np.ndarray, groups: np.ndarray, per_class: int, repeats: int, seed: int,
               strength: float = 0.1) -> dict:
    """Balanced accuracy with ``per_class`` labelled training windows per class, drawn from half of the
    recordings; tested on the other half. Mean and SD over ``repeats`` draws (fixed strength: too few
    labels to search one)."""
    rng = np.random.default_rng(seed)
    unique = np.unique(groups)
    if len(unique) < 2:
        raise NeuroFMError("few-label probes need windows of two or more recordings.")
    scores = []
    for _ in range(repeats):
        train_groups = rng.permutation(unique)[: len(unique) // 2]
        pool, test = np.flatnonzero(np.isin(groups, train_groups)), np.flatnonzero(~np.isin(groups, train_groups))
        picked = []
        for c in np.unique(y):
            candidates = pool[y[pool] == c]
            picked += list(rng.choice(candidates, size=min(per_class, len(candidates)), replace=False))
        picked = np.asarray(picked)
        if len(np.unique(y[picked])) < 2:
            continue
        model = make_probe("logistic", strength).fit(features[picked], y[picked])
        scores.append(score("logistic", y[test], model.predict(features[test])))
    return {"mean": float(np.mean(scores)) if scores else float("nan"), "sd": float(np.std(scores)) if scores else float("nan"),
            "repeats": len(scores)}


__all__ = ["few_labels", "grouped_cv", "make_probe", "select_and_fit", "transfer"]
