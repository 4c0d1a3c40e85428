"""The one exception family spectra raises for bad input, and its warnings.

Every message says which file was involved, what was expected, what was
found, and which flag or argument fixes it. The CLI prints the message as one
line and exits with status 1; library users catch ``SpectraError``.

A message names the argument that fixes it by formatting an ``Argument``
(``spectra.arguments``): made while the command line runs
(``command_line()``), it reads ``--base DIR``; made in Python, ``base=DIR``.
Nothing rewrites a message afterwards. Warnings go to the caller the same
way: ``warn`` emits a ``SpectraWarning`` (filter it with
``warnings.filterwarnings``) in Python, while the command line prints the
report's warnings itself.
"""

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = [
    "BaseMismatchError",
    "DeviceError",
    "FormatError",
    "MissingBaseError",
    "NonFiniteError",
    "ReportExistsError",
    "SelectionError",
    "SpectraError",
    "SpectraWarning",
    "command_line",
    "on_command_line",
    "warn",
]

_ON_COMMAND_LINE: ContextVar[bool] = ContextVar("spectra_on_command_line", default=False)


def on_command_line() -> bool:
    """Whether the command line is running (messages then name flags, not arguments)."""
    return _ON_COMMAND_LINE.get()


@contextmanager
def command_line() -> Iterator[None]:
    """While the command line runs: messages name flags, and ``warn`` stays quiet."""
    token = _ON_COMMAND_LINE.set(True)
    try:
        yield
    finally:
        _ON_COMMAND_LINE.reset(token)


class SpectraWarning(UserWarning):
    """Something the results depend on that the user should know (a guessed scale, a floor)."""


def warn(message: str, stacklevel: int = 2) -> None:
    """Emit ``message`` as a ``SpectraWarning`` in Python (not on the command line)."""
    if not _ON_COMMAND_LINE.get():
        warnings.warn(message, SpectraWarning, stacklevel=stacklevel + 1)


class SpectraError(Exception):
    """Bad input or an impossible request; the message says how to fix it."""


class FormatError(SpectraError):
    """A path holds no checkpoint spectra recognises, or one that is malformed."""


class MissingBaseError(SpectraError):
    """ΔW needs the base weights (a full fine-tune, DoRA, …) and none were given."""


class BaseMismatchError(SpectraError):
    """The base model's tensor names or shapes do not match the checkpoint's."""


class SelectionError(SpectraError):
    """The modules or layers asked for are not in the checkpoint."""


class NonFiniteError(SpectraError):
    """A weight holds NaN or Inf, so no spectrum of it means anything."""


class DeviceError(SpectraError):
    """The device asked for is not available."""


class ReportExistsError(SpectraError):
    """A report would overwrite an existing one without ``force=True``."""
