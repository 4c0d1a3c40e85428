"""PEANuT: ΔW = s · B @ h(W0)ᵀ (factored, rank ≤ r), ``h`` a small network applied to W0ᵀ.

Follows peft's ``tuners/peanut/layer.py`` (``Linear._compute_delta_weight``):

    h₀ = f(W0ᵀ @ Aᵀ)                                   (d_in, r)
    encoders i = 1…depth: keep hᵢ₋₁, hᵢ = f(hᵢ₋₁ @ Eᵢᵀ)
    decoders i = 1…depth: h = f(h @ Dᵢᵀ) + the kept h of the mirrored encoder
    ΔW = s · (h @ Bᵀ)ᵀ = s · B @ hᵀ                    (d_out, d_in)

with ``A`` = ``peanut_A`` ``(r, d_out)`` (it reads W0's output dimension),
``B`` = ``peanut_B`` ``(d_out, r)``, ``Eᵢ``, ``Dᵢ`` = ``peanut_encoders.i``,
``peanut_decoders.i`` ``(r, r)``, ``s`` = ``scaling`` and ``f`` the
activation ``act_fn`` names (transformers' ``ACT2FN``; the ones below are
written out here, as transformers defines them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch.nn import functional

from ...delta import Factored
from . import ALL_ROWS, Rows

__all__ = ["ACTIVATIONS", "delta"]


def _gelu_new(x: torch.Tensor) -> torch.Tensor:
    """transformers' NewGELUActivation: the tanh approximation, written out."""
    return (
        0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))
    )


# act_fn → the function transformers' ACT2FN gives for it (checked against it by the tests).
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu,
    "relu6": functional.relu6,
    "leaky_relu": functional.leaky_relu,  # slope 0.01, nn.LeakyReLU's default
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "silu": functional.silu,
    "swish": functional.silu,
    "gelu": functional.gelu,
    "gelu_pytorch_tanh": lambda x: functional.gelu(x, approximate="tanh"),
    "gelu_new": _gelu_new,
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "linear": lambda x: x,
}


def delta(
    base: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    encoders: Sequence[torch.Tensor],
    decoders: Sequence[torch.Tensor],
    act_fn: str,
    scale: float,
    rows: Rows = ALL_ROWS,
) -> Factored:
    """PEANuT's ΔW of one module, factored as ``s · B @ hᵀ`` (``act_fn`` one of ``ACTIVATIONS``)."""
    f = ACTIVATIONS[act_fn]
    h = f(base.to(torch.float64).T @ A.to(torch.float64).T)  # (d_in, r)
    kept = []
    for encoder in encoders:  # each (r, r)
        kept.append(h)
        h = f(h @ encoder.to(torch.float64).T)  # (d_in, r)
    for i, decoder in enumerate(decoders):  # each (r, r)
        h = f(h @ decoder.to(torch.float64).T) + kept[len(kept) - 1 - i]  # (d_in, r)
    return Factored(B.to(torch.float64)[rows], h.T.contiguous(), scale)  # (d_out, r) @ (r, d_in)
