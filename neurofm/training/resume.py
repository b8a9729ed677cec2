"""The resume check every training loop shares: a run continues only on the trajectory it started.

A checkpoint stores the settings it was trained with; resuming with another learning rate, batch size,
seed or schedule would silently train a different model. :func:`check_resume_settings` compares every
setting that changes the trajectory, names the ones that differ, and lets the user accept deliberate
changes one key at a time (``--allow-changed steps`` to lengthen a schedule).
"""

from __future__ import annotations

import logging

from neurofm.errors import NeuroFMError

logger = logging.getLogger("neurofm.training")


def changed_settings(saved: dict, now: dict, free: frozenset[str] | set[str] = frozenset()) -> dict[str, tuple]:
    """Settings (top-level keys) whose values differ: {key: (saved, now)}. Keys in ``free`` (where
    outputs go, how often to log) and keys a checkpoint of an older version does not name are skipped."""
    return {k: (saved[k], v) for k, v in now.items() if k in saved and k not in free and saved[k] != v}


def check_resume_settings(where: str, saved: dict, now: dict, *, free: frozenset[str] | set[str] = frozenset(),
                          allow_changed: list[str] | tuple[str, ...] = ()) -> dict[str, tuple]:
    """Refuse to resume ``where`` with other trajectory settings than ``saved`` unless each changed key
    is in ``allow_changed``; returns the accepted changes (logged as a warning)."""
    changed = changed_settings(saved, now, free)
    refused = {k: d for k, d in changed.items() if k not in allow_changed}
    if refused:
        raise NeuroFMError(
            f"{where} was trained with other settings (saved vs now: {refused}); resuming would not continue its "
            "trajectory. Resume with the settings it was made with, start another out=…, or pass --allow-changed KEY for "
            "each deliberate change (e.g. a longer schedule: --allow-changed steps)."
        )
    if changed:
        logger.warning("resuming %s with deliberately changed settings (saved vs now): %s", where, changed)
    return changed


__all__ = ["changed_settings", "check_resume_settings"]
