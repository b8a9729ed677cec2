"""Gain matrices: sources → sensors, computed once per (head, device) and cached.

EEG and MEG gains come from ``mne.make_forward_solution`` on the subject's sphere model. MNE's forward
does not model contacts inside the head (sEEG, ECoG), so their gains use the potential of a current
dipole in an infinite homogeneous conductor, V = p·(r − r_s) / (4πσ|r − r_s|³) with σ = 0.33 S/m:
the standard near-field approximation inside the brain, ignoring the skull boundary. Distances are
floored at 2 mm, the scale below which a point dipole stops describing a cortical patch.

The gain of a region is the mean of its sources' gains along the region's orientation: a region of
moment q (A·m) spread over its sources.
"""

from __future__ import annotations

import os
from pathlib import Path

import mne
import numpy as np

from neurofm.data_shards.simulate.geometry import Head

CONDUCTIVITY = 0.33  # S/m, brain tissue
MIN_DISTANCE = 0.002  # m


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "neurofm" / "gains"


def source_gain(info: mne.Info, head: Head) -> np.ndarray:
    """Free-orientation gain, shape (n_channels, n_sources, 3), in V or T (per A·m)."""
    types = set(info.get_channel_types())
    if types <= {"seeg", "ecog"}:
        contacts = np.stack([ch["loc"][:3] for ch in info["chs"]])
        diff = contacts[:, None, :] - head.source_rr[None, :, :]  # [channels, sources, 3]
        distance = np.maximum(np.linalg.norm(diff, axis=2, keepdims=True), MIN_DISTANCE)
        return diff / (4 * np.pi * CONDUCTIVITY * distance**3)
    fwd = mne.make_forward_solution(
        info, trans=None, src=head.src, bem=head.sphere, meg="mag" in types or "grad" in types, eeg="eeg" in types,
        verbose="error",
    )
    fwd = mne.pick_channels_forward(fwd, info.ch_names, ordered=True, verbose="error")
    gain = fwd["sol"]["data"].reshape(len(info.ch_names), -1, 3)
    if not np.isfinite(gain).all():  # pragma: no cover - excluded by the source space's centre exclusion
        raise RuntimeError("MNE returned a non-finite gain; a source lies at the sphere centre")
    return gain


def region_gain(info: mne.Info, head: Head, device: str, cache_dir: Path | None = None) -> np.ndarray:
    """Gain of every region along its orientation, shape (n_channels, n_regions); cached on disk."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    key = f"{device}-{head.key()}-{len(info.ch_names)}"
    path = cache_dir / f"{key}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as stored:
            if list(stored["names"]) == info.ch_names:
                return stored["gain"]
    gain = source_gain(info, head)  # [channels, sources, 3]
    oriented = np.einsum("csk,sk->cs", gain, head.orientations[head.region_of])
    regions = np.stack([oriented[:, head.region_of == k].mean(axis=1) for k in range(head.n_regions)], axis=1)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial.npz")
    np.savez(tmp, gain=regions, names=np.asarray(info.ch_names))
    os.replace(tmp, path)
    return regions
