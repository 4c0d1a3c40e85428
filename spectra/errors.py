"""The one exception family spectra raises for bad input, and its warnings.

Every message says which file was involved, what was expected, what was
found, and which flag or argument fixes it. The CLI prints the message as one
line and exits with status 1; library users catch ``SpectraError``.

Messages are written with the command line's flags (``--base``, ``--force``).
Raised in Python, they name the Python argument instead (``base=``,
``force=True``): ``str(exc)`` rewrites the flags it knows unless the command
line is running (``command_line()``). Warnings go the same way: ``warn``
emits a ``SpectraWarning`` (filter it with ``warnings.filterwarnings``) in
Python, while the command line prints the report's warnings itself.
"""

import re
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
    "for_python",
    "on_command_line",
    "warn",
]

_ON_COMMAND_LINE: ContextVar[bool] = ContextVar("spectra_on_command_line", default=False)

# Flags that are switches, and the Python argument each stands for (the others take a value).
_SWITCHES = {
    "--force": "force=True",
    "--per-head": "per_head=True",
    "--directional-only": "directional_only=True",
    "--subspace": "subspace=True",
    "--skip-nonfinite": "skip_nonfinite=True",
    "--no-cache": "cache=False",
    "--ray": "ray=True",
    "--exact": 'method="exact"',
    "--log-x": "log_x=True",
}
_VALUED = {
    "--base": "base",
    "--adapter": "adapter",
    "--modules": "modules",
    "--layers": "layers",
    "--layer": "layer",
    "--lora-alpha": "lora_alpha",
    "--device": "device",
    "--label": "labels",
    "--glob": "pattern",
    "--cache": "cache",
    "--top": "top",
    "--workers": "workers",
    "--jobs": "jobs",
    "--initial": "initial",
    "--energy": "energy",
    "--rank": "rank",
    "--metrics": "metrics",
    "--out": "out",
    "--html": "html",
    "--format": "format",
    "--normalize": "normalize",
    "--subspace-rank": "subspace_rank",
    "--intruder-top": "intruder_top",
    "--intruder-eps": "intruder_eps",
}
# A flag, then (for flags that take one) its value: ``--base DIR``, ``--modules k,v``.
_FLAG = re.compile(
    r"(?<![\w-])(--[a-z][a-z-]*)"
    r"(?:=([^\s(),;]+)| ([A-Z][A-Z_]*\b|[^\s(),;]*[0-9,=./][^\s(),;]*))?"
)


def for_python(message: str) -> str:
    """``message`` with the command-line flags it names written as Python arguments."""

    def rewrite(match: re.Match[str]) -> str:
        flag, value = match.group(1), match.group(2) or match.group(3)
        if flag in _SWITCHES:
            return _SWITCHES[flag] + (match.group(0)[len(flag) :] if value else "")
        if flag not in _VALUED:
            return match.group(0)
        argument = _VALUED[flag]
        if not value:
            return f"{argument}="
        if value.isupper():  # a placeholder: --base DIR → base=DIR
            return f"{argument}={value}"
        return f"{argument}={value!r}" if not value.isdigit() else f"{argument}={value}"

    return _FLAG.sub(rewrite, message)


def on_command_line() -> bool:
    """Whether the command line is running (messages then name flags, not arguments)."""
    return _ON_COMMAND_LINE.get()


@contextmanager
def command_line() -> Iterator[None]:
    """While the command line runs: messages keep their flags, and ``warn`` stays quiet."""
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
        warnings.warn(for_python(message), SpectraWarning, stacklevel=stacklevel + 1)


class SpectraError(Exception):
    """Bad input or an impossible request; the message says how to fix it."""

    def __str__(self) -> str:
        message = super().__str__()
        return message if _ON_COMMAND_LINE.get() else for_python(message)


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
