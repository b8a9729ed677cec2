"""Launch commands for pretraining: one process, ``torchrun``, the ``deepspeed`` launcher, SLURM.

:func:`render_launch` turns a pretraining config and a topology into the command (or batch script)
that runs it; ``neurofm launch pretrain --dry-run`` prints it, without ``--dry-run`` it runs it.
"""

from neurofm.launch.commands import LaunchConfig, render_launch

__all__ = ["LaunchConfig", "render_launch"]
