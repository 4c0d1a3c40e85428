"""The ``spectra`` command group: analyze, inspect, compare, sweep, plot, convert, demo.

This module is the group itself — the version option, the error mapping and the
registration of the commands (one module each in ``commands/``). Each command parses its
options (``options.py``), calls the public ``spectra`` API, and prints (``output.py``). A
``SpectraError`` becomes one red line on stderr and exit status 1; click's usage errors
exit with 2.
"""

from __future__ import annotations

import os
import sys

import click

import spectra
from spectra.errors import SpectraError, command_line
from spectra.io.memory import release_large_blocks

from .commands import COMMANDS


class SpectraGroup(click.Group):
    """A click group that turns library errors into one line and exit status 1."""

    def invoke(self, ctx: click.Context):
        with command_line():  # messages name flags; warnings are printed, not emitted
            return self._invoke(ctx)

    def _invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SpectraError as exc:
            message = " ".join(str(exc).split())
            click.secho(f"error: {message}", fg="red", err=True)
            ctx.exit(1)
        except BrokenPipeError:  # `spectra inspect … | head`: the reader left; say nothing
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes at exit
            ctx.exit(141)  # 128 + SIGPIPE, as a tool killed by the pipe exits
        except OSError as exc:  # unreadable files, full disks: still one line, not a traceback
            where = f"{exc.filename}: " if exc.filename else ""
            click.secho(f"error: {where}{exc.strerror or exc}", fg="red", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.secho("interrupted: no report was written", fg="red", err=True)
            ctx.exit(130)


@click.group(cls=SpectraGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(spectra.__version__, prog_name="spectra")
def cli() -> None:
    """spectra: what did fine-tuning do to each layer?

    Rebuilds the weight update ΔW of each layer from a full fine-tune, a PEFT
    adapter (LoRA, rsLoRA, DoRA, AdaLoRA, LoHa, LoKr, VeRA, multi-head LoRA)
    or a MultiLoRA checkpoint, takes its singular values, and measures how
    balanced they are (entropy, effective rank, stable rank, energy rank, …).

    \b
    Examples:
      spectra demo                                    # the whole tool on a built-in example
      spectra inspect adapter/                        # what a checkpoint holds
      spectra analyze adapter/                        # metrics of k and v per layer
      spectra compare tuned/ adapter/ --base base/ --label FT --label LoRA --out cmp/

    spectra CMD --help shows each command's options and examples.
    """
    release_large_blocks()  # peak memory that does not grow with the model (spectra.io.memory)


for _command in COMMANDS:
    cli.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    cli()
