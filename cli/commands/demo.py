"""``spectra demo``: write a small FT, LoRA and MultiLoRA example, compare them and draw
Figure 2 — the whole tool on a built-in example."""

from __future__ import annotations

from pathlib import Path

import click

from .. import options
from ..output import print_summary, with_progress


@click.command(short_help="Run everything on a small built-in example.")
@options.out(
    "Folder for the example checkpoints, reports and figures.",
    default=Path("spectra-demo"),
    show_default=True,
)
@options.force("Not needed: the demo redoes a folder it made (kept for old scripts).")
@options.quiet("No progress bar.")
def demo(out, force, quiet):
    """Write a small FT, LoRA and MultiLoRA example in their real formats, analyse
    and compare them, and draw the Figure 2 histograms. Run again, it redoes its
    own folder; a folder of anything else is refused.

    \b
    Example:
      spectra demo && open spectra-demo/comparison/figure2.png
    """
    from spectra.examples.demo import findings, run_demo

    _, comparison = with_progress(quiet, run_demo, out)
    click.echo(
        f"example checkpoints written to {out / 'checkpoints'}/ (base, ft, lora, multilora.pt)"
    )
    click.echo("\nmean over layers:")
    print_summary(comparison)
    click.echo("\n" + findings(comparison))  # derived from the numbers just printed
    click.echo(
        f"reports, summary.csv and figures (figure2.png: the Figure 2 histograms) written to "
        f"{out / 'comparison'}/"
    )
