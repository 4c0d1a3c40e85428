"""Balance, size and conditioning metrics of a singular-value spectrum.

Each metric is written once, here, as a pure function of a 1-D tensor (or
sequence) of singular values σ of one ΔW, plus where stated the matrix
``shape`` or a rank tolerance ``tol``; definitions follow
``shared/METRICS.md``. The CLI, the report and the plots all call these.

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

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

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
_EPS64 = torch.finfo(torch.float64).eps
# Cumulative energies are compared with q·total up to this relative slack, so
# that a flat spectrum of 10 values reaches 90 % at 9, not at 10 by rounding.
_CUMULATIVE_SLACK = 1e-12

SpectrumLike = torch.Tensor | Sequence[float]


def _sorted_spectrum(sigma: SpectrumLike) -> torch.Tensor:
    """σ as a descending float64 CPU tensor, validated."""
    values = torch.as_tensor(sigma, dtype=torch.float64).detach().cpu().reshape(-1)
    if not torch.isfinite(values).all():
        raise ValueError("singular values must be finite; got NaN or Inf")
    if (values < 0).any():
        raise ValueError(f"singular values must be >= 0; got minimum {values.min().item()!r}")
    return torch.sort(values, descending=True).values


def _unit_spectrum(sigma: SpectrumLike) -> torch.Tensor | None:
    """σ/σ_1, descending; ``None`` for the zero (or empty) spectrum."""
    values = _sorted_spectrum(sigma)
    if values.numel() == 0 or values[0] == 0:
        return None
    return values / values[0]


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


# ---------------------------------------------------------------- balance


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


# ---------------------------------------------------- size and conditioning


def spectral_norm(sigma: SpectrumLike) -> float:
    """‖ΔW‖_2 = σ_1, the largest singular value (0 for the empty spectrum).

    Args:
        sigma: σ of one ΔW: a tensor, array or sequence, any order, finite, ≥ 0.

    Returns:
        σ_1, a float.

    Example:
        >>> spectral_norm([1.0, 1.0, 1.0, 1.0]), spectral_norm([0.0, 2.0, 0.0, 0.0])  # any order
        (1.0, 2.0)
    """
    values = _sorted_spectrum(sigma)
    return float(values[0]) if values.numel() else 0.0


def frobenius_norm(sigma: SpectrumLike) -> float:
    """‖ΔW‖_F = √Σσ², computed as σ_1·‖σ/σ_1‖ to avoid overflow.

    Args:
        sigma: σ of one ΔW: a tensor, array or sequence, any order, finite, ≥ 0.

    Returns:
        √Σσ², a float.

    Example:
        >>> frobenius_norm([1.0, 1.0, 1.0, 1.0]), frobenius_norm([2.0, 0.0, 0.0, 0.0])  # √k; σ_1
        (2.0, 2.0)
    """
    values = _sorted_spectrum(sigma)
    unit = _unit_spectrum(values)
    return 0.0 if unit is None else float(values[0]) * float(torch.linalg.vector_norm(unit))


def nuclear_norm(sigma: SpectrumLike) -> float:
    """‖ΔW‖_* = Σσ, the nuclear (trace) norm.

    Args:
        sigma: σ of one ΔW: a tensor, array or sequence, any order, finite, ≥ 0.

    Returns:
        Σσ, a float.

    Example:
        >>> nuclear_norm([1.0, 1.0, 1.0, 1.0]), nuclear_norm([2.0, 0.0, 0.0, 0.0])  # k; σ_1
        (4.0, 2.0)
    """
    return float(_sorted_spectrum(sigma).sum())


def rounding_floor(shape: Sequence[int], source_dtype: torch.dtype, weight_rms: float) -> float:
    """Spectral norm of the rounding noise a checkpoint's dtype leaves in a dense ΔW.

    ``ε · rms(W) · (√d_out + √d_in)`` with ``ε = torch.finfo(source_dtype).eps``
    (bf16 2^-7, fp16 2^-10, fp32 2^-23): the largest singular value of a
    ``(d_out, d_in)`` matrix of independent errors of size ε·rms(W) (Gordon's
    bound for Gaussian matrices). Singular values of ΔW at or below it cannot
    be told apart from rounding.

    Args:
        shape: ``(d_out, d_in)`` of ΔW.
        source_dtype: the coarser of the two checkpoints' dtypes.
        weight_rms: the root-mean-square entry of W.

    Returns:
        The floor, in the units of σ, a float.

    Example:
        >>> import torch
        >>> rounding_floor((4096, 4096), torch.bfloat16, weight_rms=0.02)  # 2^-7 · 0.02 · 128
        0.02
    """
    eps = torch.finfo(source_dtype).eps
    return eps * weight_rms * (math.sqrt(shape[0]) + math.sqrt(shape[1]))


def rank_tolerance(
    sigma: SpectrumLike,
    shape: Sequence[int] | None = None,
    *,
    relative_floor: float | None = None,
    source_dtype: torch.dtype | None = None,
    weight_rms: float | None = None,
    rounding: float | None = None,
) -> float:
    """The numerical-rank tolerance of METRICS.md: below it a singular value is not rank.

    The largest of:

    - the computation floor ``σ_1 · relative_floor``; by default numpy's
      ``matrix_rank`` rule ``σ_1 · max(d_out, d_in) · ε₆₄`` (σ are computed in
      float64; ``spectra.svd.accuracy_floor`` gives the floor of each path);
    - the rounding floor of the checkpoint, ``rounding`` if given, else
      ``rounding_floor(shape, source_dtype, weight_rms)`` when both are known.
      This keeps a bf16 full fine-tune from counting rounding noise as rank.

    A factored ΔW (LoRA) has no rounding floor: s·B@A is exactly low rank
    whatever the dtype of B and A, so pass neither for it. The report, the
    subspace metrics and the figures all take their tolerance from here.

    Args:
        sigma: σ of one ΔW: a tensor, array or sequence, any order, finite, ≥ 0.
        shape: ``(d_out, d_in)`` of ΔW; ``None``: a square matrix of len(σ).
        relative_floor: the computation floor relative to σ_1; ``None``:
            ``max(d_out, d_in) · ε₆₄``.
        source_dtype: the checkpoint's dtype, with ``weight_rms``, for the
            rounding floor of a dense ΔW.
        weight_rms: the root-mean-square entry of W.
        rounding: the rounding floor itself, in place of the two above.

    Returns:
        The tolerance, in the units of σ, a float ≥ 0.

    Example:
        >>> rank_tolerance([1.0, 0.5], shape=(4, 4), relative_floor=1e-6)
        1e-06
        >>> rank_tolerance([1.0, 0.5], shape=(4, 4), rounding=0.25)  # the rounding floor wins
        0.25
    """
    values = _sorted_spectrum(sigma)
    sigma_1 = float(values[0]) if values.numel() else 0.0
    dims = tuple(shape) if shape is not None else (values.numel(), values.numel())
    floor = max(dims) * _EPS64 if relative_floor is None else relative_floor
    if rounding is None and source_dtype is not None and weight_rms is not None:
        rounding = rounding_floor(dims, source_dtype, weight_rms)
    return max(sigma_1 * floor, rounding or 0.0)


def share_above(sigma: SpectrumLike, tol: float) -> float:
    """The share of Σσ (the nuclear norm) in singular values above ``tol``, in [0, 1].

    0 for ΔW = 0. Near 1 when the spectrum stands clear of its floor. A long
    tail of values at a rounding floor carries little energy (σ²) but much of
    Σσ, which is what ``entropy`` and ``effective_rank`` weigh: a rank-2 bf16
    update over 380 noise values can show an effective rank above 100 with
    95 % of its energy above the floor and 12 % of Σσ. So this share, the
    stricter of the two, says whether balance metrics describe the update.

    Args:
        sigma: σ of one ΔW: a tensor, array or sequence, any order, finite, ≥ 0.
        tol: the floor; values at or below it do not count.

    Returns:
        The share, a float in [0, 1].

    Example:
        >>> share_above([1.0, 1.0, 1.0, 1.0], tol=0.5), share_above([2.0, 1.0, 1.0], tol=1.0)
        (1.0, 0.5)
    """
    values = _sorted_spectrum(sigma)
    unit = _unit_spectrum(values)
    if unit is None:
        return 0.0
    return min(1.0, float(unit[values > tol].sum() / unit.sum()))


def numerical_rank(
    sigma: SpectrumLike, shape: Sequence[int] | None = None, tol: float | None = None
) -> int:
    """#{σ_i > tol}, the number of singular values above the rank tolerance.

    Args:
        sigma: σ of one ΔW: a tensor, array or sequence, any order, finite, ≥ 0.
        shape: ``(d_out, d_in)`` of ΔW, for the default tolerance.
        tol: the tolerance; ``None``: ``rank_tolerance(σ, shape)`` (numpy's rule).

    Returns:
        The numerical rank, an int.

    Example:
        >>> numerical_rank([1.0, 1.0, 1.0, 1.0]), numerical_rank([2.0, 1e-20, 0.0, 0.0])
        (4, 1)
    """
    values = _sorted_spectrum(sigma)
    if tol is None:
        tol = rank_tolerance(values, shape)
    return int((values > tol).sum())


def condition_number(
    sigma: SpectrumLike, shape: Sequence[int] | None = None, tol: float | None = None
) -> float:
    """σ_1 / σ_m with m the numerical rank: the conditioning of ΔW on its range.

    ≥ 1 for ΔW ≠ 0; 0 for ΔW = 0 (no directions, nothing to condition).

    Args:
        sigma: σ of one ΔW: a tensor, array or sequence, any order, finite, ≥ 0.
        shape: ``(d_out, d_in)`` of ΔW, for the default tolerance.
        tol: the numerical-rank tolerance; ``None``: ``rank_tolerance(σ, shape)``.

    Returns:
        σ_1 / σ_m, a float.

    Example:
        >>> condition_number([1.0, 1.0, 1.0, 1.0]), condition_number([2.0, 0.0, 0.0, 0.0])
        (1.0, 1.0)
        >>> condition_number([4.0, 2.0, 0.0])  # the zero is not in the range
        2.0
    """
    values = _sorted_spectrum(sigma)
    m = numerical_rank(values, shape, tol)
    if m == 0:
        return 0.0
    return float(values[0] / values[m - 1])


def relative_norm(sigma: SpectrumLike, base_norm: float | None) -> float | None:
    """‖ΔW‖_F / ‖W_0‖_F: the size of the update against the weight it changes.

    Args:
        sigma: σ of one ΔW: a tensor, array or sequence, any order, finite, ≥ 0.
        base_norm: ‖W_0‖_F of the base weight, or ``None`` when not known.

    Returns:
        The ratio, a float; ``None`` when the base is not known (or is 0).

    Example:
        >>> relative_norm([3.0, 4.0], base_norm=10.0), relative_norm([3.0, 4.0], None)  # ‖ΔW‖_F = 5
        (0.5, None)
    """
    if base_norm is None or base_norm == 0:
        return None
    return frobenius_norm(sigma) / base_norm


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
