"""HiRA: ΔW = W0 ⊙ (B @ A), a Hadamard product with a rank-r matrix (dense; needs W0).

Follows peft's ``tuners/hira/layer.py`` (``Linear.get_delta_weight`` gives
``B @ A`` and ``_merge`` adds ``W0 * (B @ A)``), with ``hira_A`` ``(r, d_in)``
and ``hira_B`` ``(d_out, r)``; no scale.
"""

from __future__ import annotations

import torch

from ...delta import Dense
from . import ALL_ROWS, Rows

__all__ = ["delta"]


def delta(
    W0: torch.Tensor, hira_A: torch.Tensor, hira_B: torch.Tensor, rows: Rows = ALL_ROWS
) -> Dense:
    """HiRA's ΔW from W0 ``(d_out, d_in)``, ``hira_A`` ``(r, d_in)`` and ``hira_B`` ``(d_out, r)``.

    Args:
        W0: the base weight ``(d_out, d_in)``.
        hira_A: ``(r, d_in)``.
        hira_B: ``(d_out, r)``.
        rows: the rows of ΔW one role owns.

    Returns:
        ``Dense`` ΔW ``(rows, d_in)`` in float64.
    """
    product = hira_B.double()[rows] @ hira_A.double()  # (rows, d_in)
    return Dense(W0.double()[rows] * product)
