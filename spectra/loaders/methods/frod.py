"""FRoD: ΔW = U (S + diag(λ)) Vᵀ − W0 (dense), the reconstructed weight minus the base.

Follows peft's ``tuners/frod/layer.py`` (``Linear.get_delta_weight`` and
``FrodLayer._calculate_frod_u_and_lambda``). FRoD parameterises the adapted
weight itself as ``U (S + diag(λ)) Vᵀ`` with

- ``V`` = ``frod_V.<category>`` ``(d_in, d_in)``, a basis shared by the
  modules of one role across layers (saved once per category);
- ``λ`` = ``frod_lambda_l`` ``(d_in,)`` and the sparse ``S`` ``(d_in, d_in)``
  whose values ``frod_lambda_s_values`` ``(nnz,)`` sit at
  ``frod_s_indices.<category>`` ``(2, nnz)`` (COO, summed where repeated);
- ``U`` ``(d_out, d_in)``, frozen and not saved: peft computes it at load from
  W0 and V, as the columns of ``W0 V⁻ᵀ`` (``torch.linalg.solve``, or a
  pseudo-inverse at rtol 1e-6 where V is singular) divided by their norms, in
  float64, then rounded to float32. ``frozen_u`` does the same, the rounding
  included: U multiplies the whole weight, so its rounding is part of the
  update that ran, not noise to remove.
"""

from __future__ import annotations

import torch

from ...delta import Dense
from . import ALL_ROWS, Rows

__all__ = ["delta", "frozen_u"]


def frozen_u(base: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """peft's frozen U ``(d_out, d_in)``: unit columns of ``W0 V⁻ᵀ``, float32 values in float64."""
    w = base.to(torch.float64)  # (d_out, d_in)
    v = V.to(torch.float64)  # (d_in, d_in)
    try:
        coefficients = torch.linalg.solve(v, w.T).T  # (d_out, d_in): W0 V⁻ᵀ
    except RuntimeError:  # a singular V: peft's fallback
        coefficients = w @ torch.linalg.pinv(v, rtol=1e-6).T
    norms = torch.linalg.norm(coefficients, dim=0)  # (d_in,)
    U = torch.zeros_like(coefficients)
    nonzero = norms > 1e-12
    U[:, nonzero] = coefficients[:, nonzero] / norms[nonzero]
    return U.float().double()  # peft keeps U in float32


def delta(
    base: torch.Tensor,
    V: torch.Tensor,
    indices: torch.Tensor,
    values: torch.Tensor,
    lambda_l: torch.Tensor,
    rows: Rows = ALL_ROWS,
) -> Dense:
    """FRoD's ΔW of one module: ``U (S + diag(λ)) Vᵀ − W0`` with U from W0 and V."""
    base64 = base.to(torch.float64)  # (d_out, d_in)
    U = frozen_u(base64, V)  # (d_out, d_in)
    core = torch.diag(lambda_l.to(torch.float64))  # (d_in, d_in): diag(λ)
    where = (indices[0].to(torch.int64), indices[1].to(torch.int64))
    core.index_put_(where, values.to(torch.float64), accumulate=True)  # S + diag(λ)
    rebuilt = U @ core @ V.to(torch.float64).T  # (d_out, d_in)
    return Dense((rebuilt - base64)[rows])
