"""VB-LoRA: ΔW = B @ A, each factor mixed from a shared vector bank by top-k softmax (factored).

Follows peft's ``tuners/vblora/layer.py`` (``Linear._get_low_rank_matrix``,
``_get_lora_matrices``, ``get_delta_weight``). The bank is
``vblora_vector_bank`` ``(n, L)``: n vectors of length L, shared by every
module. Each sub-vector of a factor is a mixture of k bank vectors: of its
logits over the bank, the k largest are kept and softmax-weighted,
``Σ_j softmax(top-k logits)_j · bank[index_j]``.

- ``vblora_logits_A`` ``(r, d_in/L, n)`` gives A ``(r, d_in)``: row i is its
  ``d_in/L`` mixed sub-vectors laid end to end.
- ``vblora_logits_B`` ``(d_out/L, r, n)`` gives B ``(d_out, r)``: the mixed
  ``(d_out/L, r, L)`` is turned to ``(d_out/L, L, r)`` and its first two axes
  joined, so column j of B is its ``d_out/L`` sub-vectors end to end.

With ``save_only_topk_weights`` the file keeps, per sub-vector, the indices of
the top k (``…_topk_indices``) and the first k−1 softmax weights
(``…_topk_weights``); the k-th is ``1 − Σ`` of the others (peft's
``VBLoRAModel._remap_adapter_state_dict_for_load``). The weights are used as
they are, in float64: peft's reload takes their logarithm and a softmax
again, which is the identity but for its rounding. The mixtures carry the
scale: there is no α.
"""

from __future__ import annotations

import torch

from ...delta import Factored
from . import ALL_ROWS, Rows

__all__ = ["delta", "delta_from_topk", "top_k"]


def top_k(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(softmax weights, indices) of the k largest logits on the last axis, in float64.

    ``torch.topk`` on the float64 logits, as peft's merge of a float64 model
    picks them (ties too).
    """
    values, indices = logits.double().topk(k, dim=-1)  # (..., k) each
    return torch.softmax(values, dim=-1), indices


def _mix(weights: torch.Tensor, indices: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Σ_j weights_j · bank[indices_j]: ``(..., k)`` weights and indices → ``(..., L)``."""
    return (weights.unsqueeze(-1) * bank[indices.long()]).sum(-2)  # (..., L)


def _factored(mixed_A: torch.Tensor, mixed_B: torch.Tensor, rows: Rows) -> Factored:
    """ΔW = B @ A from the mixed ``(r, d_in/L, L)`` and ``(d_out/L, r, L)``."""
    rank = mixed_A.shape[0]
    A = mixed_A.reshape(rank, -1)  # (r, d_in)
    B = mixed_B.transpose(1, 2).reshape(-1, rank)  # (d_out/L, L, r) → (d_out, r)
    return Factored(B[rows], A, 1.0)


def delta(
    bank: torch.Tensor,
    logits_A: torch.Tensor,
    logits_B: torch.Tensor,
    k: int,
    rows: Rows = ALL_ROWS,
) -> Factored:
    """VB-LoRA's ΔW from the full logits ``(r, d_in/L, n)`` and ``(d_out/L, r, n)``."""
    bank = bank.double()  # (n, L)
    mixed_A = _mix(*top_k(logits_A, k), bank)  # (r, d_in/L, L)
    mixed_B = _mix(*top_k(logits_B, k), bank)  # (d_out/L, r, L)
    return _factored(mixed_A, mixed_B, rows)


def _all_weights(first: torch.Tensor) -> torch.Tensor:
    """The k weights from the saved first k−1, in float64: the last is 1 − Σ of the others."""
    first = first.double()  # (..., k-1)
    return torch.cat([first, 1.0 - first.sum(-1, keepdim=True)], dim=-1)  # (..., k)


def delta_from_topk(
    bank: torch.Tensor,
    indices_A: torch.Tensor,
    weights_A: torch.Tensor,
    indices_B: torch.Tensor,
    weights_B: torch.Tensor,
    rows: Rows = ALL_ROWS,
) -> Factored:
    """VB-LoRA's ΔW as ``save_only_topk_weights`` saves it: top-k indices, first k−1 weights."""
    bank = bank.double()  # (n, L)
    mixed_A = _mix(_all_weights(weights_A), indices_A, bank)  # (r, d_in/L, L)
    mixed_B = _mix(_all_weights(weights_B), indices_B, bank)  # (d_out/L, r, L)
    return _factored(mixed_A, mixed_B, rows)
