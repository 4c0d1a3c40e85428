"""Spectra as lines: σᵢ/σ₁ against i and the cumulative energy, cut at each row's floor."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from ..report import Report
from ._rows import floor_of, labels_for, roles_for, trusted
from ._style import PANELS_PER_ROW, figure_grid, legend_or_note, method_colors, paper_style

__all__ = ["spectrum"]


def spectrum(
    reports: Sequence[Report],
    labels: Sequence[str] | None = None,
    modules: Sequence[str] | None = None,
) -> tuple[Figure, np.ndarray]:
    """σ_i/σ_1 against i on log axes (top row) and cumulative energy (bottom row).

    One thin line per layer (and head), one colour per method, cut at each
    row's floor (values below it are noise, not data); where a method's rows
    were cut, the highest of their floors is drawn as a dotted line in its
    colour. Estimated rows (``estimate=True``) are left out, the title says
    how many: their stored σ are only the top k. Panels for
    every role all reports share (or ``modules``), at most
    ``PANELS_PER_ROW`` across, each with its energy panel below.
    """
    names = labels_for(reports, labels)
    roles = roles_for(reports, modules)
    cols = min(len(roles), PANELS_PER_ROW)
    blocks = -(-len(roles) // cols)
    fig, grid = figure_grid(2 * blocks, cols)
    for index in range(len(roles), blocks * cols):
        for ax in grid[2 * (index // cols) : 2 * (index // cols) + 2, index % cols]:
            ax.set_visible(False)
    with paper_style():
        for index, role in enumerate(roles):
            top_ax = grid[2 * (index // cols), index % cols]
            energy_ax = grid[2 * (index // cols) + 1, index % cols]
            left_out = 0  # estimated rows: all σ and Σσ² are not known, so no line
            for report, name, color in zip(reports, names, method_colors(names), strict=True):
                first, floors = True, []
                for row in report.rows:
                    if row["role"] != role:
                        continue
                    if row.get("estimated"):  # only its top-k σ are known (analysis.estimated)
                        left_out += 1
                        continue
                    sigma = trusted(report, row)
                    if sigma.size == 0:
                        continue
                    full = report.spectrum(row["layer"], role, row.get("head"), row.get("expert"))
                    index_i = np.arange(1, sigma.size + 1)
                    energy = np.cumsum(sigma**2) / np.sum(full**2)
                    label = name if first else None
                    top_ax.plot(
                        index_i, sigma / sigma[0], color=color, alpha=0.5, linewidth=1, label=label
                    )
                    energy_ax.plot(
                        index_i, energy, color=color, alpha=0.5, linewidth=1, label=label
                    )
                    if np.any((full > 0) & (full <= floor_of(row))):  # cut here: mark where
                        floors.append(floor_of(row) / sigma[0])
                    first = False
                if floors:
                    top_ax.axhline(
                        max(floors), color=color, linestyle=":", linewidth=1, label=f"{name} floor"
                    )
            top_ax.set_xscale("log")
            top_ax.set_yscale("log")
            estimated = f"\n{left_out} estimated rows left out (top-k σ only)" if left_out else ""
            top_ax.set_title(f"{role} projection{estimated}")
            top_ax.set_xlabel("index i")
            top_ax.set_ylabel("σᵢ / σ₁ (above the floor)")
            energy_ax.set_xscale("log")
            energy_ax.set_xlabel("index i")
            energy_ax.set_ylabel("cumulative share of Σσ²")
            energy_ax.set_ylim(0, 1.02)
            legend_or_note(top_ax, fontsize=8)
    return fig, grid
