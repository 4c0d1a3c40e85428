"""The ``spectra`` command group: analyze, inspect, compare, sweep, plot, convert, demo.

This module is the group itself — the version option, the error mapping and the
registration of the commands (one module each in ``commands/``). Each command parses its
options (``options.py``), calls the public ``spectra`` API, and prints (``output.py``). A
``SpectraError`` becomes one red line on stderr and exit status 1; click's usage errors
exit with 2. Ctrl-C becomes one line and exit status 130, whatever is running
(``interrupt.py`` says how, and why the process then leaves with ``os._exit``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator

import click

import spectra
from spectra.errors import SpectraError, command_line
from spectra.io.memory import release_large_blocks

from . import NOTHING_WRITTEN, _imported, interrupt, interrupted
from .commands import COMMANDS

# click's own ways out (an exit status, a usage error): never taken for an interrupt's doing
_ANSWERED = (click.exceptions.Exit, click.exceptions.Abort, click.ClickException)


class SpectraGroup(click.Group):
    """A click group that turns library errors into one line and exit status 1.

    ``own_process`` is set when the group is called as the program (the
    console script, ``python -m spectra_cli.main``), not through ``main()`` as
    click's ``CliRunner`` does: only then may an interrupt end the process with
    ``os._exit`` (``interrupt.leave``).
    """

    own_process = False

    def __call__(self, *args, **kwargs):
        self.own_process = True
        return super().__call__(*args, **kwargs)

    def make_context(self, *args, **kwargs) -> click.Context:
        # parsing the command line (click would say "Aborted!"); the types' messages name flags
        with command_line(), self._answering_interrupts():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: click.Context):
        try:
            # messages name flags; warnings are printed, not emitted
            with command_line(), self._answering_interrupts():
                return self._invoke(ctx)
        finally:
            if self.own_process:  # the command is over: a late Ctrl-C must not disturb the exit
                signal.signal(signal.SIGINT, signal.SIG_IGN)

    @contextlib.contextmanager
    def _answering_interrupts(self) -> Iterator[None]:
        """Ctrl-C, or an error it left behind (``spectra_cli.interrupted``): one line, 130."""
        try:
            yield
        except KeyboardInterrupt as exc:
            self._interrupted(exc)
        except _ANSWERED:
            raise
        except Exception:
            if not interrupted():
                raise
            self._interrupted(KeyboardInterrupt())  # an error the interrupt left behind

    def _interrupted(self, exc: KeyboardInterrupt):
        """One line (the interrupt's own message, if a command gave one) and status 130."""
        message = " ".join(str(exc).split())
        if not message:  # the command's own outputs tell how far it got
            done = interrupt.written()
            message = f"stopped after writing {', '.join(done)}" if done else NOTHING_WRITTEN
        if self.own_process:
            interrupt.leave(message)
        interrupt.tidy()
        click.secho(f"interrupted: {message}", fg="red", err=True)
        raise click.exceptions.Exit(interrupt.STATUS)

    def _invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SpectraError as exc:
            if interrupted():  # an error Ctrl-C left behind (a staging folder it removed)
                raise
            message = " ".join(str(exc).split())
            click.secho(f"error: {message}", fg="red", err=True)
            ctx.exit(1)
        except BrokenPipeError:  # `spectra inspect … | head`: the reader left; say nothing
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes at exit
            ctx.exit(141)  # 128 + SIGPIPE, as a tool killed by the pipe exits
        except OSError as exc:  # unreadable files, full disks: still one line, not a traceback
            if interrupted():
                raise
            where = f"{exc.filename}: " if exc.filename else ""
            click.secho(f"error: {where}{exc.strerror or exc}", fg="red", err=True)
            ctx.exit(1)


@click.group(cls=SpectraGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(spectra.__version__, prog_name="spectra")
def cli() -> None:
    """spectra: what did fine-tuning do to each layer?

    Rebuilds the weight update ΔW of each layer from a checkpoint, takes its
    singular values, and measures how balanced they are (entropy, effective
    rank, stable rank, energy rank, …). It reads (the format is detected):

    \b
      full fine-tunes  HF folders, .safetensors/.bin/.pt, FSDP (DCP), DeepSpeed ZeRO; --base
      PEFT adapters    LoRA, rsLoRA, DoRA, AdaLoRA, LoHa, LoKr, VeRA, multi-head LoRA
      MultiLoRA        .pt state dicts, and spectra convert's folders
      image models     kohya LoRA/LoCon, LyCORIS LoHa/LoKr/full, diffusers LoRA
      others           MLX-LM adapters, torchtune adapter_model.pt, llama.cpp GGUF LoRA

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
    _command.callback = interrupt.watching_outputs(_command.callback)  # tidied on Ctrl-C
    cli.add_command(_command)
_imported()  # Ctrl-C is answered by SpectraGroup from here on


if __name__ == "__main__":  # pragma: no cover
    cli()
