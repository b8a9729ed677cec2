"""User-facing errors.

Every error a user can cause (a bad file, a missing channel position, a NaN window, a config typo)
raises a subclass of :class:`NeuroFMError` whose message names the file or field and says how to fix
it. The CLI prints the message without a traceback.
"""


class NeuroFMError(Exception):
    """Base class of every error a user can cause and fix."""


class ConfigError(NeuroFMError):
    """A config file or override names an unknown field or holds an invalid value."""


class RecordingError(NeuroFMError):
    """A recording cannot be read or preprocessed (corrupt, truncated, not a recording, NaNs …)."""


class SensorPositionError(RecordingError):
    """A brain channel has no position from the file, a montage, an electrodes table or a positions file."""


class ShardError(NeuroFMError):
    """A shard or manifest is missing, truncated, corrupt or does not match its checksum."""


class TrainingInterrupted(NeuroFMError):
    """Training stopped early on SIGTERM (a scheduler's preemption, ``kill``) after saving a checkpoint: the
    run is not finished, and whatever follows it (an export, a benchmark's probes) must not treat it as done.
    Rerunning the same command resumes it. The CLI exits with 143 (128 + SIGTERM)."""

