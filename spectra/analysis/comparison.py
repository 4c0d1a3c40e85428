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
the heat-map ``subspace_similarity.<ext>``.
"""

from __future__ import annotations

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
    """Reports of several methods under their labels, with a summary."""

    labels: list[str]
    reports: list[Report]
    subspace: SubspaceResult | None = None

    @property
    def columns(self) -> list[str]:
        """The summary's columns: subspace ones only when they were measured."""
        extra = ["amplification", "intruder_dimensions"] if self.subspace is not None else []
        return ["label", "role", "rows", "noise_rows", *SUMMARY_METRICS, *extra]

    def summary(self) -> list[dict[str, object]]:
        """One row per (method, module): the mean over layers (and heads) of SUMMARY_METRICS.

        ``noise_rows`` counts the rows not clearly above their rounding floor
        (``report.noise_warning``): where it is not 0, the balance metrics
        averaged here partly measure rounding noise, not the update.

        With subspace metrics, also the mean over layers of the amplification
        and of the intruder-dimension count (None without a base).
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
                for metric in SUMMARY_METRICS:
                    summary[metric] = sum(float(row[metric]) for row in selected) / len(selected)
                if self.subspace is not None:
                    for column in ("amplification", "intruder_dimensions"):
                        summary[column] = self.subspace.mean_by_label(label, role, column)
                rows.append(summary)
        return rows

    def summary_csv(self) -> str:
        return csv_text(self.columns, self.summary())

    def to_pandas(self):
        """``summary()`` as a ``pandas.DataFrame`` (missing values NaN); each report has its own."""
        return frame(self.summary(), self.columns)

    def to_html(
        self, path: str | os.PathLike, force: bool = False, top: int | str | None = None
    ) -> Path:
        """Write one self-contained HTML page of the comparison (``spectra.html``).

        ``top`` is Figure 2's K, as in ``save``.
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
        """The folder under ``reports/`` of each label (labels made safe as file names)."""
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
    normalized entropy by layer, with their ceilings.
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
    ]


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
    jobs: int | None = None,
    progress: Progress | None = None,
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
                each=collectors[index] if subspace else None,  # vectors in the same read
                **given,
            )
        )
    result = Comparison(labels, reports, combine(collectors) if subspace else None)
    for warning in result.subspace.warnings if result.subspace is not None else ():
        warn(warning)
    return result
