"""Views of one scene for the tokenizer's view losses.

The simulator's ``device_views`` records each scene (one subject's sources over one recording) through
every device of its modality (with ``meeg_views``, every EEG montage and MEG helmet); the recordings
carry the scene in their ground truth. A window's
*partner* is the window at the same position in another recording of its scene: the same brain
activity, other sensors. :class:`ViewPartners` finds the partners from the shard manifest and appends
them to a training batch, so that the loss can ask both views for the same latents
(:func:`~neurofm.tokenizers.losses.view_losses`).
"""

from __future__ import annotations

import numpy as np
import torch

from neurofm.data_shards.batches import Batch, collate
from neurofm.data_shards.dataset import ShardIndex
from neurofm.errors import NeuroFMError


class ViewPartners:
    """Partners of the windows ``allowed`` (global sample indices, e.g. the training split) of ``index``.

    Only recordings of one scene with the same number of windows pair up (their windows then cover the
    same seconds); a partner must itself be ``allowed``.
    """

    def __init__(self, index: ShardIndex, allowed: np.ndarray):
        self.index = index
        scenes: dict[str, list[dict]] = {}
        for rec in index.manifest["recordings"]:
            scene = (rec.get("ground_truth") or {}).get("scene")
            if scene is not None:
                scenes.setdefault(f"{scene}/{rec['n_windows']}", []).append(rec)
        ok = np.zeros(len(index), dtype=bool)
        ok[np.asarray(allowed, dtype=np.int64)] = True
        self.offsets: dict[int, list[int]] = {}  # sample → offsets (partner − sample) of its allowed partners
        for recs in scenes.values():
            for rec in recs:
                for other in recs:
                    if other is rec:
                        continue
                    shift = other["first_sample"] - rec["first_sample"]
                    for i in range(rec["first_sample"], rec["first_sample"] + rec["n_windows"]):
                        if ok[i] and ok[i + shift]:
                            self.offsets.setdefault(i, []).append(shift)
        if not self.offsets:
            raise NeuroFMError(
                f"{index.location}: the view losses (loss.view_consistency, loss.view_reconstruction) need windows of one scene "
                "recorded on two devices, and these shards hold none; build them with simulate.device_views=true, or set "
                "both weights to 0."
            )

    def __len__(self) -> int:
        """Windows that have a partner."""
        return len(self.offsets)

    def draw(self, indices: list[int], seed: int, step: int) -> list[tuple[int, int]]:
        """(row of the batch, partner's sample index) for every window of ``indices`` with a partner; the
        choice among several partners depends only on (seed, step, sample), so a resume draws the same."""
        pairs = []
        for row, i in enumerate(indices):
            shifts = self.offsets.get(int(i))
            if shifts:
                pick = np.random.default_rng([seed, step, int(i), 11]).integers(len(shifts))
                pairs.append((row, int(i) + shifts[pick]))
        return pairs

    def extend(self, batch: Batch, seed: int, step: int) -> tuple[Batch, torch.Tensor | None]:
        """``batch`` with the partners of its windows appended as rows (collated again, so channels are
        padded to the larger count), and the view pairs [2M, 2] (row a, row b: both directions); (batch,
        None) without any."""
        pairs = self.draw(batch.indices, seed, step)
        if not pairs:
            return batch, None
        partners = [{**self.index[j], "__index__": j} for _, j in pairs]
        rows = torch.tensor([row for row, _ in pairs])
        added = torch.arange(len(batch.indices), len(batch.indices) + len(pairs))
        views = torch.cat([torch.stack([rows, added], 1), torch.stack([added, rows], 1)])
        return collate(windows_of(batch) + partners), views


def windows_of(batch: Batch) -> list[dict]:
    """The padded batch's windows as samples again (what :func:`~neurofm.data_shards.batches.collate` takes);
    collate puts each window's real channels first."""
    return [{"signal": batch.signal[i, :n].numpy(), "sensors": batch.sensors[i, :n].numpy(), "meta": batch.metas[i],
             "__key__": batch.keys[i], "__index__": batch.indices[i]}
            for i, n in enumerate(batch.channel_mask.sum(1).tolist())]
