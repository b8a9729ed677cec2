"""Preprocessing with MNE: band limits, bad channels, scaling, errors (on generated recordings, and on a
real BrainVision file for the exact filter chain)."""

from __future__ import annotations

import mne
import numpy as np
import pytest

from neurofm.config import load_config
from neurofm.data_shards.config import InputSpec, ShardsConfig
from neurofm.data_shards.preprocess import detect_bad_channels, prepare
from neurofm.data_shards.readers import read_recording
from neurofm.errors import RecordingError
from tests.conftest import write_eeg_fif


def _config(*overrides):
    return load_config(ShardsConfig, None, list(overrides))


def test_too_low_sampling_rate_for_the_band_names_file_and_field(tmp_path):
    path = write_eeg_fif(tmp_path / "slow_raw.fif", 20, sfreq=128.0, n_channels=8)
    rec = read_recording(path, InputSpec(path="x"))
    with pytest.raises(RecordingError) as err:
        prepare(rec, _config("eeg.h_freq=70"))
    message = str(err.value)
    assert "slow_raw.fif" in message and "128 Hz" in message and "h_freq" in message and "below 64" in message


def test_per_input_override_is_validated_with_its_path(tmp_path):
    path = write_eeg_fif(tmp_path / "rec_raw.fif", 10, n_channels=8)
    rec = read_recording(path, InputSpec(path="x", preprocess={"h_fre": 20}))
    with pytest.raises(Exception, match=r"inputs\[0\].preprocess.h_fre.*Did you mean 'h_freq'"):
        prepare(rec, _config())


def test_resampled_band_limited_and_invertible_scaling(shared):
    path = shared / "eeg/brainvision/test.vhdr"
    rec = read_recording(path, InputSpec(path="x"))
    physical = rec.inst.copy()
    prepared = prepare(rec, _config())
    assert prepared.sfreq == 256.0
    signal = prepared.segments[0].data
    assert signal.shape == (26, int(round(physical.n_times * 256 / 1000)))
    # the robust scale is ~1 per channel after scaling, and signal * scale restores MNE's output
    iqr = np.subtract(*np.percentile(signal, [75, 25], axis=1)) / 1.349
    assert np.median(iqr) == pytest.approx(1.0, rel=1e-6)
    reference = physical.filter(0.5, 45.0, verbose="error").notch_filter([50, 100, 150, 200, 250, 300, 350, 400, 450], verbose="error").resample(256.0, verbose="error").get_data()
    assert np.allclose(signal * prepared.scales["eeg"], np.clip(reference, -20 * prepared.scales["eeg"], 20 * prepared.scales["eeg"]), atol=1e-12)
    # above the 45 Hz band edge little power is left
    spectrum = np.abs(np.fft.rfft(signal, axis=1)) ** 2
    freqs = np.fft.rfftfreq(signal.shape[1], 1 / 256)
    assert spectrum[:, freqs > 70].sum() < 1e-3 * spectrum[:, (freqs > 1) & (freqs < 40)].sum()


def test_flat_and_noisy_channels_are_detected_recorded_and_excluded(tmp_path):
    rec = read_recording(write_eeg_fif(tmp_path / "rec_raw.fif", 60), InputSpec(path="x"))
    data = rec.inst._data
    data[5] = 0.0  # flat
    data[17] *= 40.0  # far noisier than its neighbours
    prepared = prepare(rec, _config())
    names = rec.inst.ch_names
    assert prepared.bad_channels == {names[5]: "flat", names[17]: "noisy"}
    assert names[5] not in prepared.sensors.names and len(prepared.sensors) == 62
    assert prepared.segments[0].data.shape[0] == 62


def test_detect_bad_channels_needs_peers_for_noise():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(3, 1000))
    data[0] *= 100
    assert detect_bad_channels(data, ["eeg"] * 3, _config().bad_channels) == {}  # 3 channels: no z-score


def test_constant_recording_is_a_clear_error(tmp_path):
    info = mne.create_info(["Fz", "Cz", "Pz"], 256.0, "eeg")
    raw = mne.io.RawArray(np.full((3, 2560), 1e-6), info, verbose="error")
    path = tmp_path / "constant_raw.fif"
    raw.save(path, verbose="error")
    rec = read_recording(path, InputSpec(path="x"))
    with pytest.raises(RecordingError, match="constant_raw.fif: every channel is flat or constant"):
        prepare(rec, _config())


def test_nan_recording_is_a_clear_error(tmp_path):
    info = mne.create_info(["Fz", "Cz", "Pz"], 256.0, "eeg")
    data = np.random.default_rng(0).normal(0, 1e-5, (3, 2560))
    data[1] = np.nan
    path = tmp_path / "nan_raw.fif"
    mne.io.RawArray(data, info, verbose="error").save(path, verbose="error")
    with pytest.raises(RecordingError, match=r"nan_raw.fif holds NaN.*\(Cz\)"):
        read_recording(path, InputSpec(path="x"))


def test_long_recordings_are_scanned_chunk_by_chunk(tmp_path, monkeypatch):
    """The NaN and constant-channel scans read a continuous recording in time chunks (no float64 copy of
    an hour of MEG beside the loaded one): a NaN in the last chunk is still found, and a channel constant
    within each chunk but not across them is not flat."""
    from neurofm.data_shards import readers

    monkeypatch.setattr(readers, "CHUNK_VALUES", 4 * 100)  # 4 channels × 100 samples per chunk
    info = mne.create_info(["Fz", "Cz", "Pz", "Oz"], 256.0, "eeg")
    data = np.random.default_rng(0).normal(0, 1e-5, (4, 2560))
    data[3] = np.repeat(np.arange(26) * 1e-6, 100)[:2560]  # a staircase: constant inside every chunk
    data[1] = 2e-6  # constant throughout
    path = tmp_path / "steps_raw.fif"
    mne.io.RawArray(data, info, verbose="error").save(path, verbose="error")
    assert len(list(readers.data_chunks(read_recording(path, InputSpec(path="x")).inst))) == 26
    prepared = prepare(read_recording(path, InputSpec(path="x")), _config("bad_channels.noisy_z=1000", "bad_channels.flat_ratio=0"))
    assert prepared.bad_channels == {"Cz": "flat"}
    data[2, -5] = np.nan
    mne.io.RawArray(data, info, verbose="error").save(path, overwrite=True, verbose="error")
    with pytest.raises(RecordingError, match=r"steps_raw.fif holds NaN.*\(Pz\)"):
        read_recording(path, InputSpec(path="x"))


def test_fif_samples_are_loaded_after_non_brain_channels_are_dropped(tmp_path, monkeypatch):
    """A FIF file is opened without its samples; only the brain channels it keeps are loaded (a drop of a
    loaded hour of MEG copies it), with the same values a full load gives, and triggers still read."""
    montage = mne.channels.make_standard_montage("biosemi64")
    info = mne.create_info([*montage.ch_names[:8], "STI 014", "EOG061"], 256.0, [*["eeg"] * 8, "stim", "eog"])
    data = np.random.default_rng(2).normal(0, 1e-5, (10, 2560))
    data[8] = 0.0
    data[8, 300] = 5.0
    path = tmp_path / "mixed_raw.fif"
    mne.io.RawArray(data, info, verbose="error").set_montage(montage, on_missing="ignore").save(path, verbose="error")
    loaded_with: list[int] = []
    load_data = mne.io.BaseRaw.load_data
    monkeypatch.setattr(mne.io.BaseRaw, "load_data", lambda self, *a, **k: loaded_with.append(len(self.ch_names)) or load_data(self, *a, **k))
    rec = read_recording(path, InputSpec(path="x"))
    assert loaded_with == [8] and rec.inst.preload and rec.inst.ch_names == montage.ch_names[:8]
    assert np.array_equal(rec.inst.get_data(), mne.io.read_raw_fif(path, preload=True, verbose="error").get_data(picks="eeg"))
    assert [e["label"] for e in rec.events] == ["stim/5"] and rec.report["dropped_non_brain"] == {"STI 014": "stim", "EOG061": "eog"}


def _hummed_raw(hum_hz: float | None, line_freq: float | None = None, sfreq: float = 500.0, seconds: float = 40.0):
    """16 channels of pink-ish noise with a power-line hum of ``hum_hz`` (None: none) about as strong as the
    signal; ``line_freq`` is what the file states (None: nothing, as in EDF)."""
    rng = np.random.default_rng(1)
    n = int(sfreq * seconds)
    data = np.cumsum(rng.normal(0, 1e-6, (16, n)), axis=1)
    data -= mne.filter.filter_data(data, sfreq, None, 1.0, verbose="error")
    if hum_hz:
        t = np.arange(n) / sfreq
        data += 5e-6 * np.sin(2 * np.pi * hum_hz * t + rng.uniform(0, 2 * np.pi, (16, 1)))
    montage = mne.channels.make_standard_montage("biosemi64")
    info = mne.create_info(montage.ch_names[:16], sfreq, "eeg")
    raw = mne.io.RawArray(data, info, verbose="error").set_montage(montage, on_missing="ignore")
    with raw.info._unlock():
        raw.info["line_freq"] = line_freq
    return raw


def _peak_over_sides(signal: np.ndarray, sfreq: float, f0: float) -> float:
    psd, freqs = mne.time_frequency.psd_array_welch(signal, sfreq, n_fft=int(2 * sfreq), verbose="error")
    distance = np.abs(freqs - f0)
    return float(np.median(psd[:, distance <= 0.5].max(axis=1) / np.median(psd[:, (distance >= 2) & (distance <= 5)], axis=1)))


@pytest.mark.parametrize("hum, stated, expected", [(60.0, None, (60.0, "data")), (50.0, None, (50.0, "data")),
                                                  (None, None, (50.0, "setting")), (60.0, 60.0, (60.0, "file"))])
def test_the_line_frequency_comes_from_the_file_else_from_the_data(tmp_path, hum, stated, expected):
    """EDF and many formats do not state the line frequency: a 60-Hz recording notched at the 50-Hz default
    kept its hum wherever the band reached 60 Hz (iEEG, MEG up to 90 Hz). The hum is found in the data."""
    from neurofm.data_shards.readers import finish_recording

    raw = _hummed_raw(hum, stated)
    if hum:
        assert _peak_over_sides(raw.get_data(), 500.0, hum) > 10
    rec = finish_recording(raw, tmp_path / "hum_raw.fif", InputSpec(path="x"))
    prepared = prepare(rec, _config("eeg.h_freq=90", "eeg.line_freq=50"))
    assert (prepared.settings["line_freq"], prepared.settings["line_freq_from"]) == expected
    if hum:  # the hum is gone, where without the notch it stays
        assert _peak_over_sides(prepared.segments[0].data, prepared.sfreq, hum) < 3
        unnotched = prepare(finish_recording(_hummed_raw(hum, stated), tmp_path / "hum_raw.fif", InputSpec(path="x")),
                            _config("eeg.h_freq=90", "eeg.notch=false"))
        assert _peak_over_sides(unnotched.segments[0].data, unnotched.sfreq, hum) > 10
