"""The sweep figure: metrics against training step, one line per module.

``sweep_curves(rows, metrics)`` takes ``Sweep.rows()`` (or any rows with
``step``, ``layer``, ``module`` and the metrics) and draws one panel per
metric. A line is one module of one layer: its colour runs along the layers
(viridis, with a colour bar) and its line style tells the role (k solid, v
dashed, …), so that 64 lines of a 32-layer model stay readable. Rows with
heads are averaged per (step, layer, role).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from .errors import SpectraError
from .plot import _figure, _style

__all__ = ["sweep_curves"]

_LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1)), (0, (1, 2)))


def sweep_curves(
    rows: Sequence[Mapping[str, object]], metrics: Sequence[str], columns: int = 2
) -> tuple[Figure, np.ndarray]:
    """One panel per metric: the metric against step, a line per (layer, role)."""
    if not rows:
        raise SpectraError("nothing to plot: the sweep has no rows")
    unknown = [m for m in metrics if m not in rows[0]]
    if unknown:
        raise SpectraError(f"unknown metric {unknown[0]!r}: see spectra.metrics.METRICS")
    series: dict[tuple[int, str], dict[int, list[Mapping[str, object]]]] = {}
    for row in rows:
        series.setdefault((int(row["layer"]), str(row["module"])), {}).setdefault(
            int(row["step"]), []
        ).append(row)
    layers = sorted({layer for layer, _ in series})
    roles = list(dict.fromkeys(role for _, role in series))
    colours = colormaps["viridis"]
    norm = Normalize(vmin=min(layers), vmax=max(max(layers), min(layers) + 1))
    count = len(metrics)
    columns = min(columns, count)
    fig, axes = _figure((count + columns - 1) // columns, columns, width=4.6, height=3.2)
    with _style():
        for ax, metric in zip(axes.flat, metrics, strict=False):
            for (layer, role), by_step in series.items():
                steps = sorted(by_step)
                values = [np.mean([float(r[metric]) for r in by_step[s]]) for s in steps]
                ax.plot(
                    steps,
                    values,
                    color=colours(norm(layer)),
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
        bar = fig.colorbar(ScalarMappable(norm=norm, cmap=colours), ax=axes.ravel().tolist())
        bar.set_label("layer")
        bar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return fig, axes
