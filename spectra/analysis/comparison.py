"""Compare methods: analyse several checkpoints (or load saved reports) side by side.

``compare(sources, labels)`` returns a ``Comparison`` holding one ``Report``
per source, a summary (per method and module: the mean over layers of
normalized entropy, effective rank, stable rank, energy rank at 90 % and the
top-1 share), and ``save(out)``, which writes ``summary.csv``, the reports
(``reports/<label>/``) and the figures: Figure 2 in the paper's equal-rank
view (``figure2.<ext>``) and over all values (``figure2_all_values.<ext>``),
the spectra (``spectrum.<ext>``) and two metrics by layer, with panels for
every role all sources share.

With ``subspace=True`` (``spectra compare --subspace``) it also measures the
subspace metrics of ``spectra.subspace`` on the modules all sources share:
the summary gains the mean amplification and intruder-dimension count per
method and module, and ``save`` writes ``subspace_similarity.csv`` (each pair
of methods per layer), ``subspace_modules.csv`` (each method per layer) and
the heat-map ``subspace_similarity.<ext>``. With ``interference=True``
(``--interference``), task interference of each pair per module
(``analysis.interference``): ``interference.csv`` and ``interference.<ext>``.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..arguments import BASE, LABEL
from ..defaults import SUMMARY_METRICS
from ..display import frame, html_table
from ..errors import SpectraError, warn
from ..io.atomic import check_output, holds, replace_folder
from ..io.hub import locate
from ..loaders import options_for
from ..report import Progress, Report, csv_text, is_report, noise_warning, version_warning
from ..subspace import INTRUDER_EPS, INTRUDER_TOP, SUBSPACE_RANK
from .estimated import estimate_columns, summary_means
from .executors import ray_session
from .heads import head_columns, head_summary
from .interference import InterferenceResult, chain, plan_interference, save_interference
from .stream import analyze
from .subspaces import (
    SubspaceCollector,
    SubspaceResult,
    check_subspace_options,
    combine,
    refuse_reports,
)

__all__ = ["SUMMARY_METRICS", "Comparison", "check_comparison_target", "compare", "write_figures"]

SUMMARY_FILE = "summary.csv"
FIGURE_FORMATS = ("png", "pdf", "svg")


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-") or "method"


@dataclass
class Comparison:
    """Reports of several methods under their labels, with a summary.

    What ``compare`` returns; ``summary()`` is one row per (method, module),
    ``save(out)`` writes the summary, the reports and the figures.

    Args:
        labels: one label per method, in order (they must differ).
        reports: one ``Report`` per label.
        subspace: the subspace metrics (``compare(..., subspace=True)``);
            ``None`` (the default): not measured.
        interference: task interference (``compare(..., interference=True)``);
            ``None`` (the default): not measured.

    Example::

        comparison = spectra.compare(["lora/", "dora/"], labels=["LoRA", "DoRA"])
        comparison.to_pandas()  # the summary
        comparison.reports[0].to_pandas()  # LoRA's rows
    """

    labels: list[str]
    reports: list[Report]
    subspace: SubspaceResult | None = None
    interference: InterferenceResult | None = None

    @property
    def columns(self) -> list[str]:
        """The summary's columns: subspace ones only when they were measured."""
        extra = ["amplification", "intruder_dimensions"] if self.subspace is not None else []
        extra += head_columns(self.reports) + estimate_columns(self.reports)
        return ["label", "role", "rows", "noise_rows", *SUMMARY_METRICS, *extra]

    def summary(self) -> list[dict[str, object]]:
        """One row per (method, module): the mean over layers (and heads) of SUMMARY_METRICS.

        ``noise_rows`` counts the rows not clearly above their rounding floor
        (``report.noise_warning``): where it is not 0, the balance metrics
        averaged here partly measure rounding noise, not the update.

        With subspace metrics, also the mean over layers of the amplification
        and of the intruder-dimension count (None without a base); with heads,
        ``head_cosine``; estimated: ``estimated_rows`` and errors (``summary_means``).

        Returns:
            A list of dicts keyed by ``columns``: ``label``, ``role``,
            ``rows``, ``noise_rows``, each summary metric, and the subspace
            columns when they were measured.

        Example::

            for row in spectra.compare(["lora/", "dora/"]).summary():
                print(row["label"], row["role"], row["effective_rank"])
        """
        rows = []
        for label, report in zip(self.labels, self.reports, strict=True):
            for role in dict.fromkeys(row["role"] for row in report.rows):
                selected = [row for row in report.rows if row["role"] == role]
                summary: dict[str, object] = {
                    "label": label,
                    "role": role,
                    "rows": len(selected),
                    "noise_rows": sum(noise_warning(row) is not None for row in selected),
                }
                summary.update(summary_means(selected, self.reports))  # None where unknown
                if self.subspace is not None:
                    for column in ("amplification", "intruder_dimensions"):
                        summary[column] = self.subspace.mean_by_label(label, role, column)
                summary.update(head_summary(report, role, self.reports))  # heads.py
                rows.append(summary)
        return rows

    def summary_csv(self) -> str:
        """``summary()`` as CSV text: what ``save`` writes to ``summary.csv``.

        Returns:
            The CSV, header first, floats written exactly, missing values empty.

        Example::

            text = spectra.compare(["lora/", "dora/"]).summary_csv()
        """
        return csv_text(self.columns, self.summary())

    def to_pandas(self):
        """``summary()`` as a ``pandas.DataFrame`` (missing values NaN); each report has its own.

        Returns:
            A ``pandas.DataFrame`` of ``columns``, one row per (method, module)
            (pandas imported here).

        Example::

            df = spectra.compare(["lora/", "dora/"], labels=["LoRA", "DoRA"]).to_pandas()
            df.pivot(index="role", columns="label", values="effective_rank")
        """
        return frame(self.summary(), self.columns)

    def to_html(
        self, path: str | os.PathLike, force: bool = False, top: int | str | None = None
    ) -> Path:
        """Write one self-contained HTML page of the comparison (``spectra.html``).

        ``top`` is Figure 2's K, as in ``save``.

        Args:
            path: the HTML file to write, atomically.
            force: replace an existing page spectra wrote; default False.
            top: Figure 2's K; ``None`` (the default): the largest adapter
                rank, ``"all"``: every value.

        Returns:
            The path written.

        Raises:
            ReportExistsError: ``path`` exists and ``force`` is not given, or
                it is not a page spectra wrote.

        Example::

            spectra.compare(["lora/", "dora/"]).to_html("comparison.html")
        """
        from ..html import write_html

        return write_html(self, path, force=force, top=top)

    def __repr__(self) -> str:
        modules = dict.fromkeys(row["role"] for report in self.reports for row in report.rows)
        extra = "; subspace metrics" if self.subspace is not None else ""
        return f"Comparison({', '.join(self.labels)}: {', '.join(modules)}{extra})"

    def _repr_html_(self) -> str:
        """The summary as a table in a notebook, with every report's warnings under it."""
        pairs = zip(self.labels, self.reports, strict=True)
        notes = [f"{label}: {warning}" for label, report in pairs for warning in report.warnings]
        return html_table(self.columns, self.summary(), caption=repr(self), notes=notes)

    def report_folders(self) -> dict[str, str]:
        """The folder under ``reports/`` of each label (labels made safe as file names).

        Returns:
            A dict from each label to its folder name.

        Example:
            >>> Comparison(["LoRA r=8", "DoRA"], reports=[]).report_folders()
            {'LoRA r=8': 'LoRA-r-8', 'DoRA': 'DoRA'}
        """
        return {label: _slug(label) for label in self.labels}

    def save(
        self,
        out: str | os.PathLike,
        force: bool = False,
        figure_format: str = "png",
        top: int | str | None = None,
    ) -> Path:
        """Write summary.csv, reports/<label>/ and the figures into ``out``, atomically.

        ``top`` is the K of Figure 2's equal-rank view (``write_figures``).
        With subspace metrics, also ``subspace_similarity.csv``,
        ``subspace_modules.csv`` and the heat-map ``subspace_similarity.<ext>``.

        Args:
            out: the folder to write; a missing or empty one, or an earlier
                comparison with ``force``.
            force: replace an earlier comparison; default False.
            figure_format: ``"png"`` (the default), ``"pdf"`` or ``"svg"``.
            top: Figure 2's K; ``None`` (the default): the largest adapter
                rank, ``"all"``: every value.

        Returns:
            ``out``, as a ``Path``.

        Raises:
            ReportExistsError: ``out`` holds an earlier comparison and no
                ``force``, or anything that is not a comparison.
            SpectraError: an unknown ``figure_format``.

        Example::

            comparison = spectra.compare(["lora/", "dora/"], labels=["LoRA", "DoRA"])
            comparison.save("lora-vs-dora/", figure_format="pdf", top=8)
        """
        out = Path(out)
        check_comparison_target(out, force)
        with replace_folder(out) as staging:
            (staging / SUMMARY_FILE).write_text(self.summary_csv())
            for label, report in zip(self.labels, self.reports, strict=True):
                report.save(staging / "reports" / self.report_folders()[label])
            write_figures(self.reports, self.labels, staging, figure_format, top)
            if self.subspace is not None:
                self._save_subspace(staging, figure_format)
            if self.interference is not None:  # interference.csv and its heat-map
                save_interference(self.interference, staging, figure_format)
        return out

    def _save_subspace(self, folder: Path, figure_format: str) -> None:
        assert self.subspace is not None
        (folder / "subspace_similarity.csv").write_text(self.subspace.pairs_csv())
        (folder / "subspace_modules.csv").write_text(self.subspace.modules_csv())
        if self.subspace.pairs:
            from ..plot import save_figure, similarity_heatmap

            figure = similarity_heatmap(self.subspace)[0]
            save_figure(figure, folder / f"subspace_similarity.{figure_format}")


def check_comparison_target(out: str | os.PathLike, force: bool) -> None:
    """A comparison may replace an empty folder, or an earlier comparison with ``force``."""
    check_output(out, force, "comparison", holds(SUMMARY_FILE))


def write_figures(
    reports: Sequence[Report],
    labels: Sequence[str],
    folder: Path,
    figure_format: str = "png",
    top: int | str | None = None,
) -> list[Path]:
    """The comparison's figures, as ``<name>.<figure_format>``, for every role all share.

    ``figure2``: the equal-rank histograms (``top``: K, default the largest
    adapter rank; see ``plot.histogram``); ``figure2_all_values``: the same
    over every value above its floor; ``spectrum``; effective rank and
    normalized entropy by layer, with their ceilings; with heads, ``heads``
    and ``heads_matrix_<label>`` (``plot.heads``).
    """
    from .. import plot

    if figure_format not in FIGURE_FORMATS:
        raise SpectraError(f"unknown figure format {figure_format!r}: expected png, pdf or svg")
    figures = {
        "figure2": plot.histogram(reports, labels, top=top)[0],
        "figure2_all_values": plot.histogram(reports, labels, top="all")[0],
        "spectrum": plot.spectrum(reports, labels)[0],
        "effective_rank_by_layer": plot.layer_curves(reports, "effective_rank", labels)[0],
        "normalized_entropy_by_layer": plot.layer_curves(reports, "normalized_entropy", labels)[0],
    }
    return [
        plot.save_figure(fig, folder / f"{name}.{figure_format}") for name, fig in figures.items()
    ] + plot.write_head_figures(reports, labels, folder, figure_format)


def compare(
    sources: Sequence[str | os.PathLike],
    labels: Sequence[str] | None = None,
    base: str | os.PathLike | None = None,
    modules: str | Sequence[str] | None = None,
    layers: str | Sequence[int] | None = None,
    device: str = "auto",
    method: str = "fast",
    *,
    subspace: bool = False,
    subspace_rank: int = SUBSPACE_RANK,
    intruder_top: int = INTRUDER_TOP,
    intruder_eps: float = INTRUDER_EPS,
    interference: bool = False,
    interference_rank: int | None = None,
    jobs: int | None = None,
    progress: Progress | None = None,
    ray: bool | str | None = None,
    estimate: bool = False,
    **options: object,
) -> Comparison:
    """Analyse each source that is not already a report folder, and pair them with labels.

    ``base`` and ``options`` (``lora_alpha``, ``per_head``, …) go to each
    source whose format uses them; report folders are loaded as saved.
    Sources and ``base`` may be Hub ids (``spectra.load``), each resolved once.
    ``subspace=True`` adds the subspace metrics (module docstring) with the
    top ``subspace_rank`` singular vectors, and intruders among the top
    ``intruder_top`` vectors of W0 + ΔW below ``intruder_eps``. ``jobs`` is
    ``analyze``'s.

    Args:
        sources: checkpoints (paths or Hub ids) and saved report folders.
        labels: one label per source, all different; ``None`` (the default):
            each source's folder name.
        base: the base model, for the sources whose format uses it; ``None``
            (the default): none.
        modules: roles, as ``analyze`` takes them; ``None`` (the default): k
            and v.
        layers: layers, as ``analyze`` takes them; ``None`` (the default):
            every layer.
        device: ``"auto"`` (the default), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        method: ``"fast"`` (the default) or ``"exact"``, for dense ΔW.
        subspace: also measure the subspace metrics; default False.
        subspace_rank: the top singular vectors compared; default
            ``SUBSPACE_RANK``.
        intruder_top: the top vectors of W0 + ΔW searched for intruders;
            default ``INTRUDER_TOP``.
        intruder_eps: the similarity below which a vector is an intruder;
            default ``INTRUDER_EPS``.
        interference: also measure task interference (SAR, STI) of each pair
            of sources, fine-tunes of one base; default False.
        interference_rank: K, the top singular vectors each ΔW brings to it;
            ``None`` (the default): each ΔW's numerical rank.
        jobs, estimate: ``analyze``'s; ``None`` and False (the defaults): its defaults.
        ray: ``analyze``'s: each source's modules as Ray tasks (True or a
            cluster address); ``None`` (the default): here.
        progress: ``progress(done, total, label)`` after each module; ``None``
            (the default): no calls.
        **options: loader options, given to each source whose format uses them.

    Returns:
        A ``Comparison``: one ``Report`` per source under its label, the
        summary, and the subspace metrics when asked for.

    Raises:
        SpectraError: no sources, a label count that differs from the
            sources', repeated labels, or with ``subspace`` or ``interference``
            options that cannot apply or a saved report among the sources, or
            with ``interference`` sources of different bases (and every error
            of ``analyze``).

    Example::

        comparison = spectra.compare(
            ["lora/", "dora/", "full-report/"], labels=["LoRA", "DoRA", "FT"], base="base/"
        )
        comparison.save("comparison/")
    """
    if not sources:
        raise SpectraError("nothing to compare: give at least one checkpoint or report folder")
    labels = list(labels) if labels else [Path(s).name for s in sources]
    if len(labels) != len(sources):
        raise SpectraError(
            f"{len(labels)} labels for {len(sources)} sources: give one {LABEL} per source"
        )
    if len(set(labels)) != len(labels):
        raise SpectraError(f"labels must differ; got {labels}")
    if subspace:  # refused before any work
        check_subspace_options(subspace_rank, intruder_top, intruder_eps, options)
        refuse_reports(sources)
    # each Hub id resolved once, here: analyze and the subspace pass get the local Source
    base = locate(base, BASE) if base is not None else None
    memo: dict = {}  # W0's singular vectors, shared by the sources that share a base
    collectors = (
        [
            SubspaceCollector(label, subspace_rank, intruder_top, intruder_eps, device, memo)
            for label in labels
        ]
        if subspace
        else []
    )
    sources = [source if is_report(source) else locate(source, "CKPT") for source in sources]
    plan = None  # interference: refused, or its checkpoints opened, before any work
    if interference:
        plan = plan_interference(sources, labels, base, options, interference_rank, method, device)
    with ray_session(ray) if ray not in (None, False) else contextlib.nullcontext():  # one Ray
        reports = []
        for index, source in enumerate(sources):
            if is_report(source):
                saved = Report.load(source)
                outdated = version_warning(saved)
                if outdated is not None:
                    saved.meta["warnings"] = [*saved.warnings, outdated]
                    warn(f"{source}: {outdated}")
                reports.append(saved)
                continue
            given = options_for(source, options)
            reports.append(
                analyze(
                    source,
                    base,
                    modules,
                    layers,
                    device,
                    method,
                    jobs=jobs,
                    progress=progress,
                    ray=ray,
                    estimate=estimate,
                    each=chain(
                        collectors[index] if subspace else None, plan and plan.collectors[index]
                    ),
                    checkpoint=plan.checkpoints[index] if plan else None,  # opened by the plan
                    **given,
                )
            )
    result = Comparison(labels, reports, combine(collectors) if subspace else None)
    result.interference = plan.finish() if plan else None
    for warning in result.subspace.warnings if result.subspace is not None else ():
        warn(warning)
    for warning in result.interference.warnings if result.interference is not None else ():
        warn(warning)
    return result
