"""Reference layers for MultiLoRA and multi-head LoRA, written from their formulas.

No official MultiLoRA release exists, and HydraLoRA lives in a fork of an
old PEFT; these small ``torch.nn`` layers implement the forward passes that
docs/formats.md gives ("MultiLoRA", "Multi-head LoRA") so that genuine
checkpoints can be trained and saved in the reference on-disk layouts (by
spectra's tests, the figure script, and users who want to try the methods):

- ``MultiLoRALinear``: y = W x + (α/r) Σ_i c_i ⊙ (B_i A_i x), with
  ``lora_A (n, r, d_in)``, ``lora_B (n, d_out, r)`` and the scaling vectors
  ``lora_scaling (n, d_out)``, zero-initialised so ΔW = 0 at the start
  (Wang et al., 2023); A and B start random so the scalings can learn.
- ``MultiHeadLoRALinear``: y = W x + s Σ_j softmax(route(x))_j B_j A x, with
  ``lora_A`` (r, d_in), ``lora_B{j}`` (d_out, r) and ``lora_route`` (N, d_in)
  (HydraLoRA, Tian et al., 2024).

``wrap(model, names, layer)`` swaps every ``nn.Linear`` whose name ends with
one of ``names`` for the layer; its ``state_dict()`` then has the reference
key layout (``…key.lora_A``, ``…key.base.weight``, …).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = ["MultiHeadLoRALinear", "MultiLoRALinear", "wrap"]


class MultiLoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus n parallel LoRAs with learnable scaling vectors."""

    def __init__(self, base: nn.Linear, heads: int, rank: int, alpha: float):
        super().__init__()
        self.base = base.requires_grad_(False)
        d_out, d_in = base.weight.shape
        self.scale = alpha / rank
        self.lora_A = nn.Parameter(torch.randn(heads, rank, d_in) / math.sqrt(d_in))  # (n, r, d_in)
        self.lora_B = nn.Parameter(
            torch.randn(heads, d_out, rank) / math.sqrt(rank)
        )  # (n, d_out, r)
        self.lora_scaling = nn.Parameter(torch.zeros(heads, d_out))  # (n, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (..., d_in)
        h = torch.einsum("...i,nri->...nr", x, self.lora_A)  # (..., n, r)
        h = torch.einsum("...nr,nor->...no", h, self.lora_B)  # (..., n, d_out)
        return self.base(x) + self.scale * (self.lora_scaling * h).sum(-2)


class MultiHeadLoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus one shared A, N routed B heads (HydraLoRA)."""

    def __init__(self, base: nn.Linear, heads: int, rank: int, alpha: float):
        super().__init__()
        self.base = base.requires_grad_(False)
        d_out, d_in = base.weight.shape
        self.scale = alpha / rank
        self.heads = heads
        self.lora_A = nn.Linear(d_in, rank, bias=False)  # weight (r, d_in)
        for j in range(heads):
            setattr(self, f"lora_B{j}", nn.Linear(rank, d_out, bias=False))  # weight (d_out, r)
        self.lora_route = nn.Linear(d_in, heads, bias=False)  # weight (N, d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.lora_route(x), dim=-1)  # (..., N)
        h = self.lora_A(x)  # (..., r)
        heads = torch.stack([getattr(self, f"lora_B{j}")(h) for j in range(self.heads)], -1)
        return self.base(x) + self.scale * (heads * weights[..., None, :]).sum(-1)  # (..., d_out)


def wrap(
    model: nn.Module, names: Sequence[str], layer: Callable[[nn.Linear], nn.Module]
) -> list[str]:
    """Replace each ``nn.Linear`` whose name ends with one of ``names``; return the paths."""
    replaced = []
    for path, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and path.split(".")[-1] in names:
            parent_path, _, child = path.rpartition(".")
            parent = model.get_submodule(parent_path) if parent_path else model
            setattr(parent, child, layer(module))
            replaced.append(path)
    return replaced
