"""MultiLoRA: ΔW = s · Σ_i diag(c_i) · B_i @ A_i, n parallel LoRAs with scaling vectors.

Follows Wang et al., 2023, "MultiLoRA: democratizing LoRA for better
multi-task learning" (and its reference ``MultiLoRALinear``, as in
``spectra.examples.reference``), with the stacked tensors ``A (n, r, d_in)``,
``B (n, d_out, r)`` and ``c (n, d_out)``, and ``s = α/r``. The sum is kept
factored as ``[diag(c_1) B_1 … diag(c_n) B_n] @ [A_1; …; A_n]`` (rank ≤ n·r).
"""

from __future__ import annotations

import torch

from ...delta import Factored
from . import ALL_ROWS, Rows

__all__ = ["each_head", "summed"]


def _scaled_ups(B: torch.Tensor, c: torch.Tensor, rows: Rows) -> torch.Tensor:
    """``diag(c_i) B_i`` for every head, cut to ``rows``: ``(n, d_out of the role, r)``."""
    return (c.double()[:, :, None] * B.double())[:, rows]


def each_head(
    A: torch.Tensor, B: torch.Tensor, c: torch.Tensor, s: float, rows: Rows = ALL_ROWS
) -> list[Factored]:
    """Each head's ΔW_i = s · diag(c_i) · B_i @ A_i."""
    scaled_B = _scaled_ups(B, c, rows)  # (n, d_out, r)
    A = A.double()  # (n, r, d_in)
    return [Factored(scaled_B[i], A[i], s) for i in range(A.shape[0])]


def summed(
    A: torch.Tensor, B: torch.Tensor, c: torch.Tensor, s: float, rows: Rows = ALL_ROWS
) -> Factored:
    """The whole ΔW = s · Σ_i diag(c_i) · B_i @ A_i, as one factored product of rank ≤ n·r."""
    scaled_B = _scaled_ups(B, c, rows)  # (n, d_out, r)
    n, d_out, r = scaled_B.shape
    B_cat = scaled_B.permute(1, 0, 2).reshape(d_out, n * r)  # (d_out, n·r) = [c_1B_1 … c_nB_n]
    A_cat = A.double().reshape(n * r, A.shape[2])  # (n·r, d_in) = [A_1; …; A_n]
    return Factored(B_cat, A_cat, s)
