"""The rank tolerance, the rounding floor, and the share of σ above a floor.

``rank_tolerance`` is the one definition of the numerical-rank tolerance
(METRICS.md): the report, the subspace metrics and the figures all take
theirs from here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ._spectrum import SpectrumLike, _sorted_spectrum, _unit_spectrum

_EPS64 = torch.finfo(torch.float64).eps


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
