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
    """Something the results depend on that the user should know (a guessed scale, a floor).

    Emitted by ``warn`` in Python; the command line prints the report's
    warnings itself.

    Args:
        message: the warning, naming the file or module it is about.

    Example:
        >>> import warnings
        >>> import spectra
        >>> with warnings.catch_warnings():  # silence spectra's warnings in this block
        ...     warnings.simplefilter("ignore", spectra.SpectraWarning)
        ...     spectra.errors.warn("a guessed scale")
    """


def warn(message: str, stacklevel: int = 2) -> None:
    """Emit ``message`` as a ``SpectraWarning`` in Python (not on the command line)."""
    if not _ON_COMMAND_LINE.get():
        warnings.warn(message, SpectraWarning, stacklevel=stacklevel + 1)


class SpectraError(Exception):
    """Bad input or an impossible request; the message says how to fix it.

    The base of every error below: library users catch this one.

    Args:
        message: the one-line message: the file involved, what was expected,
            what was found, and the flag or argument that fixes it.

    Example:
        >>> import spectra
        >>> try:
        ...     spectra.load("no/such/folder")
        ... except spectra.SpectraError as error:
        ...     print(type(error).__name__)
        FormatError
    """


class FormatError(SpectraError):
    """A path holds no checkpoint spectra recognises, or one that is malformed.

    Args:
        message: the one-line message: the file involved, what was expected,
            what was found, and the flag or argument that fixes it.

    Example:
        >>> import spectra
        >>> spectra.load("no/such/folder")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        spectra.errors.FormatError: no/such/folder ...: no such file or folder (...)
    """


class MissingBaseError(SpectraError):
    """ΔW needs the base weights (a full fine-tune, DoRA, …) and none were given.

    Args:
        message: the one-line message: the file involved, what was expected,
            what was found, and the flag or argument that fixes it.

    Example::

        try:
            spectra.analyze("full-finetune/")  # ΔW = W_tuned − W_base
        except spectra.MissingBaseError:
            report = spectra.analyze("full-finetune/", base="base-model/")
    """


class BaseMismatchError(SpectraError):
    """The base model's tensor names or shapes do not match the checkpoint's.

    Args:
        message: the one-line message: the file involved, what was expected,
            what was found, and the flag or argument that fixes it.

    Example::

        try:
            spectra.analyze("full-finetune/", base="another-model/")
        except spectra.BaseMismatchError as error:
            print(error)  # names the module, both shapes and asks for the right base
    """


class SelectionError(SpectraError):
    """The modules or layers asked for are not in the checkpoint.

    Args:
        message: the one-line message: the file involved, what was expected,
            what was found, and the flag or argument that fixes it.

    Example::

        try:
            spectra.analyze("adapter/", modules="q", layers="0-99")
        except spectra.SelectionError as error:
            print(error)  # lists the roles and layers the checkpoint has
    """


class NonFiniteError(SpectraError):
    """A weight holds NaN or Inf, so no spectrum of it means anything.

    ``analyze(..., skip_nonfinite=True)`` leaves such modules out instead,
    and names them in the report's warnings.

    Args:
        message: the one-line message: the file involved, what was expected,
            what was found, and the flag or argument that fixes it.

    Example:
        >>> import torch, spectra
        >>> spectra.singular_values(torch.tensor([[float("nan")]]))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        spectra.errors.NonFiniteError: singular_values: the tensor holds NaN or Inf, ...
    """


class DeviceError(SpectraError):
    """The device asked for is not available.

    Args:
        message: the one-line message: the file involved, what was expected,
            what was found, and the flag or argument that fixes it.

    Example:
        >>> import torch, spectra
        >>> spectra.singular_values(torch.eye(2), device="tpu")
        Traceback (most recent call last):
        spectra.errors.DeviceError: unknown device 'tpu': expected auto, cpu or cuda[:N] (device=)
    """


class ReportExistsError(SpectraError):
    """A report would overwrite an existing one without ``force=True``.

    Also raised for any output (report, comparison, sweep, adapter folder,
    suggestion, figure) that would replace something spectra did not write,
    or lies inside what is read.

    Args:
        message: the one-line message: the file involved, what was expected,
            what was found, and the flag or argument that fixes it.

    Example::

        report = spectra.analyze("adapter/")
        report.save("adapter-report/")
        try:
            report.save("adapter-report/")  # already there
        except spectra.ReportExistsError:
            report.save("adapter-report/", force=True)
    """
