"""``spectra convert``: a MultiLoRA checkpoint in the reference .pt layout to spectra's folder."""

from __future__ import annotations

import click

from .. import options
from ..output import warn


@click.command(
    short_help="Convert a MultiLoRA .pt checkpoint to spectra's layout.", epilog=options.HUB_HELP
)
@click.argument("src", type=options.SOURCE)
@click.argument("dst", type=options.PATH)
@options.lora_alpha("α to record (the reference layout saves none).")
@options.force("Replace a MultiLoRA folder spectra wrote at DST (never any other folder).")
def convert(src, dst, lora_alpha, force):
    """Convert a MultiLoRA checkpoint SRC (reference .pt layout) to spectra's folder DST.

    DST holds adapter_config.json (peft_type SPECTRA_MULTILORA, r, num_heads,
    lora_alpha) and adapter_model.safetensors with the stacked lora_A (n, r, d_in),
    lora_B (n, d_out, r) and lora_scaling (n, d_out) of each module.

    \b
    Example:
      spectra convert final_checkpoint.pt multilora/ --lora-alpha 16
    """
    from spectra.analysis.convert import convert as convert_multilora

    checkpoint = convert_multilora(src, dst, lora_alpha=lora_alpha, force=force)
    click.echo(f"{len(checkpoint.stacked)} MultiLoRA modules written to {dst}/")
    warn(checkpoint.warnings())
