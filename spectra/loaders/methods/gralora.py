"""GraLoRA: a k×k grid of small LoRAs, plus a plain LoRA part (hybrid), times α/(r + h).

Follows peft's ``tuners/gralora/layer.py`` (``Linear.get_delta_weight``).
``gralora_A`` is ``(k, d_in/k, r)`` and ``gralora_B`` ``(k, r, d_out/k)``;
with s = r/k, block (j, n) of ΔW (rows of the j-th d_out/k, columns of the
n-th d_in/k) is the rank-s product

    ``ΔW_jn = B[j, n·s:(n+1)·s, :]ᵀ @ A[n, :, j·s:(j+1)·s]ᵀ``

(peft scatters A by input block and regroups its rank by output block). The
hybrid part adds ``gralora_B_general`` ``(d_out, h)`` @ ``gralora_A_general``
``(h, d_in)``, and the whole is multiplied by ``α/(r + h)``. The grid is kept
factored: each of the k² blocks contributes s columns of B and s rows of A
(zero outside its own row and column block), so ΔW = scale · B @ A with
inner dimension k·r + h, its rank bound.
"""

from __future__ import annotations

import torch

from ...delta import Factored
from . import ALL_ROWS, Rows

__all__ = ["delta"]


def delta(
    A: torch.Tensor,
    B: torch.Tensor,
    scale: float,
    A_general: torch.Tensor | None = None,
    B_general: torch.Tensor | None = None,
    rows: Rows = ALL_ROWS,
) -> Factored:
    """GraLoRA's ΔW of one module, kept factored.

    Args:
        A: ``gralora_A`` ``(k, d_in/k, r)``, r divisible by k.
        B: ``gralora_B`` ``(k, r, d_out/k)``.
        scale: α/(r + h).
        A_general: ``gralora_A_general`` ``(h, d_in)``; None without a hybrid part.
        B_general: ``gralora_B_general`` ``(d_out, h)``; None without a hybrid part.
        rows: the rows of ΔW this role owns (fused projections); all by default.

    Returns:
        ``Factored`` with B ``(d_out, k·r + h)`` and A ``(k·r + h, d_in)``.

    Example:
        >>> A, B = torch.ones(2, 3, 2), torch.ones(2, 2, 4)  # k = 2, r = 2: s = 1
        >>> delta(A, B, 0.5).shape, delta(A, B, 0.5).rank
        ((8, 6), 4)
    """
    k, block_in, rank = A.shape
    block_out = B.shape[2]
    s = rank // k
    grid = torch.eye(k, dtype=torch.float64)
    # B's columns and A's rows are indexed (j, n, t): output block j, input block n, t < s.
    B_blocks = B.double().reshape(k, k, s, block_out)  # [j, n, t, o]
    B_grid = torch.einsum("jnto,jJ->joJnt", B_blocks, grid).reshape(k * block_out, k * k * s)
    A_blocks = A.double().reshape(k, block_in, k, s)  # [n, i, j, t]
    A_grid = torch.einsum("nijt,nN->jntNi", A_blocks, grid).reshape(k * k * s, k * block_in)
    if A_general is not None and B_general is not None:
        B_grid = torch.cat([B_grid, B_general.double()], dim=1)  # (d_out, k·r + h)
        A_grid = torch.cat([A_grid, A_general.double()], dim=0)  # (k·r + h, d_in)
    return Factored(B_grid[rows], A_grid, scale)
