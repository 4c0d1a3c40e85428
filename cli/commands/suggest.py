"""``spectra suggest``: per module, the rank that keeps a share of ‖ΔW‖_F², as PEFT patterns."""

from __future__ import annotations

import json

import click

from .. import options
from ..output import render, warn


@click.command(short_help="Suggest per-module LoRA ranks (rank_pattern) from a spectrum.")
@click.argument("source", type=options.SOURCE)
@click.option(
    "--energy",
    type=click.FloatRange(min=0, max=1, min_open=True),
    default=0.9,
    show_default=True,
    help="Share of ‖ΔW‖_F² each module's rank keeps.",
)
@options.base("Base model folder or Hub id, for a full fine-tune or DoRA.")
@options.out("Write the LoraConfig fields as JSON to this file.")
@options.force("Replace a suggestion file spectra wrote at --out (never any other file).")
@options.quiet("Print only the JSON.")
def suggest(source, energy, base, out, force, quiet):
    """Suggest, for each module of SOURCE (an adapter, a fine-tune with --base, or a saved
    report folder), the smallest rank that keeps --energy of ‖ΔW‖_F², and print the
    LoraConfig fields that set it: r, lora_alpha, rank_pattern, alpha_pattern (each
    module keeps the scale it was trained with), target_modules.

    \b
    Examples:
      spectra suggest adapter/ --energy 0.9
      spectra suggest tuned/ --base base/ --energy 0.8 --out ranks.json
      python -c "import json, peft; peft.LoraConfig(**json.load(open('ranks.json')))"
    """
    import spectra
    from spectra.actions.suggest import check_suggestion_target

    if out is not None:  # before the work; Suggestion.save checks again as it writes
        check_suggestion_target(out, force, tuple(p for p in (source, base) if p is not None))
    suggestion = spectra.suggest(source, energy=energy, base=base)
    config = suggestion.config()
    if not quiet:
        rows = [
            [
                row["module"],
                ",".join(row["roles"]),
                row["rank"],
                row["suggested_rank"],
                row["kept_energy"],
            ]
            for row in suggestion.rows
        ]
        click.echo(render(["module", "roles", "r now", "r", f"kept (≥ {energy:g})"], rows))
        ranks = [row["suggested_rank"] for row in suggestion.rows]
        click.echo(
            f"\n{len(ranks)} modules: r {min(ranks)}–{max(ranks)} "
            f"(r = {config['r']}, {len(config['rank_pattern'])} in rank_pattern)"
        )
    warn(suggestion.warnings)
    text = json.dumps(config, indent=2)
    if out is not None:
        suggestion.save(out, force=force)
        click.echo(f"LoraConfig fields written to {out}", err=True)
    else:
        click.echo(text)
