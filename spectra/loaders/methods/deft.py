"""DEFT: ΔW = Q_P @ (s·R − rightᵀ @ W0) (factored, rank ≤ r); PaRa: ΔW = −Q_P @ (rightᵀ @ W0).

Follows peft's ``tuners/deft/layer.py`` (``DeftLinear.get_delta_weight``,
``_merge_factor`` and ``_project``): the adapted weight is
``(I − P_proj) @ W0 + s·Q_P @ R`` with ``P_proj = Q_P @ rightᵀ``, so

    ΔW = Q_P @ (s·R − rightᵀ @ W0)

with ``P`` = ``deft_P`` ``(d_out, r)``, ``R`` = ``deft_R`` ``(r, d_in)`` and
``s = alpha / r`` (1 without ``alpha``). ``decomposition_method`` "relu":
``Q_P = P``, ``right = relu(P)``; "qr": ``Q_P = right = qr(P).Q``. PaRa
(``para``) saves no R: the removal term alone. peft takes the projection in
float32 "for numerical stability"; here every step is float64 (the same
formula, without float32's rounding).
"""

from __future__ import annotations

import torch

from ...delta import Factored
from . import ALL_ROWS, Rows

__all__ = ["METHODS", "delta"]

METHODS = ("relu", "qr")  # decomposition_method values peft knows


def delta(
    P: torch.Tensor,
    R: torch.Tensor | None,
    base: torch.Tensor,
    scale: float,
    method: str,
    rows: Rows = ALL_ROWS,
) -> Factored:
    """DEFT's ΔW of one module, factored as ``Q_P @ (s·R − rightᵀ W0)``; ``R=None``: PaRa."""
    P64 = P.to(torch.float64)  # (d_out, r)
    if method == "relu":
        Q, right = P64, torch.relu(P64)  # (d_out, r) each
    elif method == "qr":
        Q, _ = torch.linalg.qr(P64)  # (d_out, r), orthonormal columns
        right = Q
    else:
        raise ValueError(f"decomposition_method must be one of {METHODS}, not {method!r}")
    removed = right.T @ base.to(torch.float64)  # (r, d_in): rightᵀ W0
    A = -removed if R is None else scale * R.to(torch.float64) - removed  # (r, d_in)
    return Factored(Q[rows], A, 1.0)
