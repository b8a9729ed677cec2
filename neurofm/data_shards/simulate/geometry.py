"""Heads, sources and devices of the simulator.

A simulated subject is a four-shell sphere head (``mne.make_sphere_model``: brain, CSF, skull, scalp at
0.90/0.92/0.97/1.00 of the head radius) whose radius and centre vary between subjects, with a volume
source space inside the brain (``mne.setup_volume_source_space``) grouped into regions (k-means on
source positions). Each region is one coherent patch: its sources share a dipole orientation.

Devices put sensors on that head, in MNE's head frame (metres):

- EEG: an MNE built-in montage (biosemi64, the classic 19-electrode 10-20 set, GSN-HydroCel-129 …),
  scaled to the subject's head radius, or a bipolar montage of one (``double_banana``: the clinical
  longitudinal montage of CHB-MIT and TUH's TCP recordings, 18 leads between 10-20 electrodes);
- MEG: coils on the helmet surfaces MNE ships (``mne/data/helmets``): Neuromag-306-like triplets (one
  magnetometer, two orthogonal planar gradiometers) on 102 helmet points, CTF-275 and KIT-157 axial
  gradiometers, with coil normals from the helmet surface and a subject-specific device→head
  transform;
- sEEG: depth shafts of 12 contacts (3.5 mm apart) aimed from the brain surface towards deep points;
- ECoG: an 8 × 8 grid (10 mm pitch) lying on the brain surface;
- fMRI: one parcel per region, at the region's centroid.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import mne
import numpy as np
from mne.io.constants import FIFF

from neurofm.data_shards.sensors import set_bipolar
from neurofm.errors import ConfigError

#: Helmet name → (MNE helmet surface, coil locations, the coils at each location: (name suffix, channel
#: type, coil type, in-plane axes as "x y" or "y -x")). Planar pairs measure the two tangential gradients.
_TRIPLET = (("1", "mag", FIFF.FIFFV_COIL_VV_MAG_T3, "x y"), ("2", "grad", FIFF.FIFFV_COIL_VV_PLANAR_T1, "x y"),
            ("3", "grad", FIFF.FIFFV_COIL_VV_PLANAR_T1, "y -x"))
HELMETS = {
    "neuromag306": ("306m.fif.gz", 102, _TRIPLET),
    "neuromag122": ("122m.fif.gz", 61, (("2", "grad", FIFF.FIFFV_COIL_NM_122, "x y"), ("3", "grad", FIFF.FIFFV_COIL_NM_122, "y -x"))),
    "ctf275": ("CTF_275.fif.gz", 275, (("", "mag", FIFF.FIFFV_COIL_CTF_GRAD, "x y"),)),
    "kit157": ("KIT.fif.gz", 157, (("", "mag", FIFF.FIFFV_COIL_KIT_GRAD, "x y"),)),
    "magnes3600": ("Magnes_3600wh.fif.gz", 248, (("", "mag", FIFF.FIFFV_COIL_MAGNES_MAG, "x y"),)),
    "magnes2500": ("Magnes_2500wh.fif.gz", 148, (("", "mag", FIFF.FIFFV_COIL_MAGNES_MAG, "x y"),)),
}
CLASSIC_1020 = ["Fp1", "Fp2", "F7", "F3", "Fz", "F4", "F8", "T7", "C3", "Cz", "C4", "T8", "P7", "P3", "Pz", "P4", "P8", "O1", "O2"]
#: Montage name → (MNE montage, channel subset or None).
MONTAGES = {"classic_1020": ("colin27_1020", CLASSIC_1020)}
_CHAINS = (("Fp1", "F7", "T7", "P7", "O1"), ("Fp2", "F8", "T8", "P8", "O2"), ("Fp1", "F3", "C3", "P3", "O1"),
           ("Fp2", "F4", "C4", "P4", "O2"), ("Fz", "Cz", "Pz"))
#: Bipolar montage name → (the montage its electrodes belong to, (anode, cathode) of every lead).
BIPOLAR_MONTAGES = {"double_banana": ("classic_1020", [(a, c) for chain in _CHAINS for a, c in zip(chain, chain[1:])])}
TEMPLATE_HEAD_RADIUS = 0.095  # m: the radius MNE's template montages fit


@dataclass
class Head:
    """One subject's head: sphere model, sources, regions.

    Attributes
    ----------
    r0 : ndarray, shape (3,)
        Sphere centre, head frame, m.
    head_radius : float
        Scalp radius, m.
    sphere : mne ConductorModel
        The four-shell sphere model.
    src : mne.SourceSpaces
        Volume source space (head frame, since the head and "MRI" frames coincide here).
    region_of : ndarray, shape (n_sources,)
        Region index of each used source.
    orientations : ndarray, shape (n_regions, 3)
        Unit dipole orientation of each region.
    region_names : list of str
        Lobe-hemisphere-index names (``occipital-L-03``).
    """

    subject: int
    r0: np.ndarray
    head_radius: float
    sphere: object
    src: object
    region_of: np.ndarray
    orientations: np.ndarray
    region_names: list[str] = field(default_factory=list)

    @property
    def source_rr(self) -> np.ndarray:
        return self.src[0]["rr"][self.src[0]["vertno"]]

    @property
    def n_regions(self) -> int:
        return len(self.region_names)

    def region_centroids(self) -> np.ndarray:
        rr = self.source_rr
        return np.stack([rr[self.region_of == k].mean(axis=0) for k in range(self.n_regions)])

    def key(self) -> str:
        """Hash of the geometry, for caching gain matrices."""
        text = f"{self.r0.round(6).tolist()}|{self.head_radius:.6f}|{len(self.region_of)}|{self.orientations.round(6).tolist()}"
        return hashlib.sha1(text.encode()).hexdigest()[:12]


def _lobe(pos: np.ndarray, r0: np.ndarray) -> str:
    x, y, z = pos - r0
    if y < -0.035:
        return "occipital" if z < 0.03 else "parietal"
    if abs(x) > 0.04 and z < 0.0:
        return "temporal"
    if y > 0.025:
        return "frontal"
    return "central"


def make_head(subject: int, seed: int, spacing_mm: float = 10.0, n_regions: int = 32) -> Head:
    """The head of simulated subject ``subject`` (deterministic in ``seed`` and ``subject``)."""
    from sklearn.cluster import KMeans

    rng = np.random.default_rng([seed, 11, subject])
    head_radius = float(rng.uniform(0.085, 0.095))
    r0 = np.array([0.0, 0.0, 0.04]) + rng.normal(0, 0.003, 3)
    sphere = mne.make_sphere_model(r0=r0, head_radius=head_radius, verbose="error")
    # exclude: no source within 10 mm of the centre, where the sphere formulas are singular
    src = mne.setup_volume_source_space(pos=spacing_mm, sphere=sphere, mindist=5.0, exclude=10.0, verbose="error")
    rr = src[0]["rr"][src[0]["vertno"]]
    n_regions = min(n_regions, len(rr) // 4)
    labels = KMeans(n_clusters=n_regions, n_init=4, random_state=int(rng.integers(1 << 31))).fit_predict(rr)
    centroids = np.stack([rr[labels == k].mean(axis=0) for k in range(n_regions)])
    # patches are oriented between radial and tangential, as cortex folds
    radial = (centroids - r0) / np.linalg.norm(centroids - r0, axis=1, keepdims=True)
    tangent = rng.normal(size=(n_regions, 3))
    tangent -= np.sum(tangent * radial, axis=1, keepdims=True) * radial
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    mix = rng.uniform(0.2, 0.8, (n_regions, 1))
    orientations = mix * radial + np.sqrt(1 - mix**2) * tangent
    names = [f"{_lobe(c, r0)}-{'L' if c[0] < r0[0] else 'R'}-{k:02d}" for k, c in enumerate(centroids)]
    return Head(subject, r0, head_radius, sphere, src, labels, orientations, names)


# --- devices ----------------------------------------------------------------------------------


def check_montage(name: str) -> None:
    valid = sorted(set(mne.channels.get_builtin_montages()) | set(MONTAGES) | set(BIPOLAR_MONTAGES))
    if name not in valid:
        raise ConfigError(f"Unknown EEG montage '{name}' in simulate.eeg_montages. Valid names: {', '.join(valid)}.")


def check_helmet(name: str) -> None:
    if name not in HELMETS:
        raise ConfigError(f"Unknown MEG helmet '{name}' in simulate.meg_helmets. Valid names: {', '.join(HELMETS)}.")


def eeg_info(montage_name: str, head: Head, sfreq: float) -> mne.Info:
    """EEG channels of a built-in montage, scaled to the head, positions in the head frame."""
    check_montage(montage_name)
    base, subset = MONTAGES.get(montage_name, (montage_name, None))
    montage = mne.channels.make_standard_montage(base)
    names = subset or montage.ch_names
    info = mne.create_info(montage.ch_names, sfreq, "eeg")
    info.set_montage(montage, verbose="error")
    positions = {ch["ch_name"]: ch["loc"][:3] for ch in info["chs"]}
    # put every electrode on this subject's scalp sphere
    scaled = {}
    for name in names:
        direction = positions[name] - np.array([0.0, 0.0, 0.04])
        scaled[name] = head.r0 + direction / np.linalg.norm(direction) * head.head_radius
    info = mne.create_info(names, sfreq, "eeg")
    info.set_montage(mne.channels.make_dig_montage(ch_pos=scaled, coord_frame="head"), verbose="error")
    return info


def bipolar_leads(montage_name: str, electrodes: mne.Info) -> tuple[mne.Info, np.ndarray]:
    """The leads of a bipolar montage over ``electrodes`` (the :func:`eeg_info` of its electrode montage):
    their info (``A-B`` names; anode position in ``loc[:3]``, cathode in ``loc[3:6]``, MNE's bipolar coil
    type: :func:`neurofm.data_shards.sensors.set_bipolar`) and the derivation matrix
    [leads, electrodes] (+1 anode, −1 cathode) that turns electrode potentials or gains into leads'."""
    _, pairs = BIPOLAR_MONTAGES[montage_name]
    index = {name: i for i, name in enumerate(electrodes.ch_names)}
    derivation = np.zeros((len(pairs), len(index)))
    info = mne.create_info([f"{a}-{c}" for a, c in pairs], electrodes["sfreq"], "eeg")
    for row, ((anode, cathode), ch) in enumerate(zip(pairs, info["chs"])):
        derivation[row, [index[anode], index[cathode]]] = (1.0, -1.0)
        set_bipolar(ch, electrodes["chs"][index[anode]]["loc"][:3], electrodes["chs"][index[cathode]]["loc"][:3])
    return info, derivation


def _farthest_points(points: np.ndarray, n: int) -> np.ndarray:
    """Indices of ``n`` points spread evenly (farthest-point sampling from the top-most point)."""
    chosen = [int(np.argmax(points[:, 2]))]
    distance = np.linalg.norm(points - points[chosen[0]], axis=1)
    for _ in range(n - 1):
        chosen.append(int(np.argmax(distance)))
        distance = np.minimum(distance, np.linalg.norm(points - points[chosen[-1]], axis=1))
    return np.asarray(chosen)


def _fit_sphere(points: np.ndarray) -> np.ndarray:
    """Least-squares sphere centre of ``points`` (n, 3)."""
    a = np.c_[2 * points, np.ones(len(points))]
    solution, *_ = np.linalg.lstsq(a, np.sum(points**2, axis=1), rcond=None)
    return solution[:3]


def _clear_of_scalp(coils: np.ndarray, head_radius: float, margin: float = 0.005) -> np.ndarray:
    """Shift [3] (m) that moves a helmet's coils (positions relative to the sphere centre, [n, 3])
    at least ``margin`` outside the scalp: a large head sits lower in the helmet, as in a real scanner."""
    shift = np.zeros(3)
    for _ in range(50):
        distance = np.linalg.norm(coils + shift, axis=1)
        closest = int(np.argmin(distance))
        deficit = head_radius + margin - distance[closest]
        if deficit <= 0:
            break
        shift += (coils[closest] + shift) / distance[closest] * (deficit + 1e-4)
    return shift


def meg_info(helmet: str, head: Head, sfreq: float, seed: int) -> mne.Info:
    """MEG coils on an MNE helmet surface, in the device frame, with a subject-specific dev_head_t."""
    check_helmet(helmet)
    fname, n_locations, coils_here = HELMETS[helmet]
    surface = mne.read_bem_surfaces(Path(mne.__file__).parent / "data" / "helmets" / fname, verbose="error")[0]
    rr, nn = surface["rr"], surface["nn"]
    centre = _fit_sphere(rr)
    nn = nn * np.sign(np.sum(nn * (rr - centre), axis=1, keepdims=True))  # normals point outwards
    idx = _farthest_points(rr, n_locations)
    rr, nn = rr[idx] + 0.01 * nn[idx], nn[idx]  # coils sit 1 cm outside the helmet's inner surface
    names, types, locs, coils = [], [], [], []
    for i, (pos, ez) in enumerate(zip(rr, nn)):
        ex = np.cross(ez, [0.0, 0.0, 1.0] if abs(ez[2]) < 0.9 else [1.0, 0.0, 0.0])
        ex /= np.linalg.norm(ex)
        ey = np.cross(ez, ex)
        for suffix, kind, coil, axes in coils_here:
            a, b = (ex, ey) if axes == "x y" else (ey, -ex)
            names.append(f"MEG{i + 1:03d}{suffix}")
            types.append(kind)
            locs.append(np.r_[pos, a, b, ez])
            coils.append(coil)
    info = mne.create_info(names, sfreq, types)
    for ch, loc, coil in zip(info["chs"], locs, coils):
        ch["loc"][:] = loc
        ch["coil_type"] = coil
        ch["coord_frame"] = FIFF.FIFFV_COORD_DEVICE
    rng = np.random.default_rng([seed, 13, head.subject])
    angles = np.deg2rad(rng.normal(0, 2.0, 3))
    rotation = mne.transforms.rotation(*angles)[:3, :3]
    # the helmet's centre of curvature sits 2 cm above the head sphere's centre, give or take 5 mm
    translation = head.r0 + np.array([0.0, 0.0, 0.02]) + rng.normal(0, 0.005, 3) - rotation @ centre
    translation = _clear_of_scalp(rr @ rotation.T + translation - head.r0, head.head_radius) + translation
    matrix = np.eye(4)
    matrix[:3, :3], matrix[:3, 3] = rotation, translation
    with info._unlock():
        info["dev_head_t"] = mne.transforms.Transform("meg", "head", matrix)
    return info


def seeg_positions(head: Head, seed: int, n_shafts: int = 8, n_contacts: int = 12, pitch: float = 0.0035) -> dict[str, np.ndarray]:
    """Depth shafts from the brain surface towards deep targets; names ``A1`` … ``H12``."""
    rng = np.random.default_rng([seed, 17, head.subject])
    brain = 0.9 * head.head_radius
    positions = {}
    for s in range(n_shafts):
        entry_dir = rng.normal(size=3)
        entry_dir[2] = abs(entry_dir[2]) + 0.3  # enter from above the equator
        entry_dir /= np.linalg.norm(entry_dir)
        target = head.r0 + rng.normal(0, 0.2, 3) * brain * 0.4
        direction = (target - (head.r0 + entry_dir * brain)) / np.linalg.norm(target - (head.r0 + entry_dir * brain))
        for c in range(n_contacts):  # contact 1 is the deepest, as clinical naming goes
            positions[f"{chr(65 + s)}{c + 1}"] = target - direction * c * pitch
    return positions


def ecog_positions(head: Head, seed: int, rows: int = 8, cols: int = 8, pitch: float = 0.01) -> dict[str, np.ndarray]:
    """An ``rows × cols`` grid on the brain surface over a lateral region; names ``G1`` … ``G64``."""
    rng = np.random.default_rng([seed, 19, head.subject])
    brain = 0.9 * head.head_radius + 0.001
    centre_dir = np.array([rng.choice([-1.0, 1.0]), rng.uniform(-0.5, 0.5), rng.uniform(0.0, 0.4)])
    centre_dir /= np.linalg.norm(centre_dir)
    u = np.cross(centre_dir, [0.0, 0.0, 1.0])
    u /= np.linalg.norm(u)
    v = np.cross(centre_dir, u)
    positions = {}
    for r in range(rows):
        for c in range(cols):
            point = centre_dir * brain + ((r - (rows - 1) / 2) * v + (c - (cols - 1) / 2) * u) * pitch
            positions[f"G{r * cols + c + 1}"] = head.r0 + point / np.linalg.norm(point) * brain
    return positions


def positions_info(positions: dict[str, np.ndarray], sfreq: float, ch_type: str) -> mne.Info:
    """An Info of electrodes of ``ch_type`` at head-frame ``positions``."""
    info = mne.create_info(list(positions), sfreq, ch_type)
    info.set_montage(mne.channels.make_dig_montage(ch_pos=positions, coord_frame="head"), verbose="error")
    return info
