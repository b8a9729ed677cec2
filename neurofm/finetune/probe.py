"""``probe_release``: what does each layer of a release encode? Linear probes with grouped CV.

For every layer: standardised mean-pooled embeddings → logistic regression, ``GroupKFold`` so windows
of one group (a block of consecutive windows of one recording) never sit on both sides of a split.
Reported per layer, as the field does: balanced accuracy, AUROC (one-vs-rest for several classes),
Cohen's kappa and weighted F1 — each beside the chance level (balanced accuracy 1/n_classes, AUROC 0.5,
kappa 0) and a shuffled-label baseline (the same CV with labels permuted). Writes ``metrics.json``, the
per-layer curve and the best layer's confusion matrix as PNGs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import confusion_matrix, r2_score
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from neurofm.data_shards.dataset import ShardIndex
from neurofm.errors import NeuroFMError
from neurofm.finetune.encoder import BrainEncoder
from neurofm.finetune.metrics import classification_metrics
from neurofm.finetune.plots import save_confusion
from neurofm.tokenizers.data import ordered_batches


def window_label(meta: dict, labels: list[str] | None, key: str | None) -> str | None:
    """A window's label: ``meta[key]`` / ``meta['labels'][key]`` when ``key`` is given, else the first
    of its events whose label is in ``labels``."""
    if key is not None:
        value = meta.get(key, meta.get("labels", {}).get(key))
        return None if value is None else str(value)
    return next((e["label"] for e in meta.get("events", []) if e["label"] in (labels or [])), None)


def collect(encoder: BrainEncoder, shards: str | Path, labels: list[str] | None, key: str | None, block: int):
    """Embeddings [layers, n, D], labels [n] and groups [n] of every labelled window."""
    index = ShardIndex(shards)
    feats, ys, groups = [], [], []
    for batch in ordered_batches(index, range(len(index)), 32):
        keep = [i for i, m in enumerate(batch.metas) if window_label(m, labels, key) is not None]
        if not keep:
            continue
        emb = encoder.layer_embeddings(batch.signal[keep], batch.sensors[keep], batch.channel_mask[keep], batch.family,
                                       [batch.metas[i]["modality"] for i in keep])
        feats.append(emb.numpy())
        for i in keep:
            meta = batch.metas[i]
            ys.append(window_label(meta, labels, key))
            groups.append(f"{meta['source']}#{int(batch.indices[i]) // block}")
    if not ys:
        raise NeuroFMError(f"No window of {shards} carries any of the labels {labels or key}; check --labels / --label-key.")
    return np.concatenate(feats, axis=1), np.asarray(ys), np.asarray(groups)


def _cv_scores(x: np.ndarray, y: np.ndarray, groups: np.ndarray, n_splits: int) -> tuple[dict, np.ndarray]:
    classes = np.unique(y)
    predicted = np.empty_like(y)
    proba = np.zeros((len(y), len(classes)))
    for train, test in GroupKFold(n_splits=n_splits).split(x, y, groups):
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.5))
        clf.fit(x[train], y[train])
        predicted[test] = clf.predict(x[test])
        proba[np.ix_(test, np.searchsorted(classes, clf.classes_))] = clf.predict_proba(x[test])
    return classification_metrics(y, predicted, proba, classes), predicted


def _cv_ridge(x: np.ndarray, y: np.ndarray, groups: np.ndarray, n_splits: int) -> tuple[dict, np.ndarray]:
    predicted = np.empty_like(y)
    for train, test in GroupKFold(n_splits=n_splits).split(x, y, groups):
        reg = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 13)))
        reg.fit(x[train], y[train])
        predicted[test] = reg.predict(x[test])
    r = float(np.corrcoef(predicted, y)[0, 1]) if predicted.std() > 0 else 0.0
    return {"r2": float(r2_score(y, predicted)), "pearson_r": r}, predicted


def probe_ridge(encoder: BrainEncoder, release, shards, out: Path, label_key: str, n_splits: int, block: int, seed: int) -> dict:
    """Ridge probes of a numeric ``label_key`` (e.g. association strength): out-of-fold R² and
    Pearson r per layer beside a shuffled-target baseline (chance: R² ≤ 0, r ≈ 0)."""
    x, y, groups = collect(encoder, shards, None, label_key, block)
    try:
        y = y.astype(float)
    except ValueError:
        raise NeuroFMError(f"--ridge needs a numeric label; '{label_key}' has values like {y[:3].tolist()}.") from None
    n_splits = min(n_splits, len(np.unique(groups)))
    if n_splits < 2:
        raise NeuroFMError("The labelled windows form a single group; lower --group-block so cross-validation has folds.")
    shuffled = np.random.default_rng(seed).permutation(y)
    layers, best = [], (-np.inf, 0, None)
    for layer in range(x.shape[0]):
        scores, predicted = _cv_ridge(x[layer], y, groups, n_splits)
        layers.append({"layer": layer, **scores, "shuffled": _cv_ridge(x[layer], shuffled, groups, n_splits)[0]})
        if scores["r2"] > best[0]:
            best = (scores["r2"], layer, predicted)
    metrics = {"release": str(release), "shards": str(shards), "windows": int(len(y)), "target": label_key, "folds": n_splits,
               "grouping": f"blocks of {block} windows", "chance": {"r2": 0.0, "pearson_r": 0.0}, "layers": layers, "best_layer": best[1]}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    _plots(metrics, None, out, "r2", "R² (out of fold)", (y, best[2]))
    return metrics


def probe_release(release: str | Path, shards: str | Path, out: str | Path, *, labels: list[str] | None = None,
                  label_key: str | None = None, n_splits: int = 5, block: int = 10, seed: int = 0, ridge: bool = False) -> dict:
    """Probe every layer of ``release`` on the labelled windows of ``shards``; write results to ``out``.
    Logistic probes of classes, or (``ridge``) ridge probes of a numeric ``label_key``."""
    encoder = BrainEncoder.from_pretrained(release)
    if ridge:
        if not label_key:
            raise NeuroFMError("--ridge probes a numeric meta field: give --label-key.")
        Path(out).mkdir(parents=True, exist_ok=True)
        return probe_ridge(encoder, release, shards, Path(out), label_key, n_splits, block, seed)
    x, y, groups = collect(encoder, shards, labels, label_key, block)
    classes = np.unique(y)
    if len(classes) < 2:
        raise NeuroFMError(f"Only one class ({classes[0]}) among the labelled windows; a probe needs two or more.")
    n_splits = min(n_splits, len(np.unique(groups)))
    if n_splits < 2:
        raise NeuroFMError("The labelled windows form a single group; lower --group-block so cross-validation has folds.")
    shuffled = np.random.default_rng(seed).permutation(y)
    layers, best = [], (-1.0, 0, None)
    for layer in range(x.shape[0]):
        scores, predicted = _cv_scores(x[layer], y, groups, n_splits)
        baseline, _ = _cv_scores(x[layer], shuffled, groups, n_splits)
        layers.append({"layer": layer, **scores, "shuffled": baseline})
        if scores["balanced_accuracy"] > best[0]:
            best = (scores["balanced_accuracy"], layer, predicted)
    metrics = {
        "release": str(release), "shards": str(shards), "windows": int(len(y)), "classes": classes.tolist(),
        "class_counts": {str(c): int((y == c).sum()) for c in classes}, "folds": n_splits, "grouping": f"blocks of {block} windows",
        "chance": {"balanced_accuracy": 1 / len(classes), "auroc": 0.5, "kappa": 0.0}, "layers": layers, "best_layer": best[1],
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    _plots(metrics, confusion_matrix(y, best[2], labels=classes), out, "balanced_accuracy", "balanced accuracy")
    return metrics


def _plots(metrics: dict, confusion: np.ndarray | None, out: Path, key: str, label: str, scatter=None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [r["layer"] for r in metrics["layers"]]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(layers, [r[key] for r in metrics["layers"]], "o-", label="probe")
    ax.plot(layers, [r["shuffled"][key] for r in metrics["layers"]], "s--", color="grey", label="shuffled labels")
    ax.axhline(metrics["chance"][key], color="black", lw=0.8, label="chance")
    ax.set_xlabel("layer (0 = input embedding)")
    ax.set_ylabel(label)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "layers.png", dpi=90)
    plt.close(fig)
    if scatter is not None:
        fig, ax = plt.subplots(figsize=(3.5, 3))
        ax.scatter(*scatter, s=6)
        ax.set_xlabel("true")
        ax.set_ylabel("predicted (out of fold)")
        ax.set_title(f"layer {metrics['best_layer']}", fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "scatter.png", dpi=90)
        plt.close(fig)
        return
    save_confusion(confusion, metrics["classes"], out / "confusion.png", f"layer {metrics['best_layer']}")

__all__ = ["probe_release"]
