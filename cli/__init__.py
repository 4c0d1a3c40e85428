"""The ``spectra`` command line: a thin shell over the public ``spectra`` API.

Ctrl-C while the program is still importing the command line (click, the
commands) reaches no handler of ``main``: until ``main`` is imported, an
uncaught ``KeyboardInterrupt`` in a non-interactive process is answered here
as ``main`` answers it later, with one line and status 130 (``interrupt.py``).

An interrupt can also surface as another exception: a ``KeyboardInterrupt``
that a library swallows in the middle of an import leaves that module half
made, and a later use of it fails (``numpy has no attribute 'void'``). So
the SIGINT handler notes that Ctrl-C was pressed (``interrupted``), and an
error that follows it is answered as the interrupt it comes from.
"""

import contextlib
import os
import signal
import sys
from collections.abc import Iterator

NOTHING_WRITTEN = "no report was written"  # what an interrupt leaves unless a command says more


_SIGINT = [False]  # whether Ctrl-C was pressed since the program started
_DEFERRING = [False]  # whether Ctrl-C waits for the end of a block (deferred_interrupts)


def interrupted() -> bool:
    """Whether Ctrl-C (SIGINT) reached this process since it started."""
    return _SIGINT[0]


def _note_sigint(signum, frame) -> None:
    """Python's own SIGINT handler (raise ``KeyboardInterrupt``), noting that it ran."""
    _SIGINT[0] = True
    if not _DEFERRING[0]:  # else raised when the import that cannot take it is over
        signal.default_int_handler(signum, frame)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold Ctrl-C inside the block, and raise it as ``KeyboardInterrupt`` once it is over.

    For imports whose C++ side calls back into Python (torch's): a
    ``KeyboardInterrupt`` raised in such a callback is a C++ exception that
    nothing catches, and the process aborts (``terminate called after
    throwing an instance of 'pybind11::error_already_set'``).
    """
    _DEFERRING[0] = True
    try:
        yield
    finally:
        _DEFERRING[0] = False
    if _SIGINT[0]:
        raise KeyboardInterrupt


def _interrupted_while_importing(kind, value, traceback) -> None:
    caused = issubclass(kind, KeyboardInterrupt) or (interrupted() and issubclass(kind, Exception))
    if not caused or hasattr(sys, "ps1") or sys.flags.interactive:
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
if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not a host's own handler
    signal.signal(signal.SIGINT, _note_sigint)
