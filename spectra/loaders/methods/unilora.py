"""UniLoRA: ΔW = B @ A, each entry of both factors a scaled entry of a shared θ_d (factored).

Follows peft's ``tuners/unilora/layer.py`` (``Linear._get_lora_matrices``,
``get_delta_weight``). θ_d is ``unilora_theta_d`` ``(D,)``, shared by every
module; each module saves where each entry of its factors comes from,
``unilora_indices_A`` ``(r, d_in)`` and ``unilora_indices_B`` ``(d_out, r)``
(integers in ``[0, D)``), and the normalising scales ``unilora_scales_A`` /
``unilora_scales_B`` of the same shapes (1/√count of each index over the
whole adapter). A = θ_d[indices_A] ⊙ scales_A, B = θ_d[indices_B] ⊙ scales_B,
ΔW = B @ A with scale 1.
"""

from __future__ import annotations

import torch

from ...delta import Factored
from . import ALL_ROWS, Rows

__all__ = ["delta"]


def delta(
    theta_d: torch.Tensor,
    indices_A: torch.Tensor,
    indices_B: torch.Tensor,
    scales_A: torch.Tensor,
    scales_B: torch.Tensor,
    rows: Rows = ALL_ROWS,
) -> Factored:
    """UniLoRA's ΔW of one module from θ_d ``(D,)`` and its indices and scales."""
    theta = theta_d.double()  # (D,)
    A = theta[indices_A.long()] * scales_A.double()  # (r, d_in)
    B = theta[indices_B.long()[rows]] * scales_B.double()[rows]  # (d_out of the role, r)
    return Factored(B, A, 1.0)
