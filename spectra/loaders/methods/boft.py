"""BOFT: ΔW = diag(s) · W0 · Rᵀ − W0, R a product of butterfly-permuted block rotations (dense).

Follows peft's ``tuners/boft/layer.py`` (``Linear.get_delta_weight`` and
``Linear.merge``: the merged weight is ``(R @ W0ᵀ)ᵀ * boft_s``). ``boft_R``
``(m, n_blocks, b, b)`` holds m butterfly factors of n_blocks full b×b
matrices; each becomes a rotation by the Cayley transform of its
skew-symmetric part S = (A − Aᵀ)/2, ``(I − S)(I + S)⁻¹`` (``cayley_batch``).
Factor i is ``M_i = P_i · blockdiag_i · P_iᵀ`` with the permutation matrix
``P_i[k, π_i(k)] = 1`` of peft's ``block_butterfly_perm(d_in, n_blocks / 2^i,
b / 2, m − 1)`` (the identity when m = 1), and ``R = M_{m−1} ⋯ M_1 M_0``.
``boft_s`` ``(d_out, 1)`` scales the rows of the rotated weight.

peft builds m > 1 factors only where its CUDA extension compiles (elsewhere
it saves one factor whatever ``boft_n_butterfly_factor`` says); the saved
shape is what was trained, and it is what is rebuilt here.
"""

from __future__ import annotations

import torch

from ...delta import Dense
from . import ALL_ROWS, Rows
from .oft import cayley_minus_identity

__all__ = ["butterfly_order", "delta"]


def butterfly_order(size: int, groups: int, half: int, factors: int) -> torch.Tensor:
    """peft's butterfly permutation π of ``size`` indices (``block_butterfly_perm``).

    Each of the ``groups`` equal groups is cut into pieces of ``half``
    indices, and its pieces are reordered evens first, then odds. With
    ``factors`` (peft's ``boft_n_butterfly_factor − 1``) 0 it is the identity.

    Args:
        size: d_in.
        groups: the number of groups at this factor (``n_blocks / 2^i``).
        half: half a block, b / 2.
        factors: the number of butterfly factors minus one.

    Returns:
        ``(size,)`` int64: π, with ``(P x)[k] = x[π(k)]``.
    """
    if factors == 0:
        return torch.arange(size)
    group = size // groups
    pieces = group // half
    order = [*range(0, pieces, 2), *range(1, pieces, 2)]
    within = torch.cat([torch.arange(p * half, (p + 1) * half) for p in order])  # (group,)
    return torch.cat([start + within for start in range(0, size, group)])


def _times_factor_minus_identity(
    X: torch.Tensor, order: torch.Tensor, minus: torch.Tensor
) -> torch.Tensor:
    """``X (Mᵀ − I)`` for ``M = P · blockdiag(I + E_k) · Pᵀ``, ``minus`` = E ``(n, b, b)``."""
    permuted = X[:, torch.argsort(order)]  # X P  (rows, d_in)
    n_blocks, block, _ = minus.shape
    blocks = permuted.reshape(X.shape[0], n_blocks, block)  # (rows, n, b)
    turned = torch.einsum("onj,ncj->onc", blocks, minus).reshape(X.shape)  # · blockdiag(E)ᵀ
    return turned[:, order]  # · Pᵀ


def delta(
    W0: torch.Tensor, boft_R: torch.Tensor, boft_s: torch.Tensor, rows: Rows = ALL_ROWS
) -> Dense:
    """BOFT's ΔW from W0 ``(d_out, d_in)``, ``boft_R`` ``(m, n, b, b)``, ``boft_s`` ``(d_out, 1)``.

    Args:
        W0: the base weight ``(d_out, d_in)``, ``d_in = n · b``.
        boft_R: the butterfly factors' blocks ``(m, n, b, b)`` as saved.
        boft_s: the row scales ``(d_out, 1)``.
        rows: the rows of ΔW one role owns.

    Returns:
        ``Dense`` ΔW ``(rows, d_in)`` in float64.
    """
    factors, n_blocks, block, _ = boft_R.shape
    saved = boft_R.double()  # (m, n, b, b)
    skew = 0.5 * (saved - saved.transpose(-2, -1))
    minus = cayley_minus_identity(-skew)  # (m, n, b, b): (I − S)(I + S)⁻¹ − I
    base = W0.double()[rows]  # (rows, d_in)
    rotated = torch.zeros_like(base)  # W0 M_0ᵀ ⋯ M_iᵀ − W0, factor by factor
    for i in range(factors):
        order = butterfly_order(base.shape[1], n_blocks // 2**i, block // 2, factors - 1)
        rotated = rotated + _times_factor_minus_identity(base + rotated, order, minus[i])
    scale = boft_s.double().reshape(-1)[rows][:, None]  # (rows, 1)
    return Dense(scale * rotated + (scale - 1.0) * base)
