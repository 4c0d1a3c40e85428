"""SHiRA: ΔW = the sparse matrix of ``shira_weight`` at ``shira_indices``, times its scale (dense).

Follows peft's ``tuners/shira/layer.py`` (``Linear.get_delta_weight``:
``torch.sparse_coo_tensor(shira_indices, shira_weight · scaling, (d_out,
d_in))``, added to W0 by ``merge``). ``shira_indices`` ``(2, n)`` holds each
value's (row, column); peft saves them beside ``shira_weight`` ``(n,)``
(integers, or float32 when saved on Windows). The scale is 1 unless set at
inference (``set_scale``, saved nowhere). A sparse matrix's rank is at most
the number of its rows, or of its columns, that hold an entry.
"""

from __future__ import annotations

import torch

from ...delta import Dense
from . import ALL_ROWS, Rows

__all__ = ["delta"]


def delta(
    values: torch.Tensor,
    indices: torch.Tensor,
    shape: tuple[int, int],
    scale: float = 1.0,
    rows: Rows = ALL_ROWS,
) -> Dense:
    """SHiRA's ΔW of one module: ``values`` at ``indices`` in a zero ``(d_out, d_in)``.

    Args:
        values: ``shira_weight`` ``(n,)``.
        indices: ``shira_indices`` ``(2, n)``: row, then column of each value
            (whole numbers, in any dtype).
        shape: ``(d_out, d_in)`` of the module (from the base model).
        scale: the scale peft multiplies by (1 unless set at inference).
        rows: the rows of ΔW this role owns (fused projections); all by default.

    Returns:
        ``Dense`` ΔW in float64; a repeated index adds its values, as a sparse
        tensor's sum does. ``rank_bound``: the rows or columns holding an entry.

    Example:
        >>> update = delta(torch.tensor([2.0, 3.0]), torch.tensor([[0, 2], [1, 1]]), (3, 4))
        >>> update.matrix[:, 1].tolist(), update.rank_ceiling
        ([2.0, 0.0, 3.0], 1)
    """
    row_index, column_index = indices.long()  # (n,), (n,)
    matrix = torch.zeros(shape, dtype=torch.float64)  # (d_out, d_in)
    matrix.index_put_((row_index, column_index), values.double() * scale, accumulate=True)
    occupied = min(len(row_index.unique()), len(column_index.unique()))
    return Dense(matrix[rows], rank_bound=occupied)
