"""MiSS (and Bone, its older name): a block shared across W0's column blocks, in three modes.

Follows peft's ``tuners/miss/layer.py`` (``MissLinear.get_delta_weight_miss``
for the default and ``mini`` modes, ``get_delta_weight`` for ``bat``), and
the older ``tuners/bone/layer.py`` (``get_delta_weight_bone``,
``get_delta_weight``), whose two modes are the same formulas. W0's d_in
columns are cut into blocks of r (the last one shorter when r does not
divide d_in):

- default: ``miss_block`` ``(r, d_out)`` is added, transposed, to every
  block: ``ΔW[o, c] = block[c mod r, o]``, so ``ΔW = blockᵀ @ T`` with
  ``T[j, c] = 1 if c mod r = j`` (factored, rank ≤ r, scale 1);
- ``mini``: ``miss_block`` ``(r, mini_r)`` is first tiled along d_out,
  ``block.repeat(1, d_out / mini_r)``, then as the default (factored);
- ``bat``: ``miss_block`` ``(d_out/r, r, r)`` holds one r×r matrix M_p per
  row block, and W0's r×r block (p, q) becomes ``W0_pq @ M_p + M_p``:
  ``ΔW_pq = W0_pq @ M_p + M_p`` (dense, needs W0).
"""

from __future__ import annotations

import torch

from ...delta import Dense, Factored
from . import ALL_ROWS, Rows

__all__ = ["bat", "shared", "tiled"]


def shared(block: torch.Tensor, d_in: int, rows: Rows = ALL_ROWS) -> Factored:
    """The default mode's ΔW = ``blockᵀ @ T`` from ``miss_block`` ``(r, d_out)``.

    Args:
        block: ``miss_block`` ``(r, d_out)``.
        d_in: the module's d_in (from the base model: saved nowhere in the adapter).
        rows: the rows of ΔW this role owns (fused projections); all by default.

    Returns:
        ``Factored`` (B = blockᵀ ``(d_out, r)``, A = T ``(r, d_in)``, scale 1).

    Example:
        >>> shared(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), d_in=3).to_dense()
        tensor([[1., 3., 1.],
                [2., 4., 2.]], dtype=torch.float64)
    """
    rank = block.shape[0]
    tiling = (torch.arange(d_in)[None, :] % rank == torch.arange(rank)[:, None]).double()
    return Factored(block.double().T[rows], tiling, 1.0)  # (d_out, r), (r, d_in)


def tiled(block: torch.Tensor, d_out: int, d_in: int, rows: Rows = ALL_ROWS) -> Factored:
    """The ``mini`` mode's ΔW: ``miss_block`` ``(r, mini_r)`` tiled to ``(r, d_out)``, then shared.

    Args:
        block: ``miss_block`` ``(r, mini_r)``, mini_r dividing d_out.
        d_out: the module's d_out (from the base model).
        d_in: the module's d_in (from the base model).
        rows: the rows of ΔW this role owns (fused projections); all by default.

    Returns:
        ``Factored``, as ``shared`` of the tiled block.

    Example:
        >>> tiled(torch.tensor([[1.0, 2.0]]), d_out=4, d_in=2).to_dense()[:, 0]
        tensor([1., 2., 1., 2.], dtype=torch.float64)
    """
    return shared(block.repeat(1, d_out // block.shape[1]), d_in, rows)  # (r, d_out)


def bat(block: torch.Tensor, base: torch.Tensor, rows: Rows = ALL_ROWS) -> Dense:
    """The ``bat`` mode's ΔW: block (p, q) is ``W0_pq @ M_p + M_p``.

    Args:
        block: ``miss_block`` ``(d_out/r, r, r)``, M_p for each row block p.
        base: W0 ``(d_out, d_in)``, both divisible by r.
        rows: the rows of ΔW this role owns (fused projections); all by default.

    Returns:
        ``Dense`` ΔW ``(d_out, d_in)`` in float64.

    Example:
        >>> bat(torch.eye(1)[None].repeat(2, 1, 1), torch.ones(2, 2)).matrix
        tensor([[2., 2.],
                [2., 2.]], dtype=torch.float64)
    """
    blocks_out, rank, _ = block.shape
    d_out, d_in = base.shape
    M = block.double()  # (d_out/r, r, r)
    W0 = base.double().reshape(blocks_out, rank, d_in // rank, rank)  # [p, i, q, k]
    product = torch.einsum("piqk,pkj->piqj", W0, M)  # (d_out/r, r, d_in/r, r)
    matrix = (product + M[:, :, None, :]).reshape(d_out, d_in)
    return Dense(matrix[rows])
