"""The ``spectra`` command line: a thin shell over the public ``spectra`` API.

Ctrl-C while the program is still importing the command line (click, the
commands) reaches no handler of ``main``: until ``main`` is imported, an
uncaught ``KeyboardInterrupt`` in a non-interactive process is answered here
as ``main`` answers it later, with one line and status 130 (``interrupt.py``).
"""

import os
import sys

NOTHING_WRITTEN = "no report was written"  # what an interrupt leaves unless a command says more


def _interrupted_while_importing(kind, value, traceback) -> None:
    if not issubclass(kind, KeyboardInterrupt) or hasattr(sys, "ps1") or sys.flags.interactive:
        return _previous_hook(kind, value, traceback)
    sys.stderr.write(f"interrupted: {NOTHING_WRITTEN}\n")
    sys.stderr.flush()
    os._exit(130)  # nothing started yet, and no interpreter finalisation (see interrupt.py)


def _imported() -> None:
    """Called at the end of ``main``'s import: its own handlers answer from now on."""
    if sys.excepthook is _interrupted_while_importing:
        sys.excepthook = _previous_hook


_previous_hook = sys.excepthook
sys.excepthook = _interrupted_while_importing
