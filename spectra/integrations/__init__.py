"""Spectra while a model trains: a Hugging Face ``Trainer`` callback and a monitor for any loop.

- ``watch(trainer, every=50, modules="k,v", out=DIR)`` / ``SpectraCallback``:
  logs the spectra through the Trainer's own loggers (``report_to``).
- ``Monitor(model, ...)``: the same for a custom loop, ``monitor.step(step)``
  returning the scalars to log; ``spectra_of_model(model, ...)`` is one
  ``Report``, now; ``start_weights`` keeps what a dense ΔW is measured from.

Each name is imported on first use (PEP 562): ``import spectra.integrations``
loads neither torch nor transformers, and only ``SpectraCallback`` and
``watch`` need transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_LAZY = {
    "SpectraCallback": ".trainer",
    "watch": ".trainer",
    "LiveModel": ".live",
    "Monitor": ".monitor",
    "scalars": ".loggers",
    "spectra_of_model": ".monitor",
    "start_weights": ".monitor",
}

if TYPE_CHECKING:
    from .live import LiveModel
    from .loggers import scalars
    from .monitor import Monitor, spectra_of_model, start_weights
    from .trainer import SpectraCallback, watch


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'spectra.integrations' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "LiveModel",
    "Monitor",
    "SpectraCallback",
    "scalars",
    "spectra_of_model",
    "start_weights",
    "watch",
]
