"""The sweep figure: metrics against training step, one line per module.

``sweep_curves(rows, metrics)`` takes ``Sweep.rows()`` (or any rows with
``step``, ``layer``, ``module`` and the metrics) and draws one panel per
metric. A line is one module of one layer: its colour is the layer's, one
distinct colour per layer named in a legend (tab10 up to 10 layers, tab20 up
to 20, then evenly spaced viridis shades), and its line style tells the role
(k solid, v dashed, …), so that 64 lines of a 32-layer model stay readable.
Rows with heads are averaged per (step, layer, role).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..errors import SpectraError
from ..metrics import METRICS
from ._style import figure_grid, paper_style

__all__ = ["layer_colours", "sweep_curves"]

_LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1)), (0, (1, 2)))


def layer_colours(layers: Sequence[int]) -> dict[int, tuple[float, ...]]:
    """One distinct colour per layer: tab10, tab20, or evenly spaced viridis beyond 20."""
    count = len(layers)
    if count <= 10:
        palette = [colormaps["tab10"](i) for i in range(count)]
    elif count <= 20:
        palette = [colormaps["tab20"](i) for i in range(count)]
    else:
        palette = [colormaps["viridis"](i / (count - 1)) for i in range(count)]
    return dict(zip(sorted(layers), palette, strict=True))


def sweep_curves(
    rows: Sequence[Mapping[str, object]], metrics: Sequence[str], columns: int = 2
) -> tuple[Figure, np.ndarray]:
    """One panel per metric: the metric against step, a line per (layer, role)."""
    if not rows:
        raise SpectraError("nothing to plot: the sweep has no rows")
    unknown = [m for m in metrics if m not in rows[0]]
    if unknown:
        raise SpectraError(f"unknown metric {unknown[0]!r}: expected one of {', '.join(METRICS)}")
    series: dict[tuple[int, str], dict[int, list[Mapping[str, object]]]] = {}
    for row in rows:
        series.setdefault((int(row["layer"]), str(row["role"])), {}).setdefault(
            int(row["step"]), []
        ).append(row)
    layers = sorted({layer for layer, _ in series})
    roles = list(dict.fromkeys(role for _, role in series))
    colours = layer_colours(layers)
    count = len(metrics)
    columns = min(columns, count)
    fig, axes = figure_grid((count + columns - 1) // columns, columns, width=4.6, height=3.2)
    with paper_style():
        for ax, metric in zip(axes.flat, metrics, strict=False):
            for (layer, role), by_step in series.items():
                steps = sorted(by_step)
                values = [np.mean([float(r[metric]) for r in by_step[s]]) for s in steps]
                ax.plot(
                    steps,
                    values,
                    color=colours[layer],
                    linewidth=1.2,
                    alpha=0.85,
                    linestyle=_LINESTYLES[roles.index(role) % len(_LINESTYLES)],
                )
            ax.set_xlabel("training step")
            ax.set_ylabel(metric.replace("_", " "))
        for ax in axes.flat[count:]:
            ax.set_visible(False)
        handles = [
            Line2D(
                [],
                [],
                color="black",
                linestyle=_LINESTYLES[i % len(_LINESTYLES)],
                label=f"{role} projection",
            )
            for i, role in enumerate(roles)
        ]
        axes.flat[0].legend(handles=handles, frameon=False)
        layer_handles = [
            Line2D([], [], color=colours[layer], linewidth=2, label=f"layer {layer}")
            for layer in layers
        ]
        fig.legend(
            handles=layer_handles,
            loc="outside right upper",
            frameon=False,
            ncols=1 + (len(layers) - 1) // 16,
            fontsize=8,
        )
    return fig, axes
