"""Figures from reports: Figure 2 histograms, metrics by layer, and spectra.

Every function takes one or more ``Report``s with a label each, returns
``(fig, axes)`` and never calls ``show()``; figures are plain
``matplotlib.figure.Figure`` objects (no pyplot state, no backend chosen), so
they work in scripts, notebooks and servers alike. ``save_figure`` writes
PNG, PDF or SVG by the file's extension.

``histogram`` is the MultiLoRA paper's Figure 2 (Wang et al., 2023): the
distribution of singular values of ΔW per projection, one overlaid histogram
per method, in the paper's colours (FT orange, LoRA blue, MultiLoRA green
then red). By default it is the paper's equal-rank view: each matrix gives
its top K singular values over σ₁, K the largest adapter rank compared, so
a balanced update piles up near 1 and one led by a few directions spreads
towards 0 (``top="all"`` draws every value).

No figure draws noise as data: values at or below a row's floor (the larger
of its ``accuracy_floor`` and ``noise_floor`` columns) are left out of
histograms and cut from the spectra, where the floor is marked. A layer or
role that the reports do not have is an error, not an empty panel.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .errors import SpectraError
from .loaders.names import ROLES
from .report import Report, noise_warning

__all__ = [
    "NORMALIZATIONS",
    "PANELS_PER_ROW",
    "adapter_rank",
    "ceiling",
    "common_modules",
    "floor_of",
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
PANELS_PER_ROW = 4  # role panels per row: 7 roles make two readable rows
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
            f"{len(labels)} labels for {len(reports)} reports: give one --label per report"
        )
    if len(set(labels)) != len(labels):
        raise SpectraError(f"labels must differ; got {', '.join(labels)} (--label)")
    return list(labels)


def _modules(reports: Sequence[Report], modules: Sequence[str] | None) -> list[str]:
    """The roles to draw: ``modules`` (each in every report), or (None, ``"all"``) all shared."""
    shared = _shared_roles(reports)
    if modules is None or modules == "all":
        if not shared:
            raise SpectraError("these reports share no module role: nothing to draw side by side")
        return shared
    missing = [m for m in modules if m not in shared]
    if missing:
        raise SpectraError(
            f"no {', '.join(missing)} rows in every report; they share "
            f"{', '.join(shared) or 'no role'} (--modules)"
        )
    return list(dict.fromkeys(modules))


def _shared_roles(reports: Sequence[Report]) -> list[str]:
    """The roles every report has rows for, in ``ROLES`` order (unknown roles last)."""
    present = [{row["module"] for row in report.rows} for report in reports]
    shared = set.intersection(*present) if present else set()
    return sorted(
        shared, key=lambda role: (ROLES.index(role) if role in ROLES else len(ROLES), role)
    )


def common_modules(
    reports: Sequence[Report], preferred: Sequence[str] | None = None
) -> list[str] | None:
    """The roles every report has (``preferred`` ones only, if given); ``None`` if none."""
    shared = _shared_roles(reports)
    if preferred is not None:
        shared = [m for m in preferred if m in shared]
    return shared or None


def _check_layer(reports: Sequence[Report], layer: int | str | None) -> list[int | None]:
    """The layers to draw for ``layer`` (None, an int or ``"grid"``), refusing absent ones."""
    layers = sorted({row["layer"] for report in reports for row in report.rows})
    if layer is None:
        return [None]
    if layer == "grid":
        return list(layers)
    if isinstance(layer, str) and not layer.isdigit():
        raise SpectraError(f"layer {layer!r} is neither a layer number nor grid (--layer)")
    if int(layer) not in layers:
        raise SpectraError(
            f"layer {layer} is not in these reports; they have layers "
            f"{', '.join(map(str, layers))} (--layer)"
        )
    return [int(layer)]


def _normalized(sigma: np.ndarray, normalize: str) -> np.ndarray:
    if normalize not in NORMALIZATIONS:
        raise SpectraError(
            f"unknown normalisation {normalize!r}: expected {', '.join(NORMALIZATIONS)}"
        )
    if sigma.size == 0 or normalize == "none" or sigma[0] == 0:
        return sigma
    return sigma / (sigma[0] if normalize == "sigma1" else np.linalg.norm(sigma))


def floor_of(row: dict) -> float:
    """The σ below which a row's values are noise: the larger of its two floors.

    Reports saved before the floors were recorded have neither column: 0
    then, and only exact zeros are left out.
    """
    return max(float(row.get("accuracy_floor") or 0.0), float(row.get("noise_floor") or 0.0))


def _trusted(report: Report, row: dict) -> np.ndarray:
    """A row's σ above its floor (descending): what a figure may draw as data."""
    sigma = report.spectrum(row["layer"], row["module"], row.get("head"))
    return sigma[sigma > max(floor_of(row), 0.0)]


def adapter_rank(reports: Sequence[Report]) -> int | None:
    """The largest adapter rank among the reports' rows (r, n·r for MultiLoRA), or None.

    Dense adapter updates (DoRA, LoHa, LoKr) count by their ``adapter_rank``
    column; reports saved before it existed count their factored rows' values.
    """
    ranks = [
        int(row["adapter_rank"])
        if row.get("adapter_rank") is not None
        else report.spectrum(row["layer"], row["module"], row.get("head")).size
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
            raise SpectraError(f"top {top!r} is neither a count nor all (--top)")
        top = int(top)
    if top < 1:
        raise SpectraError(f"top must be at least 1 or all; got {top} (--top)")
    return int(top)


def _values(
    report: Report, module: str, layer: int | None, normalize: str, top: int | None
) -> np.ndarray:
    """The drawn values of one method: each matrix's top-``top`` σ above its floor, normalised."""
    parts = []
    for row in report.rows:
        if row["module"] != module or (layer is not None and row["layer"] != layer):
            continue
        full = report.spectrum(row["layer"], module, row.get("head"))
        trusted = _normalized(full, normalize)[: _trusted(report, row).size]
        parts.append(trusted[:top] if top is not None else trusted)
    return np.concatenate(parts) if parts else np.zeros(0)


def _capacities(reports: Sequence[Report], module: str) -> str:
    """n = min(d_out, d_in) of a role's rows, as text (``384`` or ``384–1024``)."""
    sizes = sorted(
        {
            min(row["d_out"], row["d_in"])
            for rep in reports
            for row in rep.rows
            if row["module"] == module
        }
    )
    return str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}–{sizes[-1]}"


def _figure(
    rows: int, cols: int, width: float = 4.2, height: float = 3.3
) -> tuple[Figure, np.ndarray]:
    with _style():
        fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
        axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    return fig, axes


def _panels(count: int, width: float = 4.2, height: float = 3.3) -> tuple[Figure, np.ndarray]:
    """A figure of ``count`` panels, at most ``PANELS_PER_ROW`` across; spare panels hidden."""
    cols = min(count, PANELS_PER_ROW)
    rows = -(-count // cols)
    fig, axes = _figure(rows, cols, width, height)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, axes


def _style():
    """The paper style, applied while axes are made (matplotlib reads rcParams then)."""
    return matplotlib.rc_context(_STYLE)


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
    DoRA ΔW is truncated to its top K), ``"all"`` for every value. Values at
    or below a row's floor (``accuracy_floor``, ``noise_floor``) are never
    drawn. ``modules=None`` draws every role all reports share, in a grid of
    at most ``PANELS_PER_ROW`` panels a row; ``layer=None`` pools every layer,
    an integer draws that layer (which must exist), ``"grid"`` one row of
    panels per layer. ``normalize`` is ``"sigma1"`` (default), ``"frobenius"``
    or ``"none"``; ``log_x`` uses log-spaced bins. The y axis is the fraction
    of each method's drawn values in a bin; the legend gives their number.
    """
    names = _labels(reports, labels)
    roles = _modules(reports, modules)
    grid = _check_layer(reports, layer)
    count = _top_count(reports, top)
    colors = method_colors(names)
    if len(grid) == 1:
        fig, axes = _panels(len(roles))
        cells = [(grid[0], role, ax) for role, ax in zip(roles, axes.flat, strict=False)]
    else:
        fig, axes = _figure(len(grid), len(roles))
        cells = [
            (one, role, axes[i, j]) for i, one in enumerate(grid) for j, role in enumerate(roles)
        ]
    with _style():
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
            ax.set_title(f"{role} projection, {where}\n{shown} per matrix, above its floor")
            ax.set_xlabel(f"singular value, {NORMALIZATIONS[normalize]}")
            ax.set_ylabel("fraction of singular values")
            ax.set_ylim(0, ax.get_ylim()[1] * 1.35)  # headroom: the legend sits above the bars
            _legend_or_note(ax)
    return fig, axes


def _legend_or_note(ax, fontsize: float | None = None) -> None:
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


def _bin_edges(values: np.ndarray, bins: int, log_x: bool) -> np.ndarray:
    if values.size == 0:
        return np.linspace(0.0, 1.0, bins + 1)
    low, high = float(values.min()), float(values.max())
    if log_x:
        low = max(low, high * 1e-12)
        return np.geomspace(low, high * (1 + 1e-9), bins + 1)
    return np.linspace(0.0, high * (1 + 1e-9), bins + 1)


def ceiling(report: Report, row: dict, metric: str) -> float | None:
    """The largest value ``metric`` can take for this row's ΔW, or None if it has none here.

    A factored ΔW has at most k = its computed values (r, or n·r) directions:
    effective, stable and numerical rank ≤ k, normalized entropy ≤ ln k/ln n.
    A dense ΔW: n = min(d_out, d_in) directions, normalized entropy ≤ 1.
    """
    n = min(row["d_out"], row["d_in"])
    k = report.spectrum(row["layer"], row["module"], row.get("head")).size
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
    """
    names = _labels(reports, labels)
    roles = _modules(reports, modules)
    if any(metric not in row for report in reports for row in report.rows):
        raise SpectraError(f"unknown metric {metric!r}: see spectra.metrics.METRICS")
    fig, axes = _panels(len(roles))
    with _style():
        for role, ax in zip(roles, axes.flat, strict=False):
            for report, name, color in zip(reports, names, method_colors(names), strict=True):
                by_layer: dict[int, list[float]] = {}
                caps: dict[int, list[float]] = {}
                noisy: set[int] = set()
                for row in report.rows:
                    if row["module"] == role and row[metric] is not None:
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
            ax.legend(frameon=False, fontsize=8)
    return fig, axes


def spectrum(
    reports: Sequence[Report],
    labels: Sequence[str] | None = None,
    modules: Sequence[str] | None = None,
) -> tuple[Figure, np.ndarray]:
    """σ_i/σ_1 against i on log axes (top row) and cumulative energy (bottom row).

    One thin line per layer (and head), one colour per method, cut at each
    row's floor (values below it are noise, not data); where a method's rows
    were cut, the highest of their floors is drawn as a dotted line in its
    colour. Panels for
    every role all reports share (or ``modules``), at most
    ``PANELS_PER_ROW`` across, each with its energy panel below.
    """
    names = _labels(reports, labels)
    roles = _modules(reports, modules)
    cols = min(len(roles), PANELS_PER_ROW)
    blocks = -(-len(roles) // cols)
    fig, grid = _figure(2 * blocks, cols)
    for index in range(len(roles), blocks * cols):
        for ax in grid[2 * (index // cols) : 2 * (index // cols) + 2, index % cols]:
            ax.set_visible(False)
    with _style():
        for index, role in enumerate(roles):
            top_ax = grid[2 * (index // cols), index % cols]
            energy_ax = grid[2 * (index // cols) + 1, index % cols]
            for report, name, color in zip(reports, names, method_colors(names), strict=True):
                first, floors = True, []
                for row in report.rows:
                    if row["module"] != role:
                        continue
                    sigma = _trusted(report, row)
                    if sigma.size == 0:
                        continue
                    full = report.spectrum(row["layer"], role, row.get("head"))
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
            top_ax.set_title(f"{role} projection")
            top_ax.set_xlabel("index i")
            top_ax.set_ylabel("σᵢ / σ₁ (above the floor)")
            energy_ax.set_xscale("log")
            energy_ax.set_xlabel("index i")
            energy_ax.set_ylabel("cumulative share of Σσ²")
            energy_ax.set_ylim(0, 1.02)
            _legend_or_note(top_ax, fontsize=8)
    return fig, grid


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 200) -> Path:
    """Write ``fig`` as PNG, PDF or SVG, by the extension of ``path``."""
    path = Path(path)
    if path.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise SpectraError(f"{path}: figures are written as .png, .pdf or .svg")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
