"""Figure 2 of the MultiLoRA paper (Wang et al., 2023): histograms of ΔW's singular values.

One overlaid histogram per method and a panel per projection, in the paper's
colours (FT orange, LoRA blue, MultiLoRA green then red). By default it is
the paper's equal-rank view: each matrix gives its top K singular values
over σ₁, K the largest adapter rank compared, so a balanced update piles up
near 1 and one led by a few directions spreads towards 0 (``top="all"``
draws every value). Over σ₁, every matrix's first value is σ₁/σ₁ = 1, the
same for every method: it is left out (the titles say so), so the bars are
σ₂/σ₁ … σ_K/σ₁. Values at or below a row's floor are never drawn.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from ..arguments import TOP
from ..errors import SpectraError
from ..report import Report
from ._rows import NORMALIZATIONS, labels_for, layers_for, normalized, roles_for, trusted
from ._style import figure_grid, legend_or_note, method_colors, panel_grid, paper_style

__all__ = ["adapter_rank", "histogram"]


def adapter_rank(reports: Sequence[Report]) -> int | None:
    """The largest adapter rank among the reports' rows (r, n·r for MultiLoRA), or None.

    Dense adapter updates (DoRA, LoHa, LoKr) count by their ``adapter_rank``
    column; reports saved before it existed count their factored rows' values.
    """
    ranks = [
        int(row["adapter_rank"])
        if row.get("adapter_rank") is not None
        else report.spectrum_of(row).size
        for report in reports
        for row in report.rows
        if row.get("adapter_rank") is not None or row.get("kind") == "factored"
    ]
    return max(ranks) if ranks else None


def _top_count(reports: Sequence[Report], top: int | str | None) -> int | None:
    """K of the equal-rank view: ``top``, the largest adapter rank by default, None for all."""
    if top == "all":
        return None
    if top is None:
        return adapter_rank(reports)
    if isinstance(top, str):
        if not top.isdigit():
            raise SpectraError(f"top {top!r} is neither a count nor all ({TOP})")
        top = int(top)
    if top < 1:
        raise SpectraError(f"top must be at least 1 or all; got {top} ({TOP})")
    return int(top)


def _values(
    report: Report, module: str, layer: int | None, normalize: str, top: int | None
) -> np.ndarray:
    """The drawn values of one method: each matrix's top-``top`` σ above its floor, normalised.

    Over σ₁ the first value of each matrix (σ₁/σ₁ = 1, the same for every
    method) is left out: a matrix gives σ₂/σ₁ … σ_top/σ₁.
    """
    first = 1 if normalize == "sigma1" else 0  # σ₁/σ₁ = 1 says nothing
    parts = []
    for row in report.rows:
        if row["role"] != module or (layer is not None and row["layer"] != layer):
            continue
        full = report.spectrum(row["layer"], module, row.get("head"), row.get("expert"))
        if row.get("estimated") and not _estimate_drawn(full.size, normalize, top):
            continue  # an estimated row knows only its top-k σ (analysis.estimated)
        kept = normalized(full, normalize)[: trusted(report, row).size]  # above the floor
        parts.append(kept[first:top] if top is not None else kept[first:])
    return np.concatenate(parts) if parts else np.zeros(0)


def _estimate_drawn(stored: int, normalize: str, top: int | None) -> bool:
    """Whether an estimated row's top-k σ are all this view draws of it (else it is left out)."""
    return top is not None and top <= stored and normalize != "frobenius"


def _estimate_note(reports: Sequence[Report], role: str, normalize: str, top: int | None) -> str:
    """The title's line on estimated rows of ``role``: drawn (top-k Ritz σ) or left out."""
    stored = [
        report.spectrum_of(row).size
        for report in reports
        for row in report.rows
        if row["role"] == role and row.get("estimated")
    ]
    if not stored:
        return ""
    if all(_estimate_drawn(size, normalize, top) for size in stored):
        return "\nestimated rows: their top-k σ (Ritz values)"
    return "\nestimated rows left out (only their top-k σ are known)"


def _capacities(reports: Sequence[Report], module: str) -> str:
    """n = min(d_out, d_in) of a role's rows, as text (``384`` or ``384–1024``)."""
    sizes = sorted(
        {
            min(row["d_out"], row["d_in"])
            for rep in reports
            for row in rep.rows
            if row["role"] == module
        }
    )
    return str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}–{sizes[-1]}"


def histogram(
    reports: Sequence[Report],
    labels: Sequence[str] | None = None,
    modules: Sequence[str] | None = None,
    normalize: str = "sigma1",
    log_x: bool = False,
    layer: int | str | None = None,
    bins: int = 40,
    top: int | str | None = None,
) -> tuple[Figure, np.ndarray]:
    """Figure 2: histograms of ΔW's singular values, one panel per module role.

    The equal-rank view, as the paper compares methods: each matrix
    contributes its ``top`` largest singular values, K by default the largest
    adapter rank among the reports (r, or n·r for MultiLoRA; a dense FT or
    DoRA ΔW is truncated to its top K), ``"all"`` for every value; over σ₁
    (the default) each matrix's σ₁/σ₁ = 1 is left out, as identical for
    every method, and the title says so. Values at
    or below a row's floor (``accuracy_floor``, ``noise_floor``) are never
    drawn. ``modules=None`` draws every role all reports share, in a grid of
    at most ``PANELS_PER_ROW`` panels a row; ``layer=None`` pools every layer,
    an integer draws that layer (which must exist), ``"grid"`` one row of
    panels per layer. ``normalize`` is ``"sigma1"`` (default), ``"frobenius"``
    or ``"none"``; ``log_x`` uses log-spaced bins. The y axis is the fraction
    of each method's drawn values in a bin; the legend gives their number.
    """
    names = labels_for(reports, labels)
    roles = roles_for(reports, modules)
    grid = layers_for(reports, layer)
    count = _top_count(reports, top)
    colors = method_colors(names)
    if len(grid) == 1:
        fig, axes = panel_grid(len(roles))
        cells = [(grid[0], role, ax) for role, ax in zip(roles, axes.flat, strict=False)]
    else:
        fig, axes = figure_grid(len(grid), len(roles))
        cells = [
            (one, role, axes[i, j]) for i, one in enumerate(grid) for j, role in enumerate(roles)
        ]
    with paper_style():
        for one_layer, role, ax in cells:
            data = [_values(report, role, one_layer, normalize, count) for report in reports]
            edges = _bin_edges(np.concatenate(data), bins, log_x)
            for values, name, color in zip(data, names, colors, strict=True):
                if values.size == 0:
                    continue
                weights = np.full(values.size, 1.0 / values.size)
                ax.hist(
                    values,
                    bins=edges,
                    weights=weights,
                    histtype="stepfilled",
                    alpha=0.35,
                    color=color,
                )
                ax.hist(
                    values,
                    bins=edges,
                    weights=weights,
                    histtype="step",
                    linewidth=1.4,
                    color=color,
                    label=f"{name} ({values.size} values)",
                )
            if log_x:
                ax.set_xscale("log")
            where = "all layers" if one_layer is None else f"layer {one_layer}"
            shown = (
                "all values" if count is None else f"top {count} of {_capacities(reports, role)}"
            )
            left_out = "\nσ₁/σ₁ = 1 left out" if normalize == "sigma1" else ""
            left_out += _estimate_note(reports, role, normalize, count)
            ax.set_title(
                f"{role} projection, {where}\n{shown} per matrix, above its floor{left_out}"
            )
            ax.set_xlabel(f"singular value, {NORMALIZATIONS[normalize]}")
            ax.set_ylabel("fraction of singular values")
            ax.set_ylim(0, ax.get_ylim()[1] * 1.35)  # headroom: the legend sits above the bars
            legend_or_note(ax)
    return fig, axes


def _bin_edges(values: np.ndarray, bins: int, log_x: bool) -> np.ndarray:
    if values.size == 0:
        return np.linspace(0.0, 1.0, bins + 1)
    low, high = float(values.min()), float(values.max())
    if log_x:
        low = max(low, high * 1e-12)
        return np.geomspace(low, high * (1 + 1e-9), bins + 1)
    return np.linspace(0.0, high * (1 + 1e-9), bins + 1)
