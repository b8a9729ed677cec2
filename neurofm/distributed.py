"""Commands that split their batches over ``torchrun`` processes (encode, embed, eval, probe).

Every process makes the same batch plan (:func:`neurofm.data_shards.batches.batch_plan`), runs batches
``rank, rank + world, …`` and rank 0 puts the results back in plan order, so the output is the one a
single process writes. Outside ``torchrun`` (``WORLD_SIZE`` unset or 1) nothing here starts anything.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from typing import NoReturn

import torch


def process_group(backend: str = "gloo") -> tuple[int, int]:
    """(rank, world size) under torchrun (a ``backend`` group is started when none is), else (0, 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend)
        destroy_at_exit()
    return torch.distributed.get_rank(), world


def destroy_at_exit() -> None:
    """Destroy the default process group when the interpreter exits, while it is still whole: a gloo group
    left to interpreter finalization can abort the process ("terminate called without an active
    exception", SIGABRT) after its work is done (the mechanism: pytorch/pytorch#179291). Registered once per
    process; see :func:`exit_process` for a group that DistributedDataParallel has used."""
    global _EXIT_HOOK
    if not _EXIT_HOOK:
        atexit.register(lambda: torch.distributed.is_initialized() and torch.distributed.destroy_process_group())
        _EXIT_HOOK = True


_EXIT_HOOK = False


def exit_process(code: int) -> NoReturn:
    """End this process with exit status ``code`` once a command's work is written.

    In a group of several processes (:func:`process_group` under torchrun, pretraining's DeepSpeed group,
    Accelerate's for finetuning), the group is destroyed, logs and standard streams are flushed and the
    process leaves with ``os._exit``, skipping interpreter finalization: a gloo group that
    ``DistributedDataParallel`` has used outlives ``destroy_process_group`` (its threads still run seconds
    later, with the model and every Python reference gone), and finalizing the interpreter under those
    threads aborted a rank whose work was done (SIGABRT, "terminate called without an active exception";
    about one 2-rank tokenizer run in 200 under load). The ``neurofm`` command ends this way; a script that
    calls the stages' functions under torchrun should too. Elsewhere (one process): ``sys.exit(code)``."""
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.destroy_process_group()
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(code)
    sys.exit(code)


def gather_in_plan_order(results: dict[int, object], rank: int, world: int) -> list | None:
    """Each process's {plan position: result} → on rank 0 every result in plan order (None elsewhere)."""
    if world == 1:
        return [results[j] for j in sorted(results)]
    gathered = [None] * world if rank == 0 else None
    torch.distributed.gather_object(results, gathered, dst=0)
    if rank != 0:
        return None
    merged = {j: r for part in gathered for j, r in part.items()}
    return [merged[j] for j in sorted(merged)]


def map_batches(index, indices, batch_size: int, fn) -> list | None:
    """``fn(batch)`` for this process's batches of the plan of ``indices`` (signal windows, collated);
    on rank 0 every result in plan order (results that are None left out), on other ranks None."""
    from neurofm.data_shards.batches import batch_plan, collate

    rank, world = process_group()
    plan = batch_plan(index, indices, batch_size)
    mine = {j: fn(collate([{**index[int(i)], "__index__": int(i)} for i in plan[j]])) for j in range(rank, len(plan), world)}
    results = gather_in_plan_order(mine, rank, world)
    return None if results is None else [r for r in results if r is not None]


def barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


__all__ = ["barrier", "exit_process", "gather_in_plan_order", "map_batches", "process_group"]
