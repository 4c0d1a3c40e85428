"""spectra: the spectral analysis of fine-tuning updates.

Rebuild the weight update ΔW of each layer from a full fine-tune, a PEFT
adapter (LoRA family) or a MultiLoRA checkpoint, take its singular values
(on the GPU when there is one), and measure how balanced it is::

    import spectra
    report = spectra.analyze("adapter/")            # k and v projections
    df = report.to_pandas()                         # one row per layer × module
    report.save("adapter-report/")                  # metrics.csv, report.json, spectra
    spectra.metrics.effective_rank(report.spectrum(0, "v"))
    runs = spectra.sweep("output/")                 # every checkpoint-<step>/, cached
"""

__version__ = "0.2.0.dev0"

from . import metrics
from .analysis import Comparison, Sweep, analyze, compare, find_checkpoints, run_sweep, sweep
from .analysis.sources import load
from .delta import Dense, Factored, LayerDelta
from .errors import (
    BaseMismatchError,
    DeviceError,
    FormatError,
    MissingBaseError,
    NonFiniteError,
    ReportExistsError,
    SelectionError,
    SpectraError,
)
from .loaders import Checkpoint, CheckpointInfo, ModuleInfo
from .metrics import METRICS
from .report import Report
from .svd import singular_values

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
    "Sweep",
    "__version__",
    "analyze",
    "compare",
    "find_checkpoints",
    "load",
    "metrics",
    "run_sweep",
    "singular_values",
    "sweep",
]
