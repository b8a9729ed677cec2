"""The oracle column of the representation benchmark: raw features of the simulator's true sources.

For a simulated window the ground truth names the regions behind each task — the regions that respond
to each condition (``condition_regions``, for the evoked condition ``event``), the regions that carry a
rhythm (``alpha_regions`` for ``alpha_hz``) — and the simulator knows the gain matrix that projected
them onto the sensors (:func:`neurofm.data_shards.simulate.recording_gain`). The oracle reads those
sources back from the same noisy, preprocessed window with a spatial filter built from that gain, and
hands the resulting virtual channels to the raw-feature baseline (:func:`neurofm.bench.features.device_features`,
the same features, probe and splits as every other column). It is what a decoder that knew where the
signal comes from reaches: an upper reference beside the embeddings and the raw features, not a bound
(background activity shares the sources' spatial patterns, and the probe is linear).

Spatial filter: one virtual channel per source group (a condition's regions together: they share one
waveform; each rhythm region alone: their phases are independent), regularised least squares over the
window's kept channels: with ``G`` the groups' summed gain columns in the shards' scaled units (gain / the
sensor kind's robust scale) and ``N`` their norms, ``W = N⁻¹ (ĜᵀĜ + λI)⁻¹ Ĝᵀ`` for the unit-norm patterns
``Ĝ = G N⁻¹``. λ = 0.1 keeps groups of similar topography from amplifying noise into each other; taking it
relative to each group's own gain keeps a group far from the sensors (an ECoG grid over another lobe) from
being regularised away.
"""

from __future__ import annotations

import numpy as np

from neurofm.bench.features import device_features, feature_sets
from neurofm.data_shards.config import SimulateConfig
from neurofm.errors import NeuroFMError

#: Tikhonov weight of the spatial filter, relative to the mean squared gain of a source group.
REGULARISATION = 0.1


def source_groups(truth: dict, key: str, classes: list[str] | None = None) -> dict[str, list[str]] | None:
    """{virtual channel name: region names} behind the task ``key`` in a simulated recording's ground
    truth, or None where the ground truth names no sources for it (real recordings, fMRI, other keys)."""
    if key == "event" and truth.get("condition_regions"):
        regions = truth["condition_regions"]
        return {c: list(regions[c]) for c in (classes or sorted(regions)) if c in regions}
    if key.endswith("_hz") and truth.get(f"{key[:-3]}_regions"):
        return {region: [region] for region in truth[f"{key[:-3]}_regions"]}
    return None


def spatial_filter(gain: np.ndarray, channel_names: list[str], region_names: list[str], meta: dict,
                   groups: dict[str, list[str]]) -> np.ndarray:
    """The filter W, shape (n_groups, n_kept_channels), that maps a window's scaled signal
    [meta['channels'], time] to one source estimate per group (A·m; module docstring).

    ``gain`` [channel_names, region_names] in V or T per A·m; ``meta`` a window's meta (its kept
    ``channels``, their ``kinds`` and the kinds' ``scale``)."""
    row = {name: i for i, name in enumerate(channel_names)}
    column = {name: k for k, name in enumerate(region_names)}
    scale = np.array([meta["scale"][kind] for kind in meta["kinds"]])
    scaled = gain[[row[name] for name in meta["channels"]]] / scale[:, None]  # [kept channels, regions]
    g = np.stack([scaled[:, [column[r] for r in regions]].sum(axis=1) for regions in groups.values()], axis=1)
    norms = np.linalg.norm(g, axis=0)
    unit = g / norms  # each group's pattern at unit norm, so λ is relative to each group's own gain
    w = np.linalg.solve(unit.T @ unit + REGULARISATION * np.eye(unit.shape[1]), unit.T)
    return w / norms[:, None]


def oracle_column(windows, rows: np.ndarray, key: str, simulation: SimulateConfig | None,
                  labels: list[str] | None = None) -> list[np.ndarray] | None:
    """The oracle's two candidate feature sets for ``rows`` (all of one device), laid out like
    :func:`neurofm.bench.embeddings.raw_columns` (every feature, the channel-averaged spectrum alone), or
    None when any of those windows is not a simulated electrophysiology window of ``simulation`` whose
    ground truth names the sources of ``key``. Raises :class:`NeuroFMError` for a window whose name is in
    ``simulation``'s plan but whose provenance hash is not (other settings made it)."""
    from neurofm.data_shards.simulate import plan_recordings, recording_gain

    if simulation is None or not len(rows):
        return None
    specs = {spec.name: spec for spec in plan_recordings(simulation)}
    filters: dict[str, tuple[np.ndarray, list[str]]] = {}
    virtual = []
    for i in rows:
        signal, meta = windows.raw_windows[i]
        spec, groups = specs.get(meta["source"]), source_groups(meta.get("labels") or {}, key, labels)
        if spec is None or spec.modality == "fmri" or groups is None:
            return None
        if meta.get("source_sha256") != spec.checksum():
            raise NeuroFMError(f"{meta['source']}: this window was not made by the simulator settings given for its oracle (its "
                               "provenance hash differs); pass the settings that built these shards.")
        if meta["source"] not in filters:  # one filter per recording: its kept channels and scales are fixed
            gain, info, regions = recording_gain(spec, simulation)
            filters[meta["source"]] = (spatial_filter(gain, info.ch_names, regions, meta, groups), list(groups))
        w, names = filters[meta["source"]]
        virtual.append((w @ signal, {**meta, "channels": names}))
    return feature_sets(device_features(virtual, labels))


__all__ = ["REGULARISATION", "oracle_column", "source_groups", "spatial_filter"]
