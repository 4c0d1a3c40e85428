"""``spectra plot``: redraw Figure 2 and the spectrum from saved reports, computing nothing."""

from __future__ import annotations

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
@options.force("Overwrite figures already in --out.")
@options.figure_format()
def plot(reports, labels, out, modules, top, normalize, log_x, layer, force, figure_format):
    """Redraw the figures from saved REPORT folders, without recomputing anything:
    figure2 (the equal-rank histograms, --top) and spectrum.

    \b
    Examples:
      spectra plot cmp/reports/FT cmp/reports/LoRA --out figs/ --format pdf
      spectra plot cmp/reports/* --out figs/ --layer grid --top all --force
    """
    from spectra.plot import redraw

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
    warn(warnings)
    click.echo(f"figures written to {out}/: {', '.join(path.name for path in written)}")
