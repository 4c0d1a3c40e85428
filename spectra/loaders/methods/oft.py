"""OFT: ΔW = W0 · Rᵀ − W0, R block-diagonal of Cayley rotations (dense; needs W0).

Follows peft's ``tuners/oft/layer.py`` (``OFTRotationModule.get_weight`` and
``Linear.merge``: the merged weight is ``(R @ W0ᵀ)ᵀ``, the forward rotates the
input ``x → x R``). ``oft_R`` ``(n_blocks, b(b−1)/2)`` holds each block's
skew-symmetric generator Q as its strict upper triangle (in
``torch.triu_indices(b, b, 1)`` order, then ``Q − Qᵀ``). A block is

- with ``use_cayley_neumann`` (peft's default), the series of
  t = ``num_cayley_neumann_terms`` terms ``I + 2Q + 2Q² + … + 2Q^{t−2} + Q^{t−1}``
  (peft's loop: t = 3 gives ``I + 2Q + 2Q² + Q³``, as t = 4 does; t = 2 gives
  ``I + 2Q``; t ≤ 1 gives I), or
- exactly, ``(I − Q)(I + Q)⁻¹`` (``torch.linalg.solve(I + Q, I − Q, left=False)``).

``coft`` first scales each block's Q to a Frobenius norm of at most
``eps / √n_blocks`` (``_project_batch``, with peft's float32 value of that
bound); ``block_share`` saves one block, repeated over d_in / b.

The helpers here (skew-symmetric matrices from their upper triangles, R − I
for the Cayley transform and for its series) serve BOFT and PSOFT too. They
return R − I itself, never R minus I after the fact, so ΔW carries no
cancellation error.
"""

from __future__ import annotations

import torch

from ...delta import Dense
from . import ALL_ROWS, Rows

__all__ = [
    "blocks_minus_identity",
    "cayley_minus_identity",
    "coft_bound",
    "delta",
    "neumann_minus_identity",
    "skew_symmetric",
]


def skew_symmetric(upper: torch.Tensor, size: int) -> torch.Tensor:
    """Skew-symmetric Q ``(…, n, n)`` from its strict upper triangle ``(…, n(n−1)/2)``, n = size.

    The triangle is read in ``torch.triu_indices(size, size, 1)`` order, as peft writes it.
    """
    rows, cols = torch.triu_indices(size, size, 1)
    Q = torch.zeros(*upper.shape[:-1], size, size, dtype=torch.float64)  # (…, size, size)
    Q[..., rows, cols] = upper.double()
    return Q - Q.transpose(-2, -1)


def cayley_minus_identity(Q: torch.Tensor) -> torch.Tensor:
    """``(I + Q)(I − Q)⁻¹ − I = 2Q (I − Q)⁻¹`` for a batch ``(…, n, n)`` of float64 Q."""
    eye = torch.eye(Q.shape[-1], dtype=torch.float64)
    return torch.linalg.solve(eye - Q, 2.0 * Q, left=False)  # X (I − Q) = 2Q


def neumann_minus_identity(Q: torch.Tensor, terms: int) -> torch.Tensor:
    """R − I for peft's Cayley–Neumann series of ``terms`` terms, batched ``(…, n, n)``."""
    if terms <= 1:
        return torch.zeros_like(Q)
    total = 2.0 * Q  # (…, n, n)
    if terms == 2:
        return total
    power = Q @ Q
    total = total + 2.0 * power
    for _ in range(3, terms - 1):
        power = power @ Q
        total = total + 2.0 * power
    return total + power @ Q


def coft_bound(eps: float, n_blocks: int) -> float:
    """COFT's bound on each block's ‖Q‖_F: ``eps / √n_blocks`` as peft computes it (in float32)."""
    return float(eps * 1 / torch.sqrt(torch.tensor(n_blocks)))


def blocks_minus_identity(
    oft_R: torch.Tensor, block_size: int, neumann_terms: int | None, coft_eps: float | None
) -> torch.Tensor:
    """R_k − I of each saved block ``(n_blocks, b, b)``, float64.

    Args:
        oft_R: the saved generators ``(n_blocks, b(b−1)/2)``.
        block_size: b.
        neumann_terms: t of the Cayley–Neumann series; ``None``: the exact transform.
        coft_eps: the config's ``eps`` when ``coft`` is on; ``None``: no projection.

    Returns:
        ``(n_blocks, b, b)``: each block's rotation minus the identity.
    """
    Q = skew_symmetric(oft_R, block_size)  # (n_blocks, b, b)
    if coft_eps is not None:
        bound = coft_bound(coft_eps, Q.shape[0])
        norm = torch.linalg.matrix_norm(Q)[:, None, None]  # (n_blocks, 1, 1)
        Q = torch.where(norm <= bound, Q, bound * (Q / norm))
    if neumann_terms is None:
        return cayley_minus_identity(-Q)  # (I − Q)(I + Q)⁻¹ − I
    return neumann_minus_identity(Q, neumann_terms)


def delta(
    W0: torch.Tensor,
    oft_R: torch.Tensor,
    block_size: int,
    *,
    neumann_terms: int | None,
    coft_eps: float | None = None,
    rows: Rows = ALL_ROWS,
) -> Dense:
    """OFT's ΔW = W0 (Rᵀ − I) from W0 ``(d_out, d_in)`` and the saved ``oft_R``.

    One saved block (``block_share``) serves every block of d_in.

    Args:
        W0: the base weight ``(d_out, d_in)``.
        oft_R: the generators ``(n_blocks, b(b−1)/2)``, or ``(1, …)`` shared.
        block_size: b, with ``n_blocks · b = d_in``.
        neumann_terms: t of the Cayley–Neumann series; ``None``: the exact transform.
        coft_eps: the config's ``eps`` when ``coft`` is on; ``None``: no projection.
        rows: the rows of ΔW one role owns.

    Returns:
        ``Dense`` ΔW ``(rows, d_in)`` in float64.
    """
    base = W0.double()[rows]  # (rows, d_in)
    n_blocks = base.shape[1] // block_size
    minus = blocks_minus_identity(oft_R, block_size, neumann_terms, coft_eps)  # (n|1, b, b)
    minus = minus.expand(n_blocks, block_size, block_size)  # block_share: one block, repeated
    blocks = base.reshape(base.shape[0], n_blocks, block_size)  # (rows, n_blocks, b)
    update = torch.einsum("onj,ncj->onc", blocks, minus)  # each block of W0 times (R_k − I)ᵀ
    return Dense(update.reshape(base.shape))
