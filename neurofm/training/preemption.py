"""``Preemption``: SIGTERM (a scheduler's preemption, ``kill``) ends a training loop at its next step
boundary after a checkpoint, instead of killing it mid-step and losing everything since the last save.

Every loop uses it alike::

    with Preemption() as preempted:
        while step < total:
            ...one step...
            if checkpoints.should_save(step, last=step == total, requested=preempted.requested):
                checkpoints.save(...)
            if preempted.requested:
                break
    preempted.raise_if_stopped(out, step, total)  # after the loop (or inside it, before the next step)

Outside the main thread (where Python cannot install a signal handler) SIGTERM keeps its default action.
"""

from __future__ import annotations

import logging
import signal
import threading

from neurofm.errors import TrainingInterrupted

logger = logging.getLogger("neurofm.training")


class Preemption:
    """Context manager: while inside it, SIGTERM sets :attr:`requested` rather than ending the process.

    ``enabled=False`` (a loop that keeps no checkpoint) leaves SIGTERM's default action alone."""

    def __init__(self, enabled: bool = True) -> None:
        self.requested = False
        self.enabled = enabled
        self._previous = None

    def __enter__(self) -> Preemption:
        if self.enabled and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._request)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _request(self, signum, frame) -> None:
        self.requested = True

    def raise_if_stopped(self, out, step: int, total: int, unit: str = "step") -> None:
        """Raise :class:`TrainingInterrupted` when SIGTERM came and ``step`` (the checkpoint just saved) is short
        of ``total``; nothing when training finished."""
        if self.requested and step < total:
            logger.warning("SIGTERM: checkpoint saved at %s %d; exiting", unit, step)
            raise TrainingInterrupted(f"{out}: stopped by SIGTERM at {unit} {step} of {total}; the checkpoint is saved — run "
                                      "the same command again to resume (nothing after this training was run).")


__all__ = ["Preemption"]
