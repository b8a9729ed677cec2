"""``probe_release``: what does each layer of a release encode? Linear probes with grouped CV.

For every layer: standardised embeddings, pooled over the tokens that hold signal (``mean``, or
``time``: one mean per time patch, in order) → logistic regression, ``GroupKFold`` so windows of one
group (by default one recording; or one subject, or a block of consecutive windows) never sit on both
sides of a split. Reported per layer, as the field does: balanced accuracy, AUROC (one-vs-rest for
several classes), Cohen's kappa and weighted F1 — each beside the chance level (balanced accuracy
1/n_classes, AUROC 0.5, kappa 0), a shuffled-label baseline (the same CV with labels permuted), the
same architecture with random weights (every layer), and raw features of the same windows
(:mod:`neurofm.bench.features`: event-locked amplitudes, log-variance and log band powers per
channel), and — a second raw row for rhythms — their channel-averaged log spectrum alone. Writes ``metrics.json``, the per-layer curve and the best layer's confusion matrix as PNGs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import confusion_matrix, r2_score
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline

from neurofm.bench.features import feature_sets
from neurofm.bench.probes import make_features
from neurofm.data_shards.dataset import ShardIndex
from neurofm.devices import resolve_device
from neurofm.errors import NeuroFMError
from neurofm.finetune.config import EVENT_SPAN_SECONDS, PROBE_GROUPINGS
from neurofm.finetune.encoder import BrainEncoder, resolve_pooling
from neurofm.data_shards.windows import event_onset
from neurofm.finetune.metrics import classification_metrics
from neurofm.finetune.plots import save_confusion
from neurofm.distributed import barrier, map_batches, process_group
from neurofm.outputs import output_folder


def window_label(meta: dict, labels: list[str] | None, key: str | None) -> str | None:
    """A window's label: ``meta[key]`` / ``meta['labels'][key]`` when ``key`` is given, else the first
    of its events whose label is in ``labels``."""
    if key is not None:
        value = meta.get(key, meta.get("labels", {}).get(key))
        return None if value is None else str(value)
    return next((e["label"] for e in meta.get("events", []) if e["label"] in (labels or [])), None)


def window_group(meta: dict, position: int, group_by: str, block: int) -> str:
    """The CV group of a window: its recording, its subject, or its block of ``block`` windows."""
    if group_by == "recording":
        return str(meta["source"])
    if group_by == "subject":
        return f"{meta.get('dataset')}/{meta.get('subject')}"
    if group_by in ("block", "auto"):  # auto: decided in collect, once every window is known
        return f"{meta['source']}#{position // block}"
    raise NeuroFMError(f"unknown grouping '{group_by}'; use one of {', '.join(PROBE_GROUPINGS)}.")


def collect(encoder: BrainEncoder, shards: str | Path, labels: list[str] | None, key: str | None, block: int,
            group_by: str = "auto", pooling: str = "mean", random_seed: int | None = None, event_span: float = EVENT_SPAN_SECONDS):
    """Embeddings [layers, n, F], labels [n], groups [n] of every labelled window; with ``random_seed``,
    also the random-weights encoder's embeddings [layers, n, F] and raw features [n, F_raw]. Under
    ``torchrun`` each process embeds every world-th batch; rank 0 gets them all, in order (the arrays of
    one process), the other ranks None."""
    from neurofm.bench.embeddings import random_encoder
    from neurofm.bench.features import device_features

    index = ShardIndex(shards)
    random = random_encoder(encoder, random_seed) if random_seed is not None else None
    def embed(batch):
        keep = [i for i, m in enumerate(batch.metas) if window_label(m, labels, key) is not None]
        if not keep:
            return None
        metas = [batch.metas[i] for i in keep]
        n_valid = batch.time_mask[keep].sum(1)
        args = (batch.signal[keep], batch.sensors[keep], batch.channel_mask[keep], batch.family, [m["modality"] for m in metas], n_valid, pooling,
                [event_onset(m) for m in metas], event_span)
        part = {"metas": metas, "feats": encoder.layer_embeddings(*args).numpy()}
        if random is not None:
            part["random"] = random.layer_embeddings(*args).numpy()
            part["raw"] = [(batch.signal[i, : int(batch.channel_mask[i].sum()), : int(v)].numpy(), batch.metas[i]) for i, v in zip(keep, n_valid)]
        return part

    parts = map_batches(index, range(len(index)), 32, embed)
    if parts is None:  # ranks other than 0: rank 0 probes
        return None
    feats, random_feats, raw, ys, groups = [], [], [], [], []
    position: dict[str, int] = {}
    for part in parts:
        feats.append(part["feats"])
        if random is not None:
            random_feats.append(part["random"])
            raw += part["raw"]
        for meta in part["metas"]:
            ys.append(window_label(meta, labels, key))
            count = position.get(meta["source"], 0)
            position[meta["source"]] = count + 1
            groups.append(window_group(meta, count, group_by, block))
    if not ys:
        raise NeuroFMError(f"No window of {shards} carries any of the labels {labels or key}; check --labels / --label-key.")
    if group_by == "auto":
        recordings = {g.rsplit("#", 1)[0] for g in groups}
        groups = [g.rsplit("#", 1)[0] for g in groups] if len(recordings) >= 2 else groups
    if len({f.shape[2] for f in feats}) > 1:
        raise NeuroFMError(f"Windows of {shards} have different lengths, so '{pooling}' pooling gives vectors of different sizes; "
                           "use --pooling mean, or probe one window length at a time.")
    baselines = None
    if random is not None:
        baselines = {"random": np.concatenate(random_feats, axis=1), "raw": device_features(raw, labels)}
    return np.concatenate(feats, axis=1), np.asarray(ys), np.asarray(groups), baselines


def _cv_scores(x: np.ndarray, y: np.ndarray, groups: np.ndarray, n_splits: int) -> tuple[dict, np.ndarray]:
    classes = np.unique(y)
    predicted = np.empty_like(y)
    proba = np.zeros((len(y), len(classes)))
    for train, test in GroupKFold(n_splits=n_splits).split(x, y, groups):
        clf = make_pipeline(*[step for _, step in make_features().steps], LogisticRegression(max_iter=2000, C=0.5))
        clf.fit(x[train], y[train])
        predicted[test] = clf.predict(x[test])
        proba[np.ix_(test, np.searchsorted(classes, clf.classes_))] = clf.predict_proba(x[test])
    return classification_metrics(y, predicted, proba, classes), predicted


def _cv_ridge(x: np.ndarray, y: np.ndarray, groups: np.ndarray, n_splits: int) -> tuple[dict, np.ndarray]:
    predicted = np.empty_like(y)
    for train, test in GroupKFold(n_splits=n_splits).split(x, y, groups):
        reg = make_pipeline(*[step for _, step in make_features().steps], RidgeCV(alphas=np.logspace(-2, 4, 13)))
        reg.fit(x[train], y[train])
        predicted[test] = reg.predict(x[test])
    r = float(np.corrcoef(predicted, y)[0, 1]) if predicted.std() > 0 else 0.0
    return {"r2": float(r2_score(y, predicted)), "pearson_r": r}, predicted


def _grouping(groups: np.ndarray, group_by: str, block: int, n_splits: int) -> int:
    n_splits = min(n_splits, len(np.unique(groups)))
    if n_splits < 2:
        hint = "use --group-by block (with a smaller --group-block)" if group_by != "block" else "lower --group-block"
        raise NeuroFMError(f"The labelled windows form a single group ({group_by}); cross-validation needs two or more: {hint}.")
    return n_splits


def probe_release(release: str | Path, shards: str | Path, out: str | Path, *, labels: list[str] | None = None,
                  label_key: str | None = None, n_splits: int = 5, block: int = 10, seed: int = 0, ridge: bool = False,
                  group_by: str = "auto", pooling: str = "auto", device: str = "auto", event_span: float = EVENT_SPAN_SECONDS) -> dict:
    """Probe every layer of ``release`` on the labelled windows of ``shards``; write results to ``out``.

    Logistic probes of classes, or (``ridge``) ridge probes of a numeric ``label_key`` (R², Pearson r).
    Every layer is scored beside shuffled labels and the same architecture with random weights;
    raw features of the same windows give one more row (``baselines.raw``).
    """
    if ridge and not label_key:
        raise NeuroFMError("--ridge probes a numeric meta field: give --label-key.")
    torch_device = resolve_device(device)
    encoder = BrainEncoder.from_pretrained(release).to(torch_device)
    pooling = resolve_pooling(pooling, ShardIndex(shards).manifest, encoder.channel_tokens)
    collected = collect(encoder, shards, labels, label_key, block, group_by, pooling, random_seed=seed + 1, event_span=event_span)
    if collected is None:  # under torchrun, ranks other than 0 only embed their batches
        barrier(process_group()[1])
        return {}
    x, y, groups, baselines = collected
    if group_by == "auto":
        group_by = "block" if any("#" in g for g in groups) else "recording"
    if ridge:
        try:
            y = y.astype(float)
        except ValueError:
            raise NeuroFMError(f"--ridge needs a numeric label; '{label_key}' has values like {y[:3].tolist()}.") from None
        classes = None
    else:
        classes = np.unique(y)
        if len(classes) < 2:
            raise NeuroFMError(f"Only one class ({classes[0]}) among the labelled windows; a probe needs two or more.")
    n_splits = _grouping(groups, group_by, block, n_splits)
    cv = (lambda f, t: _cv_ridge(f, t, groups, n_splits)) if ridge else (lambda f, t: _cv_scores(f, t, groups, n_splits))
    key = "r2" if ridge else "balanced_accuracy"
    shuffled = np.random.default_rng(seed).permutation(y)
    layers, best = [], (-np.inf, 0, None)
    for layer in range(x.shape[0]):
        scores, predicted = cv(x[layer], y)
        layers.append({"layer": layer, **scores, "shuffled": cv(x[layer], shuffled)[0], "random_weights": cv(baselines["random"][layer], y)[0]})
        if scores[key] > best[0]:
            best = (scores[key], layer, predicted)
    grouping = f"blocks of {block} windows" if group_by == "block" else f"by {group_by}"
    metrics = {"release": str(release), "shards": str(shards), "windows": int(len(y)), "folds": n_splits, "grouping": grouping,
               "pooling": pooling, **({"event_span": event_span} if pooling == "event" else {}), "layers": layers, "best_layer": best[1], "raw_features": cv(baselines["raw"], y)[0]}
    raw_sets = feature_sets(baselines["raw"])
    if len(raw_sets) > 1:  # the spectrum alone: where a rhythm's frequency is linear
        metrics["raw_spectrum"] = cv(raw_sets[1], y)[0]
    if ridge:
        metrics |= {"target": label_key, "chance": {"r2": 0.0, "pearson_r": 0.0}}
    else:
        metrics |= {"classes": classes.tolist(), "class_counts": {str(c): int((y == c).sum()) for c in classes},
                    "chance": {"balanced_accuracy": 1 / len(classes), "auroc": 0.5, "kappa": 0.0}}
    out = Path(out)
    output_folder(out, "--out")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    if ridge:
        _plots(metrics, None, out, "r2", "R² (out of fold)", (y, best[2]))
    else:
        _plots(metrics, confusion_matrix(y, best[2], labels=classes), out, "balanced_accuracy", "balanced accuracy")
    barrier(process_group()[1])
    return metrics


def _plots(metrics: dict, confusion: np.ndarray | None, out: Path, key: str, label: str, scatter=None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [r["layer"] for r in metrics["layers"]]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(layers, [r[key] for r in metrics["layers"]], "o-", label="probe")
    ax.plot(layers, [r["random_weights"][key] for r in metrics["layers"]], "^-", color="tab:orange", label="random weights")
    ax.plot(layers, [r["shuffled"][key] for r in metrics["layers"]], "s--", color="grey", label="shuffled labels")
    ax.axhline(metrics["raw_features"][key], color="tab:green", ls=":", label="raw features")
    if "raw_spectrum" in metrics:
        ax.axhline(metrics["raw_spectrum"][key], color="tab:olive", ls="-.", label="raw spectrum")
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
