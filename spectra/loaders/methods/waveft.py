"""WaveFT: ΔW = IDWT(S) · scaling, S sparse at seeded random wavelet coefficients (dense).

Follows peft's ``tuners/waveft/layer.py`` (``WaveFTLayer.get_delta_weight``)
and ``waverec2d.py`` (one level of ``waverec2d``). The trained
``waveft_spectrum`` ``(n,)`` sits at entries drawn as FourierFT draws them
(``fourierft.spectrum_indices`` with ``random_loc_seed``). With
``use_idwt`` (the default):

1. S is ``(P, Q)``: ``d_out + L − 2`` rows and ``d_in + L − 2`` columns,
   each made even, L the filter length of ``wavelet_family`` (peft's
   ``WAVELET_REDUCTIONS`` is L − 2); the entries are shifted by
   ``((P − d_out) // 2, (Q − d_in) // 2)``.
2. Its quadrants are the coefficients ``cA`` (top left), ``cH`` (top right),
   ``cV`` (bottom left), ``cD`` (bottom right), and one inverse 2-D wavelet
   transform gives ``X = U_lo·cA·V_loᵀ + U_hi·cH·V_loᵀ + U_lo·cV·V_hiᵀ +
   U_hi·cD·V_hiᵀ``, where ``U_f[2p + a, p] = f[a]`` upsamples by two and
   filters with ``rec_lo`` or ``rec_hi`` (a stride-2 transposed
   convolution), and the first and last L − 2 rows and columns are dropped.
3. ΔW is the centred ``(d_out, d_in)`` crop of X, times ``scaling``.

Without ``use_idwt``, ΔW is S itself at ``(d_out, d_in)``, times ``scaling``.
The filters are ``waveft_filters.LOW_PASS`` (peft's own values); every sum
here is in float64, as peft's merge of a float64 model is.

Each coefficient adds one separable term ``s · u vᵀ``, so rank(ΔW) ≤ n.
"""

from __future__ import annotations

import torch

from ...delta import Dense
from . import ALL_ROWS, Rows
from .fourierft import spectrum_indices
from .waveft_filters import LOW_PASS, high_pass

__all__ = ["delta", "filter_length"]


def filter_length(family: str) -> int:
    """L, the length of ``family``'s filters (``KeyError`` for a family peft has none for)."""
    return len(LOW_PASS[family])


def _upsample(lo: torch.Tensor, hi: torch.Tensor, family: str) -> torch.Tensor:
    """One level of the 1-D inverse transform along dim 0, before cropping.

    ``lo`` and ``hi`` are ``(h, c)``; returns ``(2h + L − 2, c)`` with
    ``out[2p + a] += rec_lo[a]·lo[p] + rec_hi[a]·hi[p]``.
    """
    low_pass = LOW_PASS[family]
    high = high_pass(low_pass)
    half, columns = lo.shape
    out = torch.zeros(2 * half + len(low_pass) - 2, columns, dtype=torch.float64)
    for a, (f_lo, f_hi) in enumerate(zip(low_pass, high, strict=True)):
        out[a : a + 2 * half : 2] += f_lo * lo + f_hi * hi  # (h, c)
    return out


def _centred(length: int, size: int, drop: int) -> slice:
    """Rows kept: drop ``drop`` at each end, then the centred ``size`` of what is left."""
    start = drop + (length - 2 * drop - size) // 2
    return slice(start, start + size)


def delta(
    spectrum: torch.Tensor,
    shape: tuple[int, int],
    seed: int,
    scaling: float,
    family: str,
    use_idwt: bool = True,
    rows: Rows = ALL_ROWS,
) -> Dense:
    """WaveFT's ΔW of one module, ``(d_out, d_in)`` float64.

    Args:
        spectrum: ``waveft_spectrum`` ``(n,)``, the trained coefficients.
        shape: ``(d_out, d_in)`` of the module (from the base model: saved
            nowhere in the adapter).
        seed: the config's ``random_loc_seed``.
        scaling: the config's ``scaling``.
        family: the config's ``wavelet_family`` (a key of ``LOW_PASS``).
        use_idwt: the config's ``use_idwt``; False: the coefficients are ΔW's entries.
        rows: the rows of ΔW this role owns (fused projections); all by default.

    Returns:
        ``Dense`` ΔW with ``rank_bound`` n (each coefficient a rank-1 term).

    Example:
        >>> update = delta(torch.ones(5), (6, 4), seed=777, scaling=1.0, family="db2")
        >>> update.shape, update.rank_ceiling
        ((6, 4), 4)
    """
    d_out, d_in = shape
    count = spectrum.shape[0]
    row_index, column_index = spectrum_indices(d_out, d_in, count, seed)
    values = spectrum.double()  # (n,)
    if not use_idwt:
        matrix = torch.zeros(d_out, d_in, dtype=torch.float64)  # (d_out, d_in)
        matrix[row_index, column_index] = values
        return Dense((matrix * scaling)[rows], rank_bound=count)
    drop = filter_length(family) - 2
    padded_out, padded_in = d_out + drop, d_in + drop
    padded_out += padded_out % 2  # even, for the two halves
    padded_in += padded_in % 2
    coefficients = torch.zeros(padded_out, padded_in, dtype=torch.float64)  # (P, Q)
    offset_out, offset_in = (padded_out - d_out) // 2, (padded_in - d_in) // 2
    coefficients[row_index + offset_out, column_index + offset_in] = values
    half_out, half_in = padded_out // 2, padded_in // 2
    # By filter: rows [lo; hi] × columns [lo, hi] hold [[cA, cV], [cH, cD]], as peft's
    # stacked kernels (ll, lh, hl, hh) pair cH with the high-pass row filter.
    by_filter = coefficients.clone()  # (P, Q)
    by_filter[:half_out, half_in:] = coefficients[half_out:, :half_in]  # cV
    by_filter[half_out:, :half_in] = coefficients[:half_out, half_in:]  # cH
    # Columns, then rows: X = [U_lo, U_hi] · by_filter · [V_lo, V_hi]ᵀ.
    wide = _upsample(by_filter[:, :half_in].T, by_filter[:, half_in:].T, family).T  # (P, Q + L − 2)
    full = _upsample(wide[:half_out], wide[half_out:], family)  # (P + L − 2, Q + L − 2)
    kept_rows = _centred(full.shape[0], d_out, drop)
    kept_columns = _centred(full.shape[1], d_in, drop)
    matrix = full[kept_rows, kept_columns] * scaling  # (d_out, d_in)
    return Dense(matrix[rows], rank_bound=count)
