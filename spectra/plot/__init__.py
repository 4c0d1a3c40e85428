"""Figures from reports: Figure 2 histograms, metrics by layer, and spectra.

Every function takes one or more ``Report``s with a label each, returns
``(fig, axes)`` and never calls ``show()``; figures are plain
``matplotlib.figure.Figure`` objects (no pyplot state, no backend chosen), so
they work in scripts, notebooks and servers alike. ``save_figure`` writes
PNG, PDF or SVG by the file's extension.

One module per figure: ``figure2`` (``histogram``), ``layers``
(``layer_curves``), ``spectrum``, ``subspace`` (``similarity_heatmap``),
``interference`` (``interference_heatmap``), ``heads`` (``head_similarity``,
``head_matrix``), ``esd`` (``esd_alpha``: α of W0 and W0 + ΔW by layer) and
``sweep`` (``sweep_curves``); ``redraw`` is what
``spectra plot`` runs (saved reports in, figures out, never over existing
ones without ``force``); ``_style`` holds the look they share and ``_rows``
what they take from reports.

``histogram`` is the MultiLoRA paper's Figure 2 (Wang et al., 2023): the
distribution of singular values of ΔW per projection, one overlaid histogram
per method, in the paper's colours (FT orange, LoRA blue, MultiLoRA green
then red). By default it is the paper's equal-rank view: each matrix gives
its top K singular values over σ₁, K the largest adapter rank compared, so
a balanced update piles up near 1 and one led by a few directions spreads
towards 0 (``top="all"`` draws every value); each matrix's σ₁/σ₁ = 1, the
same for every method, is left out of it. ``layer_curves`` takes a log y
axis where the methods differ more than tenfold, and a legend beside the
panels.

No figure draws noise as data: values at or below a row's floor (the larger
of its ``accuracy_floor`` and ``noise_floor`` columns) are left out of
histograms and cut from the spectra, where the floor is marked. A layer or
role that the reports do not have is an error, not an empty panel.
"""

from __future__ import annotations

from ._rows import NORMALIZATIONS, common_modules, floor_of
from ._style import PANELS_PER_ROW, method_colors, save_figure
from .esd import esd_alpha
from .figure2 import adapter_rank, histogram
from .heads import head_matrix, head_similarity, most_alike_layer, write_head_figures
from .interference import interference_heatmap
from .layers import ceiling, layer_curves
from .redraw import redraw
from .spectrum import spectrum
from .subspace import chance_levels, similarity_heatmap
from .sweep import layer_colours, sweep_curves

__all__ = [
    "NORMALIZATIONS",
    "PANELS_PER_ROW",
    "adapter_rank",
    "ceiling",
    "chance_levels",
    "common_modules",
    "esd_alpha",
    "floor_of",
    "head_matrix",
    "head_similarity",
    "histogram",
    "interference_heatmap",
    "layer_colours",
    "layer_curves",
    "method_colors",
    "most_alike_layer",
    "redraw",
    "save_figure",
    "similarity_heatmap",
    "spectrum",
    "sweep_curves",
    "write_head_figures",
]
