"""Figures from reports: Figure 2 histograms, metrics by layer, and spectra.

Every function takes one or more ``Report``s with a label each, returns
``(fig, axes)`` and never calls ``show()``; figures are plain
``matplotlib.figure.Figure`` objects (no pyplot state, no backend chosen), so
they work in scripts, notebooks and servers alike. ``save_figure`` writes
PNG, PDF or SVG by the file's extension.

``histogram`` is the MultiLoRA paper's Figure 2 (Wang et al., 2023): the
distribution of singular values of ΔW for the k and v projections, one
overlaid histogram per method, in the paper's colours (FT orange, LoRA blue,
MultiLoRA green then red). A factored ΔW contributes its r computed values;
its n − r exact zeros are not drawn.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from .errors import SpectraError
from .report import Report

__all__ = [
    "NORMALIZATIONS",
    "common_modules",
    "histogram",
    "layer_curves",
    "method_colors",
    "save_figure",
    "spectrum",
]

NORMALIZATIONS = {
    "sigma1": "σ / σ₁ (per matrix)",
    "frobenius": "σ / ‖ΔW‖_F (per matrix)",
    "none": "σ",
}
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
_PAPER = {"ft": "#ff7f0e", "lora": "#1f77b4"}
_MULTILORA = ("#2ca02c", "#d62728")  # green, then red
_OTHERS = ("#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def method_colors(labels: Sequence[str]) -> list[str]:
    """The paper's colours by label: FT orange, LoRA blue, MultiLoRA green then red."""
    colors, multilora, other = [], 0, 0
    for label in labels:
        key = label.lower().replace("-", "").replace(" ", "")
        if "multilora" in key or "mlora" in key:
            colors.append(_MULTILORA[multilora % len(_MULTILORA)])
            multilora += 1
        elif key.startswith("ft") or "full" in key:
            colors.append(_PAPER["ft"])
        elif "lora" in key:
            colors.append(_PAPER["lora"])
        else:
            colors.append(_OTHERS[other % len(_OTHERS)])
            other += 1
    return colors


def _labels(reports: Sequence[Report], labels: Sequence[str] | None) -> list[str]:
    if not reports:
        raise SpectraError("no reports to plot: pass at least one")
    if labels is None:
        return [
            Path(str(r.meta.get("source", {}).get("path", f"run {i}"))).name
            for i, r in enumerate(reports)
        ]
    if len(labels) != len(reports):
        raise SpectraError(
            f"{len(labels)} labels for {len(reports)} reports: give one --label per checkpoint"
        )
    return list(labels)


def _modules(reports: Sequence[Report], modules: Sequence[str] | None) -> list[str]:
    present = [row["module"] for report in reports for row in report.rows]
    if modules is None:
        return list(dict.fromkeys(present))
    missing = [m for m in modules if m not in present]
    if missing:
        raise SpectraError(
            f"no {', '.join(missing)} rows in these reports; they have {sorted(set(present))}"
        )
    return list(modules)


def common_modules(
    reports: Sequence[Report], preferred: Sequence[str] = ("k", "v")
) -> list[str] | None:
    """The preferred roles that every report has (``None``, meaning all, if there are none)."""
    shared = [
        m for m in preferred if all(any(r["module"] == m for r in rep.rows) for rep in reports)
    ]
    return shared or None


def _normalized(sigma: np.ndarray, normalize: str) -> np.ndarray:
    if normalize not in NORMALIZATIONS:
        raise SpectraError(
            f"unknown normalisation {normalize!r}: expected {', '.join(NORMALIZATIONS)}"
        )
    if sigma.size == 0 or normalize == "none" or sigma[0] == 0:
        return sigma
    return sigma / (sigma[0] if normalize == "sigma1" else np.linalg.norm(sigma))


def _values(report: Report, module: str, layer: int | None, normalize: str) -> np.ndarray:
    parts = [
        _normalized(report.spectrum(row["layer"], module, row.get("head")), normalize)
        for row in report.rows
        if row["module"] == module and (layer is None or row["layer"] == layer)
    ]
    values = np.concatenate(parts) if parts else np.zeros(0)
    return values[values > 0]


def _figure(
    rows: int, cols: int, width: float = 4.2, height: float = 3.3
) -> tuple[Figure, np.ndarray]:
    with _style():
        fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
        axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    return fig, axes


def _style():
    """The paper style, applied while axes are made (matplotlib reads rcParams then)."""
    return matplotlib.rc_context(_STYLE)


def histogram(
    reports: Sequence[Report],
    labels: Sequence[str] | None = None,
    modules: Sequence[str] | None = ("k", "v"),
    normalize: str = "sigma1",
    log_x: bool = False,
    layer: int | str | None = None,
    bins: int = 40,
) -> tuple[Figure, np.ndarray]:
    """Figure 2: histograms of ΔW's singular values, one panel per module.

    ``layer=None`` pools every layer; an integer draws that layer only;
    ``"grid"`` draws one row of panels per layer. ``normalize`` is
    ``"sigma1"`` (default: compare shapes across methods of different scale),
    ``"frobenius"`` or ``"none"``; ``log_x`` uses log-spaced bins. The y axis
    is the fraction of each method's singular values in a bin, so methods with
    many values (FT) and few (LoRA) share one scale.
    """
    names = _labels(reports, labels)
    roles = _modules(reports, modules)
    colors = method_colors(names)
    layers = sorted({row["layer"] for report in reports for row in report.rows})
    grid = [None] if layer is None else layers if layer == "grid" else [int(layer)]
    fig, axes = _figure(len(grid), len(roles))
    with _style():
        for i, one_layer in enumerate(grid):
            for j, role in enumerate(roles):
                ax = axes[i, j]
                data = [_values(report, role, one_layer, normalize) for report in reports]
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
                        label=name,
                    )
                if log_x:
                    ax.set_xscale("log")
                where = "all layers" if one_layer is None else f"layer {one_layer}"
                ax.set_title(f"{role} projection, {where}")
                ax.set_xlabel(f"singular value, {NORMALIZATIONS[normalize]}")
                ax.set_ylabel("fraction of singular values")
        axes[0, -1].legend(frameon=False)
    return fig, axes


def _bin_edges(values: np.ndarray, bins: int, log_x: bool) -> np.ndarray:
    if values.size == 0:
        return np.linspace(0.0, 1.0, bins + 1)
    low, high = float(values.min()), float(values.max())
    if log_x:
        low = max(low, high * 1e-12)
        return np.geomspace(low, high * (1 + 1e-9), bins + 1)
    return np.linspace(0.0, high * (1 + 1e-9), bins + 1)


def layer_curves(
    reports: Sequence[Report],
    metric: str = "effective_rank",
    labels: Sequence[str] | None = None,
    modules: Sequence[str] | None = ("k", "v"),
) -> tuple[Figure, np.ndarray]:
    """A metric against layer index: one panel per module, one line per method.

    Rows with heads are averaged per layer.
    """
    names = _labels(reports, labels)
    roles = _modules(reports, modules)
    if any(metric not in row for report in reports for row in report.rows):
        raise SpectraError(f"unknown metric {metric!r}: see spectra.metrics.METRICS")
    fig, axes = _figure(1, len(roles))
    with _style():
        for j, role in enumerate(roles):
            ax = axes[0, j]
            for report, name, color in zip(reports, names, method_colors(names), strict=True):
                by_layer: dict[int, list[float]] = {}
                for row in report.rows:
                    if row["module"] == role and row[metric] is not None:
                        by_layer.setdefault(row["layer"], []).append(float(row[metric]))
                xs = sorted(by_layer)
                ax.plot(xs, [np.mean(by_layer[x]) for x in xs], marker="o", color=color, label=name)
            ax.set_title(f"{role} projection")
            ax.set_xlabel("layer")
            ax.set_ylabel(metric.replace("_", " "))
        axes[0, -1].legend(frameon=False)
    return fig, axes


def spectrum(
    reports: Sequence[Report],
    labels: Sequence[str] | None = None,
    modules: Sequence[str] | None = ("k", "v"),
) -> tuple[Figure, np.ndarray]:
    """σ_i/σ_1 against i on log axes (top row) and cumulative energy (bottom row).

    One thin line per layer (and head), one colour per method.
    """
    names = _labels(reports, labels)
    roles = _modules(reports, modules)
    fig, axes = _figure(2, len(roles))
    with _style():
        for j, role in enumerate(roles):
            for report, name, color in zip(reports, names, method_colors(names), strict=True):
                first = True
                for row in report.rows:
                    if row["module"] != role:
                        continue
                    sigma = report.spectrum(row["layer"], role, row.get("head"))
                    if sigma.size == 0 or sigma[0] == 0:
                        continue
                    index = np.arange(1, sigma.size + 1)
                    energy = np.cumsum(sigma**2) / np.sum(sigma**2)
                    label = name if first else None
                    axes[0, j].plot(
                        index, sigma / sigma[0], color=color, alpha=0.5, linewidth=1, label=label
                    )
                    axes[1, j].plot(index, energy, color=color, alpha=0.5, linewidth=1, label=label)
                    first = False
            axes[0, j].set_xscale("log")
            axes[0, j].set_yscale("log")
            axes[0, j].set_title(f"{role} projection")
            axes[0, j].set_xlabel("index i")
            axes[0, j].set_ylabel("σᵢ / σ₁")
            axes[1, j].set_xscale("log")
            axes[1, j].set_xlabel("index i")
            axes[1, j].set_ylabel("cumulative share of Σσ²")
            axes[1, j].set_ylim(0, 1.02)
        axes[0, -1].legend(frameon=False)
    return fig, axes


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 200) -> Path:
    """Write ``fig`` as PNG, PDF or SVG, by the extension of ``path``."""
    path = Path(path)
    if path.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise SpectraError(f"{path}: figures are written as .png, .pdf or .svg")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
