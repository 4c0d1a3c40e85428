"""Redraw Figure 2 and the spectrum from saved report folders, computing nothing.

``redraw(folders, out)`` is what ``spectra plot`` runs: it loads the reports,
draws ``figure2`` (the equal-rank histograms) and ``spectrum``, and writes
them to ``out`` as ``<name>.<figure_format>``, never over figures already
there unless ``force=True``. Labels default to the report folders' names.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..arguments import FORCE
from ..errors import ReportExistsError
from ..report import Report, version_warning
from ._style import save_figure
from .figure2 import histogram
from .spectrum import spectrum

__all__ = ["REDRAWN", "redraw"]

REDRAWN = ("figure2", "spectrum")


def redraw(
    folders: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    labels: Sequence[str] | None = None,
    *,
    modules: Sequence[str] | str | None = None,
    top: int | str | None = None,
    normalize: str = "sigma1",
    log_x: bool = False,
    layer: int | str | None = None,
    figure_format: str = "png",
    force: bool = False,
) -> tuple[list[Path], list[str]]:
    """Draw the figures of saved reports into ``out``; returns the files and any warnings.

    The options are those of ``histogram`` (``modules``, ``top``,
    ``normalize``, ``log_x``, ``layer``). Everything is checked and drawn
    before anything is written; an existing figure is replaced only with
    ``force``. The warnings name reports made by another spectra version.
    """
    reports = [Report.load(folder) for folder in folders]
    warnings = [w for w in map(version_warning, reports) if w is not None]
    names = list(labels) if labels else [Path(folder).name for folder in folders]
    targets = [Path(out) / f"{name}.{figure_format}" for name in REDRAWN]
    existing = [str(path) for path in targets if path.exists()]
    if existing and not force:
        raise ReportExistsError(f"{', '.join(existing)}: already there; pass {FORCE} to overwrite")
    figures = [
        histogram(reports, names, modules, normalize, log_x, layer, top=top)[0],
        spectrum(reports, names, modules)[0],
    ]
    return [save_figure(f, path) for f, path in zip(figures, targets, strict=True)], warnings
