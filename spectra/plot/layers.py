"""Metrics against layer index, one line per method, with the ceiling each metric can reach.

Methods differ by orders of magnitude here (a full fine-tune's effective
rank ≈ 160 beside a LoRA's ≈ 5), so a panel whose drawn values span more
than ``LOG_SPAN`` (largest over smallest) takes a log y axis, where each
method's curve keeps its shape; the legend sits outside the panels, right
of them, so it covers no curve.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from ..errors import SpectraError
from ..metrics import METRICS
from ..report import Report, noise_warning
from ._rows import labels_for, roles_for
from ._style import method_colors, panel_grid, paper_style

__all__ = ["LOG_SPAN", "ceiling", "layer_curves"]

LOG_SPAN = 10.0  # largest / smallest drawn value above which a panel's y axis is logarithmic


def ceiling(report: Report, row: dict, metric: str) -> float | None:
    """The largest value ``metric`` can take for this row's ΔW, or None if it has none here.

    A factored ΔW has at most k = its computed values (r, or n·r) directions:
    effective, stable and numerical rank ≤ k, normalized entropy ≤ ln k/ln n.
    A dense ΔW: n = min(d_out, d_in) directions, normalized entropy ≤ 1.
    """
    n = min(row["d_out"], row["d_in"])
    k = report.spectrum_of(row).size
    k = k if row.get("kind") == "factored" else n
    if metric in ("effective_rank", "stable_rank", "participation_ratio", "numerical_rank"):
        return float(k)
    if metric == "normalized_entropy":
        return math.log(k) / math.log(n) if n > 1 and k > 0 else 0.0
    return None


def layer_curves(
    reports: Sequence[Report],
    metric: str = "effective_rank",
    labels: Sequence[str] | None = None,
    modules: Sequence[str] | None = None,
) -> tuple[Figure, np.ndarray]:
    """A metric against layer index: one panel per module role, one line per method.

    Rows with heads are averaged per layer; a layer with a row at its rounding
    floor (``report.noise_warning``) gets a hollow marker, since its balance
    metrics measure rounding. Where the metric has a ceiling
    (``ceiling``: the rank r of an adapter, n of a dense ΔW, ln r/ln n for the
    normalized entropy), it is drawn as a dashed line in the method's colour.
    A panel whose drawn values (curves and ceilings, all positive) span more
    than ``LOG_SPAN`` has a log y axis; one legend for the figure sits right
    of the panels.
    """
    names = labels_for(reports, labels)
    roles = roles_for(reports, modules)
    if any(metric not in row for report in reports for row in report.rows):
        raise SpectraError(f"unknown metric {metric!r}: expected one of {', '.join(METRICS)}")
    fig, axes = panel_grid(len(roles))
    with paper_style():
        for role, ax in zip(roles, axes.flat, strict=False):
            for report, name, color in zip(reports, names, method_colors(names), strict=True):
                by_layer: dict[int, list[float]] = {}
                caps: dict[int, list[float]] = {}
                noisy: set[int] = set()
                for row in report.rows:
                    if row["role"] == role and row[metric] is not None:
                        by_layer.setdefault(row["layer"], []).append(float(row[metric]))
                        if noise_warning(row):
                            noisy.add(row["layer"])
                        cap = ceiling(report, row, metric)
                        if cap is not None:
                            caps.setdefault(row["layer"], []).append(cap)
                xs = sorted(by_layer)
                ys = [np.mean(by_layer[x]) for x in xs]
                ax.plot(xs, ys, marker="o", color=color, label=name)
                if noisy:
                    ax.plot(
                        sorted(noisy),
                        [ys[xs.index(x)] for x in sorted(noisy)],
                        linestyle="none",
                        marker="o",
                        markersize=9,
                        markerfacecolor="white",
                        markeredgecolor=color,
                        label=f"{name}: at the noise floor",
                    )
                if caps and len(caps) == len(xs):
                    ax.plot(
                        xs,
                        [max(caps[x]) for x in xs],
                        linestyle="--",
                        linewidth=1,
                        color=color,
                        label=f"{name} ceiling",
                    )
            ax.set_title(f"{role} projection")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("layer")
            ax.set_ylabel(metric.replace("_", " "))
            if _spans_decades(ax):
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(FuncFormatter(_plain))  # 100, not 10²
                ax.yaxis.set_minor_formatter(FuncFormatter(_plain_2_5))
        _figure_legend(fig, axes)
    return fig, axes


def _plain(value: float, _position: int) -> str:
    return f"{value:g}"


def _plain_2_5(value: float, _position: int) -> str:
    """Minor log ticks labelled at 2 and 5 times a power of ten only."""
    leading = round(value / 10 ** math.floor(math.log10(value))) if value > 0 else 0
    return f"{value:g}" if leading in (2, 5) else ""


def _spans_decades(ax) -> bool:
    """Whether the panel's drawn values are all positive and span more than ``LOG_SPAN``."""
    values = np.concatenate([np.asarray(line.get_ydata(), float) for line in ax.get_lines()])
    values = values[np.isfinite(values)]
    return values.size > 0 and values.min() > 0 and values.max() / values.min() > LOG_SPAN


def _figure_legend(fig: Figure, axes: np.ndarray) -> None:
    """One legend for every panel (each label once), outside the panels on the right."""
    entries: dict[str, object] = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    if entries:
        fig.legend(
            list(entries.values()),
            list(entries),
            loc="outside right upper",
            frameon=False,
            fontsize=8,
        )
