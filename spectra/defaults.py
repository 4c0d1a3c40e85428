"""The defaults and names shared by the library and the command line.

Kept apart from the modules that use them, and free of torch, so that
``spectra --help`` shows them without loading the library. Each is used by
one module of the library (named beside it) and re-exported there.
"""

from __future__ import annotations

__all__ = [
    "INTRUDER_EPS",
    "INTRUDER_TOP",
    "NORMALIZATIONS",
    "SUBSPACE_RANK",
    "SUMMARY_METRICS",
    "SWEEP_METRICS",
]

# analysis.comparison: the metrics of compare's summary table, in order.
SUMMARY_METRICS = (
    "normalized_entropy",
    "effective_rank",
    "stable_rank",
    "energy_rank@0.9",
    "top_share@1",
)
# analysis.sweeps: the metrics a sweep tracks by default.
SWEEP_METRICS = ("normalized_entropy", "effective_rank", "stable_rank", "frobenius_norm")
# plot: how spectra are normalised for drawing (name → axis label).
NORMALIZATIONS = {
    "sigma1": "σ / σ₁ (per matrix)",
    "frobenius": "σ / ‖ΔW‖_F (per matrix)",
    "none": "σ",
}
# subspace: top-k vectors compared between methods, and r of the amplification.
SUBSPACE_RANK = 8
INTRUDER_TOP = 10  # intruder dimensions: the fine-tuned top vectors checked …
INTRUDER_EPS = 0.5  # … and the similarity under which one counts as an intruder
