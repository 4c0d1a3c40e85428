"""Size and conditioning: the norms of ΔW, its numerical rank, its condition number.

And ``relative_norm``, the size of ΔW against the base weight it changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._spectrum import SpectrumLike, _sorted_spectrum, _unit_spectrum
from .tolerance import rank_tolerance


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
