"""``spectra plot``: redraw Figure 2 and the spectrum from saved reports, computing nothing."""

from __future__ import annotations

from pathlib import Path

import click

from spectra.defaults import NORMALIZATIONS

from .. import options
from ..output import warn


@click.command(short_help="Redraw the figures from saved reports.")
@click.argument("reports", nargs=-1, required=True, type=options.PATH)
@options.labels("One label per report, in order.")
@options.out("Folder for the figures.", required=True)
@options.modules("Roles to draw, one panel each [default: every role all reports share].")
@options.top()
@click.option(
    "--normalize",
    type=click.Choice(list(NORMALIZATIONS)),
    default="sigma1",
    show_default=True,
    help="Histogram x axis: σ/σ₁, σ/‖ΔW‖_F or raw σ.",
)
@click.option("--log-x", is_flag=True, help="Histogram with log-spaced bins.")
@click.option(
    "--layer", help="Histogram of one layer (a number) or of each layer (grid) [default: pooled]."
)
@click.option(
    "--heads-layer",
    type=click.IntRange(min=0),
    help="Reports with heads: the layer of the head × head matrix "
    "[default: the layer whose heads are most alike].",
)
@options.force("Overwrite figures already in --out.")
@options.figure_format()
def plot(
    reports, labels, out, modules, top, normalize, log_x, layer, heads_layer, force, figure_format
):
    """Redraw the figures from saved REPORT folders, without recomputing anything:
    figure2 (the equal-rank histograms, --top) and spectrum; for reports with heads
    (multi-head sources analysed with --per-head), heads and heads_matrix; for
    reports made with --esd, esd_alpha.

    \b
    Examples:
      spectra plot cmp/reports/FT cmp/reports/LoRA --out figs/ --format pdf
      spectra plot cmp/reports/* --out figs/ --layer grid --top all --force
    """
    from spectra.plot import redraw, save_figure
    from spectra.plot.heads import head_figures
    from spectra.report import Report

    saved = [Report.load(folder) for folder in reports]
    names = list(labels) if labels else [Path(folder).name for folder in reports]  # as redraw's
    # head figures: checked and drawn before anything is written (none without heads)
    heads = head_figures(saved, names, out, figure_format, heads_layer, force=force)
    heads += _esd_figure(saved, names, out, figure_format, force)
    written, warnings = redraw(
        reports,
        out,
        labels,
        modules=modules,
        top=top,
        normalize=normalize,
        log_x=log_x,
        layer=layer,
        figure_format=figure_format,
        force=force,
    )
    written += [save_figure(figure, path) for path, figure in heads]
    warn(warnings)
    click.echo(f"figures written to {out}/: {', '.join(path.name for path in written)}")


def _esd_figure(saved, names, out, figure_format, force) -> list:
    """``[(path, figure)]`` of α by layer for the reports made with --esd (none without)."""
    fitted = [
        (report, name)
        for report, name in zip(saved, names, strict=True)
        if any(row.get("alpha_tuned") is not None for row in report.rows)
    ]
    if not fitted:
        return []
    from spectra.arguments import FORCE
    from spectra.errors import ReportExistsError
    from spectra.plot import esd_alpha

    path = Path(out) / f"esd_alpha.{figure_format}"
    if path.exists() and not force:
        raise ReportExistsError(f"{path}: already there; pass {FORCE} to overwrite")
    reports, labels = zip(*fitted, strict=True)
    return [(path, esd_alpha(list(reports), list(labels))[0])]
