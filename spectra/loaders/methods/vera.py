"""VeRA: ΔW = diag(λ_b) · B[:d_out] · diag(λ_d) · A[:, :d_in] (factored, scale 1).

Follows peft's ``tuners/vera/layer.py`` (``Linear.get_delta_weight``: the
shared ``vera_A`` ``(r, widest d_in)`` and ``vera_B`` ``(widest d_out, r)``
sliced to the module as ``vera_A[:, :in_features]`` and
``vera_B[:out_features, :]``, then ``λ_b ⊙ (B @ (λ_d ⊙ A))``). ``λ_b`` is
``vera_lambda_b`` ``(d_out,)`` and ``λ_d`` ``vera_lambda_d`` ``(r,)``; the
vectors carry the scale.
"""

from __future__ import annotations

import torch

from ...delta import Factored
from . import ALL_ROWS, Rows

__all__ = ["delta"]


def delta(
    vera_A: torch.Tensor,
    vera_B: torch.Tensor,
    lambda_b: torch.Tensor,
    lambda_d: torch.Tensor,
    d_in: int,
    rows: Rows = ALL_ROWS,
) -> Factored:
    """VeRA's ΔW of one module (d_out = ``len(lambda_b)``, d_in given: saved nowhere else)."""
    d_out = lambda_b.shape[0]
    A = vera_A.double()[:, :d_in]  # (r, d_in)
    B = vera_B.double()[:d_out]  # (d_out, r)
    scaled_B = lambda_b.double()[:, None] * B  # (d_out, r): diag(λ_b) B
    scaled_A = lambda_d.double()[:, None] * A  # (r, d_in): diag(λ_d) A
    return Factored(scaled_B[rows], scaled_A, 1.0)
