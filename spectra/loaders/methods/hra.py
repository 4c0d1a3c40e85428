"""HRA: ΔW = W0 · (H₁ H₂ ⋯ H_r − I), a chain of r Householder reflections (factored, rank ≤ r).

Follows peft's ``tuners/hra/layer.py`` (``HRALinear.get_delta_weight`` and
``merge``: the merged weight is ``W0 @ H``). ``hra_u`` ``(d_in, r)`` holds the
reflection vectors as columns; each is scaled to unit norm and
``H = (I − 2u₁u₁ᵀ)(I − 2u₂u₂ᵀ)⋯(I − 2u_ruᵣᵀ)``. With ``apply_GS`` the columns
are first made orthonormal by Gram–Schmidt (peft's loop, in column order)
and ``H = I − 2 Q Qᵀ``.

ΔW is kept factored, ``ΔW = B @ Uᵀ`` with ``U`` the unit vectors ``(d_in, r)``
and the columns of B ``(d_out, r)`` from the chain, one reflection at a time:
``b_i = −2 W0 H₁⋯H_{i−1} u_i = −2 (W0 u_i + Σ_{j<i} b_j (u_j·u_i))``.
"""

from __future__ import annotations

import torch

from ...delta import Factored
from . import ALL_ROWS, Rows

__all__ = ["delta", "gram_schmidt"]


def gram_schmidt(U: torch.Tensor) -> torch.Tensor:
    """peft's Gram–Schmidt of the columns of ``U`` ``(d_in, r)``: orthonormal, in column order."""
    done: list[torch.Tensor] = []
    for i in range(U.shape[1]):
        column = U[:, i]  # (d_in,)
        for previous in done:
            column = column - (previous @ column) * previous
        done.append(column / torch.linalg.vector_norm(column))
    return torch.stack(done, dim=1)  # (d_in, r)


def delta(W0: torch.Tensor, hra_u: torch.Tensor, apply_gs: bool, rows: Rows = ALL_ROWS) -> Factored:
    """HRA's ΔW = W0 (H − I) from W0 ``(d_out, d_in)`` and ``hra_u`` ``(d_in, r)``.

    Args:
        W0: the base weight ``(d_out, d_in)``.
        hra_u: the reflection vectors as columns ``(d_in, r)``.
        apply_gs: the config's ``apply_GS``: orthonormalise them first.
        rows: the rows of ΔW one role owns.

    Returns:
        ``Factored(B (rows, r), Uᵀ (r, d_in), 1)``.
    """
    base = W0.double()[rows]  # (rows, d_in)
    vectors = hra_u.double()  # (d_in, r)
    if apply_gs:
        Q = gram_schmidt(vectors)  # (d_in, r), orthonormal
        return Factored(-2.0 * (base @ Q), Q.T.contiguous(), 1.0)
    U = vectors / torch.linalg.vector_norm(vectors, dim=0)  # (d_in, r), unit columns
    overlaps = U.T @ U  # (r, r): u_j · u_i
    projected = base @ U  # (rows, r): W0 u_i
    columns: list[torch.Tensor] = []
    for i in range(U.shape[1]):
        carried = projected[:, i]  # (rows,): W0 H₁⋯H_{i−1} u_i
        for j, column in enumerate(columns):
            carried = carried + column * overlaps[j, i]
        columns.append(-2.0 * carried)
    B = torch.stack(columns, dim=1)  # (rows, r)
    return Factored(B, U.T.contiguous(), 1.0)
