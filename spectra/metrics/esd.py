"""The power-law exponent α of a weight matrix's eigenvalue spectrum, fitted as WeightWatcher does.

WeightWatcher (Martin & Mahoney, "Implicit self-regularization in deep
neural networks", JMLR 2021; https://github.com/CalculatedContent/WeightWatcher)
reads a weight matrix W through the empirical spectral density (ESD) of
``X = WᵀW``: its eigenvalues ``λ_i = σ_i²``, the squared singular values of W,
taken as they are (WeightWatcher 0.7.7 divides neither W nor λ by N for a
linear layer: its ``normalize`` option is gone since 0.6.5 and a linear
layer's ``w_norm`` is 1). It fits the tail of the ESD with a power law
``p(λ) ∝ λ^(−α)`` for ``λ ≥ xmin``; its default ``alpha`` is, exactly
(``WW_powerlaw.WWFit``, the ``pl_package="ww"`` path that
``WeightWatcher.analyze()`` takes by default, with ``fix_fingers=False``,
``xmax=None``, ``xmin_max=None``):

1. keep the eigenvalues above ``EIGENVALUE_FLOOR`` (1e-5, its ``EVALS_THRESH``),
   sorted ascending: ``x_1 ≤ … ≤ x_N``;
2. every ``x_i`` but the largest is a candidate ``xmin``; with the tail
   ``x_i … x_N`` of ``n = N − i + 1`` values, the continuous maximum-likelihood
   exponent is ``α_i = 1 + n / Σ_{j≥i} ln(x_j / x_i)``, and its
   Kolmogorov–Smirnov distance is
   ``D_i = max_{j≥i} |1 − (x_j / x_i)^(1−α_i) − (j − i)/n|`` (the fitted CDF
   against the empirical one, ``0, 1/n, …, (n−1)/n``);
3. ``xmin`` is the candidate with the smallest ``D`` (the first on a tie);
   ``α`` and ``D`` are that candidate's. ``xmax`` is the largest eigenvalue:
   nothing is clipped.

With fewer than ``SMALL_SAMPLE`` (20) eigenvalues above the floor WeightWatcher
fits differently (``WWFit.fit_powerlaw_smallN``): tails of at least
``MIN_EIGENVALUES`` (8) values only, the bias-corrected
``α_i = 1 + (n − 1) / Σ ln(x_j / x_i)``, ``xmin`` again by the least ``D``
(the small-sample fit ranks its candidates by ``D_i − 0.868/√n``, but
``WWFit.__init__`` then takes the least ``D`` over them, and that is the α it
reports); spectra does the same. Below 8
eigenvalues (WeightWatcher's ``min_evals`` and the small-sample fit's
``k_min``), and for a spectrum whose eigenvalues are all equal, there is no
tail to fit: ``power_law_fit`` raises ``ValueError`` saying why, and callers
leave α missing rather than print a made-up number (WeightWatcher would print
α = 1 or −1 there).

The ``powerlaw`` package (Alstott et al. 2014) that WeightWatcher also ships
is used only with ``pl_package="powerlaw"`` or ``fix_fingers``: its
``Fit`` takes the distinct values as candidates and a two-sided KS distance,
so its α can differ slightly; spectra follows the default.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "EIGENVALUE_FLOOR",
    "MIN_EIGENVALUES",
    "SMALL_SAMPLE",
    "PowerLawFit",
    "esd_eigenvalues",
    "power_law_fit",
]

EIGENVALUE_FLOOR = 1e-5  # WeightWatcher's EVALS_THRESH: λ at or below it are left out of the fit
SMALL_SAMPLE = 20  # WeightWatcher's SMALL_N_CUTOFF: fewer eigenvalues take the small-sample fit
MIN_EIGENVALUES = 8  # the shortest tail either fit takes (min_evals, the small-sample k_min)
_BLOCK = 256  # candidates scored at once: a (256, N) float64 block


@dataclass(frozen=True)
class PowerLawFit:
    """A power-law fit of an eigenvalue spectrum's tail, as WeightWatcher 0.7.7 fits it.

    Args:
        alpha: the exponent α of ``p(λ) ∝ λ^(−α)`` for ``λ ≥ xmin``.
        xmin: where the tail starts, one of the eigenvalues.
        ks: the Kolmogorov–Smirnov distance of the fit over the tail
            (WeightWatcher's ``D``).
        tail: how many eigenvalues are ``≥ xmin`` (WeightWatcher's
            ``num_pl_spikes``).
        fitted: how many eigenvalues were above ``EIGENVALUE_FLOOR``.

    Example:
        >>> fit = PowerLawFit(alpha=3.2, xmin=0.5, ks=0.04, tail=40, fitted=384)
        >>> round(fit.alpha - 1, 1)
        2.2
    """

    alpha: float
    xmin: float
    ks: float
    tail: int
    fitted: int


def esd_eigenvalues(sigma: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """The eigenvalues of ``WᵀW`` from the singular values of W: ``λ = σ²``, unnormalised.

    Args:
        sigma: σ of W (a tensor, array or list; any order), finite and ≥ 0.

    Returns:
        λ, a float64 tensor on σ's device, in σ's order.

    Example:
        >>> esd_eigenvalues([3.0, 2.0, 0.5]).tolist()
        [9.0, 4.0, 0.25]
    """
    values = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
    if not bool(torch.isfinite(values).all()) or bool((values < 0).any()):
        raise ValueError("singular values must be finite and >= 0")
    return values * values


def power_law_fit(eigenvalues: torch.Tensor | Sequence[float]) -> PowerLawFit:
    """Fit a power law to the tail of an eigenvalue spectrum exactly as WeightWatcher 0.7.7.

    The module docstring gives the fit. The work runs where ``eigenvalues``
    are (a GPU tensor is fitted on the GPU) in float64, scoring ``_BLOCK``
    candidate ``xmin`` at a time.

    Args:
        eigenvalues: λ of ``WᵀW`` (``esd_eigenvalues(σ)``): a tensor, array
            or list, any order, finite.

    Returns:
        A ``PowerLawFit``: α, xmin, the KS distance, the tail's size and
        how many eigenvalues were fitted.

    Raises:
        ValueError: a NaN or Inf, fewer than ``MIN_EIGENVALUES`` eigenvalues
            above ``EIGENVALUE_FLOOR``, or no tail with two distinct values
            (all equal): the message says which.

    Example:
        >>> import numpy as np
        >>> lam = (1 - np.random.default_rng(0).random(2000)) ** (-1 / 1.5)  # α = 2.5, xmin = 1
        >>> round(power_law_fit(lam).alpha, 1)
        2.5
        >>> power_law_fit([1.0, 2.0, 3.0])
        Traceback (most recent call last):
        ...
        ValueError: 3 eigenvalues above 1e-05; a power-law fit needs at least 8
    """
    values = torch.as_tensor(eigenvalues, dtype=torch.float64).reshape(-1)
    if not bool(torch.isfinite(values).all()):
        raise ValueError("eigenvalues must be finite; got NaN or Inf")
    data = torch.sort(values[values > EIGENVALUE_FLOOR]).values  # (N,) ascending
    count = data.numel()
    if count < MIN_EIGENVALUES:
        raise ValueError(
            f"{count} eigenvalues above {EIGENVALUE_FLOOR:g}; a power-law fit needs at least "
            f"{MIN_EIGENVALUES}"
        )
    if count < SMALL_SAMPLE:
        return _small_sample_fit(data.cpu().numpy())
    return _standard_fit(data)


def _standard_fit(data: torch.Tensor) -> PowerLawFit:
    """WWFit.fit_power_law_standard: every candidate but the largest, xmin by the least D."""
    count = data.numel()
    logs = torch.log(data)  # (N,)
    alphas = torch.empty(count - 1, dtype=torch.float64, device=data.device)  # (N-1,)
    distances = torch.empty_like(alphas)  # (N-1,)
    for start in range(0, count - 1, _BLOCK):
        end = min(start + _BLOCK, count - 1)
        rows = torch.arange(start, end, device=data.device)  # (b,) candidate indices i
        size = (count - rows).to(torch.float64)  # (b,) n, the tail's length
        # Column c is x_j, j = start + c. Sorted ascending, ln(x_j / x_i) ≤ 0 before the tail
        # (j < i): clamped to 0 there, it adds nothing to the sum and its gap below is 0.
        log_ratio = (logs[None, start:] - logs[rows, None]).clamp_min_(0.0)  # (b, m)
        alpha = 1 + size / log_ratio.sum(dim=1)  # (b,) inf where the tail is all one value
        # (x_j / x_i)^(1 − α); 0·(−inf) for equal values when α = inf is 1^(−inf) = 1
        power = log_ratio.mul_((1 - alpha)[:, None]).nan_to_num_(nan=0.0).exp_()  # (b, m)
        position = torch.arange(count - start, device=data.device, dtype=torch.float64)  # (m,)
        rank = (position[None, :] - (rows - start)[:, None]).clamp_min_(0.0)  # (b, m) j − i
        empirical_cdf = rank.div_(size[:, None])  # (b, m) (j − i)/n, 0 before the tail
        gap = power.neg_().add_(1.0).sub_(empirical_cdf).abs_()  # (b, m) |fitted − empirical|
        alphas[start:end] = alpha
        distances[start:end] = torch.where(alpha > 1, gap.amax(dim=1), 1.0)
    best = int(torch.argmin(distances))  # the first of equal distances, as numpy's argmin
    alpha = float(alphas[best])
    if not math.isfinite(alpha):
        raise ValueError(
            f"the best tail ({count - best} eigenvalues from {float(data[best]):.6g}) holds one "
            "value: no power law to fit"
        )
    return PowerLawFit(alpha, float(data[best]), float(distances[best]), count - best, count)


def _small_sample_fit(data: np.ndarray) -> PowerLawFit:
    """WWFit's small-sample fit: tails of ≥ 8 values, bias-corrected α, xmin by the least D.

    ``fit_powerlaw_smallN`` picks its candidate by ``D − 0.868/√n``, but
    ``WWFit.__init__`` then takes the least ``D`` over the same candidates
    (the others count as D = 1), and that is the α WeightWatcher reports.
    """
    count = len(data)
    logs = np.log(data)  # (N,)
    alphas = np.zeros(count - 1)  # (N-1,) 0 where a candidate is skipped, as WeightWatcher
    distances = np.ones(count - 1)  # (N-1,) 1 where a candidate is skipped
    for i in range(count - MIN_EIGENVALUES + 1):  # tails of at least 8 values
        size = count - i
        spread = float(np.sum(logs[i:] - logs[i]))  # Σ ln(x_j / x_i)
        if spread <= 1e-12:  # the tail is one value (WeightWatcher skips it)
            continue
        alphas[i] = 1.0 + (size - 1.0) / spread
        fitted_cdf = 1.0 - (data[i:] / data[i]) ** (1.0 - alphas[i])  # (n,)
        distances[i] = float(np.max(np.abs(np.arange(size) / size - fitted_cdf)))
    best = int(np.argmin(distances))  # the first of equal distances
    if alphas[best] <= 1:
        raise ValueError(
            f"the {count} eigenvalues above {EIGENVALUE_FLOOR:g} are all equal: no power law to fit"
        )
    return PowerLawFit(
        float(alphas[best]), float(data[best]), float(distances[best]), count - best, count
    )
