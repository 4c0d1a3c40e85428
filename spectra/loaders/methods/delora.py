"""DeLoRA: ΔW = (λ/r) · B diag(1/(‖Aᵢ‖‖Bⁱ‖)) A diag(‖W₀ columns‖), norm-bounded (factored).

Follows peft's ``tuners/delora/layer.py`` (``DeloraLayer._compute_delta``,
``get_delta_weight``): ``delora_A`` ``(r, d_in)``, ``delora_B``
``(d_out, r)``, ``delora_lambda`` λ ``(1,)`` (trained), and
``delora_w_norm`` ``(d_in,)``, the column norms of W₀ taken when the adapter
was made and saved with it. Each rank-one term is normalised by the norms of
its row of A and column of B, each clamped below at 1e-4 as peft does, so
that ‖ΔW‖ is bounded by λ; ΔW = (λ/r) · B diag(1/(‖Aᵢ‖·‖Bⁱ‖)) A · diag(w_norm).
r is the module's rank as peft sets it (the config's ``r`` or its
``rank_pattern``).
"""

from __future__ import annotations

import torch

from ...delta import Factored
from . import ALL_ROWS, Rows

__all__ = ["NORM_FLOOR", "delta"]

NORM_FLOOR = 1e-4  # peft clamps each row norm of A and column norm of B below at this


def delta(
    A: torch.Tensor,
    B: torch.Tensor,
    w_norm: torch.Tensor,
    s: float,
    rows: Rows = ALL_ROWS,
) -> Factored:
    """DeLoRA's ΔW = s · B diag(1/(‖Aᵢ‖‖Bⁱ‖)) A diag(w_norm), with s = λ/r."""
    A, B = A.double(), B.double()  # (r, d_in), (d_out, r)
    row_norms = torch.clamp(A.norm(dim=1), min=NORM_FLOOR)  # (r,): ‖Aᵢ‖
    column_norms = torch.clamp(B.norm(dim=0), min=NORM_FLOOR)  # (r,): ‖Bⁱ‖
    scaled_B = B[rows] / (row_norms * column_norms)  # (d_out of the role, r)
    scaled_A = A * w_norm.double()[None, :]  # (r, d_in): A diag(w_norm)
    return Factored(scaled_B, scaled_A, s)
