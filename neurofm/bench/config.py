"""Config of ``neurofm bench representation`` (YAML + dotted overrides, as every stage)."""

from __future__ import annotations

from dataclasses import dataclass, field

from neurofm.data_shards.config import EventEpochs, SimulateConfig


def _probe_set() -> SimulateConfig:
    return SimulateConfig(hours=0.5, modalities=["eeg", "meg"], subjects=3, first_subject=50, seed=1001,
                          eeg_montages=["biosemi64", "GSN-HydroCel-129"], meg_helmets=["neuromag306", "ctf275", "kit157"],
                          recording_seconds=40.0, epochs=EventEpochs(events=["auditory", "visual", "somatosensory"], tmin=-0.5, tmax=1.5))


def _continuous_set() -> SimulateConfig:
    return SimulateConfig(hours=0.6, modalities=["eeg", "meg", "seeg", "ecog", "fmri"], subjects=3, first_subject=60, seed=1002,
                          eeg_montages=["biosemi64", "GSN-HydroCel-129"], meg_helmets=["neuromag306", "kit157"],
                          recording_seconds=10.0)


@dataclass(kw_only=True)
class RealTask:
    """A labelled task on real recordings (``real_root``), probed with every column of the benchmark.

    Parameters
    ----------
    name : str
        Row name in the table.
    shards : str
        A shards config (``configs/examples/*.yaml``) whose ``root`` is replaced by ``real_root``.
    label_key : str | None
        The window field that holds the class (``event`` …); or
    onset_event : str | None
        an annotation: windows wholly before / after its first onset are the two classes.
    classes : list of str
        Classes kept (all when empty).
    group_by : str
        CV groups: ``recording`` (a run) or ``block`` (``block`` consecutive windows of one recording).
    pooling : str | None
        The pooling its target counts on, declared by the kind of its windows rather than picked by
        score (``flat`` for continuous windows, which have no event for ``event`` pooling to lock to);
        None: the benchmark's first.
    """

    name: str
    shards: str
    label_key: str | None = None
    onset_event: str | None = None
    classes: list[str] = field(default_factory=list)
    group_by: str = "recording"
    block: int = 10
    pooling: str | None = None

    def __post_init__(self) -> None:
        if (self.label_key is None) == (self.onset_event is None):
            raise ValueError(f"real task '{self.name}' needs exactly one of label_key or onset_event.")
        if self.group_by not in ("recording", "block") or self.block < 1:
            raise ValueError(f"real task '{self.name}': group_by is 'recording' or 'block' (block ≥ 1); got {self.group_by}, {self.block}.")


def _real_tasks() -> list[RealTask]:
    return [
        RealTask(name="Muse face vs house (by run)", shards="configs/examples/muse_face_house.yaml", label_key="event",
                 classes=["face", "house"], group_by="recording"),
        RealTask(name="EEGMMIDB fists vs feet", shards="configs/examples/eegmmidb_motor.yaml", label_key="event",
                 classes=["T1", "T2"], group_by="block", block=2),
        RealTask(name="N400 related vs unrelated", shards="configs/examples/n400_words.yaml", label_key="event",
                 classes=["related", "unrelated"], group_by="block", block=10),
        RealTask(name="ECoG seizure: before vs after onset", shards="configs/examples/ecog_seizure.yaml",
                 onset_event="eeg sz start", group_by="block", block=4, pooling="flat"),
    ]


@dataclass(kw_only=True)
class RepresentationBenchConfig:
    """Everything the representation benchmark builds, trains and measures.

    Parameters
    ----------
    out : str
        Work folder: shards, tokenizer, codes, pretraining run, release, ``results.json``,
        ``results.md`` and ``layers.png``. Rerunning resumes (every stage is resumable).
    corpus : SimulateConfig
        The simulated pretraining corpus (subjects from 0, its own devices).
    corpus_overrides : list of str
        Dotted overrides of the pretraining corpus's shards config (its preprocessing and windowing, e.g.
        ``eeg.window_seconds=4.0``); the probe and continuous sets keep theirs, so every candidate is
        probed on the same windows. The simulator's settings go in ``corpus``.
    real_inputs, real_root : str | None
        A shards config whose inputs join the pretraining corpus (the real recordings,
        ``configs/shared_data.yaml`` over ``../shared/data``) — used when ``real_root`` exists.
    probe_set : SimulateConfig
        Labelled event-locked windows of held-out subjects (``first_subject`` past the corpus's, another
        seed) on the corpus's devices and on ``held_out_devices``.
    continuous_set : SimulateConfig | None
        Continuous windows of other held-out subjects, in many short recordings, on every modality:
        the ground-truth regression (the alpha peak frequency is one value per recording, so a probe of
        it needs many recordings per device; run on ``regression_modalities``) and the tokenizer's
        reconstruction beside the PCA codec for every modality. Without it both use the probe set.
    held_out_devices : list of str
        Devices (montages, helmets) that no pretraining window comes from; checked.
    tokenizer_config, pretrain_config : str
        Preset YAML files of the tokenizer and the masked-code model.
    tokenizer_overrides, pretrain_overrides : list of str
        Dotted overrides on top of the presets (e.g. ``steps=1500``).
    poolings : list of str
        How token states become a window's vector (see :func:`neurofm.finetune.encoder.pool_tokens`); the
        first is the headline. ``event`` pools only event-locked windows, so the continuous set's
        regression leaves it out.
    evoked_labels : list of str
        Classes of the evoked task (the probe set's epoch events).
    regression_key : str
        Numeric ground truth probed with ridge (the alpha peak frequency).
    regression_modalities : list of str
        The continuous set's modalities the regression runs on (fMRI has no alpha rhythm).
    regression_pooling : str | None
        The pooling whose release column the regression's target is checked on, declared here rather
        than picked by its test score (``cov`` for a rhythm's frequency); None: the first of
        :attr:`regression_poolings`.
    cross_device : list of [train, test]
        Device pairs for transfer probes.
    few_labels : list of int
        Labelled windows per class for the few-label probes; ``few_label_repeats`` draws each.
    real_tasks : list of RealTask
        Labelled tasks on the real recordings under ``real_root`` (skipped, and said so, without them).
    seed : int
        Seed of the random-weights column, masks of the diagnostics and label draws.
    probe_jobs : int
        Processes the probes' outer cross-validation folds run in (joblib; -1: every core). The scores
        do not depend on it.
    stages_from : str | None
        Another benchmark run's ``out`` whose corpus, probe set, tokenizer and codes this run reuses, so a
        pretraining candidate costs only pretraining and probes. Those stages still run there (each
        resumes, so a finished one is a no-op): a config that differs on them is refused by the stage
        (e.g. the tokenizer's resume check) rather than silently mixed.
    """

    out: str = "runs/bench_representation"
    corpus: SimulateConfig = field(default_factory=lambda: SimulateConfig(
        hours=1.0, subjects=8, eeg_montages=["biosemi64", "classic_1020"], meg_helmets=["neuromag306", "ctf275"]))
    corpus_overrides: list[str] = field(default_factory=list)
    real_inputs: str | None = "configs/shared_data.yaml"
    real_root: str | None = "../shared/data"
    probe_set: SimulateConfig = field(default_factory=_probe_set)
    continuous_set: SimulateConfig | None = field(default_factory=_continuous_set)
    held_out_devices: list[str] = field(default_factory=lambda: ["GSN-HydroCel-129", "kit157"])
    tokenizer_config: str = "configs/tokenizer_tiny.yaml"
    tokenizer_overrides: list[str] = field(default_factory=list)
    pretrain_config: str = "configs/pretrain_tiny.yaml"
    pretrain_overrides: list[str] = field(default_factory=list)
    poolings: list[str] = field(default_factory=lambda: ["event", "flat", "time", "power", "cov"])
    evoked_labels: list[str] = field(default_factory=lambda: ["auditory", "visual", "somatosensory"])
    regression_key: str = "alpha_hz"
    regression_modalities: list[str] = field(default_factory=lambda: ["eeg", "meg"])
    regression_pooling: str | None = None
    cross_device: list[list[str]] = field(default_factory=lambda: [
        ["biosemi64", "GSN-HydroCel-129"], ["neuromag306", "ctf275"], ["neuromag306", "kit157"], ["biosemi64", "neuromag306"]])
    few_labels: list[int] = field(default_factory=lambda: [5, 10, 20])
    few_label_repeats: int = 50
    real_tasks: list[RealTask] = field(default_factory=_real_tasks)
    seed: int = 0
    probe_jobs: int = -1
    stages_from: str | None = None

    @property
    def regression_poolings(self) -> list[str]:
        """The poolings of the regression task: all but ``event`` when it runs on the continuous set."""
        return [p for p in self.poolings if self.continuous_set is None or p != "event"]

    def __post_init__(self) -> None:
        from neurofm.finetune.config import TOKEN_POOLINGS

        unknown = [p for p in self.poolings if p not in TOKEN_POOLINGS]
        if unknown or not self.poolings:
            raise ValueError(f"poolings must be some of {', '.join(TOKEN_POOLINGS)}; got {self.poolings}.")
        if not self.regression_poolings:
            raise ValueError(f"poolings {self.poolings} leave none for the continuous set's regression (its windows have no event); "
                             "add flat or power.")
        if self.regression_pooling is not None and self.regression_pooling not in self.regression_poolings:
            raise ValueError(f"regression_pooling ({self.regression_pooling}) must be one of poolings {self.regression_poolings}.")
        for task in self.real_tasks if self.real_root else []:
            if task.pooling is not None and task.pooling not in self.poolings:
                raise ValueError(f"real task '{task.name}': pooling {task.pooling} is not one of poolings {self.poolings}.")
        owned = [o for o in self.corpus_overrides if o.split("=")[0].split(".")[0].split("[")[0] in ("simulate", "out", "root", "inputs")]
        if owned:
            raise ValueError(f"corpus_overrides {owned}: the benchmark sets the corpus's simulate, out, root and inputs itself; "
                             "give simulator settings under corpus (e.g. corpus.hours=3.0), real inputs in real_inputs.")
        if self.probe_jobs == 0 or self.probe_jobs < -1:
            raise ValueError(f"probe_jobs is a number of processes (≥ 1) or -1 for every core; got {self.probe_jobs}.")
        for pair in self.cross_device:
            if len(pair) != 2 or pair[0] == pair[1]:
                raise ValueError(f"cross_device pairs are [train device, another test device]; got {pair}.")
        if self.probe_set.epochs is None:
            raise ValueError("probe_set.epochs must be set: the evoked task needs event-locked windows.")
        if self.continuous_set is not None and self.continuous_set.epochs is not None:
            raise ValueError("continuous_set.epochs must be null: its windows are continuous (the probe set holds the event-locked ones).")
        for name in ("probe_set", "continuous_set"):
            held = getattr(self, name)
            if held is None:
                continue
            if held.first_subject < self.corpus.first_subject + self.corpus.subjects:
                raise ValueError(f"{name}.first_subject ({held.first_subject}) must come after the corpus's subjects "
                                 f"({self.corpus.first_subject}…{self.corpus.first_subject + self.corpus.subjects - 1}).")
            if held.seed == self.corpus.seed:
                raise ValueError(f"{name}.seed must differ from corpus.seed, so no held-out recording repeats a training one.")
