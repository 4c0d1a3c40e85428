"""How a sweep's analyses run: here, on a local process pool, or as Ray tasks.

Each executor runs the same ``analyze`` (``analyze_job``) on the same job
(``analyze``'s arguments as a dict) and hands each report to
``finished(index, report)`` as it comes, so that the sweep caches it at
once and an interrupted sweep keeps everything that finished. Their
results are equal.

- ``run_serially``: one after another in this process, each checkpoint as
  the sweep opened it, with progress within each;
- ``run_on_processes``: a spawned process pool; Ctrl-C keeps what finished
  and ends the worker processes at once;
- ``run_on_ray``: Ray tasks (one GPU each where the cluster has GPUs) on an
  initialised Ray, or one that ``ray.init`` starts or joins (``ray_session``,
  which ``analysis.distributed`` shares: one big checkpoint's modules as tasks).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
from collections.abc import Callable, Iterator

from ..arguments import RAY
from ..errors import SpectraError
from ..loaders import Checkpoint
from ..report import Progress, Report
from .stream import analyze

__all__ = [
    "analyze_job",
    "ray_session",
    "run_on_processes",
    "run_on_ray",
    "run_serially",
    "task_error",
]

Finished = Callable[[int, Report], None]  # (index of the job's checkpoint, its report)


def analyze_job(
    job: dict, checkpoint: Checkpoint | None = None, progress: Progress | None = None
) -> Report:
    """One checkpoint's analysis; module-level so that process pools and Ray can ship it.

    ``checkpoint`` is the job's checkpoint as the sweep opened it (serial runs);
    a worker process opens its own.
    """
    return analyze(**job, checkpoint=checkpoint, progress=progress)


def _worker_setup(threads: int) -> None:
    """A worker process's set-up: its share of the threads, and the CLI's allocator setting."""
    import torch

    from ..io.memory import release_large_blocks

    torch.set_num_threads(threads)
    release_large_blocks()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops the pool


def run_serially(
    jobs: list[dict],
    indices: list[int],
    finished: Finished,
    opened: list[Checkpoint | None],
    progress_of: Callable[[int], Progress | None],
) -> None:
    """Run ``jobs`` here, in turn: each on ``opened[index]``, the checkpoint as the sweep opened it.

    ``progress_of(index)`` is the progress of that job's modules. A finished
    checkpoint is let go (``opened[index] = None``) before the next is read.
    """
    for job, index in zip(jobs, indices, strict=True):
        finished(index, analyze_job(job, opened[index], progress_of(index)))
        opened[index] = None  # nothing of a finished checkpoint stays in memory


def run_on_processes(
    jobs: list[dict], indices: list[int], workers: int, finished: Finished
) -> None:
    """Run ``jobs`` on a process pool; on Ctrl-C keep what finished and stop the workers at once."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")  # torch and fork do not mix
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_worker_setup, initargs=(threads,)
    )
    futures = {
        pool.submit(analyze_job, job): index for job, index in zip(jobs, indices, strict=True)
    }
    handled: set[concurrent.futures.Future] = set()
    try:
        for future in concurrent.futures.as_completed(futures):
            handled.add(future)
            finished(futures[future], future.result())
    except BaseException:
        for future, index in futures.items():  # finished before the stop: still kept
            done = future.done() and not future.cancelled() and future.exception() is None
            if done and future not in handled:
                handled.add(future)
                finished(index, future.result())
        _stop(pool)
        raise
    pool.shutdown(wait=True)


def _stop(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """Cancel what has not started and end the worker processes now, not when they finish."""
    # the executor keeps its processes in ``_processes`` (pid → process); read before shutdown
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=5)
    for process in processes:  # one that outlived SIGTERM (busy starting up under load): SIGKILL
        if process.is_alive():
            process.kill()
            process.join(timeout=5)


@contextlib.contextmanager
def ray_session(address: bool | str) -> Iterator[object]:
    """Ray, initialised: the one already running, else one ``ray.init`` starts or joins.

    ``address`` is a cluster address (``"auto"``, ``"ray://host:10001"``,
    ``"host:6379"``), or True / ``""`` for what ``ray.init()`` does alone (join
    a running local cluster, else start one). A Ray this starts is shut down
    on leaving. Used by sweeps (a checkpoint per task) and by
    ``analysis.distributed`` (a module per task).
    """
    try:
        import ray
    except ImportError:
        raise SpectraError(
            f"{RAY} needs Ray, which is not installed: pip install 'spectra[ray]'"
        ) from None
    started = False
    logger = logging.getLogger("ray")
    level = logger.level
    if not ray.is_initialized():
        joined = address if isinstance(address, str) and address else None
        if joined not in (None, "auto", "local"):  # Ray's own words for "find" and "start"
            check_reachable(joined)
        # A Ray started here for this call only: its start-up lines (the local instance, its
        # token) are not the user's concern; a cluster joined by address keeps Ray's logging.
        quiet = {"logging_level": logging.ERROR} if joined is None else {}
        try:
            ray.init(address=joined, log_to_driver=False, **quiet)
        except ConnectionError as exc:  # "auto" and no cluster running here: say it our way
            raise SpectraError(
                f"{RAY(joined)}: no running Ray cluster found ({str(exc).splitlines()[0]}); "
                f"start one (Ray's ray start, on a head node), give its address as "
                f"{RAY('HOST:PORT')}, or leave out the address to start a local Ray"
            ) from None
        started = True
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()
            logger.setLevel(level)  # as the caller had it


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Refuse a cluster address nothing answers at, before Ray retries it for minutes.

    ``address`` is ``HOST:PORT`` or ``ray://HOST:PORT`` (Ray's client); a TCP
    connection to it must open within ``timeout`` seconds.

    Example::

        check_reachable("10.0.0.1:6379")  # SpectraError when no Ray answers there
    """
    where = address.split("://", 1)[-1].rstrip("/")
    host, _, port = where.rpartition(":")
    if not host or not port.isdigit():
        raise SpectraError(
            f"{RAY(address)}: expected a cluster address HOST:PORT, ray://HOST:PORT, auto or local"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise SpectraError(
            f"{RAY(address)}: no Ray cluster answers at {host}:{port} ({exc}); start one "
            f"there (Ray's ray start, on a head node), or give the address of a running one"
        ) from None


def task_error(exc: BaseException, what: str) -> SpectraError:
    """A failed Ray task's error: its own ``SpectraError``, else one naming ``what``."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, SpectraError):
        return cause
    return SpectraError(f"{what}: {exc}")


def run_on_ray(
    jobs: list[dict],
    indices: list[int],
    address: bool | str,
    finished: Finished,
) -> None:
    """Run ``jobs`` as Ray tasks (one GPU each where the cluster has GPUs), in ``ray_session``."""
    with ray_session(address) as ray:
        gpus = ray.cluster_resources().get("GPU", 0)
        task = ray.remote(num_cpus=1, num_gpus=1 if gpus else 0)(analyze_job)
        pending = {task.remote(job): index for job, index in zip(jobs, indices, strict=True)}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(ready[0])
            try:
                report = ray.get(ready[0])
            except ray.exceptions.RayTaskError as exc:
                what = jobs[indices.index(index)]["path"]
                raise task_error(exc, what) from exc
            finished(index, report)
