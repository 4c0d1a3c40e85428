"""Sweeps: analyse every checkpoint of a training run, cached by content, as one ``Sweep``.

``sweep(...)`` finds a run's checkpoints (``analysis.runs.find_checkpoints``:
the ``checkpoint-<step>/`` folders the Hugging Face Trainer writes, or what a
glob ``pattern`` matches), opens and checks each before any work, and
analyses each one that is not already in the report cache
(``spectra.analysis.cache``), serially, on a local process pool
(``workers > 1``) or as Ray tasks (``ray=...``; ``analysis.executors``).
It returns a ``Sweep``, as ``analyze`` returns a ``Report`` and ``compare``
a ``Comparison``; ``run_sweep`` is the same function under its earlier name.
A match that is a saved report folder (``out/step-<N>/``, written while
training by ``spectra.integrations``) is taken as saved, as ``compare``
takes reports: not analysed again, not cached, and not filtered by ``modules``.

Ctrl-C raises ``SweepInterrupted`` (a ``KeyboardInterrupt``) whose message
says how many checkpoints are in the cache, so that the same sweep run again
goes on from there (``spectra sweep`` raises one too when Ctrl-C comes while
it writes the table).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..arguments import BASE, WORKERS
from ..defaults import SWEEP_METRICS
from ..display import frame
from ..errors import SpectraError, SpectraWarning, warn
from ..io.atomic import check_output, holds, replace_folder
from ..io.hub import locate
from ..loaders import Checkpoint, options_for
from ..report import Progress, Report, csv_text, is_report
from .cache import ReportCache, analysis_key
from .executors import run_on_processes, run_on_ray, run_serially
from .runs import RunCheckpoint, find_checkpoints
from .sources import load

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


@dataclass
class Sweep:
    """The reports of a run's checkpoints, in step order, and where each came from.

    Args:
        run: the training output folder.
        checkpoints: the run's checkpoints (``find_checkpoints``), by step.
        reports: one ``Report`` per checkpoint, in the same order.
        cached: whether each report was a cache hit; default: none given.

    Example::

        runs = spectra.sweep("output/")
        runs.reports[-1].to_pandas()  # the last step's report
    """

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
        """One row per (checkpoint, module[, head]), with ``step`` and ``checkpoint`` first.

        Returns:
            A list of dicts: ``step``, ``checkpoint`` (its path), then the report row.

        Example::

            steps = [row["step"] for row in spectra.sweep("output/").rows()]
        """
        rows = []
        for checkpoint, report in zip(self.checkpoints, self.reports, strict=True):
            for row in report.rows:
                rows.append({"step": checkpoint.step, "checkpoint": str(checkpoint.path), **row})
        return rows

    def to_pandas(self):
        """The rows as one ``pandas.DataFrame``, missing numbers NaN (pandas imported here).

        Returns:
            A ``pandas.DataFrame`` of ``rows()``: ``step`` first, then every column.

        Example::

            spectra.sweep("output/").to_pandas().groupby("step")["stable_rank"].mean()
        """
        return frame(self.rows(), self.columns)

    def __repr__(self) -> str:
        steps = [checkpoint.step for checkpoint in self.checkpoints]
        span = f"steps {steps[0]}–{steps[-1]}" if steps else "no steps"
        return (
            f"Sweep({self.run}: {len(self.checkpoints)} checkpoints, {span}, "
            f"{sum(self.cached)} from the cache)"
        )

    def csv(self) -> str:
        """The rows as CSV, floats written exactly (``repr``), missing values empty.

        Returns:
            The CSV text ``save`` writes to ``sweep.csv``, header first.
        """
        return csv_text(self.columns, self.rows())

    def save(
        self,
        out: str | os.PathLike,
        force: bool = False,
        figure_format: str = "png",
        metrics: Sequence[str] = SWEEP_METRICS,
    ) -> Path:
        """Write ``sweep.csv``, ``sweep.json`` and ``sweep.<figure_format>`` into ``out``.

        Args:
            out: the folder: missing, empty, or an earlier sweep with ``force``.
            force: replace an earlier sweep; default False.
            figure_format: ``"png"`` (the default), ``"pdf"`` or ``"svg"``.
            metrics: the metrics the figure draws by step; default ``SWEEP_METRICS``.

        Returns:
            ``out``, as a ``Path``.

        Raises:
            ReportExistsError: ``out`` holds an earlier sweep and no
                ``force``, or anything that is not a sweep.

        Example::

            spectra.sweep("output/").save("output-sweep/", figure_format="svg")
        """
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
) -> Sweep:
    """Every checkpoint of a training run, analysed and cached, as one ``Sweep``.

    ``run`` is a training output folder: its ``checkpoint-<step>/`` folders
    (Hugging Face Trainer), or what ``pattern`` (a glob relative to ``run``,
    e.g. ``"seed*/step-*"``) matches. Each checkpoint is analysed as
    ``spectra.analyze`` would (``base``, ``modules``, ``layers``, ``device``,
    ``method`` and loader ``options`` such as ``lora_alpha`` are its), and its
    report is cached by content, so that a second sweep over a growing run
    analyses only the new checkpoints. ``cache`` is True (the default
    folder, ``spectra.analysis.cache.default_folder()``), a folder, a
    ``ReportCache``, or False (analyse everything, store nothing).
    ``workers > 1`` runs that many processes; ``ray`` (True, or a cluster
    address) runs Ray tasks instead, on an already initialised Ray or one
    that ``ray.init`` starts or joins. ``progress(done, total, label)`` is
    called after each checkpoint. ``jobs`` is ``analyze``'s and applies
    inside each worker, whose default follows its own thread count; it is
    not part of the cache key, as it changes σ only by rounding. A ``base``
    given as a Hub id is resolved once, here, for every checkpoint.

    The ``Sweep`` holds the reports in step order and which came from the
    cache; ``to_pandas()`` is one row per (checkpoint, module[, head]) with
    a ``step`` column first and every metric column, ``save(out)`` writes
    ``sweep.csv``, ``sweep.json`` and the figure.

    Args:
        run: the training output folder.
        base, modules, layers, device, method: as ``spectra.analyze`` takes
            them (defaults: no base, k and v, every layer, ``"auto"``, ``"fast"``).
        pattern: a glob relative to ``run``; ``None`` (the default): the
            ``checkpoint-<step>/`` folders.
        cache: True (the default: ``cache.default_folder()``), a folder, a
            ``ReportCache``, or False (no cache).
        workers: processes analysing side by side; default 1 (in this process).
        ray: True or a cluster address to run Ray tasks; ``None`` (the default):
            no Ray.
        jobs: ``analyze``'s, inside each worker; ``None`` (the default): its default.
        progress: ``progress(done, total, label)``; ``None`` (the default): no calls.
        **options: loader options, given to each checkpoint whose format uses them.

    Returns:
        A ``Sweep``: the reports in step order, and which came from the cache.

    Raises:
        SpectraError: ``workers`` below 1, or no checkpoints found
            (``find_checkpoints``), and every error of ``analyze``.
        SweepInterrupted: Ctrl-C (a ``KeyboardInterrupt``, not a ``SpectraError``).

    Example::

        runs = spectra.sweep("output/", modules="k,v")
        df = runs.to_pandas()
        df.groupby(["step", "role"])["effective_rank"].mean().unstack()
    """
    if workers < 1:
        raise SpectraError(f"{WORKERS} must be at least 1, got {workers}")
    checkpoints = find_checkpoints(run, pattern)
    base = locate(base, BASE) if base is not None else None  # a Hub id once, for every job
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

    def within(index: int) -> Progress | None:
        """``analyze``'s progress over one checkpoint's modules, as the sweep's, by step."""
        if progress is None:
            return None
        start, step = done, checkpoints[index].step
        return lambda modules, _, key: progress(start + modules, total, f"step {step}: {key}")

    todo = [tasks[i] for i in missing]
    try:
        with warnings.catch_warnings():  # each checkpoint's warnings go once, grouped, below
            warnings.simplefilter("ignore", SpectraWarning)
            if ray is not None and ray is not False:
                run_on_ray(todo, missing, ray, finished)
            elif workers > 1 and len(todo) > 1:
                run_on_processes(todo, missing, workers, finished)
            else:
                run_serially(todo, missing, finished, opened, within)
    except KeyboardInterrupt:
        # a report that reached the cache just as the interrupt came is kept, and counted
        landed = [
            i for i in missing if reports[i] is None and store is not None and store.get(keys[i])
        ]
        analysed = sum(r is not None for r in reports) - sum(cached) - len(saved) + len(landed)
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


run_sweep = sweep  # its earlier name, from when sweep() returned the DataFrame


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
