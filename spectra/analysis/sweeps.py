"""Sweeps: analyse every checkpoint of a training run, cached by content, as one table.

``find_checkpoints(run, pattern=None)`` lists a run's checkpoints with their
steps: the ``checkpoint-<step>/`` folders the Hugging Face Trainer writes, or
whatever ``pattern`` (a glob, relative to ``run``) matches. The step is
``global_step`` from a ``trainer_state.json`` inside, else the last number in
the name. A match that is a saved report folder (``out/step-<N>/``, written
while training by ``spectra.integrations``) is taken as saved, as ``compare``
takes reports: not analysed again, not cached, and not filtered by ``modules``.

``run_sweep(...)`` analyses each one that is not already in the report cache
(``spectra.analysis.cache``), serially, on a local process pool (``workers > 1``) or as
Ray tasks (``ray=...``, one GPU each where the cluster has GPUs), and returns
a ``Sweep``; ``sweep(...)`` returns its ``to_pandas()``. Every executor runs
the same ``analyze`` on the same inputs, so their results are equal.

Ctrl-C raises ``SweepInterrupted`` (a ``KeyboardInterrupt``) whose message
says how many checkpoints are in the cache, so that the same sweep run again
goes on from there (``spectra sweep`` raises one too when Ctrl-C comes while
it writes the table).
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import re
import signal
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..defaults import SWEEP_METRICS
from ..display import frame
from ..errors import SpectraError, SpectraWarning, warn
from ..io.atomic import check_output, holds, replace_folder
from ..io.hub import locate
from ..loaders import Checkpoint, options_for
from ..report import Progress, Report, csv_text, is_report
from .cache import ReportCache, analysis_key
from .sources import load
from .stream import analyze

__all__ = [
    "SWEEP_METRICS",
    "RunCheckpoint",
    "Sweep",
    "SweepInterrupted",
    "check_sweep_target",
    "find_checkpoints",
    "run_sweep",
    "sweep",
]

SWEEP_FILE = "sweep.csv"
_TRAINER_FOLDER = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True)
class RunCheckpoint:
    """One checkpoint of a run: its training step and where it is."""

    step: int
    path: Path


def _step_of(path: Path) -> int | None:
    state = path / "trainer_state.json"
    if state.is_file():
        try:
            return int(json.loads(state.read_text())["global_step"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    numbers = re.findall(r"\d+", path.name)
    return int(numbers[-1]) if numbers else None


def find_checkpoints(run: str | os.PathLike, pattern: str | None = None) -> list[RunCheckpoint]:
    """The checkpoints of a run, by step; ``SpectraError`` if there are none."""
    run = Path(run)
    if not run.is_dir():
        raise SpectraError(f"{run}: no such folder (expected a training run's output folder)")
    if pattern is None:
        found = [p for p in run.iterdir() if p.is_dir() and _TRAINER_FOLDER.match(p.name)]
        what = "checkpoint-<step>/ folders (Hugging Face Trainer)"
    else:
        found = sorted(run.glob(pattern))
        what = f"paths matching {pattern!r}"
    if not found:
        listing = ", ".join(sorted(p.name for p in run.iterdir())[:12]) or "nothing"
        raise SpectraError(
            f"{run}: no checkpoints found; expected {what}, found {listing}. "
            "Name others with --glob PATTERN"
        )
    checkpoints = []
    for path in found:
        step = _step_of(path)
        if step is None:
            raise SpectraError(
                f"{path}: cannot tell its training step: no trainer_state.json and no number in "
                "its name; choose the checkpoints with --glob"
            )
        checkpoints.append(RunCheckpoint(step, path))
    checkpoints.sort(key=lambda c: (c.step, str(c.path)))
    steps = [c.step for c in checkpoints]
    repeated = sorted({s for s in steps if steps.count(s) > 1})
    if repeated:
        names = [str(c.path) for c in checkpoints if c.step in repeated]
        raise SpectraError(
            f"{run}: several checkpoints share step {repeated[0]}: {', '.join(names[:4])}; "
            "narrow the selection with --glob"
        )
    return checkpoints


@dataclass
class Sweep:
    """The reports of a run's checkpoints, in step order, and where each came from."""

    run: Path
    checkpoints: list[RunCheckpoint]
    reports: list[Report]
    cached: list[bool] = field(default_factory=list)  # whether each report was a cache hit

    @property
    def columns(self) -> list[str]:
        columns = ["step", "checkpoint"]
        for report in self.reports:
            columns += [c for c in report.columns if c not in columns]
        return columns

    def rows(self) -> list[dict[str, object]]:
        """One row per (checkpoint, module[, head]), with ``step`` and ``checkpoint`` first."""
        rows = []
        for checkpoint, report in zip(self.checkpoints, self.reports, strict=True):
            for row in report.rows:
                rows.append({"step": checkpoint.step, "checkpoint": str(checkpoint.path), **row})
        return rows

    def to_pandas(self):
        """The rows as one ``pandas.DataFrame``, missing numbers NaN (pandas imported here)."""
        return frame(self.rows(), self.columns)

    def __repr__(self) -> str:
        steps = [checkpoint.step for checkpoint in self.checkpoints]
        span = f"steps {steps[0]}–{steps[-1]}" if steps else "no steps"
        return (
            f"Sweep({self.run}: {len(self.checkpoints)} checkpoints, {span}, "
            f"{sum(self.cached)} from the cache)"
        )

    def csv(self) -> str:
        """The rows as CSV, floats written exactly (``repr``), missing values empty."""
        return csv_text(self.columns, self.rows())

    def save(
        self,
        out: str | os.PathLike,
        force: bool = False,
        figure_format: str = "png",
        metrics: Sequence[str] = SWEEP_METRICS,
    ) -> Path:
        """Write ``sweep.csv``, ``sweep.json`` and ``sweep.<figure_format>`` into ``out``."""
        from ..plot import sweep_curves

        out = Path(out)
        check_sweep_target(out, force)
        figure = sweep_curves(self.rows(), metrics)[0]
        with replace_folder(out) as staging:
            (staging / SWEEP_FILE).write_text(self.csv())
            meta = {
                "run": str(self.run.resolve()),
                "checkpoints": [
                    {
                        "step": c.step,
                        "path": str(c.path.resolve()),
                        "cached": hit,
                        "source": report.meta.get("source"),
                    }
                    for c, report, hit in zip(
                        self.checkpoints, self.reports, self.cached, strict=True
                    )
                ],
                "warnings": self.warnings,
            }
            (staging / "sweep.json").write_text(json.dumps(meta, indent=2, default=str))
            from ..plot import save_figure

            save_figure(figure, staging / f"sweep.{figure_format}")
        return out

    @property
    def warnings(self) -> list[str]:
        """Each distinct warning once, with the steps it applies to (not once per step)."""
        steps: dict[str, list[int]] = {}
        for checkpoint, report in zip(self.checkpoints, self.reports, strict=True):
            for warning in report.warnings:
                steps.setdefault(warning, []).append(checkpoint.step)
        every = len(self.checkpoints)
        return [f"{_steps_text(found, every)}: {warning}" for warning, found in steps.items()]


def _steps_text(steps: list[int], every: int) -> str:
    """``step 300``, ``steps 100, 300`` or ``every step (9 checkpoints)``."""
    if len(steps) == 1:
        return f"step {steps[0]}"
    if len(steps) == every:
        return f"every step ({every} checkpoints)"
    shown = ", ".join(map(str, steps[:6])) + (", …" if len(steps) > 6 else "")
    return f"steps {shown} ({len(steps)} of {every} checkpoints)"


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C during a sweep; the message counts what is kept.

    ``in_cache`` of ``total`` checkpoints to analyse are in the cache
    (``analysed`` of them by this run); ``kept`` is False when nothing is
    cached (``cache=False``), and ``checking`` says what was under way when
    the interrupt came before any analysis (``"checking step 300"``).
    """

    def __init__(
        self,
        in_cache: int,
        total: int,
        analysed: int,
        kept: bool = True,
        saved: int = 0,
        checking: str | None = None,
    ):
        self.in_cache, self.total, self.analysed, self.kept = in_cache, total, analysed, kept
        if checking is not None:
            done = f"while {checking}, before any analysis"
        elif kept:
            done = (
                f"{in_cache} of {total} checkpoints kept in the cache ({analysed} analysed by "
                "this run): run the same sweep again to go on"
            )
        else:
            done = f"{analysed} of {total} checkpoints analysed, not kept: the cache is off"
        besides = f" (besides {saved} saved reports, analysed before)" if saved else ""
        super().__init__(f"{done}{besides}; no sweep was written")


def check_sweep_target(out: str | os.PathLike, force: bool) -> None:
    """A sweep may replace an empty folder, or an earlier sweep with ``force``."""
    check_output(out, force, "sweep", holds(SWEEP_FILE))


# ---------------------------------------------------------------- running


def _analyze_job(
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


def run_sweep(
    run: str | os.PathLike,
    base: str | os.PathLike | None = None,
    modules: str | Sequence[str] | None = None,
    layers: str | Sequence[int] | None = None,
    device: str = "auto",
    method: str = "fast",
    *,
    pattern: str | None = None,
    cache: bool | str | os.PathLike | ReportCache = True,
    workers: int = 1,
    ray: bool | str | None = None,
    jobs: int | None = None,
    progress: Progress | None = None,
    **options: object,
) -> Sweep:
    """Analyse every checkpoint of ``run`` (see the module docstring) and gather the reports.

    ``cache`` is True (the default folder, ``spectra.analysis.cache.default_folder()``),
    a folder, a ``ReportCache``, or False (analyse everything, store nothing).
    ``workers > 1`` runs that many processes; ``ray`` (True, or a cluster
    address) runs Ray tasks instead, on an already initialised Ray or one
    that ``ray.init`` starts or joins. ``progress(done, total, label)`` is
    called after each checkpoint. Other arguments are ``analyze``'s (``jobs``
    applies inside each worker, whose default follows its own thread count;
    it is not part of the cache key, as it changes σ only by rounding). A
    ``base`` given as a Hub id is resolved once, here, for every checkpoint.
    """
    if workers < 1:
        raise SpectraError(f"--workers must be at least 1, got {workers}")
    checkpoints = find_checkpoints(run, pattern)
    base = locate(base, "--base") if base is not None else None  # a Hub id once, for every job
    store = _cache(cache)
    tasks, keys, opened, sizes = [], [], [], []
    # report folders saved while training (spectra.integrations, out/step-<N>/) are taken as
    # saved, as compare takes them: already analysed, so not opened, analysed or cached again
    saved = {i: Report.load(c.path) for i, c in enumerate(checkpoints) if is_report(c.path)}
    to_analyse = len(checkpoints) - len(saved)
    try:
        for index, found in enumerate(checkpoints):  # each opened and checked before any work
            if index in saved:
                sizes.append(len(saved[index].rows))
                tasks.append({})
                keys.append(None)
                opened.append(None)
                continue
            if progress is not None:
                progress(0, len(checkpoints), f"checking step {found.step}")
            given = options_for(found.path, options)
            checkpoint = load(found.path, base=base, **given)
            sizes.append(len(checkpoint.plan(modules, layers).keys))
            job = {
                "path": found.path,
                "base": base,
                "modules": modules,
                "layers": layers,
                "device": device,
                "method": method,
                "jobs": jobs,
                **given,
            }
            tasks.append(job)
            keys.append(_key(checkpoint, job, given, store) if store is not None else None)
            opened.append(checkpoint)  # analysed as opened here, unless a worker process does it
        reports: list[Report | None] = [
            store.get(key) if store is not None and key is not None else saved.get(i)
            for i, key in enumerate(keys)
        ]
    except KeyboardInterrupt:  # hashing a large checkpoint can take a while: say where it was
        if len(keys) < len(checkpoints):
            checking = f"checking step {checkpoints[len(keys)].step}"
        else:
            checking = "reading the cached reports"
        raise SweepInterrupted(
            0, to_analyse, 0, store is not None, len(saved), checking=checking
        ) from None
    cached = [report is not None and i not in saved for i, report in enumerate(reports)]
    missing = [i for i, report in enumerate(reports) if report is None]
    # progress counts modules, so that it moves within a checkpoint (serial runs)
    total = sum(sizes)
    done = sum(size for size, report in zip(sizes, reports, strict=True) if report is not None)
    if progress is not None:
        progress(done, total, f"{sum(cached)} checkpoints from the cache")

    def finished(index: int, report: Report) -> None:
        nonlocal done
        if store is not None:
            store.put(keys[index], report)  # kept at once: an interrupted sweep loses nothing done
        reports[index] = report  # after the put, so that an interrupt counts only what is kept
        done += sizes[index]
        if progress is not None:
            progress(done, total, f"step {checkpoints[index].step} done")

    todo = [tasks[i] for i in missing]
    try:
        with warnings.catch_warnings():  # each checkpoint's warnings go once, grouped, below
            warnings.simplefilter("ignore", SpectraWarning)
            if ray is not None and ray is not False:
                _run_on_ray(todo, missing, ray, finished)
            elif workers > 1 and len(todo) > 1:
                _run_on_processes(todo, missing, workers, finished)
            else:
                for index in missing:
                    step_progress = _within(progress, done, total, checkpoints[index].step)
                    finished(index, _analyze_job(tasks[index], opened[index], step_progress))
                    opened[index] = None  # nothing of a finished checkpoint stays in memory
    except KeyboardInterrupt:
        analysed = sum(report is not None for report in reports) - sum(cached) - len(saved)
        in_cache = sum(cached) + analysed if store is not None else 0
        raise SweepInterrupted(
            in_cache, to_analyse, analysed, store is not None, len(saved)
        ) from None
    for index in range(len(checkpoints)):
        if cached[index]:  # a hit keeps the result but says where the content is now
            assert reports[index] is not None
            reports[index].meta["source"]["path"] = str(checkpoints[index].path.resolve())
    result = Sweep(Path(run), checkpoints, [r for r in reports if r is not None], cached)
    for warning in result.warnings:
        warn(f"{run}: {warning}")
    return result


def _within(progress: Progress | None, done: int, total: int, step: int) -> Progress | None:
    """``analyze``'s progress over one checkpoint's modules, as the sweep's, labelled by step."""
    if progress is None:
        return None
    return lambda modules, _, key: progress(done + modules, total, f"step {step}: {key}")


def sweep(
    run: str | os.PathLike,
    base: str | os.PathLike | None = None,
    modules: str | Sequence[str] | None = None,
    layers: str | Sequence[int] | None = None,
    device: str = "auto",
    method: str = "fast",
    *,
    pattern: str | None = None,
    cache: bool | str | os.PathLike | ReportCache = True,
    workers: int = 1,
    ray: bool | str | None = None,
    jobs: int | None = None,
    progress: Progress | None = None,
    **options: object,
):
    """Every checkpoint of a training run as one ``pandas.DataFrame``, a ``step`` column first.

    ``run`` is a training output folder: its ``checkpoint-<step>/`` folders
    (Hugging Face Trainer), or what ``pattern`` (a glob relative to ``run``,
    e.g. ``"seed*/step-*"``) matches. Each checkpoint is analysed as
    ``spectra.analyze`` would (``base``, ``modules``, ``layers``, ``device``,
    ``method`` and loader ``options`` such as ``lora_alpha`` are its), and its
    report is cached by content (``cache``: True for the default folder, a
    folder, or False), so that a second sweep over a growing run analyses
    only the new checkpoints. ``workers`` processes or ``ray`` tasks run
    checkpoints side by side. The frame has one row per (checkpoint, module[,
    head]) and every metric column; ``run_sweep`` takes the same arguments
    and returns the ``Sweep`` (reports, cache hits, ``save``).

    Example::

        df = spectra.sweep("output/", modules="k,v")
        df.groupby(["step", "module"])["effective_rank"].mean().unstack()
    """
    return run_sweep(
        run,
        base,
        modules,
        layers,
        device,
        method,
        pattern=pattern,
        cache=cache,
        workers=workers,
        ray=ray,
        jobs=jobs,
        progress=progress,
        **options,
    ).to_pandas()


def _cache(cache: bool | str | os.PathLike | ReportCache) -> ReportCache | None:
    if cache is False or cache is None:
        return None
    if isinstance(cache, ReportCache):
        return cache
    return ReportCache(None if cache is True else cache)


def _key(
    checkpoint: Checkpoint, job: dict, loader_options: dict[str, object], store: ReportCache
) -> str:
    """The content key of one job: what it reads, and every parameter but the device."""
    digests = store.digests(checkpoint.source_files())
    files = [(Path(path).name, digest) for path, digest in digests.items()]
    parameters = {
        "format": checkpoint.format,
        "modules": sorted(job["modules"]) if job["modules"] else None,
        "layers": sorted(job["layers"]) if job["layers"] else None,
        "method": job["method"],
        "options": loader_options,
    }
    return analysis_key(files, parameters)


def _run_on_processes(
    jobs: list[dict], indices: list[int], workers: int, finished: Callable[[int, Report], None]
) -> None:
    """Run ``jobs`` on a process pool; on Ctrl-C keep what finished and stop the workers at once."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")  # torch and fork do not mix
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_worker_setup, initargs=(threads,)
    )
    futures = {
        pool.submit(_analyze_job, job): index for job, index in zip(jobs, indices, strict=True)
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


def _run_on_ray(
    jobs: list[dict],
    indices: list[int],
    address: bool | str,
    finished: Callable[[int, Report], None],
) -> None:
    try:
        import ray
    except ImportError:
        raise SpectraError(
            "--ray needs Ray, which is not installed: pip install 'spectra[ray]'"
        ) from None
    started = False
    if not ray.is_initialized():
        ray.init(
            address=address if isinstance(address, str) and address else None, log_to_driver=False
        )
        started = True
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        task = ray.remote(num_cpus=1, num_gpus=1 if gpus else 0)(_analyze_job)
        pending = {task.remote(job): index for job, index in zip(jobs, indices, strict=True)}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(ready[0])
            try:
                report = ray.get(ready[0])
            except ray.exceptions.RayTaskError as exc:
                cause = getattr(exc, "cause", None)
                if isinstance(cause, SpectraError):
                    raise cause from None
                raise SpectraError(f"{jobs[indices.index(index)]['path']}: {exc}") from exc
            finished(index, report)
    finally:
        if started:
            ray.shutdown()
