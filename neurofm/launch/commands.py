"""Render the command that runs ``neurofm pretrain train`` (or ``neurofm tokenizer train``) on a topology.

- one node, one GPU (or a CPU): ``neurofm pretrain train --config …``;
- ``torchrun``: one process per GPU; on several nodes with a c10d rendezvous at ``master_addr:port``
  (run the same command on every node, or let SLURM do it);
- ``deepspeed``: DeepSpeed's own launcher with a hostfile (``hostname slots=G`` per node);
- ``--scheduler slurm``: an sbatch script whose ``srun`` starts one ``torchrun`` per node.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Literal


@dataclass(kw_only=True)
class LaunchConfig:
    """Topology and launcher of a pretraining or tokenizer-training run (``configs/launch_*.yaml``).

    Parameters
    ----------
    stage : 'pretrain' | 'tokenizer'
        What to launch: ``neurofm pretrain train`` (DeepSpeed) or ``neurofm tokenizer train`` (DDP).
    config : list of str
        Config file(s) passed on to the training command (default: ``configs/<stage>_tiny.yaml``).
    nodes, gpus_per_node : int
        Topology.
    launcher : 'auto' | 'single' | 'torchrun' | 'deepspeed'
        ``auto``: one process when nodes × GPUs is 1, else ``torchrun``.
    scheduler : 'none' | 'slurm'
        Render an sbatch script instead of a command.
    master_addr, master_port : str / int
        Rendezvous endpoint (the first node); ``$MASTER_ADDR`` is expanded at run time.
    hosts : list of str
        Node names for the deepspeed hostfile.
    hostfile : str
        Where the hostfile is written.
    slurm : dict
        Extra ``#SBATCH`` options (``partition``, ``time``, ``account`` …).
    overrides : list of str
        ``dotted.key=value`` overrides for the pretraining config.
    """

    stage: Literal["pretrain", "tokenizer"] = "pretrain"
    config: list[str] = field(default_factory=list)
    nodes: int = 1
    gpus_per_node: int = 1
    launcher: Literal["auto", "single", "torchrun", "deepspeed"] = "auto"
    scheduler: Literal["none", "slurm"] = "none"
    master_addr: str = "$MASTER_ADDR"
    master_port: int = 29500
    hosts: list[str] = field(default_factory=list)
    hostfile: str = "hostfile"
    job_name: str = ""
    slurm: dict[str, str] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.config = self.config or [f"configs/{self.stage}_tiny.yaml"]
        self.job_name = self.job_name or f"neurofm-{self.stage}"
        if self.nodes < 1 or self.gpus_per_node < 1:
            raise ValueError("nodes and gpus_per_node must be at least 1.")
        if self.launcher == "single" and self.nodes * self.gpus_per_node > 1:
            raise ValueError("launcher 'single' runs one process; use torchrun or deepspeed for several GPUs.")
        if self.launcher == "deepspeed" and self.nodes > 1 and len(self.hosts) != self.nodes:
            raise ValueError(f"launcher 'deepspeed' on {self.nodes} nodes needs {self.nodes} hosts (for the hostfile).")


def _train_args(cfg: LaunchConfig) -> list[str]:
    args = [cfg.stage, "train"]
    for path in cfg.config:
        args += ["--config", path]
    return args + list(cfg.overrides)


def _quote(args: list[str]) -> str:
    """Shell-quote arguments; ones with ``$VARIABLES`` in double quotes so the shell expands them."""
    return " ".join(f'"{a}"' if "$" in a else shlex.quote(a) for a in args)


def render_launch(cfg: LaunchConfig) -> dict[str, str]:
    """The command to run, and any files it needs (``hostfile``, the sbatch script), as text."""
    launcher = cfg.launcher
    if launcher == "auto":
        launcher = "single" if cfg.nodes * cfg.gpus_per_node == 1 else "torchrun"
    train = _train_args(cfg)
    files: dict[str, str] = {}
    if cfg.scheduler == "slurm":
        torchrun = ["torchrun", f"--nnodes={cfg.nodes}", f"--nproc-per-node={cfg.gpus_per_node}",
                    "--rdzv-backend=c10d", "--rdzv-endpoint=$MASTER_ADDR:$MASTER_PORT", "--rdzv-id=$SLURM_JOB_ID",
                    "-m", "neurofm.cli", *train]
        sbatch = [f"#SBATCH --{k}={v}" for k, v in {"job-name": cfg.job_name, "nodes": cfg.nodes, "ntasks-per-node": 1,
                                                    "gpus-per-node": cfg.gpus_per_node, **cfg.slurm}.items()]
        script = "\n".join([
            "#!/bin/bash", *sbatch, "set -euo pipefail",
            'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
            f"export MASTER_PORT={cfg.master_port}", "export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}",
            "# one torchrun per node; each starts one process per GPU",
            f"srun --kill-on-bad-exit=1 {_quote(torchrun)}", "",
        ])
        files[f"{cfg.job_name}.sbatch"] = script
        return {"command": f"sbatch {cfg.job_name}.sbatch", **files}
    if launcher == "single":
        return {"command": _quote(["neurofm", *train])}
    if launcher == "torchrun":
        if cfg.nodes == 1:
            args = ["torchrun", "--standalone", f"--nproc-per-node={cfg.gpus_per_node}"]
        else:
            args = ["torchrun", f"--nnodes={cfg.nodes}", f"--nproc-per-node={cfg.gpus_per_node}", "--rdzv-backend=c10d",
                    f"--rdzv-endpoint={cfg.master_addr}:{cfg.master_port}"]
        return {"command": _quote([*args, "-m", "neurofm.cli", *train])}
    hosts = cfg.hosts or ["localhost"]
    files[cfg.hostfile] = "".join(f"{h} slots={cfg.gpus_per_node}\n" for h in hosts)
    args = ["deepspeed", f"--hostfile={cfg.hostfile}", f"--num_nodes={cfg.nodes}", f"--num_gpus={cfg.gpus_per_node}",
            f"--master_addr={hosts[0]}", f"--master_port={cfg.master_port}", "--module", "neurofm.cli", *train]
    return {"command": _quote(args), **files}
