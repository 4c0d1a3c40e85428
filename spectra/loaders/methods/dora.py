"""DoRA: ΔW = diag(m / ‖V‖_row) · V − W0, with V = W0 + s · B @ A (dense; needs W0).

Follows peft's ``tuners/lora/dora.py`` (``DoraLinearLayer.get_weight_norm``:
the L2 norm of each output row of ``W0 + scaling · B @ A``; the merged weight
is ``(m / norm) · (W0 + scaling · B @ A)``), which torchtune's ``DoRALinear``
and MLX-LM's ``DoRALinear`` compute the same way. ``m`` is the magnitude
vector (peft's ``lora_magnitude_vector``) of one entry per output row.

``decompose`` is the same weight decomposition over any update and either
axis, as LyCORIS applies it (``lycoris/functional/general.py``,
``weight_decompose``; its ``dora_scale``): ``V = W0 + ΔW_dir`` and
``W' = V · m / ‖V‖``, the norm taken per output row (``wd_on_output=True``,
the default of LyCORIS 4.1's kohya wrapper, peft's axis) or per input column
(LyCORIS's original axis, ``dora_scale`` of shape ``(1, d_in)``):
``W' = V · diag(m / ‖V‖_col)``.
LyCORIS adds ``finfo(dtype).eps`` to the norm, 2.2e-16 in float64, which is
left out.
"""

from __future__ import annotations

import torch

from ...delta import Dense
from . import ALL_ROWS, Rows

__all__ = ["decompose", "delta"]


def delta(
    W0: torch.Tensor,
    B: torch.Tensor,
    A: torch.Tensor,
    s: float,
    magnitude: torch.Tensor,
    rows: Rows = ALL_ROWS,
) -> Dense:
    """DoRA's ΔW in float64 from W0 ``(d_out, d_in)``, B ``(d_out, r)``, A ``(r, d_in)``, m.

    ``magnitude`` holds d_out entries (``(d_out,)`` or ``(d_out, 1)``), in the
    rows' order of ``B`` and ``W0``.
    """
    base = W0.double()  # (d_out, d_in)
    V = base + s * (B.double() @ A.double())  # (d_out, d_in)
    row_norm = torch.linalg.vector_norm(V, dim=1)  # (d_out,)
    tuned = (magnitude.double().reshape(-1) / row_norm)[:, None] * V  # (d_out, d_in)
    return Dense((tuned - base)[rows])


def decompose(
    W0: torch.Tensor,
    update: torch.Tensor,
    magnitude: torch.Tensor,
    over: str = "out",
    rows: Rows = ALL_ROWS,
) -> Dense:
    """ΔW = W' − W0 of a weight decomposition, W' = V · m / ‖V‖, V = W0 + update, in float64.

    ``W0`` and ``update`` are ``(d_out, d_in)``; ``over="out"`` normalises
    each output row (``magnitude`` of d_out entries), ``over="in"`` each input
    column (d_in entries). The norm spans the whole module, so ``rows`` are
    kept only after it.
    """
    base = W0.double()  # (d_out, d_in)
    V = base + update.double()  # (d_out, d_in)
    m = magnitude.double().reshape(-1)
    if over == "out":
        tuned = (m / torch.linalg.vector_norm(V, dim=1))[:, None] * V  # (d_out, d_in)
    elif over == "in":
        tuned = V * (m / torch.linalg.vector_norm(V, dim=0))[None, :]  # (d_out, d_in)
    else:
        raise ValueError(f"over must be 'out' or 'in', not {over!r}")
    return Dense((tuned - base)[rows])
