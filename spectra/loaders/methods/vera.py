"""VeRA: ΔW = diag(λ_b) · B[:d_out] · diag(λ_d) · A[:, :d_in] (factored, scale 1).

Follows peft's ``tuners/vera/layer.py`` (``Linear.get_delta_weight``: the
shared ``vera_A`` ``(r, widest d_in)`` and ``vera_B`` ``(widest d_out, r)``
sliced to the module as ``vera_A[:, :in_features]`` and
``vera_B[:out_features, :]``, then ``λ_b ⊙ (B @ (λ_d ⊙ A))``). ``λ_b`` is
``vera_lambda_b`` ``(d_out,)`` and ``λ_d`` ``vera_lambda_d`` ``(r,)``; the
vectors carry the scale.

PVeRA (peft's ``tuners/pvera/layer.py``, ``Linear.get_delta_weight``) is VeRA
with a probabilistic middle: ``pvera_A`` ``(2r, widest d_in)`` and
``pvera_lambda_d`` ``(2r,)`` hold a mean half and a log-variance half, and
the merged ΔW takes the means alone, ``diag(λ_b) B[:d_out] diag(λ_d[:r])
A[:r, :d_in]`` (``mean_delta``). ``vera_projections`` and
``pvera_projections`` draw the frozen bases from the seed as peft's
``VeraModel`` and ``PveraModel`` do, for adapters saved without them.
"""

from __future__ import annotations

import torch

from ...delta import Factored
from . import ALL_ROWS, Rows

__all__ = ["delta", "mean_delta", "pvera_projections", "vera_projections"]


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


def mean_delta(
    pvera_A: torch.Tensor,
    pvera_B: torch.Tensor,
    lambda_b: torch.Tensor,
    lambda_d: torch.Tensor,
    d_in: int,
    rows: Rows = ALL_ROWS,
) -> Factored:
    """PVeRA's merged ΔW: VeRA's formula on the mean halves of ``pvera_A`` and ``λ_d``.

    ``pvera_A`` is ``(2r, widest d_in)``, ``pvera_B`` ``(widest d_out, r)``,
    ``lambda_d`` ``(2r,)``: peft's merge keeps the first r rows of each (the
    means) and drops the log-variances.
    """
    half = lambda_d.shape[0] // 2
    return delta(pvera_A[:half], pvera_B, lambda_b, lambda_d[:half], d_in, rows)


def vera_projections(
    seed: int, rank: int, largest: tuple[int, int], a_rows: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A (a_rows, d_in), B (d_out, r))``, drawn as peft's ``VeraModel`` draws its bases.

    ``largest`` is ``(d_out, d_in)`` taken elementwise over every adapted
    module (peft's ``_find_dim``). Both are Kaiming-uniform draws (gain √2,
    fan in, peft's ``_kaiming_init``) in float32 from one CPU generator
    seeded ``seed``, A first. ``a_rows`` is r for VeRA (the default) and 2r
    for PVeRA, whose ``PveraModel`` draws the same way.
    """
    d_out, d_in = largest
    generator = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        A = torch.nn.init.kaiming_uniform_(
            torch.empty(a_rows or rank, d_in, dtype=torch.float32), generator=generator
        )
        B = torch.nn.init.kaiming_uniform_(
            torch.empty(d_out, rank, dtype=torch.float32), generator=generator
        )
    return A, B  # (a_rows, d_in), (d_out, r)


def pvera_projections(
    seed: int, rank: int, largest: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pvera_A (2r, d_in), pvera_B (d_out, r))`` drawn as peft's ``PveraModel`` draws them."""
    return vera_projections(seed, rank, largest, a_rows=2 * rank)
