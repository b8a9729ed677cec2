"""Labelled windows for finetuning: what each window is (class or target id), whose it is (subject),
which group it belongs to (for leak-free splits), and its codes, tokenized once.

The tokenizer is frozen, so every window's codes are computed once up front; training then runs only
the encoder on cached codes — or, when the encoder is frozen too, nothing of it: its token states are
computed once as well (:meth:`Windows.with_states`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from neurofm.data_shards.dataset import ShardIndex
from neurofm.errors import ConfigError, NeuroFMError
from neurofm.finetune.config import FinetuneConfig
from neurofm.finetune.encoder import BrainEncoder
from neurofm.finetune.probe import window_label
from neurofm.data_shards.batches import ordered_batches


@dataclass
class Windows:
    """Per window: ``codes`` [P, K, L] long and ``valid`` [N] bool (tokens holding signal), whose
    sizes differ between families (fMRI windows have fewer time patches); ``modality`` [n] long,
    ``y`` [n] (class name or target id), ``subjects`` [n], ``groups`` [n], ``keys`` [n] and
    ``shape_id`` [n] (windows of one code shape batch together); ``states``: per window, a frozen
    encoder's token states ([N, D], or [layers, N, D] for a layer mix) when they were computed once."""

    codes: list[torch.Tensor]
    modality: torch.Tensor
    valid: list[torch.Tensor]
    y: np.ndarray
    subjects: np.ndarray
    groups: np.ndarray
    keys: list[str]
    shape_id: np.ndarray
    states: list[torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.y)

    def batch(self, idx: np.ndarray, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
        """codes [B, P, K, L] (or, with ``states``, the token states [B, …, N, D]), modality [B], valid [B, N]
        and subjects of windows ``idx`` (one shape)."""
        inputs = self.codes if self.states is None else self.states
        return (torch.stack([inputs[i] for i in idx]).to(device), self.modality[idx].to(device),
                torch.stack([self.valid[i] for i in idx]).to(device), [str(s) for s in self.subjects[idx]])

    def with_states(self, encode, device, batch_size: int = 64) -> Windows:
        """A copy that holds every window's token states, ``encode(codes [B, P, K, L], modality [B])`` → [B, …],
        computed once (on ``device``, kept on the CPU) — for an encoder that cannot change."""
        states: list[torch.Tensor | None] = [None] * len(self)
        for idx in self.batches(np.arange(len(self)), batch_size, None):
            codes, modality, _, _ = self.batch(idx, device)
            for i, state in zip(idx, encode(codes, modality).float().cpu()):
                states[i] = state
        return replace(self, states=states)

    def batches(self, idx: np.ndarray, size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
        """``idx`` cut into batches of at most ``size`` windows of one code shape (shuffled with ``rng``)."""
        out = []
        for shape in np.unique(self.shape_id[idx]):
            part = idx[self.shape_id[idx] == shape]
            part = rng.permutation(part) if rng is not None else part
            out += [part[i : i + size] for i in range(0, len(part), size)]
        return [out[i] for i in rng.permutation(len(out))] if rng is not None else out


def event_onsets(metas, event: str) -> dict[str, float]:
    """Seconds from each recording's start to its first ``event``, from window ``metas`` (any order)."""
    onsets: dict[str, float] = {}
    for meta in metas:
        for e in meta.get("events", []):
            if e["label"] == event:
                t = float(meta["window_onset"]) + float(e["onset"])
                onsets[meta["source"]] = min(t, onsets.get(meta["source"], t))
    return onsets


def onset_side(meta: dict, onsets: dict[str, float]) -> str | None:
    """``before`` / ``after`` for a window wholly before / after its recording's onset; None if it spans it."""
    onset = onsets.get(meta["source"])
    if onset is None:
        return None
    t0 = float(meta["window_onset"])
    t1 = t0 + meta["window_samples"] / meta["sfreq"]
    return "before" if t1 <= onset else "after" if t0 >= onset else None


def window_y(meta: dict, cfg: FinetuneConfig, onsets: dict[str, float]) -> str | None:
    """The class (classification) or target id (other tasks) of a window; None leaves it out."""
    if cfg.task != "classification":
        return window_label(meta, None, cfg.target_key)
    if cfg.onset_event:
        return onset_side(meta, onsets)
    label = window_label(meta, cfg.labels or None, cfg.label_key)
    return label if not cfg.classes or label in cfg.classes else None


def check_label_settings(cfg: FinetuneConfig) -> None:
    if cfg.task == "classification":
        given = [n for n, v in (("label_key", cfg.label_key), ("labels", cfg.labels), ("onset_event", cfg.onset_event)) if v]
        if len(given) != 1:
            raise ConfigError(f"classification needs exactly one of label_key, labels or onset_event (given: {given or 'none'}).")
    else:
        if not cfg.targets or not cfg.target_key:
            raise ConfigError(f"task {cfg.task} needs targets=<folder from `neurofm targets`> and target_key=<meta field naming the target>.")


def load_windows(encoder: BrainEncoder, cfg: FinetuneConfig, batch_size: int = 32) -> Windows:
    """Every window of ``cfg.shards`` that has a label/target, tokenized by the release's tokenizer."""
    check_label_settings(cfg)
    index = ShardIndex(cfg.shards)
    onsets = event_onsets((index[i]["meta"] for i in range(len(index))), cfg.onset_event) if cfg.onset_event else {}
    if cfg.onset_event and not onsets:
        raise NeuroFMError(f"No window of {cfg.shards} holds the event '{cfg.onset_event}'; check onset_event.")
    codes, modality, valid, ys, subjects, groups, keys = [], [], [], [], [], [], []
    block_of: dict[str, int] = {}
    for batch in ordered_batches(index, range(len(index)), batch_size):
        keep = [i for i, m in enumerate(batch.metas) if window_y(m, cfg, onsets) is not None]
        if not keep:
            continue
        metas = [batch.metas[i] for i in keep]
        c = encoder.codes(batch.signal[keep], batch.sensors[keep], batch.channel_mask[keep], batch.family)
        n_valid = torch.tensor([m.get("n_valid_samples", m["window_samples"]) for m in metas])
        codes += list(c)
        modality.append(encoder.modality_ids([m["modality"] for m in metas]))
        valid += list(encoder.valid_tokens(c, n_valid, metas[0]["window_samples"]))
        for m in metas:
            y = window_y(m, cfg, onsets)
            subject = f"{m.get('dataset')}/{m.get(cfg.adapters.subject_key, m.get('labels', {}).get(cfg.adapters.subject_key))}"
            count = block_of.get(m["source"], 0)
            block_of[m["source"]] = count + 1
            groups.append({"subject": subject, "run": m["source"], "recording": m["source"], "stimulus": y,
                           "block": f"{m['source']}#{count // cfg.block}"}[cfg.group_by])
            ys.append(y)
            subjects.append(subject)
        keys += [batch.keys[i] for i in keep]
    if not ys:
        what = cfg.label_key or cfg.labels or cfg.onset_event if cfg.task == "classification" else cfg.target_key
        raise NeuroFMError(f"No window of {cfg.shards} carries a label for '{what}'; check the label / target settings.")
    shapes = [tuple(c.shape) for c in codes]
    shape_ids = {shape: i for i, shape in enumerate(sorted(set(shapes)))}
    return Windows(codes, torch.cat(modality), valid, np.asarray(ys), np.asarray(subjects), np.asarray(groups), keys,
                   np.array([shape_ids[s] for s in shapes]))


def grouped_split(windows: Windows, cfg: FinetuneConfig, attempts: int = 50) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train / validation / test indices, whole groups per split. Classification splits are redrawn
    until training holds every class and validation and test hold at least two."""
    groups = np.unique(windows.groups)
    if len(groups) < 3:
        raise NeuroFMError(f"Only {len(groups)} group(s) of '{cfg.group_by}' among the labelled windows; a train/val/test "
                           "split needs 3 or more (use a finer group_by, or a smaller block).")
    n = len(windows)
    classes = np.unique(windows.y)
    for attempt in range(attempts):
        order = np.random.default_rng(cfg.seed + attempt).permutation(groups)
        counts = np.array([(windows.groups == g).sum() for g in order])
        cumulative = np.cumsum(counts)
        n_test = max(1, int(np.searchsorted(cumulative, cfg.test_fraction * n)) + 1)
        n_val = max(1, int(np.searchsorted(cumulative, (cfg.test_fraction + cfg.val_fraction) * n)) + 1 - n_test)
        if n_test + n_val >= len(order):
            n_test, n_val = 1, 1
        test_g, val_g = order[:n_test], order[n_test : n_test + n_val]
        test = np.flatnonzero(np.isin(windows.groups, test_g))
        val = np.flatnonzero(np.isin(windows.groups, val_g))
        train = np.setdiff1d(np.arange(n), np.concatenate([test, val]))
        if cfg.task != "classification":
            return train, val, test
        if len(np.unique(windows.y[train])) == len(classes) and all(len(np.unique(windows.y[s])) >= 2 for s in (val, test)):
            return train, val, test
    raise NeuroFMError(f"No grouped split (group_by={cfg.group_by}) gives every class to training and two classes to validation "
                       "and test; use more data, a finer group_by or a smaller block.")


__all__ = ["Windows", "grouped_split", "load_windows", "window_y"]
