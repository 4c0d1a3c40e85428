"""The subspace heat-map: similarity of the methods' top singular vectors, per layer.

``similarity_heatmap(result)`` takes a ``SubspaceResult`` and draws one panel
per role: a row per layer, a column per pair of methods, the cell coloured by
``‖U_aᵀ U_b‖_F² / min(k_a, k_b)`` from 0 (orthogonal subspaces) to 1 (one
contains the other), with the value written in the cell when there is room.
The chance level, what two random subspaces of the same sizes would score
(E‖U_aᵀU_b‖²_F = k_a·k_b/d, so max(k_a, k_b)/d), is marked on the colour bar.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

from ..errors import SpectraError
from ._style import figure_grid, paper_style

if TYPE_CHECKING:  # figures draw results; they never import the analysis that makes them
    from ..analysis.subspaces import SubspaceResult

__all__ = ["chance_levels", "similarity_heatmap"]


def chance_levels(result: SubspaceResult) -> list[float]:
    """What two random subspaces of each pair's sizes would score, max(k_a, k_b)/d, distinct."""
    levels = {
        round(max(int(row["k_a"]), int(row["k_b"])) / int(row["d_out"]), 12)
        for row in result.pairs
        if row.get("d_out") and min(int(row["k_a"]), int(row["k_b"])) > 0
    }
    return sorted(levels)


def similarity_heatmap(result: SubspaceResult) -> tuple[Figure, np.ndarray]:
    """One panel per role: layers down, method pairs across, similarity as colour."""
    if not result.pairs:
        raise SpectraError("no pairs to draw: subspace similarity needs at least two methods")
    roles = list(dict.fromkeys(str(row["role"]) for row in result.pairs))
    layers = sorted({int(row["layer"]) for row in result.pairs})
    pairs = list(dict.fromkeys((str(r["label_a"]), str(r["label_b"])) for r in result.pairs))
    fig, axes = figure_grid(
        1, len(roles), width=1.2 + 1.3 * len(pairs), height=0.9 + 0.32 * len(layers)
    )
    with paper_style():
        for ax, role in zip(axes[0], roles, strict=True):
            grid = np.full((len(layers), len(pairs)), np.nan)
            for row in result.pairs:
                if row["role"] == role:
                    pair = (row["label_a"], row["label_b"])
                    grid[layers.index(int(row["layer"])), pairs.index(pair)] = row["similarity"]
            image = ax.imshow(grid, vmin=0, vmax=1, cmap="magma", aspect="auto")
            if grid.size <= 300:
                for (i, j), value in np.ndenumerate(grid):
                    if np.isfinite(value):
                        ax.text(
                            j,
                            i,
                            f"{value:.2f}",
                            ha="center",
                            va="center",
                            fontsize=8,
                            color="white" if value < 0.6 else "black",
                        )
            ax.set_xticks(range(len(pairs)), [f"{a}\nvs {b}" for a, b in pairs])
            ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
            ax.set_ylabel("layer")
            ax.set_title(f"{role} projection")
        bar = fig.colorbar(image, ax=axes.ravel().tolist())
        bar.set_label("subspace similarity")
        for level in chance_levels(result):  # one mark per pair size: k of 8 vs 64 differ
            bar.ax.axhline(level, color="cyan", linewidth=2)
            bar.ax.text(
                1.05,
                level,
                f" chance {level:.2g}",
                transform=bar.ax.get_yaxis_transform(),
                va="center",
                fontsize=8,
            )
        fig.suptitle(
            f"Similarity of the top-{result.rank} left singular vectors of ΔW, "
            "‖U_aᵀU_b‖²_F / min(k_a, k_b)"
        )
    return fig, axes
