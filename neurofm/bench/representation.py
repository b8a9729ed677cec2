"""``run_representation_bench``: does a release's frozen representation carry the signal?

Builds its own corpus and goes through the real stages — simulated (plus real, when present)
recordings → signal shards → tokenizer → code shards → DeepSpeed pretraining → release — then scores
the release against the baselines a user would pick instead, on held-out subjects and devices:

1. evoked condition (3-way) within each device, grouped CV over recordings;
2. alpha peak frequency (ridge, R²), grouped CV over recordings within each device, on the continuous
   set (many short recordings of other held-out subjects: one alpha frequency per recording);
3. cross-device transfer (fit on one device, test on another);
4. few labels (5 / 10 / 20 windows per class);
5. tokenizer reconstruction beside the same-bitrate PCA codec, every modality of the continuous set;
6. masked-code accuracy per RVQ level beside the unigram and copy-nearest predictors;
7. real tasks on the recordings under ``real_root`` (``real_tasks``; their recordings are left out of
   the pretraining corpus).

Columns: the release (layer and regularisation chosen by inner CV; and its last layer), the same
architecture with random weights, the tokenizer alone (quantized latents), raw features, the oracle
(raw features of the simulator's true sources, where the ground truth names them), chance.
Writes ``results.json``, ``results.md`` and ``layers.png`` into ``out``.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from pathlib import Path

import numpy as np

from neurofm.bench.config import RepresentationBenchConfig
from neurofm.config import to_dict
from neurofm.data_shards.writer import sha256_file, write_text_atomic
from neurofm.errors import NeuroFMError

logger = logging.getLogger("neurofm.bench")


def check_held_out(corpus_manifest: dict, probe_manifest: dict, held_out_devices: list[str]) -> dict:
    """Refuse a benchmark whose pretraining corpus holds a held-out subject or device; returns what
    each side holds ({corpus,probe}: {devices, subjects}) for the report."""
    def holdings(manifest: dict) -> dict:
        truth = [r.get("ground_truth", {}) for r in manifest["recordings"]]
        return {"devices": sorted({str(t["device"]) for t in truth if "device" in t}),
                "subjects": sorted({f"{t['device']}/{t['subject']}" for t in truth if "subject" in t})}

    corpus, probe = holdings(corpus_manifest), holdings(probe_manifest)
    leaked = sorted(set(corpus["devices"]) & set(held_out_devices))
    if leaked:
        raise NeuroFMError(f"The pretraining corpus holds windows of the held-out device(s) {leaked}; remove them from corpus.")
    missing = sorted(set(held_out_devices) - set(probe["devices"]))
    if missing:
        raise NeuroFMError(f"The probe set has no windows of the held-out device(s) {missing}; add them to probe_set.")
    corpus_heads = {s.split("/")[1] for s in corpus["subjects"]}
    shared = sorted(corpus_heads & {s.split("/")[1] for s in probe["subjects"]})
    if shared:
        raise NeuroFMError(f"Subjects {shared} are in both the pretraining corpus and the probe set; use another probe_set.first_subject.")
    return {"corpus": corpus, "probe": probe, "held_out_devices": list(held_out_devices)}


def real_task_inputs(cfg: RepresentationBenchConfig) -> set[str]:
    """The input paths (relative to ``real_root``) of every real task: kept out of the pretraining corpus,
    so the real tasks score recordings the release never saw."""
    from neurofm.config import load_config
    from neurofm.data_shards.config import ShardsConfig

    return {spec.path for task in cfg.real_tasks for spec in load_config(ShardsConfig, task.shards, []).inputs}


def _shards_config(sim, out: Path, real: tuple[str, str] | None, exclude: set[str] = frozenset(), extra: list[str] = ()):
    from neurofm.config import load_config
    from neurofm.data_shards.config import ShardsConfig

    overrides = [*extra, f"out={out}"] + ([f"root={real[1]}"] if real else ["inputs=[]"])
    cfg = load_config(ShardsConfig, real[0] if real else None, overrides)
    cfg.inputs = [spec for spec in cfg.inputs if spec.path.rstrip("/") not in {p.rstrip("/") for p in exclude}]
    cfg.simulate = sim
    return cfg


def build_stages(cfg: RepresentationBenchConfig, progress: bool = False) -> dict:
    """Shards → tokenizer → codes → pretraining → release (each stage resumes); returns the paths."""
    from neurofm.config import load_config
    from neurofm.data_shards import build_shards
    from neurofm.pretrain.config import PretrainConfig
    from neurofm.pretrain.export import export_release
    from neurofm.pretrain.train import train_pretrain
    from neurofm.tokenizers.config import TokenizerTrainConfig
    from neurofm.tokenizers.encode import encode_shards
    from neurofm.tokenizers.train import train_tokenizer

    out = Path(cfg.out).resolve()
    shared = Path(cfg.stages_from).resolve() if cfg.stages_from else out
    if cfg.stages_from and not (shared / "corpus" / "manifest.json").is_file():
        raise NeuroFMError(f"stages_from={cfg.stages_from} holds no benchmark corpus (no corpus/manifest.json); give the out= "
                           "of an earlier run of this benchmark, or drop stages_from.")
    paths = {name: shared / name for name in ("corpus", "probe_set", "continuous_set", "tokenizer", "codes", "probe_codes")}
    paths.update({name: out / name for name in ("pretrain", "release")})
    real = (cfg.real_inputs, cfg.real_root) if cfg.real_inputs and cfg.real_root and Path(cfg.real_root).is_dir() else None
    timings = {}
    started = time.perf_counter()
    corpus = build_shards(_shards_config(cfg.corpus, paths["corpus"], real, real_task_inputs(cfg), cfg.corpus_overrides),
                          progress=progress)
    probe = build_shards(_shards_config(cfg.probe_set, paths["probe_set"], None), progress=progress)
    split = check_held_out(corpus, probe, cfg.held_out_devices)
    timings["shards_s"] = time.perf_counter() - started
    started = time.perf_counter()
    tok_cfg = load_config(TokenizerTrainConfig, cfg.tokenizer_config,
                          [*cfg.tokenizer_overrides, f"shards={paths['corpus']}", f"out={paths['tokenizer']}"])
    train_tokenizer(tok_cfg, progress=progress)
    timings["tokenizer_s"] = time.perf_counter() - started
    started = time.perf_counter()
    encode_shards(paths["tokenizer"], paths["corpus"], paths["codes"], progress=progress)
    encode_shards(paths["tokenizer"], paths["probe_set"], paths["probe_codes"], progress=progress)
    pre_cfg = load_config(PretrainConfig, cfg.pretrain_config,
                          [*cfg.pretrain_overrides, f"codes={paths['codes']}", f"out={paths['pretrain']}"])
    train_pretrain(pre_cfg, progress=progress)
    if not (paths["release"] / "config.json").is_file():
        export_release(paths["pretrain"], paths["release"])
    timings["pretrain_s"] = time.perf_counter() - started
    return {"paths": paths, "split": split, "real_data": real[1] if real else None, "timings": timings,
            "tokenizer": tok_cfg, "pretrain": pre_cfg}


def run_representation_bench(cfg: RepresentationBenchConfig, progress: bool = False) -> dict:
    """Build, train, probe; write ``results.json``, ``results.md`` and ``layers.png``; return the results.

    Each finished probe is kept in ``out/probes.partial.json`` (see :class:`FinishedProbes`), so a probe stage
    stopped part-way resumes at its first unfinished probe; the file goes once ``results.json`` is written."""
    from neurofm.bench import report, tasks
    from neurofm.bench.embeddings import collect
    from neurofm.bench.tokenizer_baseline import tokenizer_vs_pca
    from neurofm.pretrain.diagnostics import masked_code_report
    from neurofm.pretrain.export import from_pretrained

    stages = build_stages(cfg, progress)
    paths = stages["paths"]
    out = Path(cfg.out)
    started = time.perf_counter()
    build_continuous_set(cfg, paths, stages["split"], progress)
    finished = FinishedProbes(out / PARTIAL_PROBES, cfg, paths["release"])

    @functools.cache
    def probe_windows():
        return collect(paths["release"], paths["probe_set"], tuple(cfg.poolings), seed=cfg.seed, simulation=cfg.probe_set)

    def regression_windows():
        if cfg.continuous_set is None:
            return probe_windows()
        rows = modality_rows(paths["continuous_set"], cfg.regression_modalities)
        return collect(paths["release"], paths["continuous_set"], tuple(cfg.regression_poolings), seed=cfg.seed,
                       indices=rows, simulation=cfg.continuous_set)

    def probe_set_sizes():
        windows = probe_windows()
        return {"devices": sorted(set(windows.device())), "windows": len(windows.metas),
                "layers": len(windows.columns[f"release/{cfg.poolings[0]}"])}

    def cross_device():
        devices = set(probe_windows().device())
        return [tasks.cross_device(probe_windows(), "event", cfg.evoked_labels, a, b) for a, b in cfg.cross_device
                if a in devices and b in devices]

    sizes = finished.get_or_run("probe_set", probe_set_sizes)
    results: dict = {"config": to_dict(cfg), "split": stages["split"], "real_data": stages["real_data"], **sizes}
    results["evoked"] = finished.get_or_run(
        "evoked", lambda: tasks.within_device(probe_windows(), "logistic", "event", cfg.evoked_labels, n_jobs=cfg.probe_jobs))
    results["regression"] = finished.get_or_run(
        "regression", lambda: tasks.within_device(regression_windows(), "ridge", cfg.regression_key, n_jobs=cfg.probe_jobs))
    results["cross_device"] = finished.get_or_run("cross_device", cross_device)
    layer_of = {name: int(np.bincount([layer for dev in results["evoked"].values() for layer in dev[name]["chosen_layers"]]).argmax())
                for name in (f"{model}/{pooling}" for pooling in cfg.poolings for model in report.EMBEDDINGS)}
    results["few_labels"] = finished.get_or_run(
        "few_labels", lambda: tasks.few_labels(probe_windows(), "event", cfg.evoked_labels, cfg.few_labels, layer_of,
                                               cfg.few_label_repeats, cfg.seed))
    results["few_label_layers"] = layer_of
    probe_windows.cache_clear()  # every layer of every column of the probe set: gigabytes the later probes don't need
    results["tokenizer"] = finished.get_or_run(
        "tokenizer", lambda: tokenizer_vs_pca(paths["tokenizer"], paths["continuous_set"], out / "tokenizer_eval"))
    pre = stages["pretrain"]
    results["masked_codes"] = finished.get_or_run(
        "masked_codes", lambda: masked_code_report(from_pretrained(paths["release"]), paths["codes"], paths["probe_codes"],
                                                   mask_ratio=pre.model.mask_ratio, masking=pre.model.masking, seed=cfg.seed))
    results["real_tasks"] = run_real_tasks(cfg, paths["release"], out / "real_tasks", finished)
    stages["timings"]["probes_s"] = time.perf_counter() - started
    results["timings"] = {k: round(v, 1) for k, v in stages["timings"].items()}
    results["targets"] = report.targets(results, cfg)
    write_text_atomic(out / "results.json", json.dumps(results, indent=1, default=_json_default))
    (out / "results.md").write_text(report.markdown(results, cfg))
    report.figure(results, cfg, out / "layers.png")
    finished.path.unlink(missing_ok=True)
    return results


PARTIAL_PROBES = "probes.partial.json"


#: Config fields that cannot change a probe's result: a run resumed with another value keeps its finished probes.
RESULT_NEUTRAL_FIELDS = ("probe_jobs",)


def _result_key(key):
    """``key`` with the :data:`RESULT_NEUTRAL_FIELDS` left out of its config (anything else: unchanged)."""
    if not isinstance(key, dict) or not isinstance(key.get("config"), dict):
        return key
    return {**key, "config": {k: v for k, v in key["config"].items() if k not in RESULT_NEUTRAL_FIELDS}}


class FinishedProbes:
    """The probe results a run has finished so far, kept in ``path`` after each probe.

    Each value is stored as its JSON form and returned in that form whether it was just computed or read
    back, so a resumed run reports exactly what an uninterrupted one would (dict keys become strings, as in
    ``results.json``). The file holds the run's config (but :data:`RESULT_NEUTRAL_FIELDS`) and the sha256 of
    the release's weights; one written for another config or release is set aside (renamed ``*.stale``) and
    every probe runs again.
    """

    def __init__(self, path: Path, cfg: RepresentationBenchConfig, release: Path):
        self.path = Path(path)
        self.key = _result_key({"config": json.loads(json.dumps(to_dict(cfg), default=_json_default)),
                                "release_sha256": sha256_file(Path(release) / "model.safetensors")})
        self.done: dict = {}
        if self.path.exists():
            try:
                stored = json.loads(self.path.read_text())
            except (OSError, json.JSONDecodeError) as err:
                raise NeuroFMError(f"{self.path} is not readable JSON ({err}); delete it to run every probe again.") from err
            if _result_key(stored.get("key")) == self.key:  # a file from before a field was found neutral still counts
                self.done = stored["done"]
                logger.info("probes resume from %s: %s already done (delete it to run them again)", self.path, ", ".join(self.done))
            else:
                self.path.replace(self.path.with_name(self.path.name + ".stale"))
                logger.info("%s was written for another config or release: set aside as *.stale, every probe runs", self.path)

    def get_or_run(self, name: str, probe):
        """The stored result of probe ``name``, else ``probe()`` (stored before it is returned)."""
        if name not in self.done:
            self.done[name] = json.loads(json.dumps(probe(), default=_json_default))
            write_text_atomic(self.path, json.dumps({"key": self.key, "done": self.done}, default=_json_default))
        return self.done[name]


def build_continuous_set(cfg: RepresentationBenchConfig, paths: dict, split: dict, progress: bool = False) -> None:
    """Build the continuous set (only the full benchmark probes it) and check its subjects are held out;
    without one, ``paths['continuous_set']`` is the probe set."""
    from neurofm.data_shards import build_shards
    from neurofm.data_shards.dataset import ShardIndex

    if cfg.continuous_set is None:
        paths["continuous_set"] = paths["probe_set"]
        return
    continuous = build_shards(_shards_config(cfg.continuous_set, paths["continuous_set"], None), progress=progress)
    split["continuous"] = check_held_out(ShardIndex(paths["corpus"]).manifest, continuous, [])["probe"]


def modality_rows(shards: str | Path, modalities: list[str]) -> np.ndarray:
    """Sample indices of the windows of ``shards`` whose recording has one of ``modalities`` (from the manifest)."""
    from neurofm.data_shards.dataset import ShardIndex

    rows = np.flatnonzero(np.isin(ShardIndex(shards).modality_of, modalities))
    if not len(rows):
        raise NeuroFMError(f"{shards} holds no windows of {modalities}; add them to continuous_set.modalities or change "
                           "regression_modalities.")
    return rows


def run_real_tasks(cfg: RepresentationBenchConfig, release: Path, work: Path, finished: FinishedProbes | None = None) -> dict:
    """{task name: result} of every real task (shards built once into ``work``); {} without ``real_root``.
    With ``finished``, a task already scored is read back from it and a newly scored one stored in it."""
    from neurofm.bench import tasks
    from neurofm.bench.embeddings import collect
    from neurofm.config import load_config
    from neurofm.data_shards import build_shards
    from neurofm.data_shards.config import ShardsConfig

    if not cfg.real_tasks or not cfg.real_root or not Path(cfg.real_root).is_dir():
        logger.info("real tasks skipped: real_root=%s is not a folder", cfg.real_root)
        return {}

    def score(i, task):
        shards = work / f"task{i}" / "shards"
        build_shards(load_config(ShardsConfig, task.shards, [f"root={cfg.real_root}", f"out={shards}"]), progress=False)
        return tasks.real_task(collect(release, shards, tuple(cfg.poolings), seed=cfg.seed), task, n_jobs=cfg.probe_jobs)

    out = {}
    for i, task in enumerate(cfg.real_tasks):
        out[task.name] = (finished.get_or_run(f"real_tasks/{task.name}", lambda: score(i, task)) if finished
                          else score(i, task))
    return out


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


__all__ = ["FinishedProbes", "PARTIAL_PROBES", "build_continuous_set", "build_stages", "check_held_out", "modality_rows", "real_task_inputs", "run_real_tasks", "run_representation_bench"]
