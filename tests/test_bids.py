"""BIDS folders are read through mne-bids (channel types, electrodes, events from the sidecars)."""

from __future__ import annotations

from collections import Counter

import mne
import numpy as np
import pytest

from neurofm.config import load_config
from neurofm.data_shards import ShardIndex, build_shards
from neurofm.data_shards.config import ShardsConfig


@pytest.fixture(scope="module")
def bids_root(tmp_path_factory, shared):
    mne_bids = pytest.importorskip("mne_bids")
    root = tmp_path_factory.mktemp("bids")
    raw = mne.io.read_raw_fif(shared / "meg/elekta_3ch_raw.fif", verbose="error")
    raw.crop(0, 20).load_data()
    path = mne_bids.BIDSPath(subject="01", session="01", task="rest", run="01", datatype="meg", root=root)
    events = mne.find_events(raw, stim_channel="STI101", verbose="error")
    mne_bids.write_raw_bids(raw, path, events=events, event_id={f"code{c}": int(c) for c in np.unique(events[:, 2])},
                            overwrite=True, verbose="error", allow_preload=True, format="FIF")
    eeg = mne.io.read_raw(shared / "eeg/muse_n170/sub-1_ses-1_run-1_raw.fif", verbose="error")
    eeg.crop(0, 30).load_data()
    eeg_path = mne_bids.BIDSPath(subject="02", task="n170", datatype="eeg", root=root)
    mne_bids.write_raw_bids(eeg, eeg_path, overwrite=True, verbose="error", allow_preload=True, format="EDF")
    return root


def test_bids_folder_becomes_shards_with_bids_metadata(bids_root, tmp_path):
    config = load_config(ShardsConfig, None, [f"inputs=[{{path: '{bids_root}'}}]", f"out={tmp_path / 'out'}"])
    manifest = build_shards(config, progress=False)
    recs = {r["modality"]: r for r in manifest["recordings"]}
    assert set(recs) == {"meg", "eeg"}
    assert recs["meg"]["kinds"] == {"meg_mag": 1, "meg_grad": 2}
    assert recs["eeg"]["kinds"] == {"eeg": 4} and recs["eeg"]["sensors_without_position"] == 0
    index = ShardIndex(tmp_path / "out")
    samples = [index[i] for i in range(len(index))]
    meg = [s for s in samples if s["meta"]["modality"] == "meg"]
    assert meg[0]["meta"]["subject"] == "01" and meg[0]["meta"]["session"] == "01" and meg[0]["meta"]["task"] == "rest"
    labels = Counter(e["label"] for s in meg for e in s["meta"]["events"])
    assert any(label.startswith("code") for label in labels)  # events.tsv → annotations → window events
    eeg = [s for s in samples if s["meta"]["modality"] == "eeg"]
    assert Counter(e["label"] for s in eeg for e in s["meta"]["events"])["face"] > 5
