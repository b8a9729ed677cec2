"""Config of ``neurofm shards build``: which recordings, how to preprocess them, how to shard them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Modality = Literal["eeg", "meg", "ieeg", "fmri"]


MIN_WINDOW_SAMPLES = 16  # a window shorter than this holds less than any tokenizer patch


@dataclass(kw_only=True)
class ElectrophysiologyPreprocess:
    """MNE preprocessing and windowing of one electrophysiology modality.

    Parameters
    ----------
    sfreq : float
        Rate every recording is resampled to, in Hz.
    l_freq, h_freq : float | None
        Band-pass edges in Hz (``None`` disables that edge). ``h_freq`` must lie below the
        recording's Nyquist frequency, otherwise the build stops with an error.
    notch : bool
        Notch the line frequency and its harmonics below ``h_freq``.
    line_freq : float
        Line frequency in Hz when the file does not state it.
    window_seconds : float
        Window length in seconds.
    overlap : float
        Fraction of a window shared with the next one, in [0, 1).
    """

    sfreq: float = 256.0
    l_freq: float | None = 0.5
    h_freq: float | None = 45.0
    notch: bool = True
    line_freq: float = 50.0
    window_seconds: float = 2.0
    overlap: float = 0.0

    def __post_init__(self) -> None:
        if self.sfreq <= 0:
            raise ValueError(f"sfreq must be positive; got {self.sfreq}.")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"overlap must be in [0, 1); got {self.overlap}.")
        if self.window_seconds * self.sfreq < MIN_WINDOW_SAMPLES:
            raise ValueError(f"window_seconds ({self.window_seconds} s) holds {self.window_seconds * self.sfreq:.2f} samples at "
                             f"{self.sfreq:g} Hz; windows need at least {MIN_WINDOW_SAMPLES} (one tokenizer patch is 0.25 s).")
        if self.h_freq is not None and self.h_freq >= self.sfreq / 2:
            raise ValueError(
                f"h_freq ({self.h_freq} Hz) must be below half of sfreq ({self.sfreq} Hz); "
                "raise sfreq or lower h_freq."
            )
        if self.l_freq is not None and self.h_freq is not None and self.l_freq >= self.h_freq:
            raise ValueError(f"l_freq ({self.l_freq}) must be below h_freq ({self.h_freq}).")


@dataclass(kw_only=True)
class FmriPreprocess:
    """fMRI volumes → parcel time series.

    Parameters
    ----------
    tr_seconds : float
        Repetition time every run is resampled to, in seconds.
    n_parcels : int
        Parcels of the built-in data-driven (Ward) parcellation when no atlas is given; capped at a
        tenth of the voxels in the brain mask.
    detrend : bool
        Remove a linear trend per parcel before z-scoring.
    window_seconds, overlap : float
        Windowing as for electrophysiology.
    """

    tr_seconds: float = 2.0
    n_parcels: int = 64
    detrend: bool = True
    window_seconds: float = 16.0
    overlap: float = 0.5

    def __post_init__(self) -> None:
        if self.tr_seconds <= 0:
            raise ValueError(f"tr_seconds must be positive; got {self.tr_seconds}.")
        if self.n_parcels < 2:
            raise ValueError(f"n_parcels must be at least 2; got {self.n_parcels}.")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"overlap must be in [0, 1); got {self.overlap}.")


@dataclass(kw_only=True)
class BadChannelDetection:
    """Flat / noisy channel detection on the filtered signal (per sensor kind).

    A channel is flat when it is constant, or its spread (IQR / 1.349) is below ``flat_ratio`` times
    the median of its kind; noisy when the robust z-score of its log spread exceeds ``noisy_z``.
    """

    flat_ratio: float = 0.01
    noisy_z: float = 5.0


@dataclass(kw_only=True)
class EventEpochs:
    """One window per event of a continuous recording, instead of fixed windows.

    Parameters
    ----------
    events : list of str
        Annotation descriptions to epoch on (e.g. ``[T1, T2]`` or ``[face, house]``); each window's
        ``labels.event`` is its event's description.
    tmin, tmax : float
        Window start and end relative to the event, in seconds (cut after filtering and resampling;
        windows longer than the modality's ``window_seconds`` are cropped to it).
    """

    events: list[str]
    tmin: float = -0.2
    tmax: float = 0.8


#: Formats stored as a folder (CTF ``.ds``, EGI ``.mff``): one recording each, never searched inside.
RECORDING_FOLDERS = (".ds", ".mff")
#: File endings of electrophysiology recordings (what a forced ``modality`` may apply to, and what a folder input
#: takes for recordings: what ``mne.io.read_raw`` reads, one main file per recording — Curry 8 ``.cdt`` and
#: Curry 7 ``.dap``, eXimia ``.nxe``, Neuroelectrics ``.nedf``). A Nihon Kohden ``.eeg`` counts too when its
#: ``.21e`` sits beside it (BrainVision's ``.eeg`` is found through its ``.vhdr``). fMRI runs: FMRI_EXTENSIONS.
RAW_EXTENSIONS = (".edf", ".bdf", ".gdf", ".fif", ".fif.gz", ".set", ".vhdr", ".sqd", ".con", ".lay", ".cnt",
                  ".cdt", ".dap", ".nxe", ".nedf") + RECORDING_FOLDERS
FMRI_EXTENSIONS = (".nii", ".nii.gz")
#: 4D Neuroimaging / BTi MEG files have no ending: a processed data file is named ``c,rf…`` (continuous) or ``e,rf…``
#: (epoched at acquisition) and counts as a recording when the acquisition's ``config`` sits beside it (head-coil
#: localisation runs, ``…,COH``, do not).
BTI_PREFIXES = ("c,rf", "e,rf")


@dataclass(kw_only=True)
class InputSpec:
    """One recording, folder, glob or BIDS root, and how to read it.

    Parameters
    ----------
    path : str
        A file, a folder (searched recursively), a glob, or a BIDS root (it has
        ``dataset_description.json``). Relative paths are relative to ``ShardsConfig.root``.
    modality : str | None
        ``eeg``, ``meg``, ``ieeg`` or ``fmri``; inferred from the file when ``None``.
    montage : str | None
        An MNE built-in montage for EEG channels without positions in the file (``colin27_1005``,
        MNE's 10-05 template, by default).
    rename_channels : dict
        Old name → new name, applied first (e.g. to give numbered channels their 10-20 labels).
    rename_events : dict
        Old event label → new, for continuous recordings: annotation descriptions and trigger codes on
        stim channels, which read as ``stim/<code>`` (e.g. ``{stim/1: f12, stim/2: f15}``); applied before
        ``epochs`` picks its events.
    electrodes : str | None
        A BIDS ``*_electrodes.tsv`` (name, x, y, z); found automatically beside ``*_ieeg.*`` files.
    positions : str | None
        An explicit positions table (TSV/CSV with name, x, y, z; metres, or millimetres when values
        exceed 1).
    channel_types : dict
        Glob pattern on channel names → type (``seeg``, ``ecog``, ``eeg``, ``ecg``, ``eog``,
        ``misc`` …); first match wins. Needed for sEEG/ECoG in EDF files, which have no such types.
    missing_positions : 'raise' | 'drop'
        What to do with a brain channel that has no position: stop with an error (default) or drop
        it and record it in the manifest.
    atlas : str | None
        fMRI: a NIfTI label image on the same grid as the run.
    tr_seconds : float | None
        ROI-table CSVs: the repetition time of the rows, in seconds.
    preprocess : dict
        Overrides of this modality's preprocessing for these files only (e.g. ``{h_freq: 20}``).
    dataset : str | None
        Name recorded in every sample's ``meta.json`` (default: the parent folder's name).
    epochs : EventEpochs | None
        Cut continuous recordings into event-locked windows (see :class:`EventEpochs`); fMRI runs too,
        with tmin / tmax in seconds. Refused for files that are already epochs or evoked responses.
    events : str | None
        fMRI: a BIDS events table (``onset``, ``duration``, ``trial_type``) for this run; by default the
        ``*_events.tsv`` beside it is used when there is one.
    """

    path: str
    modality: Modality | None = None
    montage: str | None = None
    electrodes: str | None = None
    positions: str | None = None
    rename_channels: dict[str, str] = field(default_factory=dict)
    rename_events: dict[str, str] = field(default_factory=dict)
    channel_types: dict[str, str] = field(default_factory=dict)
    missing_positions: Literal["raise", "drop"] = "raise"
    atlas: str | None = None
    tr_seconds: float | None = None
    preprocess: dict[str, Any] = field(default_factory=dict)
    dataset: str | None = None
    epochs: EventEpochs | None = None
    events: str | None = None

    def __post_init__(self) -> None:
        name = self.path.lower()
        if self.modality == "fmri" and name.endswith(RAW_EXTENSIONS + (".eeg",)):
            raise ValueError(f"modality: fmri cannot apply to {self.path}, an EEG/MEG/iEEG recording format; drop 'modality' "
                             "or give eeg, meg or ieeg.")
        if self.modality in ("eeg", "meg", "ieeg") and name.endswith(FMRI_EXTENSIONS):
            raise ValueError(f"modality: {self.modality} cannot apply to {self.path}, a NIfTI image; drop 'modality' or give fmri.")


SIMULATED_MODALITIES = ("eeg", "meg", "seeg", "ecog", "fmri")


@dataclass(kw_only=True)
class SimulateConfig:
    """Simulated recordings written into the same shards as real ones (``neurofm simulate``).

    Parameters
    ----------
    hours : float
        Total hours of recording, split evenly over ``modalities``.
    modalities : list of str
        Any of ``eeg``, ``meg``, ``seeg``, ``ecog``, ``fmri``.
    recording_seconds : float
        Length of each electrophysiology recording.
    fmri_run_seconds : float
        Length of each fMRI run.
    subjects : int
        Distinct heads per device (head size and position vary between them).
    first_subject : int
        Number of the first subject (``sub-NN`` in the recording names); a corpus of held-out subjects
        starts where the training corpus's subjects end.
    eeg_montages, meg_helmets : list of str
        Devices ("sites") cycled through; each site has its own sampling rate and line frequency. EEG:
        any MNE built-in montage, ``classic_1020``, or the bipolar ``double_banana``.
    seed : int
        Everything simulated is a function of this seed.
    cache_dir : str | None
        Where gain matrices are cached (default ``~/.cache/neurofm/gains``).
    source_spacing_mm : float
        Volume source-space grid spacing.
    n_regions : int
        Regions (coherent source patches, and fMRI parcels) per head.
    epochs : EventEpochs | None
        Cut the electrophysiology recordings into event-locked windows (as ``inputs[].epochs``); every
        window keeps the recording's ground truth in its labels. fMRI runs follow ``fmri_epochs``.
    fmri_epochs : EventEpochs | None
        Cut the fMRI runs into windows locked to the onsets of their blocks (``tmin`` / ``tmax`` in
        seconds; e.g. 0 … 16 s, the block and the haemodynamic response's rise and peak), labelled by
        the block's condition; None: continuous windows.
    device_views : bool
        Make every EEG and MEG recording on each device of its modality from the same sources (same
        scenario, events and rhythms; each device its own sensor noise, bad channels and blinks) instead
        of cycling through the devices. The views of one recording share a ``scene`` in their ground truth;
        the tokenizer's view losses (``loss.view_consistency``, ``loss.view_reconstruction``) pair them.
        ``hours`` counts every view.
    meeg_views : bool
        With ``device_views``: MEG recordings share the EEG recordings' scenes, as in a simultaneous M/EEG
        recording (the same sources, the EEG site's sampling rate and line frequency), so a scene has views
        on every EEG montage and every MEG helmet. Needs the same number of EEG and MEG recordings (the
        defaults: equal hours per modality).
    """

    hours: float = 0.05
    modalities: list[str] = field(default_factory=lambda: list(SIMULATED_MODALITIES))
    recording_seconds: float = 60.0
    fmri_run_seconds: float = 240.0
    subjects: int = 4
    first_subject: int = 0
    eeg_montages: list[str] = field(default_factory=lambda: ["biosemi64", "classic_1020", "GSN-HydroCel-129"])
    meg_helmets: list[str] = field(default_factory=lambda: ["neuromag306", "ctf275", "kit157"])
    seed: int = 0
    cache_dir: str | None = None
    source_spacing_mm: float = 10.0
    n_regions: int = 32
    epochs: EventEpochs | None = None
    fmri_epochs: EventEpochs | None = None
    device_views: bool = False
    meeg_views: bool = False

    def __post_init__(self) -> None:
        if not self.hours > 0:
            raise ValueError(f"hours must be positive; got {self.hours}.")
        unknown = [m for m in self.modalities if m not in SIMULATED_MODALITIES]
        if unknown or not self.modalities:
            raise ValueError(
                f"modalities must be some of {', '.join(SIMULATED_MODALITIES)}; got {', '.join(self.modalities) or 'none'}."
            )
        if self.recording_seconds < 2 or self.fmri_run_seconds < 30:
            raise ValueError("recording_seconds must be at least 2 and fmri_run_seconds at least 30.")
        if self.subjects < 1:
            raise ValueError(f"subjects must be at least 1; got {self.subjects}.")
        if self.first_subject < 0:
            raise ValueError(f"first_subject must be 0 or more; got {self.first_subject}.")
        if self.meeg_views and not self.device_views:
            raise ValueError("meeg_views needs device_views: true (it makes MEG share the EEG recordings' scenes).")


@dataclass(kw_only=True)
class ClusterConfig:
    """A Dask cluster of batch jobs (dask-jobqueue) that ``shards build`` starts and runs its recordings on.

    Parameters
    ----------
    kind : 'slurm' | 'pbs'
        The batch system.
    jobs : int
        Batch jobs to submit; each runs ``cores`` single-threaded Dask worker processes.
    cores, memory, walltime : int, str, str
        Per job (``memory`` like ``16GB``; ``walltime`` ``HH:MM:SS``).
    queue, account : str | None
        Partition / queue and account to submit to.
    job_extra : list of str
        Extra scheduler directives, e.g. ``["--exclusive"]``.
    """

    kind: Literal["slurm", "pbs"] = "slurm"
    jobs: int = 1
    cores: int = 4
    memory: str = "16GB"
    walltime: str = "02:00:00"
    queue: str | None = None
    account: str | None = None
    job_extra: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.jobs < 1 or self.cores < 1:
            raise ValueError(f"cluster.jobs and cluster.cores must be at least 1; got {self.jobs}, {self.cores}.")


@dataclass(kw_only=True)
class ShardsConfig:
    """Everything ``neurofm shards build`` needs.

    Parameters
    ----------
    inputs : list of InputSpec
        The recordings.
    simulate : SimulateConfig | None
        Simulated recordings added after the inputs.
    root : str
        Folder that relative input paths start from.
    out : str
        Output folder for shards and ``manifest.json``.
    samples_per_shard : int
        Windows per tar shard.
    signal_dtype : 'float32' | 'float16'
        dtype of ``signal.npy``.
    clip : float
        Scaled signals are clipped to ±clip (robust-scale units).
    on_error : 'raise' | 'skip'
        A recording that cannot be read or preprocessed stops the build (default; completed shards
        stay and a rerun resumes) or is skipped and listed under ``skipped`` in the manifest.
    cluster : ClusterConfig | None
        Run the recordings on a SLURM / PBS cluster started through dask-jobqueue (``out`` must be on
        a file system its nodes share). Where the build runs never changes the shards.
    """

    inputs: list[InputSpec] = field(default_factory=list)
    simulate: SimulateConfig | None = None
    root: str = "."
    out: str = "shards"
    samples_per_shard: int = 256
    signal_dtype: Literal["float32", "float16"] = "float32"
    clip: float = 20.0
    on_error: Literal["raise", "skip"] = "raise"
    cluster: ClusterConfig | None = None
    eeg: ElectrophysiologyPreprocess = field(default_factory=ElectrophysiologyPreprocess)
    meg: ElectrophysiologyPreprocess = field(default_factory=ElectrophysiologyPreprocess)
    ieeg: ElectrophysiologyPreprocess = field(
        default_factory=lambda: ElectrophysiologyPreprocess(h_freq=90.0, line_freq=50.0)
    )
    fmri: FmriPreprocess = field(default_factory=FmriPreprocess)
    bad_channels: BadChannelDetection = field(default_factory=BadChannelDetection)

    def __post_init__(self) -> None:
        if self.samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be at least 1; got {self.samples_per_shard}.")
        if self.clip <= 0:
            raise ValueError(f"clip must be positive; got {self.clip}.")
