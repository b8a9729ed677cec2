"""One task per recording, on this process or on a Dask cluster.

A task reads, preprocesses and windows one recording and writes its samples, in order, into a
staging tar ``<out>/.staging/NNNNNN.tar`` (then ``NNNNNN.json``, its manifest entry, last: a task is
finished when its JSON exists). The driver (``build_shards``) takes the finished tasks in recording
order and packs their samples into the shards, so the shards do not depend on how many workers ran
or in which order tasks finished. Staged recordings survive a crash: a rerun packs them without
reading them again.

Who runs the tasks (:class:`OrderedTasks`): with ``workers`` local workers, this process (the driver)
and a local Dask cluster of ``workers - 1`` processes, which starts in the background while the driver
already runs the first recordings itself; whenever the recording the driver must pack next is not
finished, it runs the next one nobody has taken instead of waiting. With a running scheduler
(``scheduler``) or batch jobs (``cluster``), the workers run every task and the driver only packs.
Dask reruns a task whose worker died. Every run of one dataset's later recordings waits for its first
one (fMRI runs of a dataset share the parcellation that the first run fits).

Worker processes that this module starts (a local cluster, batch jobs) run with glibc's own malloc
settings: Dask's nannies set ``MALLOC_TRIM_THRESHOLD_=65536`` by default, which turns off glibc's
adaptive mmap threshold, so every array over 128 kB is mapped and unmapped afresh; a recording's
task then ran 1.5x slower than in the driver (benchmarks/RESULTS.md, "Shard building on Dask workers").
Every process of a local build keeps its BLAS and OpenMP pools to one thread (one process per core: more
threads only contend). Workers are spawned, not forked: a fork of the driver, whose other threads may hold
locks (its output streams' among them), hung in a test run.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from neurofm.data_shards.writer import write_text_atomic
from neurofm.errors import NeuroFMError

STAGING = ".staging"


def staged_paths(staging: Path, index: int) -> tuple[Path, Path]:
    """The staging tar and JSON entry of recording ``index``."""
    return staging / f"{index:06d}.tar", staging / f"{index:06d}.json"


def run_recording(config, source, index: int, staging: str, after=None, mne_log_level: int | str = "ERROR") -> dict:
    """Worker task: stage recording ``index`` (see module docstring); returns its manifest entry, or
    ``{"error": message, "error_type": class name}`` for a recording that cannot be used (so the tasks
    waiting for this one still run; :func:`raise_if_failed` turns it back into the error).

    ``after`` is a dependency only (the result of the task this one must wait for); it is not used.
    ``mne_log_level``: the driver's MNE verbosity, for worker processes.
    """
    import mne

    mne.set_log_level(mne_log_level)
    try:
        return _stage(config, source, index, Path(staging))
    except NeuroFMError as err:
        return {"error": str(err), "error_type": type(err).__name__}


def raise_if_failed(result: dict) -> dict:
    """The entry of a finished task; the recording's own NeuroFMError if it failed."""
    if "error" in result:
        import neurofm.errors

        raise getattr(neurofm.errors, result["error_type"], NeuroFMError)(result["error"])
    return result


def _stage(config, source, index: int, staging: Path) -> dict:
    from neurofm.data_shards.build import recording_entry

    done = staged_entry(staging, index)
    if done is not None:
        return done
    with staging_tar(staging, index) as add:
        entry = recording_entry(config, source, add)
    return finish_staged(staging, index, entry)


@contextlib.contextmanager
def staging_tar(staging: Path, index: int) -> Iterator:
    """Yield ``add(key, files)`` that appends a sample to unit ``index``'s staging tar (renamed into place at the end)."""
    tar_path, _ = staged_paths(staging, index)
    partial = tar_path.with_name(tar_path.name + ".partial")
    with tarfile.open(partial, "w", format=tarfile.USTAR_FORMAT) as tar:
        def add(key: str, files: dict[str, bytes]) -> None:
            for name, payload in files.items():
                info = tarfile.TarInfo(f"{key}.{name}")
                info.size, info.mtime = len(payload), 0
                tar.addfile(info, io.BytesIO(payload))

        yield add
    os.replace(partial, tar_path)


def finish_staged(staging: Path, index: int, entry: dict) -> dict:
    """Write unit ``index``'s JSON (after its tar): from now on it counts as staged."""
    _, entry_path = staged_paths(staging, index)
    write_text_atomic(entry_path, json.dumps(entry))
    return entry


def staged_entry(staging: Path, index: int) -> dict | None:
    """The JSON of a finished staged unit, or None."""
    _, entry_path = staged_paths(staging, index)
    return json.loads(entry_path.read_text()) if entry_path.is_file() else None


def staged_samples(staging: Path, index: int) -> Iterator[tuple[str, dict[str, bytes]]]:
    """The (key, {file name: bytes}) samples of a staged recording, in the order they were written."""
    tar_path, _ = staged_paths(staging, index)
    key, files = None, {}
    with tarfile.open(tar_path, "r") as tar:
        for member in tar:
            sample, _, name = member.name.partition(".")
            if key is not None and sample != key:
                yield key, files
                files = {}
            key = sample
            files[name] = tar.extractfile(member).read()
    if key is not None:
        yield key, files


def drop_staged(staging: Path, index: int) -> None:
    for path in staged_paths(staging, index):
        path.unlink(missing_ok=True)


#: Environment the nannies set before starting a worker process, over Dask's defaults (None unsets).
WORKER_ENVIRON = {"MALLOC_TRIM_THRESHOLD_": None}


def batch_cluster(cluster):
    """The dask-jobqueue cluster (not yet scaled) that a :class:`~neurofm.data_shards.config.ClusterConfig` describes."""
    from dask_jobqueue import PBSCluster, SLURMCluster

    cls = {"slurm": SLURMCluster, "pbs": PBSCluster}[cluster.kind]
    # the job's nanny reads its Dask config from the environment: DASK_A__B=<python literal>
    prologue = [f'export DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON="{WORKER_ENVIRON!r}"']
    return cls(cores=cluster.cores, processes=cluster.cores, memory=cluster.memory, walltime=cluster.walltime,
               queue=cluster.queue, account=cluster.account, job_extra_directives=list(cluster.job_extra),
               job_script_prologue=prologue, dashboard_address=None)


class DaskExecutor:
    """Tasks on ``dask.distributed``: a local cluster of ``processes`` worker processes, the scheduler at
    ``scheduler``, or batch jobs of a ``cluster`` config (SLURM / PBS through dask-jobqueue).

    A local cluster starts in a background thread (:meth:`ready` says when it takes tasks);
    ``driver_helps`` says whether the driver runs tasks too (local clusters only: a scheduler's or batch
    job's workers may be where the driver is not)."""

    def __init__(self, processes: int | None = None, scheduler: str | None = None, cluster=None, timeout_s: float = 10.0):
        from dask.distributed import Client

        self.cluster, self.client, self._failed, self._starting, self._one_thread = None, None, None, None, None
        self.driver_helps = cluster is None and scheduler is None
        self.workers = (processes or 0) + self.driver_helps
        if cluster is not None:
            self.cluster = batch_cluster(cluster)
            self.cluster.scale(jobs=cluster.jobs)
            self.client = Client(self.cluster)
            self.workers = cluster.jobs * cluster.cores
        elif scheduler:
            try:
                self.client = Client(scheduler, timeout=f"{timeout_s}s")
            except (OSError, TimeoutError) as err:
                raise NeuroFMError(f"Cannot reach the Dask scheduler at {scheduler} within {timeout_s:g} s ({err}); check the "
                                   "address (tcp://host:8786) and that the scheduler runs, or drop --scheduler.") from None
            self.workers = len(self.client.scheduler_info()["workers"])
        else:
            from threadpoolctl import threadpool_limits

            # the driver runs tasks beside the workers: one thread per pool for it too
            self._one_thread = threadpool_limits(limits=1)
            self._starting = threading.Thread(target=self._start_local, args=(processes,), name="dask-local-cluster", daemon=True)
            self._starting.start()
        #: tasks kept submitted and unfinished at once (more would leave the driver nothing to take)
        self.ahead = 2 * max(self.workers - self.driver_helps, 1) if self.driver_helps else None

    def _start_local(self, processes: int) -> None:
        import dask
        from dask.distributed import Client, LocalCluster

        try:
            with dask.config.set({f"distributed.nanny.pre-spawn-environ.{name}": value for name, value in WORKER_ENVIRON.items()}):
                # the scheduler serves its dashboard whatever dashboard_address says (dask/distributed#8136): a free
                # port, so a second build beside this one does not warn that 8787 is taken
                self.cluster = LocalCluster(n_workers=processes, threads_per_worker=1, processes=True, dashboard_address=":0")
            self.client = Client(self.cluster)
        except Exception as err:  # noqa: BLE001 (re-raised by ready() in the driver's thread)
            self._failed = err

    def ready(self) -> bool:
        """Whether the cluster takes tasks (a local cluster that failed to start raises here)."""
        if self._failed is not None:
            raise NeuroFMError(f"The local Dask cluster did not start ({self._failed}); run with --workers 1, or free the "
                               "resources it needs (ports, memory).") from self._failed
        return self.client is not None

    def submit(self, fn, *args, **kwargs):
        return self.client.submit(_one_thread, fn, *args, pure=False, **kwargs)

    def close(self) -> None:
        if self._starting is not None:
            self._starting.join()
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        if self._one_thread is not None:
            self._one_thread.restore_original_limits()


def _one_thread(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with BLAS and OpenMP pools of one thread: a worker is one process per core, and
    OpenMP's setting belongs to the calling thread (a Dask task runs in its worker's executor thread)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return fn(*args, **kwargs)


class DriverOnly:
    """No workers: the driver runs every task itself, in order."""

    workers, driver_helps, ahead = 1, True, None

    def ready(self) -> bool:
        return False

    def close(self) -> None:
        pass


def make_executor(workers: int = 1, scheduler: str | None = None, cluster=None):
    """The driver alone for one local worker; the driver beside a local cluster of ``workers - 1``
    processes for more; a ``cluster`` config wins over ``scheduler``, and both over ``workers``."""
    if workers < 1:
        raise NeuroFMError(f"--workers must be at least 1; got {workers}.")
    if cluster is None and scheduler is None:
        return DriverOnly() if workers == 1 else DaskExecutor(workers - 1)
    return DaskExecutor(None, scheduler, cluster)


@dataclass
class Call:
    """One task: ``fn(*args, after=<the lead's future>, **kwargs)``; ``lead`` is the index of the
    call it must wait for (None: none)."""

    index: int
    lead: int | None
    args: tuple
    kwargs: dict


class OrderedTasks:
    """Every call's result, in the calls' order, from an executor's workers and (where it helps) this
    process: see the module docstring. Calls are taken in order, so a lead is always taken before the
    calls that wait for it."""

    def __init__(self, fn, calls: list[Call], executor):
        self.fn, self.calls, self.executor = fn, calls, executor
        self.taken = 0  # calls[:taken] run, or were submitted
        self.futures: dict[int, object] = {}
        self.finished: dict[int, object] = {}

    def __iter__(self) -> Iterator[tuple[int, object]]:
        for call in self.calls:
            yield call.index, self._result(call.index)

    def _result(self, index: int):
        from dask.distributed import wait

        while True:
            self._submit_ahead()
            if index in self.finished:
                return self.finished.pop(index)
            future = self.futures.get(index)
            if future is not None and (future.done() or not self.executor.driver_helps):
                return self.futures.pop(index).result()
            if self._driver_may_take():
                call = self.calls[self.taken]
                self.taken += 1
                self.finished[call.index] = self.fn(*call.args, **call.kwargs)  # its lead has finished
                continue
            lead = self.futures.get(self.calls[self.taken].lead) if self.taken < len(self.calls) else None
            wait([f for f in (future, lead) if f is not None], return_when="FIRST_COMPLETED")

    def _pending_lead(self, call: Call):
        """The future of ``call``'s lead while it runs on a worker, else None (no lead, or finished)."""
        future = self.futures.get(call.lead) if call.lead is not None else None
        return None if future is None or future.done() else future

    def _driver_may_take(self) -> bool:
        return (self.executor.driver_helps and self.taken < len(self.calls)
                and self._pending_lead(self.calls[self.taken]) is None)

    def _submit_ahead(self) -> None:
        if not self.executor.ready():
            return
        while self.taken < len(self.calls) and (
                self.executor.ahead is None or sum(not f.done() for f in self.futures.values()) < self.executor.ahead):
            call = self.calls[self.taken]
            self.taken += 1
            self.futures[call.index] = self.executor.submit(self.fn, *call.args, after=self._pending_lead(call), **call.kwargs)


def available_cores() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


__all__ = ["batch_cluster", "Call", "DaskExecutor", "DriverOnly", "OrderedTasks", "STAGING", "available_cores", "drop_staged", "finish_staged", "make_executor", "raise_if_failed", "run_recording", "staged_entry", "staging_tar",
           "staged_samples"]
