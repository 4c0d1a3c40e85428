"""FourierFT: ΔW = Re(ifft2(S)) · scaling, S sparse at seeded random frequencies (dense).

Follows peft's ``tuners/fourierft/layer.py``: ``FourierFTLayer.update_layer``
draws the frequencies once, ``torch.randperm(d_out·d_in,
generator=torch.Generator().manual_seed(random_loc_seed))[:n]``, and splits
each flat index f into the entry ``(f // d_in, f % d_in)``;
``get_delta_weight`` puts the trained ``fourierft_spectrum`` ``(n,)`` there
in an otherwise zero ``(d_out, d_in)`` spectrum S and returns
``ifft2(S).real · scaling``. The indices are saved nowhere: they are drawn
again here with the same torch calls (``spectrum_indices``), which WaveFT
draws the same way. peft computes in float32 (complex64); here S is placed
and transformed in float64 (complex128).

``Re(ifft2(S)) = ifft2((S + S')/2)`` with ``S'[k, l] = conj(S[−k, −l])``,
so rank(ΔW) ≤ 2·rank(S), and rank(S) is at most the number of its rows or
columns that hold a frequency.
"""

from __future__ import annotations

import functools

import torch

from ...delta import Dense
from . import ALL_ROWS, Rows

__all__ = ["delta", "spectrum_indices"]


@functools.lru_cache(maxsize=8)
def spectrum_indices(
    d_out: int, d_in: int, count: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (row, column) of each of ``count`` entries, drawn as peft draws them from ``seed``.

    ``torch.randperm(d_out·d_in)`` with a fresh CPU generator seeded with
    ``seed``, its first ``count`` values split into ``value // d_in`` and
    ``value % d_in`` (FourierFT's and WaveFT's ``update_layer``). Cached, as
    every module of one shape and seed draws the same; the tensors returned
    are shared, so they are read and never written.

    Args:
        d_out: the rows of ΔW.
        d_in: the columns of ΔW.
        count: how many entries (the length of the saved spectrum).
        seed: the config's ``random_loc_seed``.

    Returns:
        ``(rows, columns)``, two int64 tensors ``(count,)``.

    Example:
        >>> rows, columns = spectrum_indices(4, 3, 2, seed=777)
        >>> rows.shape, bool((rows < 4).all() and (columns < 3).all())
        (torch.Size([2]), True)
    """
    generator = torch.Generator().manual_seed(seed)
    flat = torch.randperm(d_out * d_in, generator=generator)[:count]  # (count,)
    return flat // d_in, flat % d_in


def delta(
    spectrum: torch.Tensor,
    shape: tuple[int, int],
    seed: int,
    scaling: float,
    rows: Rows = ALL_ROWS,
) -> Dense:
    """FourierFT's ΔW of one module: ``Re(ifft2(S)) · scaling``, S holding ``spectrum``.

    Args:
        spectrum: ``fourierft_spectrum`` ``(n,)``, the trained coefficients.
        shape: ``(d_out, d_in)`` of the module (from the base model: saved
            nowhere in the adapter).
        seed: the config's ``random_loc_seed``.
        scaling: the config's ``scaling``.
        rows: the rows of ΔW this role owns (fused projections); all by default.

    Returns:
        ``Dense`` ΔW ``(d_out, d_in)`` in float64, ``rank_bound`` 2·rank bound of S.

    Example:
        >>> update = delta(torch.ones(3), (8, 6), seed=777, scaling=2.0)
        >>> update.shape, update.rank_bound <= 2 * 3
        ((8, 6), True)
    """
    d_out, d_in = shape
    row_index, column_index = spectrum_indices(d_out, d_in, spectrum.shape[0], seed)
    dense_spectrum = torch.zeros(d_out, d_in, dtype=torch.float64)  # (d_out, d_in)
    dense_spectrum[row_index, column_index] = spectrum.double()
    matrix = torch.fft.ifft2(dense_spectrum).real * scaling  # (d_out, d_in)
    occupied = min(len(row_index.unique()), len(column_index.unique()))
    return Dense(matrix[rows], rank_bound=2 * occupied)
