"""``spectra extract``: a PEFT LoRA adapter of the base from a full fine-tune."""

from __future__ import annotations

import click

from .. import options
from ..output import ProgressBar, warn
from .analyze import ray_option
from .resize import print_errors, rank_or_energy


@click.command(short_help="Extract a LoRA adapter from a full fine-tune.", epilog=options.HUB_HELP)
@click.argument("tuned", type=options.SOURCE)
@options.base("Base model folder or Hub id the fine-tune started from.")
@rank_or_energy
@options.modules("Roles to extract, e.g. k,v [default: all].")
@options.layers()
@options.out("Folder for the PEFT adapter.", required=True)
@options.force("Replace an adapter folder spectra wrote at --out (never a trained one).")
@options.quiet()
@ray_option
def extract(tuned, base, rank, energy, modules, layers, out, force, quiet, ray_address):
    """Write a PEFT LoRA adapter of --base whose modules approximate the fine-tune TUNED:
    per module the best rank-R (or energy-Q) approximation of ΔW = W_tuned − W_base,
    streamed one module at a time (randomized SVD with power iterations for small R,
    a full SVD otherwise). Prints and writes (extract.csv) each module's rank, kept
    energy, relative error and how close to the optimal truncation it came.

    \b
    Examples:
      spectra extract tuned/ --base base/ --rank 16 --out lora-16/
      spectra extract tuned/ --base base/ --energy 0.5 --modules k,v --out lora-kv/
    """
    import spectra
    from spectra.actions.extract import EXTRACT_COLUMNS
    from spectra.errors import SpectraError

    if base is None:
        raise SpectraError("extract needs the model the fine-tune started from: pass --base DIR")
    bar = ProgressBar(quiet, "extracting")
    try:
        result = spectra.extract(
            tuned,
            base,
            out,
            rank=rank,
            energy=energy,
            modules=modules or "all",
            layers=layers,
            force=force,
            progress=bar,
            ray=ray_address,
        )
    finally:
        bar.close()
    if not quiet:
        print_errors(result.rows, EXTRACT_COLUMNS)
    warn(result.warnings)
    click.echo(f"LoRA adapter written to {out}/ (with extract.csv)", err=True)
