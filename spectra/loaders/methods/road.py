"""RoAd: ΔW = (R − I) · W0, R rotating (and scaling) pairs of output rows (dense; needs W0).

Follows peft's ``tuners/road/layer.py`` (``_get_delta_weight`` builds R and
``Linear.merge`` sets ``W0 ← R @ W0``; the forward is ``_apply_road``). The
output is cut into groups of ``group_size``; in each group, row p of the first
half pairs with row p + group_size/2. With ``f = α cos θ`` and ``s = α sin θ``
per row, a pair (x, y) becomes ``(f_x x − s_x y, f_y y + s_y x)``. What is
saved depends on the config's ``variant`` (``road_theta``, ``road_alpha`` of
one length):

- ``road_1`` ``(d_out/2,)``: one θ, α per pair, used by both its rows;
- ``road_2`` ``(d_out,)``: one per row;
- ``road_4`` ``(2·d_out,)``: per group, ``group_size`` values for f then
  ``group_size`` for s (``α₁ cos θ₁`` and ``α₂ sin θ₂``).

peft rotates the bias too (``R @ b``): a change of the bias, not of W.
"""

from __future__ import annotations

import torch

from ...delta import Dense
from . import ALL_ROWS, Rows

__all__ = ["VARIANT_LENGTH", "delta", "diagonals"]

# Saved vector length per output row, by variant.
VARIANT_LENGTH = {"road_1": 0.5, "road_2": 1, "road_4": 2}


def diagonals(
    variant: str, group_size: int, theta: torch.Tensor, alpha: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(f, s) per output row ``(d_out,)``: R's diagonal and its pair entries (``_prepare_cols``).

    Args:
        variant: ``road_1``, ``road_2`` or ``road_4``.
        group_size: the rows of one group (even).
        theta: ``road_theta`` as saved.
        alpha: ``road_alpha`` as saved.

    Returns:
        ``(f, s)``: ``α cos θ`` and ``α sin θ`` of each row, float64.
    """
    theta, alpha = theta.double(), alpha.double()
    half = group_size // 2
    if variant == "road_1":  # one value per pair: repeated for both halves of each group
        theta = theta.reshape(-1, half).repeat_interleave(2, dim=0).flatten()
        alpha = alpha.reshape(-1, half).repeat_interleave(2, dim=0).flatten()
        return alpha * theta.cos(), alpha * theta.sin()
    if variant == "road_2":
        return alpha * theta.cos(), alpha * theta.sin()
    if variant == "road_4":
        theta = theta.reshape(-1, 2, group_size)  # (groups, [f, s], group_size)
        alpha = alpha.reshape(-1, 2, group_size)
        first = (alpha[:, 0] * theta[:, 0].cos()).flatten()
        second = (alpha[:, 1] * theta[:, 1].sin()).flatten()
        return first, second
    raise ValueError(f"unknown RoAd variant {variant!r}; expected one of {sorted(VARIANT_LENGTH)}")


def delta(
    W0: torch.Tensor,
    theta: torch.Tensor,
    alpha: torch.Tensor,
    variant: str,
    group_size: int,
    rows: Rows = ALL_ROWS,
) -> Dense:
    """RoAd's ΔW = (R − I) W0 from W0 ``(d_out, d_in)`` and the saved θ, α.

    Args:
        W0: the base weight ``(d_out, d_in)``.
        theta: ``road_theta`` as saved.
        alpha: ``road_alpha`` as saved.
        variant: the config's ``variant``.
        group_size: the config's ``group_size``.
        rows: the rows of ΔW one role owns.

    Returns:
        ``Dense`` ΔW ``(rows, d_in)`` in float64.
    """
    base = W0.double()  # (d_out, d_in)
    d_out = base.shape[0]
    first, second = diagonals(variant, group_size, theta, alpha)  # (d_out,) each
    position = torch.arange(d_out) % group_size
    lower = position < group_size // 2  # the first half of each group
    partner = torch.where(
        lower, torch.arange(d_out) + group_size // 2, torch.arange(d_out) - group_size // 2
    )
    pair = torch.where(lower, -second, second)  # R[p, partner(p)]
    kept = torch.arange(d_out)[rows]  # this role's rows of the module
    update = (first[kept] - 1.0)[:, None] * base[kept] + pair[kept][:, None] * base[partner[kept]]
    return Dense(update)
