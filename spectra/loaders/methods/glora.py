"""GLoRA: ΔW = W0 ⊙ A + B, each of A and B a LoRA, a column, a constant or nothing (dense).

Follows peft's ``tuners/glora/layer.py`` (``GloraLayer.merge``:
``W0 + W0 * A + B``). The config's ``config_A_B`` says what A and B are
(both alike): ``lora`` saves ``glora_A.Xd`` ``(d_out, r)`` and ``glora_A.Xu``
``(r, d_in)`` (A = Xd @ Xu), ``vector`` a column ``glora_A.X`` ``(d_out, 1)``
broadcast over d_in, ``constant`` a scalar ``glora_A.X`` ``(1,)``, and ``none``
nothing (zero). The paths C, D and E change the bias only
(``b + b ⊙ D + E + W0 @ C``): they are no part of ΔW.
"""

from __future__ import annotations

import torch

from ...delta import Dense
from . import ALL_ROWS, Rows

__all__ = ["delta", "path_value"]


def path_value(
    kind: str, d_out: int, parts: dict[str, torch.Tensor], rows: Rows = ALL_ROWS
) -> torch.Tensor | None:
    """One path's value, broadcastable to ``(rows, d_in)``, float64; ``None`` for ``none``.

    Args:
        kind: ``lora``, ``vector``, ``constant`` or ``none``.
        d_out: the module's output size.
        parts: the path's saved tensors by name (``Xd``, ``Xu``; ``X``).
        rows: the rows of ΔW one role owns.

    Returns:
        ``(rows, d_in)``, ``(rows, 1)``, ``(1,)`` or ``None``.
    """
    if kind == "lora":
        return parts["Xd"].double()[rows] @ parts["Xu"].double()  # (rows, d_in)
    if kind == "vector":
        return parts["X"].double().reshape(d_out, 1)[rows]  # (rows, 1)
    if kind == "constant":
        return parts["X"].double().reshape(1)  # (1,)
    if kind == "none":
        return None
    raise ValueError(f"unknown GLoRA path {kind!r}; expected lora, vector, constant or none")


def delta(
    W0: torch.Tensor, A: torch.Tensor | None, B: torch.Tensor | None, rows: Rows = ALL_ROWS
) -> Dense:
    """GLoRA's ΔW = W0 ⊙ A + B from W0 ``(d_out, d_in)`` and the paths' values (``path_value``).

    Args:
        W0: the base weight ``(d_out, d_in)``.
        A: path A's value for these rows, or ``None`` (zero).
        B: path B's value for these rows, or ``None`` (zero).
        rows: the rows of ΔW one role owns.

    Returns:
        ``Dense`` ΔW ``(rows, d_in)`` in float64.
    """
    base = W0.double()[rows]  # (rows, d_in)
    update = torch.zeros_like(base)
    if A is not None:
        update = update + base * A
    if B is not None:
        update = update + B
    return Dense(update)
