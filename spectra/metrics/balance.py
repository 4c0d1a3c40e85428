"""Balance metrics: how evenly a ΔW spreads over its directions.

Entropy, effective rank, energy entropy, stable rank, participation ratio,
energy rank, top share and Gini. Each is invariant to scaling σ by a
positive constant and to permuting σ, and is computed on σ/σ_1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ._spectrum import SpectrumLike, _sorted_spectrum, _unit_spectrum
from .size import numerical_rank

# Cumulative energies are compared with q·total up to this relative slack, so
# that a flat spectrum of 10 values reaches 90 % at 9, not at 10 by rounding.
_CUMULATIVE_SLACK = 1e-12


def _capacity(sigma: torch.Tensor, shape: Sequence[int] | None) -> int:
    """n = min(d_out, d_in), or len(σ) when the shape is not known."""
    if shape is None:
        return int(sigma.numel())
    n = int(min(shape))
    if sigma.numel() > n:
        raise ValueError(
            f"{sigma.numel()} singular values cannot come from a {tuple(shape)} matrix"
        )
    return n


def _entropy_of(weights: torch.Tensor) -> float:
    """−Σ p ln p with p = weights / Σ weights (zeros contribute 0)."""
    p = weights / weights.sum()
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def entropy(sigma: SpectrumLike) -> float:
    """Spectral entropy H = −Σ p_i ln p_i with p_i = σ_i / Σσ, in nats.

    Flat spectrum of k non-zero values: ln k; one spike: 0; zero spectrum: 0.
    Reference: O. Roy and M. Vetterli, "The effective rank: a measure of
    effective dimensionality", EUSIPCO 2007.

    Args:
        sigma: σ of one ΔW: a tensor, array or sequence, any order, finite, ≥ 0.

    Returns:
        H in nats, ≥ 0 (0 for ΔW = 0).

    Example:
        >>> import math  # flat: ln k; one spike: 0
        >>> entropy([1.0, 1.0, 1.0, 1.0]) == math.log(4), entropy([2.0, 0.0, 0.0, 0.0]) == 0
        (True, True)
    """
    unit = _unit_spectrum(sigma)
    return 0.0 if unit is None else _entropy_of(unit)


def normalized_entropy(sigma: SpectrumLike, shape: Sequence[int] | None = None) -> float:
    """The spectral ``entropy`` over ln n, in [0, 1], n = min(shape) (or len(σ)).

    Flat spectrum of k values: ln k / ln n; one spike: 0. 0 when n = 1 (one
    direction is both a spike and flat; 0 keeps the bound) and for ΔW = 0.

    Args:
        sigma: σ of one ΔW: a tensor, array or sequence, any order, finite, ≥ 0.
        shape: ``(d_out, d_in)`` of ΔW, so that n = min(shape) counts the
            zeros a factored ΔW does not pass; ``None``: n = len(σ).

    Returns:
        H / ln n, a float in [0, 1].

    Example:
        >>> round(normalized_entropy([1.0, 1.0, 1.0, 1.0], shape=(8, 16)), 6)  # ln 4 / ln 8
        0.666667
        >>> normalized_entropy([1.0, 1.0, 1.0, 1.0]), normalized_entropy([2.0, 0.0, 0.0, 0.0]) == 0
        (1.0, True)
    """
    values = _sorted_spectrum(sigma)
    n = _capacity(values, shape)
    if n <= 1:
        return 0.0
    return min(1.0, entropy(values) / math.log(n))


def effective_rank(sigma: SpectrumLike) -> float:
    """Effective rank exp(H), H the spectral ``entropy`` (Roy & Vetterli 2007).

    Flat spectrum of k values: k; one spike: 1; 1 ≤ value ≤ n for ΔW ≠ 0.
    The zero spectrum has no directions: 0.

    Args:
        sigma: σ of one ΔW: a tensor, array or sequence, any order, finite, ≥ 0.

    Returns:
        exp(H), a float in [1, n] (0 for ΔW = 0).

    Example:
        >>> effective_rank([1.0, 1.0, 1.0, 1.0]), effective_rank([2.0, 0.0, 0.0, 0.0])
        (4.0, 1.0)
    """
    unit = _unit_spectrum(sigma)
    return 0.0 if unit is None else math.exp(_entropy_of(unit))


def energy_entropy(sigma: SpectrumLike, tol: float | None = None) -> float:
    """Entropy of the energies p_i = σ_i²/Σσ², divided by ln(rank), in [0, 1].

    ``rank`` is the numerical rank (``numerical_rank(σ, tol)``), and p runs
    over those ``rank`` values: the same quantity as WeightWatcher's
    ``entropy`` (``matrix_entropy`` in its ``RMT_Util``), except that values
    below the tolerance are left out of p instead of adding noise. Flat
    spectrum of k values: 1; one spike, rank ≤ 1, or ΔW = 0: 0.

    Args:
        sigma: σ of one ΔW: a tensor, array or sequence, any order, finite, ≥ 0.
        tol: the numerical-rank tolerance; ``None``: ``rank_tolerance(σ)``.

    Returns:
        The normalised energy entropy, a float in [0, 1].

    Example:
        >>> energy_entropy([1.0, 1.0, 1.0, 1.0]), energy_entropy([2.0, 0.0, 0.0, 0.0])
        (1.0, 0.0)
    """
    values = _sorted_spectrum(sigma)
    rank = numerical_rank(values, tol=tol)
    if rank <= 1:
        return 0.0
    unit = values[:rank] / values[0]
    return min(1.0, _entropy_of(unit.square()) / math.log(rank))


def stable_rank(sigma: SpectrumLike) -> float:
    """Stable rank Σσ²/σ_1² = ‖ΔW‖_F²/‖ΔW‖_2², in [1, n] (0 for ΔW = 0).

    Flat spectrum of k values: k; one spike: 1. Reference: M. Rudelson and
    R. Vershynin, "Sampling from large matrices", J. ACM 2007; WeightWatcher's
    ``stable_rank`` computes the same from the eigenvalues σ².

    Args:
        sigma: σ of one ΔW: a tensor, array or sequence, any order, finite, ≥ 0.

    Returns:
        Σσ²/σ_1², a float.

    Example:
        >>> stable_rank([1.0, 1.0, 1.0, 1.0]), stable_rank([2.0, 0.0, 0.0, 0.0])
        (4.0, 1.0)
    """
    unit = _unit_spectrum(sigma)
    return 0.0 if unit is None else float(unit.square().sum())


def participation_ratio(sigma: SpectrumLike) -> float:
    """Participation ratio (Σσ²)² / Σσ⁴, in [1, n] (0 for ΔW = 0).

    Flat spectrum of k values: k; one spike: 1.

    Args:
        sigma: σ of one ΔW: a tensor, array or sequence, any order, finite, ≥ 0.

    Returns:
        (Σσ²)² / Σσ⁴, a float.

    Example:
        >>> participation_ratio([1.0, 1.0, 1.0, 1.0]), participation_ratio([2.0, 0.0, 0.0, 0.0])
        (4.0, 1.0)
    """
    unit = _unit_spectrum(sigma)
    if unit is None:
        return 0.0
    energies = unit.square()
    return float(energies.sum() ** 2 / energies.square().sum())


def energy_rank(sigma: SpectrumLike, q: float = 0.9) -> int:
    """Smallest m with Σ_{i≤m} σ_i² ≥ q·Σσ²: the variance-explained rank.

    Flat spectrum of k values: ⌈q·k⌉; one spike: 1; ΔW = 0: 0. Comparisons
    allow a relative slack of 1e-12 for rounding. Reference: D. Biderman et
    al., "LoRA learns less and forgets less", TMLR 2024 (rank needed to
    explain 90 % of the spectral energy).

    Args:
        sigma: σ of one ΔW: a tensor, array or sequence, any order, finite, ≥ 0.
        q: the share of Σσ² to hold, in (0, 1] (else ``ValueError``).

    Returns:
        m, an int (0 for ΔW = 0).

    Example:
        >>> flat, spike = [1.0, 1.0, 1.0, 1.0], [2.0, 0.0, 0.0, 0.0]  # flat: ⌈q·k⌉
        >>> energy_rank(flat, q=0.5), energy_rank(flat, q=0.9), energy_rank(spike, q=0.99)
        (2, 4, 1)
    """
    if not 0.0 < q <= 1.0:
        raise ValueError(f"q must be in (0, 1]; got {q!r}")
    unit = _unit_spectrum(sigma)
    if unit is None:
        return 0
    cumulative = torch.cumsum(unit.square(), 0)
    target = q * float(cumulative[-1]) * (1.0 - _CUMULATIVE_SLACK)
    return int(torch.searchsorted(cumulative, torch.tensor([target], dtype=torch.float64))) + 1


def top_share(sigma: SpectrumLike, m: int = 1) -> float:
    """Share of the energy in the top m directions, Σ_{i≤m} σ_i² / Σσ², in [0, 1].

    Flat spectrum of k ≥ m values: m/k; one spike: 1; ΔW = 0: 0.

    Args:
        sigma: σ of one ΔW: a tensor, array or sequence, any order, finite, ≥ 0.
        m: how many of the largest directions, ≥ 1 (else ``ValueError``).

    Returns:
        The share, a float in [0, 1].

    Example:
        >>> top_share([1.0, 1.0, 1.0, 1.0], m=1), top_share([2.0, 0.0, 0.0, 0.0], m=1)
        (0.25, 1.0)
    """
    if m < 1:
        raise ValueError(f"m must be >= 1; got {m!r}")
    unit = _unit_spectrum(sigma)
    if unit is None:
        return 0.0
    energies = unit.square()
    return min(1.0, float(energies[:m].sum() / energies.sum()))


def gini(
    sigma: SpectrumLike, shape: Sequence[int] | None = None, tol: float | None = None
) -> float:
    """Gini coefficient of the m = ``numerical_rank(σ, shape, tol)`` largest σ, in [0, 1).

    Taken over the directions the update uses: exact zeros and values at or
    below the rank tolerance are left out, so a flat spectrum of k values
    gives 0 whatever n, and a rank-8 LoRA is told apart from another by how
    its 8 values spread, not by the n − 8 zeros they share. 0 when m ≤ 1
    (one direction is both flat and a spike) and for ΔW = 0. With x the m
    values ascending, G = Σ_i (2i − m − 1)·x_i / (m·Σx) (Gini's
    mean-difference form); m values with one of them large give 1 − 1/m.

    Args:
        sigma: σ of one ΔW: a tensor, array or sequence, any order, finite, ≥ 0.
        shape: ``(d_out, d_in)`` of ΔW, for the default tolerance.
        tol: the numerical-rank tolerance; ``None``: ``rank_tolerance(σ, shape)``.

    Returns:
        G, a float in [0, 1).

    Example:
        >>> gini([1.0, 1.0, 1.0, 0.0]), gini([2.0, 0.0, 0.0, 0.0])  # flat over 3; one spike
        (0.0, 0.0)
        >>> round(gini([3.0, 1.0]), 6)  # (3 − 1) / (2·4)
        0.25
    """
    values = _sorted_spectrum(sigma)
    m = numerical_rank(values, shape, tol)
    if m <= 1:
        return 0.0
    ascending = (values[:m] / values[0]).flip(0)  # (m,) the used directions, ascending
    index = torch.arange(1, m + 1, dtype=torch.float64)
    value = float(((2 * index - m - 1) * ascending).sum() / (m * ascending.sum()))
    return min(max(value, 0.0), 1.0)
