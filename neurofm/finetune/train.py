"""``neurofm finetune``: train a head (and optionally adapters, LoRA or encoder blocks) with Accelerate.

One command trains the model and its baselines on the same grouped split and writes, into ``out``:

- ``metrics.json``: test metrics of the model and of each baseline with chance levels, the split
  (groups, window counts), epochs run, best validation loss;
- ``head.safetensors``: the finetuned tensors (head, pooling, adapters, LoRA / unfrozen encoder
  weights) and ``config.json`` (the finetune config, classes or target info) — load with
  :func:`load_finetuned`;
- ``train_log.jsonl`` (loss per epoch), ``tensorboard/<training>/`` (the same as TensorBoard scalars, per
  training: model and each baseline), ``curves.png`` and ``confusion.png`` (classification) or
  ``similarity.png`` (retrieval).

Multi-GPU: launch with ``accelerate launch -m neurofm.cli finetune …`` (or torchrun); batches are
split across processes and the InfoNCE negatives are gathered from all of them.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from neurofm.config import from_dict, to_dict
from neurofm.errors import ConfigError, NeuroFMError
from neurofm.finetune.config import FinetuneConfig
from neurofm.finetune.data import Windows, grouped_split, load_windows
from neurofm.finetune.encoder import BrainEncoder
from neurofm.finetune.metrics import classification_chance, classification_metrics, k_way_retrieval, segment_identification
from neurofm.finetune.model import FinetuneModel, clip_loss, trainable_state
from neurofm.finetune.plots import save_confusion
from neurofm.finetune.progress import TrainingProgress, check_config, progress_root
from neurofm.outputs import check_output, replaced_folder
from neurofm.finetune.targets import load_targets
from neurofm.pretrain.model import MaskedCodeModel
from neurofm.training import MetricsLog
from neurofm.training.preemption import Preemption
from neurofm.training.checkpoint import FolderBackend, TrainState, capture_rng, restore_rng

logger = logging.getLogger("neurofm.finetune")
KNOWN_BASELINES = ("shuffled", "random_encoder")


def _encoder(cfg: FinetuneConfig, random_weights: bool = False) -> BrainEncoder:
    encoder = BrainEncoder.from_pretrained(cfg.release)
    if random_weights:
        torch.manual_seed(cfg.seed + 1)
        encoder = BrainEncoder(encoder.tokenizer, MaskedCodeModel(encoder.model.cfg).eval())
    return encoder


class Task:
    """What the head predicts: class indices, or rows of a target-embedding table."""

    def __init__(self, cfg: FinetuneConfig, windows: Windows):
        self.cfg = cfg
        if cfg.task == "classification":
            self.classes = np.unique(windows.y)
            self.index = np.searchsorted(self.classes, windows.y)
            self.n_outputs = len(self.classes)
            self.target_info: dict = {}
            self.class_weight: torch.Tensor | None = None
        else:
            ids, embeddings, info = load_targets(cfg.targets)
            expected = {"vision": "image", "text": "text", "speech": "speech"}[cfg.task]
            if info.get("kind") != expected:
                raise ConfigError(f"task {cfg.task} needs {expected} targets but {cfg.targets} holds {info.get('kind')} targets.")
            row = {t: i for i, t in enumerate(ids)}
            missing = sorted(set(windows.y) - set(row))
            if missing:
                raise NeuroFMError(f"{len(missing)} target id(s) of the windows are not in {cfg.targets} (e.g. {missing[:5]}); "
                                   f"compute targets for them or check target_key={cfg.target_key}.")
            self.index = np.array([row[t] for t in windows.y])
            self.embeddings = embeddings.float()
            self.n_outputs = embeddings.shape[1]
            self.target_info = {k: info.get(k) for k in ("kind", "model", "layer", "dim")}

    def balance(self, train: np.ndarray) -> None:
        """Class weights n / (classes · count) from the training windows (``class_weights: balanced``)."""
        if self.cfg.task == "classification" and self.cfg.class_weights == "balanced":
            counts = np.bincount(self.index[train], minlength=self.n_outputs).astype(float)
            self.class_weight = torch.tensor(len(train) / (self.n_outputs * np.maximum(counts, 1)), dtype=torch.float32)

    def loss(self, output: tuple, rows: torch.Tensor) -> torch.Tensor:
        out, logit_scale, lm_loss = output
        if self.cfg.task == "classification":
            weight = self.class_weight.to(out.device) if self.class_weight is not None else None
            return F.cross_entropy(out.float(), rows, weight=weight)
        target = self.embeddings.to(out.device)[rows]
        loss = clip_loss(out.float(), target, rows, logit_scale)
        if self.cfg.mse_weight:
            loss = loss + self.cfg.mse_weight * F.mse_loss(out.float(), target)
        if lm_loss is not None:
            loss = loss + self.cfg.lm_weight * lm_loss
        return loss


def _forward(model, windows: Windows, idx: np.ndarray, device, texts: bool = False):
    return model(*windows.batch(idx, device), [str(t) for t in windows.y[idx]] if texts else None)


#: Largest cache of a frozen encoder's token states (bytes, float32) kept in memory; beyond it each epoch
#: runs the encoder again.
FROZEN_STATES_BYTES = 4 * 2**30


def frozen_states(model: FinetuneModel, windows: Windows, accelerator) -> Windows:
    """With ``mode: frozen`` the encoder's token states cannot change, so they are computed once and every
    epoch trains the head alone (≈ an encoder pass per epoch saved); ``windows`` unchanged otherwise, or
    when the states would take more than ``FROZEN_STATES_BYTES``."""
    if model.cfg.mode != "frozen":
        return windows
    layers = model.encoder.n_layers if model.layer_mix is not None else 1
    size = sum(v.numel() for v in windows.valid) * model.encoder.d_model * 4 * layers
    if size > FROZEN_STATES_BYTES:
        logger.info("frozen encoder: its token states would take %.1f GB, so every epoch runs it again", size / 2**30)
        return windows

    @torch.no_grad()
    def encode(codes, modality):
        with accelerator.autocast():
            return model.token_states(codes, modality)

    return windows.with_states(encode, accelerator.device)


def train_one(cfg: FinetuneConfig, encoder: BrainEncoder, windows: Windows, task: Task, split, rows: np.ndarray,
              accelerator, init: dict | None = None, progress: TrainingProgress | None = None) -> tuple[FinetuneModel, list[dict]]:
    """Train one model on ``split``'s training windows, early-stopped on its validation windows;
    with ``progress``, checkpoint every epoch and resume from the last one."""
    from accelerate.utils import set_seed

    train, val, _ = split
    if cfg.adapters.train_only:  # only the new subjects' windows can move their adapters
        own = lambda idx: idx[np.isin(windows.subjects[idx], cfg.adapters.train_only)]  # noqa: E731
        if not len(own(train)):
            raise NeuroFMError(f"No training window belongs to adapters.train_only={cfg.adapters.train_only}; check the subject names "
                               f"(e.g. {sorted(set(windows.subjects))[:3]}).")
        train, val = own(train), (own(val) if len(own(val)) else val)
    set_seed(cfg.seed)
    # adapters for every subject of the data; one without training windows keeps the identity
    model = FinetuneModel(encoder, cfg, task.n_outputs, sorted({str(s) for s in windows.subjects}))
    if init:
        names = dict(model.named_parameters())
        for name, value in init.items():
            if name in names and names[name].shape == value.shape:
                with torch.no_grad():
                    names[name].copy_(value)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("Nothing to train: every parameter is frozen (check mode and adapters.train_only).")
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    inner = accelerator.unwrap_model(model)
    windows = frozen_states(inner, windows, accelerator)
    rows_t = torch.as_tensor(rows)
    rng = np.random.default_rng(cfg.seed)
    world, rank = accelerator.num_processes, accelerator.process_index
    history, best, best_loss, waited, first_epoch, done, windows_seen = [], None, float("inf"), 0, 0, False, 0
    checkpoints = progress.checkpoints(FolderBackend(optimizer=optimizer, tensors={
        "last": lambda: trainable_state(inner), "best": lambda: best})) if progress is not None else None
    resumed = checkpoints.latest() if checkpoints is not None else None
    if resumed is not None:  # resume: weights, optimizer, RNG states and counters of the last finished epoch
        tensors = checkpoints.load(resumed)
        inner.load_state_dict(tensors["last"], strict=False)
        best, state = tensors["best"], resumed.states[0]
        history, best_loss, waited, done = (state.extra[k] for k in ("history", "best_loss", "waited", "done"))
        first_epoch, windows_seen = state.step, state.windows_seen
        restore_rng(state.rng, numpy_generators={"order": rng})
        logger.info("resuming %s after epoch %d", progress.dir, first_epoch)
    log = progress.metrics_log(first_epoch, cfg.tensorboard) if progress is not None else MetricsLog("", enabled=False)
    # SIGTERM ends training after the epoch's checkpoint (without checkpoints, it ends the process as usual)
    with Preemption(enabled=checkpoints is not None) as preempted, log:
        for epoch in range(first_epoch, 0 if done else cfg.epochs):
            model.train()
            losses = []
            for batch in windows.batches(train, cfg.batch_size * world, rng):
                # every process takes an equal slice of the same global batch (same RNG everywhere), so the
                # gathered InfoNCE negatives have equal shapes; the few windows left over wait for another epoch
                batch = batch[: len(batch) - len(batch) % world]
                if len(batch) < 2 * world:
                    continue
                mine = batch[rank::world]
                windows_seen += len(batch)
                with accelerator.autocast():
                    out = _forward(model, windows, mine, accelerator.device, texts=bool(cfg.lm))
                    loss = task.loss(out, rows_t[mine].to(accelerator.device))
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.item())
            val_loss = evaluate_loss(inner, windows, task, val, rows_t, cfg.batch_size, accelerator)
            history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else None, "val_loss": val_loss})
            log.write({"step": epoch + 1, **history[-1]})
            if val_loss < best_loss - 1e-6:
                best, best_loss, waited = copy.deepcopy(trainable_state(inner)), val_loss, 0
            else:
                waited += 1
            stop = waited >= cfg.patience or epoch + 1 == cfg.epochs
            if progress is not None and progress.enabled:
                checkpoints.save(epoch + 1, TrainState(
                    step=epoch + 1, windows_seen=windows_seen, rng=capture_rng(numpy_generators={"order": rng}),
                    extra={"history": history, "best_loss": best_loss, "waited": waited, "done": stop}), {"training": progress.dir.name})
            if stop:
                break
            if preempted.requested:  # only with checkpoints, so with progress
                preempted.raise_if_stopped(progress.dir, epoch + 1, cfg.epochs, unit="epoch")
    if best is not None:
        inner.load_state_dict(best, strict=False)
    inner.eval()
    return inner, history


@torch.no_grad()
def evaluate_loss(model, windows, task, idx, rows_t, batch_size, accelerator) -> float:
    model.eval()
    total, count = 0.0, 0
    for batch in windows.batches(idx, max(batch_size, len(idx)), None):
        with accelerator.autocast():
            out = _forward(model, windows, batch, accelerator.device, texts=model.prefix_lm is not None)
            total += task.loss(out, rows_t[batch].to(accelerator.device)).item() * len(batch)
        count += len(batch)
    return total / max(count, 1)


@torch.no_grad()
def predict(model, windows: Windows, idx: np.ndarray, batch_size: int = 64) -> torch.Tensor:
    device = next(model.parameters()).device
    model.eval()
    batches = windows.batches(idx, batch_size, None)
    out = torch.cat([_forward(model, windows, b, device)[0].float().cpu() for b in batches])
    position = {w: i for i, w in enumerate(np.concatenate(batches))}
    return out[[position[w] for w in idx]]  # back in the order of idx


def test_metrics(model, windows: Windows, task: Task, test: np.ndarray, cfg: FinetuneConfig) -> tuple[dict, np.ndarray]:
    """The field's metrics on the test windows (see :mod:`neurofm.finetune.metrics`), and the matrix to plot."""
    out = predict(model, windows, test)
    y = windows.y[test]
    if cfg.task == "classification":
        proba = out.softmax(-1).numpy()
        predicted = task.classes[proba.argmax(1)]
        from sklearn.metrics import confusion_matrix

        return classification_metrics(y, predicted, proba, task.classes), confusion_matrix(y, predicted, labels=task.classes)
    brain = F.normalize(out, dim=-1)
    stimuli, first, truth = np.unique(y, return_index=True, return_inverse=True)
    targets = F.normalize(task.embeddings[task.index[test][first]], dim=-1)  # one row per distinct test stimulus
    sim = (brain @ targets.T).numpy()  # [segments, stimuli]
    proba = torch.from_numpy(sim * 10).softmax(-1).numpy()
    metrics = {
        "k_way_retrieval": k_way_retrieval(sim, truth, cfg.k_way, seed=cfg.seed),
        "segment_identification": segment_identification(sim, truth),
        "stimulus_classification": classification_metrics(y, stimuli[sim.argmax(1)], proba, stimuli),
    }
    if model.prefix_lm is not None:
        metrics["generation"] = generation_metrics(model, windows, test, cfg)
    return metrics, sim


@torch.no_grad()
def generation_metrics(model, windows: Windows, test: np.ndarray, cfg: FinetuneConfig) -> dict:
    """Greedy generations for the test windows: exact-match rate (case-insensitive), first-word match,
    and the rate of the most frequent test text (what always answering it would score)."""
    device = next(model.parameters()).device
    texts = []
    for batch in windows.batches(test, 32, None):
        texts += model.prefix_lm.generate(model.embed(*windows.batch(batch, device)), cfg.generate_tokens)
    order = np.concatenate(windows.batches(test, 32, None))
    truth = [str(t) for t in windows.y[order]]
    norm = lambda t: " ".join(t.lower().split())  # noqa: E731
    first = lambda t: (norm(t).split() or [""])[0]  # noqa: E731
    _, counts = np.unique([norm(t) for t in truth], return_counts=True)
    return {"exact_match": float(np.mean([norm(a) == norm(b) for a, b in zip(texts, truth)])),
            "first_word_match": float(np.mean([first(a) == first(b) for a, b in zip(texts, truth)])),
            "majority_rate": float(counts.max() / len(truth)),
            "samples": [{"truth": b, "generated": a} for a, b in zip(texts[:20], truth[:20])]}


def finetune(cfg: FinetuneConfig, progress: bool = True, overwrite: bool = False) -> dict:
    """Train the model and its baselines; write the run folder; return ``metrics.json``'s content.

    A finished run already in ``cfg.out`` is replaced only with ``overwrite``.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    unknown = sorted(set(cfg.baselines) - set(KNOWN_BASELINES))
    if unknown:
        raise ConfigError(f"baselines {unknown} are unknown; choose from {list(KNOWN_BASELINES)}.")
    if cfg.adapters.enabled and cfg.group_by == "subject":
        raise ConfigError("adapters need the test subjects in training: use group_by other than 'subject' with adapters.")
    check_output(cfg.out, {"release": cfg.release, "shards": cfg.shards, "targets": cfg.targets, "init_from": cfg.init_from},
                 overwrite=overwrite, option="out")
    # the pretraining model's decoder, mask embedding and head take no part in finetuning: DDP must allow that
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=not torch.cuda.is_available(),
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    encoder = _encoder(cfg)
    windows = load_windows(encoder, cfg)
    task = Task(cfg, windows)
    split = grouped_split(windows, cfg)
    task.balance(split[0])
    init = _init_state(cfg, task.n_outputs) if cfg.init_from else None
    root = progress_root(cfg.out)
    check_config(root, to_dict(cfg), cfg.allow_changed)
    track = lambda name: TrainingProgress(root, name, enabled=accelerator.is_main_process)  # noqa: E731
    model, history = train_one(cfg, encoder, windows, task, split, task.index, accelerator, init, track("model"))
    metrics, matrix = test_metrics(model, windows, task, split[2], cfg)
    results = {"model": {**metrics, "epochs": len(history), "best_val_loss": min(h["val_loss"] for h in history)}}
    untrained = sorted({str(s) for s in windows.subjects} - {str(s) for s in windows.subjects[split[0]]})
    if cfg.adapters.enabled and untrained:
        logger.warning("%d subject(s) have no training window; their adapters stay the identity: %s", len(untrained), untrained[:5])
    for name in cfg.baselines:
        rows = task.index.copy()
        if name == "shuffled":  # permute labels / targets among the training windows only
            rows[split[0]] = np.random.default_rng(cfg.seed + 7).permutation(rows[split[0]])
        baseline, _ = train_one(cfg, _encoder(cfg, random_weights=name == "random_encoder"), windows, task, split, rows,
                                accelerator, init, track(name))
        results[name] = test_metrics(baseline, windows, task, split[2], cfg)[0]
        if progress:
            logger.info("baseline %s done", name)
    chance = (classification_chance(windows.y[split[2]], task.classes) if cfg.task == "classification" else None)
    report = {
        "task": cfg.task, "release": cfg.release, "shards": cfg.shards, "mode": cfg.mode, "layer": cfg.layer,
        "pooling": cfg.pooling, "windows": len(windows),
        "split": {"group_by": cfg.group_by, **{n: {"windows": int(len(s)), "groups": int(len(np.unique(windows.groups[s])))}
                                               for n, s in zip(("train", "val", "test"), split)}},
        "classes": task.classes.tolist() if cfg.task == "classification" else None,
        "class_counts": {str(c): int((windows.y == c).sum()) for c in np.unique(windows.y)} if cfg.task == "classification" else None,
        "targets": task.target_info or None, "chance": chance, **results,
        "temperature": None if cfg.task == "classification" else float(torch.exp(-model.head.logit_scale.detach())),
        "layer_weights": model.layer_mix.weights.detach().cpu().tolist() if model.layer_mix is not None else None,
    }
    report["processes"] = accelerator.num_processes
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_run(cfg, model, task, report, history, matrix, windows, split)
        shutil.rmtree(root, ignore_errors=True)
    accelerator.wait_for_everyone()
    return report


def _init_state(cfg: FinetuneConfig, n_outputs: int) -> dict:
    path = Path(cfg.init_from) / "head.safetensors"
    if not path.is_file():
        raise NeuroFMError(f"init_from={cfg.init_from} holds no head.safetensors; give a finished `neurofm finetune` run.")
    run_config = path.parent / "config.json"
    trained_with = json.loads(run_config.read_text())["finetune"] if run_config.is_file() else {}
    # a head trained on other features (the pooling default was mean until 2026-12; layer was always −1 before 'mix')
    for key, default in (("pooling", "mean"), ("layer", -1)):
        value = trained_with.get(key, default) if trained_with else getattr(cfg, key)
        if value != getattr(cfg, key):
            raise ConfigError(f"init_from={cfg.init_from} was trained with {key}={value}, this run uses {key}={getattr(cfg, key)}; "
                              f"add {key}={value} to continue from it.")
    state = load_file(str(path))
    saved = state.get("head.final_layer.weight")
    if saved is not None and saved.shape[0] != n_outputs:
        raise NeuroFMError(f"init_from={cfg.init_from} has a head of {saved.shape[0]} outputs but this run needs {n_outputs} "
                           "(targets of another dimension, or other classes); use matching targets or drop init_from.")
    return state


def _write_run(cfg, model, task, report, history, matrix, windows, split) -> None:
    with replaced_folder(cfg.out) as tmp:
        state = trainable_state(model)
        save_file(state, str(tmp / "head.safetensors"))
        config = {"finetune": to_dict(cfg), "classes": report["classes"], "targets": report["targets"],
                  "subjects": model.adapters.names if model.adapters is not None else None, "n_outputs": task.n_outputs}
        (tmp / "config.json").write_text(json.dumps(config, indent=1))  # the folder appears whole, by rename
        (tmp / "train_log.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
        (tmp / "metrics.json").write_text(json.dumps(report, indent=1, default=float))
        _plots(tmp, cfg, history, matrix, report, windows.y[split[2]])
        if (progress_root(cfg.out) / "tensorboard").is_dir():
            shutil.copytree(progress_root(cfg.out) / "tensorboard", tmp / "tensorboard")


def _plots(out: Path, cfg, history, matrix, report, y_test) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax.plot(epochs, [h["val_loss"] for h in history], label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=90)
    plt.close(fig)
    if cfg.task == "classification":
        save_confusion(matrix, report["classes"], out / "confusion.png")
        return
    fig, ax = plt.subplots(figsize=(3.8, 3.2))
    order = np.argsort(y_test, kind="stable")
    im = ax.imshow(matrix[order], cmap="viridis", aspect="auto", interpolation="nearest")
    fig.colorbar(im, ax=ax)
    ax.set_xlabel("test stimulus (target)")
    ax.set_ylabel("test segment (by stimulus)")
    fig.tight_layout()
    fig.savefig(out / "similarity.png", dpi=90)
    plt.close(fig)


def load_finetuned(run: str | Path) -> FinetuneModel:
    """A finished finetune run as a model (release + the run's tensors), in eval mode."""
    run = Path(run)
    if not (run / "config.json").is_file() or not (run / "head.safetensors").is_file():
        raise NeuroFMError(f"{run} is not a finished `neurofm finetune` run (needs config.json and head.safetensors).")
    saved = json.loads((run / "config.json").read_text())
    cfg = from_dict(FinetuneConfig, saved["finetune"])
    model = FinetuneModel(BrainEncoder.from_pretrained(cfg.release), cfg, saved["n_outputs"], saved["subjects"] or [])
    state = load_file(str(run / "head.safetensors"))
    missing = set(state) - {n for n, _ in model.named_parameters()}
    if missing:
        raise NeuroFMError(f"{run}/head.safetensors holds tensors this model lacks ({sorted(missing)[:3]}); was the release changed?")
    model.load_state_dict(state, strict=False)
    return model.eval()


__all__ = ["finetune", "load_finetuned"]
