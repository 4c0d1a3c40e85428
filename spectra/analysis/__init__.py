"""From checkpoints to reports: the analyses spectra runs.

- ``analyze``: one checkpoint through the streaming pipeline into a ``Report``;
- ``compare``: several sources side by side, a summary, the figures, and
  with ``subspace=True`` the subspace metrics (``subspace``);
- ``sweep``: every checkpoint of a training run, cached by content (``cache``).

The maths they call lives below (``svd``, ``metrics``, ``subspace``), the
results they make in ``spectra.report``, the figures in ``spectra.plot``.
"""

from __future__ import annotations

from .comparison import Comparison, compare
from .stream import analyze
from .subspaces import SubspaceResult, measure_subspaces
from .sweeps import Sweep, find_checkpoints, run_sweep, sweep

__all__ = [
    "Comparison",
    "SubspaceResult",
    "Sweep",
    "analyze",
    "compare",
    "find_checkpoints",
    "measure_subspaces",
    "run_sweep",
    "sweep",
]
