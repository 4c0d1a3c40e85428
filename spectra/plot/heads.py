"""Head diversity figures: how alike a multi-head source's heads are, by layer and head by head.

Drawn from ``Report.heads`` (``analysis.heads``: a multi-head source read
per head), for three measures, one row of panels each, one column per role:
the cosine of the flattened B heads (R-LoRA's measure, Liu et al. 2025), the
cosine of the heads' ΔW_j, and the subspace similarity of their top left
singular vectors.

- ``head_similarity(reports, labels)``: the mean over head pairs at each
  layer, one line per report, dashed at its mean over layers (the figure of
  R-LoRA's ``analysis_cos.py``). Independent random heads score about 0 on
  the cosines and about k/d_out on the subspace similarity.
- ``head_matrix(report, layer)``: the head × head matrix of one layer; by
  default the layer whose heads are most alike (``most_alike_layer``: the
  highest mean B-head cosine). Zero heads (ΔW_j = 0) have no direction and
  are left blank.
- ``head_figures`` draws both for ``compare``, ``analyze`` and ``spectra
  plot`` (``heads.<ext>``, and ``heads_matrix.<ext>`` or one
  ``heads_matrix_<label>.<ext>`` per report), writing nothing;
  ``write_head_figures`` writes them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..arguments import FORCE
from ..errors import ReportExistsError, SpectraError
from ..report import Report
from ..selection import layer_ranges
from ._rows import labels_for
from ._style import figure_grid, method_colors, paper_style, save_figure

__all__ = [
    "MEASURES",
    "head_figures",
    "head_matrix",
    "head_similarity",
    "most_alike_layer",
    "write_head_figures",
]

# The columns of heads.csv drawn, and how their axes are labelled.
MEASURES = (
    ("cosine", "cosine of B heads"),
    ("delta_cosine", "cosine of ΔW_j"),
    ("subspace_similarity", "subspace similarity"),
)


def _roles(reports: Sequence[Report]) -> list[str]:
    return list(dict.fromkeys(str(row["role"]) for report in reports for row in report.heads))


def _layer_means(report: Report, role: str, measure: str) -> dict[int, float]:
    """The mean over head pairs (and experts) of ``measure`` at each layer, defined values only."""
    values: dict[int, list[float]] = {}
    for row in report.heads:
        if row["role"] == role and row[measure] is not None:
            values.setdefault(int(row["layer"]), []).append(float(row[measure]))
    return {layer: float(np.mean(v)) for layer, v in sorted(values.items())}


def _with_heads(reports: Sequence[Report] | Report, labels: Sequence[str] | None):
    reports = [reports] if isinstance(reports, Report) else list(reports)
    labels = labels_for(reports, labels)
    kept = [(r, label) for r, label in zip(reports, labels, strict=True) if r.heads]
    if not kept:
        raise SpectraError(
            "no head diversity in these reports: it is measured when a multi-head source "
            "(HydraLoRA, R-LoRA, MultiLoRA) is analysed per head"
        )
    return kept


def head_similarity(
    reports: Sequence[Report] | Report, labels: Sequence[str] | None = None
) -> tuple[Figure, np.ndarray]:
    """Mean head similarity against layer: a row per measure, a column per role, a line per report.

    Args:
        reports: one report or several; those without heads are left out.
        labels: one per report; ``None`` (the default): the source folders' names.

    Returns:
        ``(fig, axes)``, axes ``(3, roles)``.

    Example::

        report = spectra.analyze("hydra/", per_head=True)
        fig, axes = spectra.plot.head_similarity(report)
    """
    kept = _with_heads(reports, labels)
    roles = _roles([r for r, _ in kept])
    colors = method_colors([label for _, label in kept])
    fig, axes = figure_grid(len(MEASURES), len(roles), width=4.0, height=2.7)
    with paper_style():
        for i, (measure, name) in enumerate(MEASURES):
            for j, role in enumerate(roles):
                ax = axes[i, j]
                for (report, label), color in zip(kept, colors, strict=True):
                    means = _layer_means(report, role, measure)
                    if not means:
                        continue
                    ax.plot(list(means), list(means.values()), "o-", color=color, ms=4, label=label)
                    ax.axhline(np.mean(list(means.values())), color=color, ls="--", lw=1)
                if not ax.lines:
                    note = "no defined value\n(zero heads)"
                    ax.text(0.5, 0.5, note, ha="center", va="center", transform=ax.transAxes)
                ax.axhline(0, color="0.6", lw=0.8)
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                if i == 0:
                    ax.set_title(f"{role} projection")
                if i == len(MEASURES) - 1:
                    ax.set_xlabel("layer")
                if j == 0:
                    ax.set_ylabel(f"{name}\n(mean over pairs)")
        handles, names = axes[0, 0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, names, loc="outside lower center", ncols=min(len(names), 4))
        fig.suptitle("Head diversity: mean over head pairs by layer (dashed: mean over layers)")
    return fig, axes


def most_alike_layer(report: Report) -> int:
    """The layer whose heads are most alike: the highest mean B-head cosine (ΔW cosine if none).

    Args:
        report: a report with heads.

    Returns:
        The layer index.

    Example::

        spectra.plot.most_alike_layer(spectra.analyze("hydra/", per_head=True))
    """
    for measure in ("cosine", "delta_cosine"):
        values: dict[int, list[float]] = {}
        for row in report.heads:
            if row[measure] is not None:
                values.setdefault(int(row["layer"]), []).append(float(row[measure]))
        if values:
            return max(sorted(values), key=lambda layer: np.mean(values[layer]))
    return min(int(row["layer"]) for row in report.heads)


def head_matrix(
    report: Report, layer: int | None = None, label: str | None = None
) -> tuple[Figure, np.ndarray]:
    """The head × head matrix of one layer: a row per measure, a column per role.

    Args:
        report: a report with heads.
        layer: the layer drawn; ``None`` (the default): ``most_alike_layer``.
        label: a name for the title; ``None`` (the default): none.

    Returns:
        ``(fig, axes)``, axes ``(3, roles)``.

    Raises:
        SpectraError: the report has no heads, or none at ``layer``.

    Example::

        fig, axes = spectra.plot.head_matrix(spectra.analyze("hydra/", per_head=True), layer=3)
    """
    _with_heads(report, [label or "report"])
    layers = sorted({int(row["layer"]) for row in report.heads})
    chosen = layer is None
    layer = most_alike_layer(report) if chosen else int(layer)
    if layer not in layers:
        raise SpectraError(
            f"layer {layer}: no heads there; the report has heads in layers {layer_ranges(layers)}"
        )
    rows = [row for row in report.heads if row["layer"] == layer]
    roles = list(dict.fromkeys(str(row["role"]) for row in rows))
    fig, axes = figure_grid(len(MEASURES), len(roles), width=3.3, height=2.9)
    with paper_style():
        for i, (measure, name) in enumerate(MEASURES):
            diverging = measure != "subspace_similarity"  # cosines are signed
            for j, role in enumerate(roles):
                ax = axes[i, j]
                grid, heads = _matrix(report, layer, role, measure)
                image = ax.imshow(
                    grid,
                    vmin=-1 if diverging else 0,
                    vmax=1,
                    cmap="RdBu_r" if diverging else "magma",
                )
                if len(heads) <= 12:
                    for (a, b), value in np.ndenumerate(grid):
                        if np.isfinite(value):
                            dark = abs(value) > 0.6 if diverging else value < 0.6
                            color = "white" if dark else "black"
                            size = 9 if len(heads) <= 6 else 7
                            ax.text(
                                b,
                                a,
                                f"{value:.2f}",
                                ha="center",
                                va="center",
                                color=color,
                                fontsize=size,
                            )
                ax.set_xticks(range(len(heads)), [str(h) for h in heads])
                ax.set_yticks(range(len(heads)), [str(h) for h in heads])
                ax.set_xlabel("head")
                if i == 0:
                    ax.set_title(f"{role} projection")
                if j == 0:
                    ax.set_ylabel("head")
            fig.colorbar(image, ax=axes[i, :].tolist(), label=name)
        why = " (heads most alike)" if chosen else ""
        fig.suptitle(f"{label + ': ' if label else ''}heads of layer {layer}{why}")
    return fig, axes


def _matrix(report: Report, layer: int, role: str, measure: str) -> tuple[np.ndarray, list[int]]:
    """The symmetric head × head matrix of a (layer, role); 1 on a non-zero head's diagonal."""
    pairs = [r for r in report.heads if r["layer"] == layer and r["role"] == role]
    heads = sorted({int(r["head_a"]) for r in pairs} | {int(r["head_b"]) for r in pairs})
    zero = {
        int(r["head"])
        for r in report.head_shares
        if r["layer"] == layer and r["role"] == role and not r["share"]
    }
    grid = np.full((len(heads), len(heads)), np.nan)
    for h in heads:
        if h not in zero:
            grid[heads.index(h), heads.index(h)] = 1.0
    for r in pairs:
        if r[measure] is not None:
            a, b = heads.index(int(r["head_a"])), heads.index(int(r["head_b"]))
            grid[a, b] = grid[b, a] = float(r[measure])
    return grid, heads


def _file_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-") or "source"


def head_figures(
    reports: Sequence[Report],
    labels: Sequence[str] | None,
    folder: str | os.PathLike,
    figure_format: str = "png",
    layer: int | None = None,
    force: bool = True,
) -> list[tuple[Path, Figure]]:
    """Draw the head figures of the reports that have heads, writing nothing: (path, figure).

    ``heads.<figure_format>`` (``head_similarity``) and, per report with
    heads, ``heads_matrix.<figure_format>`` (``heads_matrix_<label>`` when
    several have heads). Empty when no report has heads. Without ``force``
    a figure already in ``folder`` is an error, raised before any is drawn.
    """
    labels = labels_for(reports, labels)
    kept = [(r, label) for r, label in zip(reports, labels, strict=True) if r.heads]
    if not kept:
        return []
    folder = Path(folder)
    several = len(kept) > 1
    names = [f"heads_matrix_{_file_name(x)}" if several else "heads_matrix" for _, x in kept]
    paths = [folder / f"{name}.{figure_format}" for name in ["heads", *names]]
    existing = [str(path) for path in paths if path.exists()]
    if existing and not force:
        raise ReportExistsError(f"{', '.join(existing)}: already there; pass {FORCE} to overwrite")
    figures = [head_similarity([r for r, _ in kept], [x for _, x in kept])[0]]
    figures += [head_matrix(report, layer, label)[0] for report, label in kept]
    return list(zip(paths, figures, strict=True))


def write_head_figures(
    reports: Sequence[Report],
    labels: Sequence[str] | None,
    folder: str | os.PathLike,
    figure_format: str = "png",
    layer: int | None = None,
) -> list[Path]:
    """Write ``head_figures`` into ``folder``; the paths written (none without heads)."""
    drawn = head_figures(reports, labels, folder, figure_format, layer)
    return [save_figure(figure, path) for path, figure in drawn]
