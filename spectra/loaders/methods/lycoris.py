"""The LyCORIS family: LoHa and LoKr (both dense), with the Tucker / CP cores of their conv forms.

| method | ΔW |
|---|---|
| LoHa | ``s · (w1a @ w1b) ⊙ (w2a @ w2b)`` |
| LoKr | ``s · kron(w1, w2)``, each factor whole, ``a @ b``, or a Tucker core |

Follows LyCORIS's ``lycoris/functional/loha.py`` (``diff_weight``: the
Hadamard product of two low-rank products), ``functional/lokr.py``
(``diff_weight``, ``make_kron``) and ``functional/general.py``
(``rebuild_tucker``), and peft's ``tuners/loha/layer.py`` / ``tuners/lokr/layer.py``
(``get_delta_weight``, ``make_weight_cp``), which agree:

- LoHa: ``w1a``, ``w2a`` ``(d_out, r)``; ``w1b``, ``w2b`` ``(r, d_in[, kh, kw])``;
- a Tucker (CP) core ``t (r, r[, kh, kw])`` with ``wa (r, d_out)`` and
  ``wb (r, d_in)`` stands for ``W[p, q, …] = Σ_ij t[i, j, …] · wa[i, p] · wb[j, q]``
  (LoHa's ``hada_t1`` / ``hada_t2`` with its ``w1a``/``w1b``, ``w2a``/``w2b``;
  LoKr's ``lokr_t2`` with ``lokr_w2_a``/``lokr_w2_b``);
- LoKr: ``w1 (p, q)``, ``w2 (m, n[, kh, kw])``; ΔW is ``(p·m, q·n)``.

A conv kernel ``(out, in, kh, kw)`` is returned as the matrix
``(out, in·kh·kw)``; for LoKr, the Kronecker product of the flattened factors
equals the flattened 4-D ``make_kron``. The scale ``s`` is the caller's
(α/r from a config or an ``alpha`` tensor, or 1).
"""

from __future__ import annotations

import torch

from ...delta import Dense
from . import ALL_ROWS, Rows

__all__ = ["loha", "lokr", "lokr_factor", "tucker"]


def _flat(weight: torch.Tensor) -> torch.Tensor:
    """A weight ``(rows, in[, kh, kw])`` in float64 as the matrix ``(rows, in·kh·kw)``."""
    return weight.double().reshape(weight.shape[0], -1)


def tucker(core: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """``W[p, q, …] = Σ_ij core[i, j, …] · wa[i, p] · wb[j, q]``, flattened to ``(p, q·kh·kw)``.

    ``core`` is ``(r, r[, kh, kw])``, ``wa`` ``(r, d_out)``, ``wb`` ``(r, d_in)``.
    """
    rebuilt = torch.einsum("ij...,ip,jq->pq...", core.double(), wa.double(), wb.double())
    return _flat(rebuilt)  # (d_out, d_in·kh·kw)


def _low_rank(a: torch.Tensor, b: torch.Tensor, core: torch.Tensor | None) -> torch.Tensor:
    """``a @ b`` (b's kernel dims flattened), or the Tucker product when there is a core."""
    if core is not None:
        return tucker(core, a, b)
    return a.double() @ _flat(b)  # (rows, r) @ (r, in·kh·kw)


def loha(
    w1a: torch.Tensor,
    w1b: torch.Tensor,
    w2a: torch.Tensor,
    w2b: torch.Tensor,
    s: float,
    *,
    t1: torch.Tensor | None = None,
    t2: torch.Tensor | None = None,
    rows: Rows = ALL_ROWS,
) -> Dense:
    """LoHa's ΔW = s · (w1a @ w1b) ⊙ (w2a @ w2b), each product a Tucker one with its core.

    rank(X ⊙ Y) ≤ rank(X)·rank(Y), so ΔW's ``rank_bound`` is r₁·r₂ (the rows
    of ``w1b`` and ``w2b``, with or without a core).
    """
    first = _low_rank(w1a, w1b, t1)  # (d_out, d_in·kh·kw)
    second = _low_rank(w2a, w2b, t2)  # (d_out, d_in·kh·kw)
    return Dense((s * (first * second))[rows], rank_bound=w1b.shape[0] * w2b.shape[0])


def lokr_factor(
    whole: torch.Tensor | None = None,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    core: torch.Tensor | None = None,
) -> torch.Tensor:
    """One Kronecker factor of LoKr in float64: stored ``whole``, or ``a @ b``, or Tucker.

    The result is a matrix, a conv kernel flattened to ``(rows, in·kh·kw)``.
    """
    if whole is not None:
        return _flat(whole)
    if a is None or b is None:
        raise ValueError("a LoKr factor is stored whole, or as both a and b")
    return _low_rank(a, b, core)


def lokr(
    w1: torch.Tensor,
    w2: torch.Tensor,
    s: float,
    rows: Rows = ALL_ROWS,
    ranks: tuple[int | None, int | None] = (None, None),
) -> Dense:
    """LoKr's ΔW = s · kron(w1, w2), w1 ``(p, q)`` and w2 ``(m, n)`` → ``(p·m, q·n)``.

    ``ranks`` are the factors' inner ranks when stored as ``a @ b`` (None:
    stored whole, rank up to min of its shape); rank(kron(w1, w2)) =
    rank(w1)·rank(w2), so their product is ΔW's ``rank_bound``.
    """
    bound = 1
    for factor, rank in zip((w1, w2), ranks, strict=True):
        bound *= min(factor.shape) if rank is None else min(rank, *factor.shape)
    return Dense((s * torch.kron(w1.double(), w2.double()))[rows], rank_bound=bound)
