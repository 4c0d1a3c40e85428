"""The one exception family spectra raises for bad input.

Every message says which file was involved, what was expected, what was
found, and which flag or argument fixes it. The CLI prints the message as one
line and exits with status 1; library users catch ``SpectraError``.
"""

__all__ = [
    "BaseMismatchError",
    "DeviceError",
    "FormatError",
    "MissingBaseError",
    "NonFiniteError",
    "ReportExistsError",
    "SelectionError",
    "SpectraError",
]


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
