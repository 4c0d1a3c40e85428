"""Multi-head LoRA (HydraLoRA / R-LoRA): one ``A``, heads ``B_0 … B_{n-1}``; each or their mixture.

Follows HydraLoRA (Tian et al., 2024, "HydraLoRA: an asymmetric LoRA
architecture for efficient fine-tuning") and its reference layer (as in
``spectra.examples.reference``): the output is ``s · Σ_j w_j(x) B_j @ A x``
with a router's input-dependent weights ``w_j``. A static ΔW is either each
head's ``s · B_j @ A`` or the uniform mixture ``s · mean_j(B_j) @ A``; ``A`` is
``(r, d_in)``, each ``B_j`` ``(d_out, r)``, ``s`` the LoRA scale.
"""

from __future__ import annotations

import torch

from ...delta import Factored
from . import ALL_ROWS, Rows

__all__ = ["each_head", "mixture"]


def each_head(
    A: torch.Tensor, Bs: list[torch.Tensor], s: float, rows: Rows = ALL_ROWS
) -> list[Factored]:
    """Each head's ΔW_j = s · B_j @ A."""
    A = A.double()  # (r, d_in)
    return [Factored(B.double()[rows], A, s) for B in Bs]


def mixture(A: torch.Tensor, Bs: list[torch.Tensor], s: float, rows: Rows = ALL_ROWS) -> Factored:
    """The uniform mixture ΔW = s · mean_j(B_j) @ A."""
    mean_B = torch.stack([B.double() for B in Bs]).mean(0)  # (d_out, r)
    return Factored(mean_B[rows], A.double(), s)
