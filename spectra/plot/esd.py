"""α of the weights' eigenvalue spectrum by layer: the base W0 against the tuned W0 + ΔW.

``esd_alpha(reports)`` draws, for reports made with ``analyze(..., esd=True)``,
one panel per role: the power-law exponent α (WeightWatcher's ``alpha``,
``spectra.metrics.esd``) of each layer's W0 as a grey dashed line and of its
W0 + ΔW as a solid line in the method's colour, so that what fine-tuning did
to the heavy tail of each layer's spectrum reads as the gap between the two.
WeightWatcher's reading of α: well-trained layers fall in about 2 to 6,
smaller means a heavier tail. A row whose α was refused (too few eigenvalues)
is left out, never drawn as zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..arguments import ESD
from ..errors import SpectraError
from ..report import Report
from ._rows import labels_for, roles_for
from ._style import method_colors, panel_grid, paper_style

__all__ = ["esd_alpha"]

_BASE_COLOR = "0.45"


def esd_alpha(
    reports: Report | Sequence[Report],
    labels: Sequence[str] | None = None,
    modules: Sequence[str] | None = None,
) -> tuple[Figure, np.ndarray]:
    """α of W0 and of W0 + ΔW against layer: one panel per role, one solid line per report.

    Rows with heads or experts are averaged per layer. The base's α is drawn
    once per panel (from the first report that has it: every report of one
    base gives the same).

    Args:
        reports: one ``Report`` or several, made with ``esd=True``.
        labels: one name per report; ``None`` (the default): the checkpoint
            folders' names.
        modules: the roles to draw, one panel each; ``None`` (the default):
            every role the reports share.

    Returns:
        ``(fig, axes)``: the figure and its array of panels.

    Raises:
        SpectraError: a report has no α columns (it was made without ``esd``),
            or a label or role is wrong.

    Example::

        report = spectra.analyze("tuned/", base="base/", esd=True)
        fig, axes = spectra.plot.esd_alpha(report)
        spectra.plot.save_figure(fig, "esd_alpha.png")
    """
    reports = [reports] if isinstance(reports, Report) else list(reports)
    names = labels_for(reports, labels)
    for report, name in zip(reports, names, strict=True):
        if not any("alpha_tuned" in row for row in report.rows):
            raise SpectraError(
                f"{name}: the report has no alpha columns; analyse it with {ESD} (and a base)"
            )
    roles = roles_for(reports, modules)
    fig, axes = panel_grid(len(roles))
    with paper_style():
        for role, ax in zip(roles, axes.flat, strict=False):
            base_drawn = False
            for report, name, color in zip(reports, names, method_colors(names), strict=True):
                if not base_drawn:
                    base_drawn = _line(ax, report, role, "alpha_base", "W0 (base)", _BASE_COLOR)
                _line(ax, report, role, "alpha_tuned", f"{name}: W0 + ΔW", color)
            ax.set_title(f"{role} projection")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("layer")
            ax.set_ylabel("α of the eigenvalue spectrum")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(frameon=False, fontsize=8, loc="best")
            else:
                ax.text(
                    0.5,
                    0.5,
                    "no α here\n(too few eigenvalues)",
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                    color="0.4",
                )
    return fig, axes


def _line(ax, report: Report, role: str, column: str, label: str, color: str) -> bool:
    """Draw one column's mean per layer for a role; whether anything was drawn."""
    by_layer: dict[int, list[float]] = {}
    for row in report.rows:
        if row["role"] == role and row.get(column) is not None:
            by_layer.setdefault(int(row["layer"]), []).append(float(row[column]))
    if not by_layer:
        return False
    xs = sorted(by_layer)
    base = column == "alpha_base"
    ax.plot(
        xs,
        [np.mean(by_layer[x]) for x in xs],
        marker="s" if base else "o",
        linestyle="--" if base else "-",
        color=color,
        label=label,
    )
    return True
