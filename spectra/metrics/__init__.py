"""Balance, size and conditioning metrics of a singular-value spectrum.

Each metric is written once, in this package, as a pure function of a 1-D
tensor (or sequence) of singular values σ of one ΔW, plus where stated the
matrix ``shape`` or a rank tolerance ``tol``; definitions follow
``docs/METRICS.md``. The CLI, the report and the plots all call these.
Modules: ``balance`` (entropy, effective rank, stable rank, energy rank, top
share, Gini, …), ``size`` (norms, numerical rank, condition number, relative
norm), ``tolerance`` (rank tolerance, rounding floor, share above a floor);
here, the registry ``METRICS`` and ``compute``. Every public name is
importable from ``spectra.metrics``.

Conventions, shared by every function:

- σ need not be sorted; every function sorts it. It must be finite and ≥ 0
  (else ``ValueError``). Arithmetic is float64.
- ``n = min(d_out, d_in)`` is the capacity of the layer (``len(σ)`` when no
  shape is given). A factored ΔW passes only its r computed values: the other
  ``n − r`` are exact zeros that add nothing to any sum but count wherever a
  metric normalises by ``n`` (``normalized_entropy``); ``gini`` takes only the
  values above the rank tolerance.
- The zero spectrum (ΔW = 0, e.g. an untrained MultiLoRA) has no directions:
  **every metric returns 0.0** for it, including the rank-like ones and
  ``condition_number``. The report adds a warning for such modules.
- Balance metrics are invariant to scaling σ by any positive constant and to
  permuting σ; they are computed on σ/σ_1 so that 1e-300 and 1e300 behave.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ._spectrum import SpectrumLike, _sorted_spectrum
from .balance import (
    effective_rank,
    energy_entropy,
    energy_rank,
    entropy,
    gini,
    normalized_entropy,
    participation_ratio,
    stable_rank,
    top_share,
)
from .size import (
    condition_number,
    frobenius_norm,
    nuclear_norm,
    numerical_rank,
    relative_norm,
    spectral_norm,
)
from .tolerance import rank_tolerance, rounding_floor, share_above

__all__ = [
    "ENERGY_RANK_LEVELS",
    "METRICS",
    "TOP_SHARE_COUNTS",
    "Metric",
    "compute",
    "condition_number",
    "effective_rank",
    "energy_entropy",
    "energy_rank",
    "entropy",
    "frobenius_norm",
    "gini",
    "normalized_entropy",
    "nuclear_norm",
    "numerical_rank",
    "participation_ratio",
    "rank_tolerance",
    "relative_norm",
    "rounding_floor",
    "share_above",
    "spectral_norm",
    "stable_rank",
    "top_share",
]

ENERGY_RANK_LEVELS = (0.5, 0.9, 0.99)
TOP_SHARE_COUNTS = (1, 8)


# ---------------------------------------------------------------- registry


@dataclass(frozen=True)
class Metric:
    """A registered metric: its name, group, and the function that computes it.

    Calling it passes only the context the function uses, so every metric can
    be called as ``metric(sigma, shape=..., tol=..., base_norm=...)``.
    """

    name: str
    group: str  # "balance" or "size"
    function: Callable[..., float | int | None]
    uses: tuple[str, ...] = ()

    def __call__(self, sigma: SpectrumLike, **context: object) -> float | int | None:
        return self.function(sigma, **{key: context.get(key) for key in self.uses})


def _registry() -> dict[str, Metric]:
    metrics = [
        Metric("entropy", "balance", entropy),
        Metric("normalized_entropy", "balance", normalized_entropy, ("shape",)),
        Metric("effective_rank", "balance", effective_rank),
        Metric("energy_entropy", "balance", energy_entropy, ("tol",)),
        Metric("stable_rank", "balance", stable_rank),
        Metric("participation_ratio", "balance", participation_ratio),
    ]
    for q in ENERGY_RANK_LEVELS:
        metrics.append(Metric(f"energy_rank@{q}", "balance", lambda s, q=q: energy_rank(s, q)))
    for m in TOP_SHARE_COUNTS:
        metrics.append(Metric(f"top_share@{m}", "balance", lambda s, m=m: top_share(s, m)))
    metrics += [
        Metric("gini", "balance", gini, ("shape", "tol")),
        Metric("spectral_norm", "size", spectral_norm),
        Metric("frobenius_norm", "size", frobenius_norm),
        Metric("nuclear_norm", "size", nuclear_norm),
        Metric("numerical_rank", "size", numerical_rank, ("shape", "tol")),
        Metric("condition_number", "size", condition_number, ("shape", "tol")),
        Metric("relative_norm", "size", relative_norm, ("base_norm",)),
    ]
    return {metric.name: metric for metric in metrics}


METRICS: dict[str, Metric] = _registry()


def compute(
    sigma: SpectrumLike,
    shape: Sequence[int] | None = None,
    *,
    tol: float | None = None,
    base_norm: float | None = None,
    names: Sequence[str] | None = None,
) -> dict[str, float | int | None]:
    """Every registered metric (or those in ``names``) of one spectrum, by name.

    Args:
        sigma: σ of one ΔW: a tensor, array or sequence, any order, finite, ≥ 0.
        shape: ``(d_out, d_in)`` of ΔW; ``None``: n = len(σ).
        tol: the numerical-rank tolerance; ``None``: ``rank_tolerance(σ, shape)``.
        base_norm: ‖W_0‖_F for ``relative_norm`` (``None`` → ``None``).
        names: the metrics to compute, as in ``METRICS``; ``None``: all.

    Returns:
        A dict name → value (float, int, or ``None`` for ``relative_norm``
        without a base), in the order of ``METRICS``.

    Example:
        >>> compute([1.0, 1.0, 1.0, 1.0], names=["effective_rank", "stable_rank"])
        {'effective_rank': 4.0, 'stable_rank': 4.0}
        >>> compute([2.0, 0.0, 0.0, 0.0], names=["effective_rank", "numerical_rank"])
        {'effective_rank': 1.0, 'numerical_rank': 1}
    """
    values = _sorted_spectrum(sigma)
    if tol is None:
        tol = rank_tolerance(values, shape)
    selected = METRICS if names is None else {name: METRICS[name] for name in names}
    return {
        name: metric(values, shape=shape, tol=tol, base_norm=base_norm)
        for name, metric in selected.items()
    }
