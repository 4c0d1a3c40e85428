"""Super-Tuning: ΔW = scatter(indices, values) + (α/r)·B @ A (dense), a sparse support plus LoRA.

Follows peft's ``tuners/supertuning/layer.py`` (``Linear.get_delta_weight``):
``values`` (``supertuning_values``, ``(k,)``) are added at the flat positions
``indices`` (``supertuning_indices``, ``(k,)``, into W0 read row-major) of a
zero ``(d_out, d_in)`` matrix (``scatter_add``: a repeated index adds up);
in "Supra" mode (``r`` set) ``(α/r) · B @ A`` is added, ``A`` =
``supertuning_lora_A`` ``(r, d_in)``, ``B`` = ``supertuning_lora_B``
``(d_out, r)``. When the indices were not saved (``save_precomputed_indices``
false), peft picks them again at load as the top-k entries of ``|W0|``
(``SupertuningLayer.update_layer``); ``support`` does the same.
"""

from __future__ import annotations

import torch

from ...delta import Dense
from . import ALL_ROWS, Rows

__all__ = ["delta", "support"]


def support(base: torch.Tensor, sparsity: float, largest: bool) -> torch.Tensor:
    """peft's sparse support: the flat positions of the top ``int(numel · (1 − sparsity))`` |W0|.

    ``base`` is W0 as peft holds it (the dtype it is loaded in decides ties):
    ``torch.topk`` of its flattened magnitudes, ``largest`` as ``select_top``.
    """
    scores = base.abs().flatten()  # (d_out · d_in,)
    count = int(scores.numel() * (1 - sparsity))
    return torch.topk(scores, k=count, largest=largest).indices  # (k,)


def delta(
    shape: tuple[int, int],
    indices: torch.Tensor,
    values: torch.Tensor,
    lora: tuple[torch.Tensor, torch.Tensor, float] | None = None,
    rows: Rows = ALL_ROWS,
) -> Dense:
    """Super-Tuning's ΔW of one module; ``lora`` = (B, A, α/r) in Supra mode."""
    d_out, d_in = shape
    flat = torch.zeros(d_out * d_in, dtype=torch.float64)
    flat.scatter_add_(0, indices.to(torch.int64), values.to(torch.float64))
    matrix = flat.reshape(d_out, d_in)  # (d_out, d_in)
    positions = torch.unique(indices.to(torch.int64))
    touched = min(torch.unique(positions // d_in).numel(), torch.unique(positions % d_in).numel())
    if lora is not None:
        B, A, scale = lora  # (d_out, r), (r, d_in)
        matrix += scale * (B.to(torch.float64) @ A.to(torch.float64))
        touched += A.shape[0]
    bound = touched if touched < min(d_out, d_in) else None  # the support's rows or columns, + r
    return Dense(matrix[rows], rank_bound=bound)
