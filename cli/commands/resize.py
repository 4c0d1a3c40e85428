"""``spectra resize``: a LoRA adapter truncated to a rank or an energy share, as a PEFT folder."""

from __future__ import annotations

import click

from .. import options
from ..output import render, warn


def rank_or_energy(command):
    """``--rank R`` / ``--energy Q``: how much of each ΔW to keep (one of the two)."""
    command = click.option(
        "--energy",
        type=click.FloatRange(min=0, max=1, min_open=True),
        help="Keep, per module, the smallest rank holding this share of ‖ΔW‖_F².",
    )(command)
    return click.option(
        "--rank", type=click.IntRange(min=1), help="Keep the top R directions of every module."
    )(command)


def print_errors(rows, columns) -> None:
    """The per-module table of a resize or an extraction."""
    click.echo(render(list(columns), [[row[c] for c in columns] for row in rows]))


@click.command(short_help="Shrink a LoRA adapter by truncated SVD (exact, no merge).")
@click.argument("adapter", type=options.SOURCE)
@rank_or_energy
@options.out("Folder for the resized PEFT adapter.", required=True)
@options.force("Replace an adapter folder spectra wrote at --out (never a trained one).")
@click.option("--adapter", "adapter_name", help="The adapter to read, by name (sub-folder).")
@options.quiet("No table.")
def resize(adapter, rank, energy, out, force, adapter_name, quiet):
    """Write a copy of the LoRA ADAPTER whose every module is the best rank-R (or
    energy-Q) approximation of its ΔW = s·B@A, from the exact factored core, with its
    scale kept (per-module ranks in rank_pattern). Prints and writes (resize.csv) the
    kept energy and the spectral and Frobenius error of each module.

    \b
    Examples:
      spectra resize adapter/ --rank 4 --out adapter-r4/
      spectra resize adapter/ --energy 0.95 --out adapter-95/
    """
    import spectra
    from spectra.actions.resize import RESIZE_COLUMNS

    result = spectra.resize(
        adapter, out, rank=rank, energy=energy, force=force, adapter_name=adapter_name
    )
    if not quiet:
        print_errors(result.rows, RESIZE_COLUMNS)
    warn(result.warnings)
    click.echo(f"resized adapter written to {out}/ (with resize.csv)", err=True)
