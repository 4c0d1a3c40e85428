"""The look every spectra figure shares: paper style, panel grids, method colours, saving.

Figures are plain ``matplotlib.figure.Figure`` objects (no pyplot state, no
backend chosen), so they work in scripts, notebooks and servers alike.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from ..errors import SpectraError

__all__ = [
    "PANELS_PER_ROW",
    "figure_grid",
    "legend_or_note",
    "method_colors",
    "panel_grid",
    "paper_style",
    "save_figure",
]

_STYLE = {
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "legend.fontsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


PANELS_PER_ROW = 4  # role panels per row: 7 roles make two readable rows
# The paper's colours first (FT orange, LoRA blue, MultiLoRA green then red), then
# other shades of the same family, so that two LoRAs are told apart.


# The paper's colours first (FT orange, LoRA blue, MultiLoRA green then red), then
# other shades of the same family, so that two LoRAs are told apart.
_FAMILIES = {
    "multilora": ("#2ca02c", "#d62728", "#98df8a", "#ff9896"),
    "ft": ("#ff7f0e", "#8c564b", "#ffbb78", "#c49c94"),
    "lora": ("#1f77b4", "#17becf", "#aec7e8", "#393b79"),
}


_OTHERS = ("#9467bd", "#e377c2", "#7f7f7f", "#bcbd22", "#c5b0d5", "#f7b6d2")


def method_colors(labels: Sequence[str]) -> list[str]:
    """The paper's colours by label: FT orange, LoRA blue, MultiLoRA green then red.

    A second method of one family (LoRA r=4 beside LoRA r=8) gets another
    shade of it; labels of no family take the remaining colours in turn.
    """
    colors, used = [], dict.fromkeys([*_FAMILIES, "other"], 0)
    for label in labels:
        key = label.lower().replace("-", "").replace(" ", "")
        if "multilora" in key or "mlora" in key:
            family = "multilora"
        elif key.startswith("ft") or "full" in key:
            family = "ft"
        elif "lora" in key:
            family = "lora"
        else:
            family = "other"
        palette = _FAMILIES.get(family, _OTHERS)
        colors.append(palette[used[family] % len(palette)])
        used[family] += 1
    return colors


def paper_style():
    """The paper style, applied while axes are made (matplotlib reads rcParams then)."""
    return matplotlib.rc_context(_STYLE)


def figure_grid(
    rows: int, cols: int, width: float = 4.2, height: float = 3.3
) -> tuple[Figure, np.ndarray]:
    with paper_style():
        fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
        axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    return fig, axes


def panel_grid(count: int, width: float = 4.2, height: float = 3.3) -> tuple[Figure, np.ndarray]:
    """A figure of ``count`` panels, at most ``PANELS_PER_ROW`` across; spare panels hidden."""
    cols = min(count, PANELS_PER_ROW)
    rows = -(-count // cols)
    fig, axes = figure_grid(rows, cols, width, height)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, axes


def legend_or_note(ax, fontsize: float | None = None) -> None:
    """The panel's legend, or a note saying that no method has a value to draw there."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(
            frameon=False, fontsize=fontsize, loc="upper center" if fontsize is None else "best"
        )
    else:
        ax.text(
            0.5,
            0.5,
            "no singular value above the floor\n(ΔW = 0 or noise)",
            ha="center",
            va="center",
            transform=ax.transAxes,
            color="0.4",
        )


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 200) -> Path:
    """Write ``fig`` as PNG, PDF or SVG, by the extension of ``path``."""
    path = Path(path)
    if path.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise SpectraError(f"{path}: figures are written as .png, .pdf or .svg")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
