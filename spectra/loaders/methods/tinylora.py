"""TinyLoRA: ΔW = B @ (Σᵢ vᵢ Pᵢ) @ A, a tiny trained vector through fixed random r×r projections.

Follows peft's ``tuners/tinylora/layer.py`` (``TinyLoraLayer._compute_R``,
``Linear.get_delta_weight``, and ``_init_projection`` for projections
regenerated from their seed). ``tinylora_A`` ``(r, d_in)`` and
``tinylora_B`` ``(d_out, r)`` are frozen, cut from the SVD of W₀ when the
adapter was made (√σ on each side) and saved in the file; ``tinylora_P``
``(u, r, r)`` is the module's fixed random projection and ``tinylora_v``
``(u,)`` the trained vector, which modules may share (``weight_tying``).
R = ``Σᵢ v[i] · P[i]`` ``(r, r)``; ΔW = B @ R @ A, kept as ``(B @ R) @ A``
with scale 1 (v carries it). r may be below the config's where a module is
narrower (peft's ``actual_r``).
"""

from __future__ import annotations

import torch

from ...delta import Factored
from . import ALL_ROWS, Rows

__all__ = ["delta", "projection"]


def delta(
    A: torch.Tensor, B: torch.Tensor, P: torch.Tensor, v: torch.Tensor, rows: Rows = ALL_ROWS
) -> Factored:
    """TinyLoRA's ΔW: ``A (r, d_in)``, ``B (d_out, r)``, ``P (u, r, r)``, ``v (u,)``."""
    R = torch.einsum("i,ijk->jk", v.double(), P.double())  # (r, r)
    return Factored(B.double()[rows] @ R, A.double(), 1.0)  # (d_out of the role, r), (r, d_in)


def projection(seed: int, u: int, rank: int) -> torch.Tensor:
    """P ``(u, r, r)`` as peft draws it: N(0, 1/r) in float32 from a CPU generator seeded ``seed``.

    peft seeds each module with ``projection_seed`` plus the module's index
    among the adapted modules in the model's module order.
    """
    generator = torch.Generator().manual_seed(seed)
    return torch.normal(
        mean=0.0,
        std=1.0 / (rank**0.5),
        size=(u, rank, rank),
        generator=generator,
        dtype=torch.float32,
    )
