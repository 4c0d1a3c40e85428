"""A full fine-tune's ΔW = W_tuned − W_base, taken in float64 on the tuned grid."""

from __future__ import annotations

import math

import torch

__all__ = ["coarser_dtype", "difference"]

_STRIP_ROWS = 512  # rows converted to float64 at a time: no whole-matrix temporaries


def coarser_dtype(first: torch.dtype, second: torch.dtype) -> torch.dtype:
    """The dtype of the two with the wider rounding grid (the larger machine ε)."""
    return max((first, second), key=lambda dtype: torch.finfo(dtype).eps)


def difference(tuned: torch.Tensor, base: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """``tuned − base`` in float64, on the tuned checkpoint's grid, with both Frobenius norms.

    When the tuned weights were saved on a coarser grid than the base (a
    float32 release fine-tuned and saved in bf16, the common case), the base
    is first rounded to the tuned dtype, as the tuned weights were: a weight
    the fine-tune left alone then gives exactly 0 instead of its rounding
    error, and what remains is the update (and the rounding of the updated
    weights). ``base_norm`` is ‖W_base‖_F as stored.

    Neither input is written into: the result is a new float64 tensor (a
    pickle reader hands out the same cached tensor on every read). The only
    full-size allocation is that result; the base is converted a strip of
    rows at a time into one reused buffer.
    """
    delta = tuned.to(torch.float64, copy=True)  # (d_out, d_in), never an alias of ``tuned``
    tuned_norm = float(torch.linalg.vector_norm(delta))
    rounding = coarser_dtype(tuned.dtype, base.dtype) == tuned.dtype != base.dtype
    strip = torch.empty(min(_STRIP_ROWS, base.shape[0]), base.shape[1], dtype=torch.float64)
    base_squares = 0.0
    for start in range(0, base.shape[0], _STRIP_ROWS):
        end = min(start + _STRIP_ROWS, base.shape[0])
        base_rows = strip[: end - start]  # (rows, d_in)
        base_rows.copy_(base[start:end])
        base_squares += float(torch.linalg.vector_norm(base_rows)) ** 2
        if rounding:  # round to the tuned grid: (rows, d_in) in tuned.dtype, back to float64
            base_rows.copy_(base[start:end].to(tuned.dtype))
        delta[start:end] -= base_rows
    return delta, tuned_norm, math.sqrt(base_squares)
