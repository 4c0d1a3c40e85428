"""The task-interference heat-map: SAR both ways and STI, pairs of sources by layer.

``interference_heatmap(result)`` takes an ``InterferenceResult``
(``compare(..., interference=True)``) and draws one column of panels per
role and two rows:

- the subspace alignment ratio, a row per ordered pair "a → b" (the share of
  ‖ΔW_b‖_F in a's top-k left singular subspace), a column per layer, coloured
  from 0 (b's update is orthogonal to a's subspace) to 1 (it lies in it);
- the singular task interference, a row per pair, on one colour scale for
  every role, from 0 up to the largest value drawn (units of σ); a log scale
  where the values drawn span more than a hundredfold.

A cell the table has no number for (a zero ΔW) stays blank; values are
written in the cells when there is room.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure

from ..errors import SpectraError
from ._style import figure_grid, paper_style

if TYPE_CHECKING:  # figures draw results; they never import the analysis that makes them
    from ..analysis.interference import InterferenceResult

__all__ = ["interference_heatmap"]

_WRITE_VALUES = 300  # cells per panel up to which each value is written in its cell


def _grid(rows, role, pairs, layers, column) -> np.ndarray:
    """``pairs`` down, ``layers`` across: the value of ``column`` (NaN where there is none)."""
    grid = np.full((len(pairs), len(layers)), np.nan)
    for row in rows:
        pair = (row["label_a"], row["label_b"])
        if row["role"] == role and pair in pairs and row[column] is not None:
            grid[pairs.index(pair), layers.index(int(row["layer"]))] = float(row[column])
    return grid


def _draw(ax, grid, norm, cmap, digits):
    image = ax.imshow(grid, norm=norm, cmap=cmap, aspect="auto")
    if grid.size <= _WRITE_VALUES:
        for (i, j), value in np.ndenumerate(grid):
            if np.isfinite(value):
                colour = "white" if value <= 0 or norm(value) < 0.5 else "black"
                text = f"{value:.{digits}}"
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color=colour)
    return image


def interference_heatmap(result: InterferenceResult) -> tuple[Figure, np.ndarray]:
    """Per role, SAR of each ordered pair and STI of each pair, layer by layer.

    Args:
        result: the interference table of a comparison (``Comparison.interference``).

    Returns:
        ``(fig, axes)``: a 2 × roles array of axes, SAR above, STI below.

    Raises:
        SpectraError: the table has no rows.

    Example::

        fig, axes = interference_heatmap(comparison.interference)
        fig.savefig("interference.png")
    """
    rows = result.rows
    if not rows:
        raise SpectraError("no pairs to draw: task interference needs at least two sources")
    roles = list(dict.fromkeys(str(row["role"]) for row in rows))
    layers = sorted({int(row["layer"]) for row in rows})
    pairs = list(dict.fromkeys((str(r["label_a"]), str(r["label_b"])) for r in rows))
    # SAR is not symmetric: a row for a → b and one for b → a, each from its own column
    directed = [
        row
        for pair in pairs
        for row in ((pair, *pair, "sar_a_to_b"), (pair, *pair[::-1], "sar_b_to_a"))
    ]
    fig, axes = figure_grid(
        2,
        len(roles),
        width=max(1.6 + 0.55 * len(layers), 7.5 / len(roles)),  # room for the title
        height=max(0.9 + 0.34 * len(directed), 2.6),  # room for the colour bars' labels
    )
    sti = [float(r["sti"]) for r in rows if r["sti"] is not None and float(r["sti"]) > 0]
    spread = max(sti) / min(sti) if sti else 1.0
    sti_norm = LogNorm(min(sti), max(sti)) if spread > 100 else Normalize(0, max(sti, default=1))
    with paper_style():
        for column, role in enumerate(roles):
            sar = np.vstack([_grid(rows, role, [pair], layers, key) for pair, *_, key in directed])
            sar_image = _draw(axes[0, column], sar, Normalize(0, 1), "viridis", "2f")
            sti_grid = _grid(rows, role, pairs, layers, "sti")
            sti_image = _draw(axes[1, column], sti_grid, sti_norm, "magma", "3g")
            axes[0, column].set_title(f"{role} projection")
            names = [f"{a} → {b}" for _, a, b, _ in directed]
            axes[0, column].set_yticks(range(len(directed)), names)
            axes[1, column].set_yticks(range(len(pairs)), [f"{a} · {b}" for a, b in pairs])
            for ax in axes[:, column]:
                ax.set_xticks(range(len(layers)), [str(layer) for layer in layers])
                ax.set_xlabel("layer")
        k = "each ΔW's numerical rank" if result.rank is None else str(result.rank)
        fig.colorbar(sar_image, ax=axes[0].tolist()).set_label("SAR a → b")
        log = ", log scale" if isinstance(sti_norm, LogNorm) else ""
        fig.colorbar(sti_image, ax=axes[1].tolist()).set_label(f"STI (units of σ){log}")
        fig.suptitle(
            f"Task interference by layer; k = {k}\n"
            "SAR a → b = ‖U_k(a)ᵀΔW_b‖_F / ‖ΔW_b‖_F,  STI = ‖(UᵀU − I)Σ(VᵀV − I)‖₁",
            fontsize=11,
        )
    return fig, axes
