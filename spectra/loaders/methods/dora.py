"""DoRA: ΔW = diag(m / ‖V‖_row) · V − W0, with V = W0 + s · B @ A (dense; needs W0).

Follows peft's ``tuners/lora/dora.py`` (``DoraLinearLayer.get_weight_norm``:
the L2 norm of each output row of ``W0 + scaling · B @ A``; the merged weight
is ``(m / norm) · (W0 + scaling · B @ A)``), which torchtune's ``DoRALinear``
and MLX-LM's ``DoRALinear`` compute the same way. ``m`` is the magnitude
vector (peft's ``lora_magnitude_vector``) of one entry per output row.
"""

from __future__ import annotations

import torch

from ...delta import Dense
from . import ALL_ROWS, Rows

__all__ = ["delta"]


def delta(
    W0: torch.Tensor,
    B: torch.Tensor,
    A: torch.Tensor,
    s: float,
    magnitude: torch.Tensor,
    rows: Rows = ALL_ROWS,
) -> Dense:
    """DoRA's ΔW in float64 from W0 ``(d_out, d_in)``, B ``(d_out, r)``, A ``(r, d_in)``, m.

    ``magnitude`` holds d_out entries (``(d_out,)`` or ``(d_out, 1)``), in the
    rows' order of ``B`` and ``W0``.
    """
    base = W0.double()  # (d_out, d_in)
    V = base + s * (B.double() @ A.double())  # (d_out, d_in)
    row_norm = torch.linalg.vector_norm(V, dim=1)  # (d_out,)
    tuned = (magnitude.double().reshape(-1) / row_norm)[:, None] * V  # (d_out, d_in)
    return Dense((tuned - base)[rows])
