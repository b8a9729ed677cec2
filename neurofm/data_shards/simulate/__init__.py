"""A physics-based simulator of EEG, MEG, sEEG, ECoG and fMRI recordings with known ground truth.

Sources in a volume source space inside a sphere head; gains from MNE's forward models (cached);
background 1/f activity, alpha and beta rhythms, evoked responses per condition, BOLD through a
haemodynamic response; realistic nuisances. See :mod:`.geometry`, :mod:`.forward`, :mod:`.activity`
and :mod:`.recordings`. ``neurofm simulate`` and the ``simulate`` section of a shards config write
simulated recordings straight into shards through the same path as files read from disk.
"""

from neurofm.data_shards.simulate.recordings import SimulatedSpec, plan_recordings, recording_gain, simulate_raw, simulate_recording

__all__ = ["SimulatedSpec", "plan_recordings", "recording_gain", "simulate_raw", "simulate_recording"]
