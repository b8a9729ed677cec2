"""Configuration of ``neurofm finetune`` (YAML + dotted overrides, as every stage)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Task = Literal["classification", "vision", "text", "speech"]
Mode = Literal["frozen", "last_k", "full", "lora"]
Pooling = Literal["mean", "query", "attention"]
GroupBy = Literal["subject", "run", "recording", "stimulus", "block"]
#: ``neurofm probe``: CV groups (``auto``: recordings when there are two or more, else blocks of
#: consecutive windows), and how token states become one vector per window (see
#: :func:`neurofm.finetune.encoder.pool_tokens`).
PROBE_GROUPINGS = ("auto", "recording", "subject", "block")
TOKEN_POOLINGS = ("mean", "time", "flat", "power", "event", "cov")
#: ``neurofm probe`` / ``embed`` also take ``auto``: ``event`` when every window is locked to an event
#: (epochs, evoked), else ``flat`` when every window has one token count, else ``mean`` (the
#: representation benchmark's winners: ``event`` for event-locked windows, ``flat`` before it).
PROBE_POOLINGS = ("auto", *TOKEN_POOLINGS)
#: Seconds after a window's event that ``event`` pooling keeps; the raw-feature baseline's event-locked
#: amplitude bins (``neurofm.bench.features.EVENT_BINS``) split the same span, so both read the same latencies.
EVENT_SPAN_SECONDS = 0.4


@dataclass(kw_only=True)
class LoraSettings:
    """LoRA (peft) on the encoder's attention and MLP projections (``mode: lora``).

    Parameters
    ----------
    rank, alpha, dropout
        LoRA rank r, scaling alpha (updates are scaled by alpha / r) and dropout on its input.
    target_modules : list of str
        Names of the encoder's linear layers that get adapters (``qkv``, ``proj``, MLP ``mlp.0`` / ``mlp.2``).
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["qkv", "proj", "mlp.0", "mlp.2"])

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"rank must be at least 1; got {self.rank}.")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1); got {self.dropout}.")


@dataclass(kw_only=True)
class AdapterSettings:
    """Per-subject adapters: one D × D linear layer per subject (identity at start) on the pooled
    embedding, before the head.

    Parameters
    ----------
    enabled : bool
        Use adapters.
    subject_key : str
        The ``meta.json`` field naming a window's subject (``subject``; ``dataset/subject`` pairs are
        used so equal ids of different datasets stay apart).
    train_only : list of str
        Train only these subjects' adapters (new subjects added to a finetuned run, ``init_from``);
        every other parameter stays frozen. Empty: train every trainable part.
    """

    enabled: bool = False
    subject_key: str = "subject"
    train_only: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class FinetuneConfig:
    """``neurofm finetune``: a release, labelled signal shards and a head.

    Parameters
    ----------
    release : str
        Release directory (``neurofm export``).
    shards : str
        Signal shards whose windows carry the labels (``neurofm shards build``).
    out : str
        Run folder: ``metrics.json``, ``head.safetensors``, ``config.json``, ``train_log.jsonl``, plots.
    task : 'classification' | 'vision' | 'text' | 'speech'
        A classifier, or a contrastive head onto target embeddings (``neurofm targets``).
    label_key : str | None
        Classification label: a ``meta.json`` or ``labels.*`` field (``event`` for event-locked windows).
    labels : list of str
        Or: event labels; a window's label is its first such event.
    onset_event : str | None
        Or: the name of an event (e.g. ``eeg sz start``); windows that end before it are ``before``,
        windows that start after it ``after``, the window holding it is left out.
    classes : list of str
        Keep only windows of these classes (all when empty).
    targets : str | None
        Target folder (``neurofm targets``) for vision / text / speech heads.
    target_key : str | None
        The ``meta.json`` / ``labels.*`` field whose value is a window's target id (e.g. ``event`` for
        face/house, ``association`` for the N400 words, ``stimulus`` for the speech set).
    layer : int | 'mix'
        Encoder layer the head reads (−1: the last, normed; 0: the input embedding), or ``mix``: a learned
        softmax-weighted sum of every layer's token states, each layer-normed first (the SUPERB benchmark's
        weighted-sum read-out of a frozen self-supervised encoder), so no layer has to be picked — the
        probes find the small release's best layer in its middle, not at the end (benchmarks/RESULTS.md
        item 32). The learned weights are reported in ``metrics.json`` (``layer_weights``).
    pooling : 'mean' | 'query' | 'attention'
        Tokens → one embedding: mean over valid tokens, a learned CLS-style query (multi-head
        attention), or attention pooling (a learned score per token, softmax-weighted mean; the
        default: a plain mean washes a short evoked response out of a window — benchmarks/RESULTS.md).
    mode : 'frozen' | 'last_k' | 'full' | 'lora'
        What of the encoder trains: nothing (a linear probe when the head is linear), the last
        ``last_k`` blocks, everything, or LoRA adapters (``lora``).
    head_hidden : int
        Hidden width of the contrastive heads' MLP (0: a linear projection).
    temperature : float
        Initial InfoNCE temperature τ; the head learns s = log(1/τ) with logits = exp(s) · cos,
        s clamped to ≤ log(100) (CLIP's parameterisation).
    learn_temperature : bool
        Learn s (else τ stays fixed).
    mse_weight : float
        Weight of an extra MSE between the head's output and the target embedding.
    group_by : 'subject' | 'run' | 'recording' | 'stimulus' | 'block'
        Windows of one group never sit in two splits (stimulus: test stimuli are unseen in training).
    block : int
        Consecutive windows per group for ``group_by: block``.
    val_fraction, test_fraction : float
        Fractions of windows (whole groups) held out for early stopping and for the test metrics.
    epochs, batch_size, lr, weight_decay, patience
        Training: at most ``epochs`` passes, AdamW; stop after ``patience`` epochs without a better
        validation loss and keep the best epoch's weights.
    mixed_precision : 'no' | 'bf16' | 'fp16'
        Accelerate's mixed precision (GPU).
    baselines : list of str
        Trained and scored beside the model, same split and settings: ``shuffled`` (training labels
        or targets permuted) and ``random_encoder`` (the same encoder with random weights).
    k_way : int
        k of the k-way retrieval metric (capped by the test stimuli available).
    lm : str | None
        Text task only: a local causal-LM directory (``transformers``); the pooled brain embedding
        becomes ``lm_prefix_tokens`` soft-prompt vectors and the frozen LM learns to continue with the
        window's text (loss weight ``lm_weight``); test windows get greedy generations
        (``generation`` in metrics.json: exact-match rate, samples).
    class_weights : 'balanced' | 'none'
        Classification: weight each class's cross-entropy by n / (classes · its count) among the training
        windows, so a rare class is not given up for the majority (``none``: plain cross-entropy).
    init_from : str | None
        A finetune run whose head, pooling and adapters to start from (e.g. to add new subjects).
    seed : int
        Seed of the split, initialisation and shuffling.
    tensorboard : bool
        Log each training's epochs as TensorBoard scalars (``tensorboard/<training>/`` in the run folder).
    allow_changed : list of str
        Settings a resume may change on purpose (e.g. ``steps`` for a longer schedule); any other
        setting that changes the trajectory must equal the checkpoint's (``--allow-changed KEY``).
    """

    release: str
    shards: str
    out: str = "runs/finetune"
    task: Task = "classification"
    label_key: str | None = None
    labels: list[str] = field(default_factory=list)
    onset_event: str | None = None
    classes: list[str] = field(default_factory=list)
    targets: str | None = None
    target_key: str | None = None
    layer: int | Literal["mix"] = -1
    pooling: Pooling = "attention"
    mode: Mode = "frozen"
    last_k: int = 1
    lora: LoraSettings = field(default_factory=LoraSettings)
    adapters: AdapterSettings = field(default_factory=AdapterSettings)
    head_hidden: int = 0
    dropout: float = 0.1
    temperature: float = 0.07
    learn_temperature: bool = True
    mse_weight: float = 0.0
    group_by: GroupBy = "block"
    block: int = 5
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    epochs: int = 50
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    class_weights: Literal["balanced", "none"] = "balanced"
    patience: int = 8
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    baselines: list[str] = field(default_factory=lambda: ["shuffled", "random_encoder"])
    k_way: int = 10
    lm: str | None = None
    lm_weight: float = 1.0
    lm_prefix_tokens: int = 4
    generate_tokens: int = 8
    init_from: str | None = None
    seed: int = 0
    tensorboard: bool = True
    allow_changed: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        checks = [
            ("epochs", self.epochs >= 1, "at least 1"), ("batch_size", self.batch_size >= 2, "at least 2"),
            ("patience", self.patience >= 1, "at least 1"), ("last_k", self.last_k >= 1, "at least 1"),
            ("block", self.block >= 1, "at least 1"), ("k_way", self.k_way >= 2, "at least 2"),
            ("temperature", self.temperature > 0, "positive"), ("lr", self.lr > 0, "positive"),
            ("val_fraction", 0 < self.val_fraction < 1, "in (0, 1)"), ("test_fraction", 0 < self.test_fraction < 1, "in (0, 1)"),
            ("lm_prefix_tokens", self.lm_prefix_tokens >= 1, "at least 1"), ("mse_weight", self.mse_weight >= 0, "≥ 0"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"{name} must be {rule}; got {getattr(self, name)}.")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(f"val_fraction + test_fraction must leave at least 10 % for training; got "
                             f"{self.val_fraction} + {self.test_fraction}.")
