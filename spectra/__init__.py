"""spectra: the spectral analysis of fine-tuning updates.

Rebuild the weight update ΔW of each layer from a full fine-tune, a
LoRA-family adapter or a MultiLoRA checkpoint (``spectra.formats()`` lists
every format read), take its singular values (on the GPU when there is one),
and measure how balanced it is::

    import spectra
    report = spectra.analyze("adapter/")            # k and v projections
    df = report.to_pandas()                         # one row per layer × module
    report.save("adapter-report/")                  # metrics.csv, report.json, spectra
    spectra.metrics.effective_rank(report.spectrum(0, "v"))
    runs = spectra.sweep("output/")                 # every checkpoint-<step>/, cached
"""

__version__ = "0.2.0.dev0"

import importlib
from typing import TYPE_CHECKING

from .errors import (
    BaseMismatchError,
    DeviceError,
    FormatError,
    MissingBaseError,
    NonFiniteError,
    ReportExistsError,
    SelectionError,
    SpectraError,
    SpectraWarning,
)

# The public names and the module each comes from. They are imported on first use (PEP 562),
# so that ``import spectra`` and ``spectra --help`` do not load torch and matplotlib.
_LAZY = {
    "metrics": ".metrics",
    "METRICS": ".metrics",
    "Comparison": ".analysis",
    "Sweep": ".analysis",
    "analyze": ".analysis",
    "compare": ".analysis",
    "find_checkpoints": ".analysis",
    "run_sweep": ".analysis",
    "sweep": ".analysis",
    "load": ".analysis.sources",
    "plan": ".analysis.plan",
    "Dense": ".delta",
    "Factored": ".delta",
    "LayerDelta": ".delta",
    "Checkpoint": ".loaders",
    "CheckpointInfo": ".loaders",
    "ModuleInfo": ".loaders",
    "formats": ".loaders",
    "Report": ".report",
    "singular_values": ".svd",
    "suggest": ".actions",
    "resize": ".actions",
    "extract": ".actions",
}

if TYPE_CHECKING:  # what type checkers and editors see
    from . import metrics
    from .actions import extract, resize, suggest
    from .analysis import Comparison, Sweep, analyze, compare, find_checkpoints, run_sweep, sweep
    from .analysis.plan import plan
    from .analysis.sources import load
    from .delta import Dense, Factored, LayerDelta
    from .loaders import Checkpoint, CheckpointInfo, ModuleInfo, formats
    from .metrics import METRICS
    from .report import Report
    from .svd import singular_values


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'spectra' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name], __name__)
    value = module if name == "metrics" else getattr(module, name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "METRICS",
    "BaseMismatchError",
    "Checkpoint",
    "CheckpointInfo",
    "Comparison",
    "Dense",
    "DeviceError",
    "Factored",
    "FormatError",
    "LayerDelta",
    "MissingBaseError",
    "ModuleInfo",
    "NonFiniteError",
    "Report",
    "ReportExistsError",
    "SelectionError",
    "SpectraError",
    "SpectraWarning",
    "Sweep",
    "__version__",
    "analyze",
    "compare",
    "extract",
    "find_checkpoints",
    "formats",
    "load",
    "metrics",
    "plan",
    "resize",
    "run_sweep",
    "singular_values",
    "suggest",
    "sweep",
]
