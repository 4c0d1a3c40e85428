"""LN tuning on a projection: ΔW = W_tuned − W0 (dense), the trained copy minus the base.

Follows peft's ``tuners/ln_tuning/layer.py`` (``LNTuningLayer.merge``, which
swaps the trained copy ``ln_tuning_layers`` in for the base layer): the
merged weight is the copy as saved, so ΔW is the plain difference, the
copy's rounding to the saved dtype included (no rounding of W0 to that grid,
unlike a full fine-tune's ``full.difference``: peft's merge does not round W0).
``tuned`` is ``(d_out, d_in)``, ``base`` the module's W0 ``(d_out, d_in)``.
"""

from __future__ import annotations

import torch

from ...delta import Dense
from . import ALL_ROWS, Rows

__all__ = ["delta"]


def delta(tuned: torch.Tensor, base: torch.Tensor, rows: Rows = ALL_ROWS) -> Dense:
    """ΔW = W_tuned − W0 of one module, in float64 (a new tensor: neither input is written)."""
    difference = tuned.to(torch.float64) - base.to(torch.float64)  # (d_out, d_in)
    return Dense(difference[rows])
