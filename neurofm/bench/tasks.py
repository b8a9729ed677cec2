"""The probe tasks of the representation benchmark, each scoring every column on the same splits.

- ``evoked``: which condition an event-locked window follows (balanced accuracy; grouped CV over
  recordings, within each device);
- ``regression``: a numeric ground-truth field such as the alpha peak frequency (R²; same splits);
- ``cross_device``: a probe fit on one device's windows, tested on another device's (embeddings and the
  oracle, whose source channels every device shares: raw features of two devices share no channels);
  refused when the two devices are the same;
- ``few_labels``: 5 / 10 / 20 labelled windows per class (balanced accuracy on other recordings);
- ``real_task``: a labelled task on real recordings (:class:`~neurofm.bench.config.RealTask`): grouped CV
  over runs or blocks of consecutive windows, every column.

Columns: the embeddings' (every layer), raw features, and on simulated windows the oracle (raw features
of the true sources, :mod:`neurofm.bench.oracle`) where the ground truth names the task's sources.
"""

from __future__ import annotations

import numpy as np

from neurofm.bench import probes
from neurofm.bench.embeddings import ProbeWindows, raw_columns
from neurofm.bench.oracle import oracle_column
from neurofm.errors import NeuroFMError

RAW = "raw"
ORACLE = "oracle"


def _rows(windows: ProbeWindows, key: str, classes: list[str] | None) -> np.ndarray:
    y = windows.field(key)
    ok = np.array([v is not None and (classes is None or v in classes) for v in y])
    return np.flatnonzero(ok)


def _columns(windows: ProbeWindows, rows: np.ndarray, raw_labels: list[str] | None, key: str | None = None) -> dict[str, list[np.ndarray]]:
    """Every column's feature sets for ``rows``: the embeddings' layers, raw features, and — for simulated
    windows whose ground truth names the sources of ``key`` — the oracle."""
    columns = {name: [layer[rows] for layer in layers] for name, layers in windows.columns.items()}
    columns[RAW] = raw_columns(windows, rows, raw_labels)
    oracle = oracle_column(windows, rows, key, windows.simulation, raw_labels) if key else None
    if oracle is not None:
        columns[ORACLE] = oracle
    return columns


def within_device(windows: ProbeWindows, kind: str, key: str, classes: list[str] | None = None,
                  devices: list[str] | None = None, n_jobs: int = 1) -> dict:
    """Grouped CV (groups = recordings) per device for every column: {device: {column: result}}
    (outer folds in ``n_jobs`` processes, see :func:`~neurofm.bench.probes.grouped_cv`)."""
    rows_all = _rows(windows, key, classes)
    device = windows.device()
    results = {}
    for dev in devices or sorted(set(device[rows_all])):
        rows = rows_all[device[rows_all] == dev]
        if len(rows) == 0:
            raise NeuroFMError(f"No labelled window of device '{dev}' for '{key}'.")
        y = windows.field(key)[rows]
        y = y.astype(str) if kind == "logistic" else y.astype(float)
        groups = windows.field("source")[rows].astype(str)
        results[dev] = {"windows": int(len(rows)), "recordings": int(len(np.unique(groups)))}
        for name, features in _columns(windows, rows, classes, key).items():
            results[dev][name] = probes.grouped_cv(kind, features, y, groups, n_jobs=n_jobs)
    return results


def cross_device(windows: ProbeWindows, key: str, classes: list[str], train_device: str, test_device: str) -> dict:
    """Fit on ``train_device``'s windows, test on ``test_device``'s, for every embedding column."""
    if train_device == test_device:
        raise NeuroFMError(f"cross-device transfer needs two different devices; got '{train_device}' twice.")
    rows_all = _rows(windows, key, classes)
    device = windows.device()
    train, test = rows_all[device[rows_all] == train_device], rows_all[device[rows_all] == test_device]
    for dev, rows in ((train_device, train), (test_device, test)):
        if len(rows) == 0:
            raise NeuroFMError(f"No labelled window of device '{dev}' in the probe set; check the benchmark's devices.")
    y = windows.field(key).astype(str)
    groups = windows.field("source").astype(str)
    modality = windows.field("modality").astype(str)
    out = {"train": train_device, "test": test_device, "train_windows": int(len(train)), "test_windows": int(len(test)),
           "modalities": [str(modality[train[0]]), str(modality[test[0]])]}
    for name, layers in windows.columns.items():
        out[name] = probes.transfer("logistic", [x[train] for x in layers], y[train], groups[train], [x[test] for x in layers], y[test])
    # the oracle's virtual channels are the conditions' sources, in A·m on every device: they transfer
    oracle = [oracle_column(windows, rows, key, windows.simulation, classes) for rows in (train, test)]
    if all(o is not None for o in oracle):
        out[ORACLE] = probes.transfer("logistic", oracle[0], y[train], groups[train], oracle[1], y[test])
    return out


def few_labels(windows: ProbeWindows, key: str, classes: list[str], per_class: list[int], layer_of: dict[str, int],
               repeats: int = 10, seed: int = 0, devices: list[str] | None = None) -> dict:
    """{device: {n: {column: {mean, sd}}}}; each embedding column at the layer ``layer_of[column]``."""
    rows_all = _rows(windows, key, classes)
    device = windows.device()
    out: dict = {}
    for dev in devices or sorted(set(device[rows_all])):
        rows = rows_all[device[rows_all] == dev]
        y = windows.field(key)[rows].astype(str)
        groups = windows.field("source")[rows].astype(str)
        columns = _columns(windows, rows, classes, key)
        out[dev] = {}
        for n in per_class:
            out[dev][n] = {name: probes.few_labels(layers[layer_of.get(name, 0)], y, groups, n, repeats, seed)
                           for name, layers in columns.items()}
    return out


def real_task_labels(windows: ProbeWindows, task) -> tuple[np.ndarray, np.ndarray]:
    """Class (None: left out) and CV group of every window for a :class:`RealTask`."""
    from neurofm.finetune.data import event_onsets, onset_side
    from neurofm.finetune.probe import window_group

    if task.onset_event:
        onsets = event_onsets(windows.metas, task.onset_event)
        if not onsets:
            raise NeuroFMError(f"real task '{task.name}': no window holds the event '{task.onset_event}'; check onset_event.")
        y = [onset_side(m, onsets) for m in windows.metas]
    else:
        y = [None if v is None or (task.classes and str(v) not in task.classes) else str(v) for v in windows.field(task.label_key)]
    position: dict[str, int] = {}
    groups = []
    for meta in windows.metas:
        count = position.get(meta["source"], 0)
        position[meta["source"]] = count + 1
        groups.append(window_group(meta, count, task.group_by, task.block))
    return np.asarray(y, dtype=object), np.asarray(groups)


def real_task(windows: ProbeWindows, task, n_jobs: int = 1) -> dict:
    """Grouped CV of every column on one real task: {windows, groups, classes, column: result}."""
    y, groups = real_task_labels(windows, task)
    rows = np.flatnonzero(y != None)  # noqa: E711 (element-wise)
    classes, counts = np.unique(y[rows].astype(str), return_counts=True)
    if len(classes) < 2:
        raise NeuroFMError(f"real task '{task.name}': the windows carry {len(classes)} class(es) ({classes.tolist()}); check its labels.")
    out = {"windows": int(len(rows)), "groups": int(len(np.unique(groups[rows]))),
           "classes": dict(zip(classes.tolist(), counts.tolist())), "chance": 1 / len(classes)}
    raw_labels = task.classes or None if task.label_key == "event" else None
    for name, features in _columns(windows, rows, raw_labels).items():
        out[name] = probes.grouped_cv("logistic", features, y[rows].astype(str), groups[rows], n_jobs=n_jobs)
    return out


__all__ = ["ORACLE", "RAW", "cross_device", "few_labels", "real_task", "real_task_labels", "within_device"]
