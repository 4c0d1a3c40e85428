"""AdaLoRA: ΔW = s · B @ (A ⊙ E), an SVD-shaped LoRA (factored).

Follows peft's ``tuners/adalora/layer.py`` (``SVDLinear.get_delta_weight``:
``B @ (A * E) · scaling / (ranknum + 1e-5)``), with ``A`` = ``lora_A``
``(k, d_in)``, ``E`` = ``lora_E`` ``(k, 1)`` (the singular-value-like
scales; ranks pruned by the budget are zero rows) and ``B`` = ``lora_B``
``(d_out, k)``. ``s`` is the caller's: peft's ``scaling / (ranknum + 1e-5)``
with ranknum as the reader finds it.
"""

from __future__ import annotations

import torch

from ...delta import Factored
from . import ALL_ROWS, Rows

__all__ = ["delta"]


def delta(
    A: torch.Tensor, B: torch.Tensor, E: torch.Tensor, s: float, rows: Rows = ALL_ROWS
) -> Factored:
    """ΔW = s · B @ (A ⊙ E) kept factored, widened to float64 before any arithmetic."""
    scaled_A = A.double() * E.double().reshape(-1, 1)  # (k, d_in): A ⊙ E
    return Factored(B.double()[rows], scaled_A, s)  # (d_out of the role, k)
