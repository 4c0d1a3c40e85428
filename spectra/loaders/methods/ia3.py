"""(IA)³: ΔW = (l − 1) ⊙ W0, l scaling W0's rows or its columns (dense; needs W0).

Follows peft's ``tuners/ia3/layer.py`` (``Linear.merge``: the merged weight
is ``W0 * ia3_l``, broadcast as saved). ``ia3_l`` is ``(d_out, 1)`` on an
attention module, scaling the output rows (``diag(l) W0``), and ``(1, d_in)``
on a ``feedforward_modules`` module, scaling the input columns
(``W0 diag(l)``); the saved shape says which. peft also multiplies an
attention module's bias by l: a change of the bias, not of W.
"""

from __future__ import annotations

import torch

from ...delta import Dense
from . import ALL_ROWS, Rows

__all__ = ["delta"]


def delta(W0: torch.Tensor, ia3_l: torch.Tensor, rows: Rows = ALL_ROWS) -> Dense:
    """(IA)³'s ΔW from W0 ``(d_out, d_in)`` and ``ia3_l`` ``(d_out, 1)`` or ``(1, d_in)``.

    Args:
        W0: the base weight ``(d_out, d_in)``.
        ia3_l: the learned vector as saved: ``(d_out, 1)`` scales rows,
            ``(1, d_in)`` scales columns.
        rows: the rows of ΔW one role owns.

    Returns:
        ``Dense`` ΔW ``(rows, d_in)`` in float64.

    Raises:
        ValueError: ``ia3_l`` is neither ``(d_out, 1)`` nor ``(1, d_in)``.
    """
    d_out, d_in = W0.shape
    if tuple(ia3_l.shape) not in ((d_out, 1), (1, d_in)):
        raise ValueError(f"ia3_l should be ({d_out}, 1) or (1, {d_in}); got {tuple(ia3_l.shape)}")
    change = ia3_l.double() - 1.0  # (d_out, 1) or (1, d_in)
    if change.shape[0] == d_out and d_out != 1:
        change = change[rows]  # an output scaling: this role's rows of it
    return Dense(change * W0.double()[rows])
