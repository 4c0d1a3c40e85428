"""RandLoRA: ΔW = s · B̂ @ Â, frozen random bases scaled by trained λ and γ (factored, full rank).

Follows peft's ``tuners/randlora/layer.py`` (``Linear.get_scaled_bases``,
``get_delta_weight``) and ``model.py`` (``_init_randlora_A_randlora_B`` and
its sparse form, for bases regenerated from the seed). The shared frozen bases are
``randlora_A`` ``(r, 1, widest m)`` and ``randlora_B`` ``(widest M, N, r)``;
a module of shape ``(d_out, d_in)`` with m = min and M = max of the two uses
n = ⌈m / r⌉ bases, its ``randlora_lambda`` λ ``(r, n)`` and ``randlora_gamma``
γ ``(n, m)``:

- Â = ``(λ[:, :, None] · A[:, :n, :m] · γ[None]).reshape(r·n, m)`` (rows
  ordered rank-major), B̂ = ``B[:M, :n, :].reshape(M, n·r)`` (columns
  ordered basis-major: peft pairs them as its reshapes fall, and so does this);
- ΔW = s · B̂ @ Â when d_in ≤ d_out (the small basis on the input side), else
  ΔW = s · (B̂ @ Â)ᵀ = s · Âᵀ @ B̂ᵀ; s = ``randlora_alpha / r``.

The inner dimension n·r ≥ m, so ΔW can reach full rank. ``bases`` draws the
frozen bases as peft does where the file does not hold them.
"""

from __future__ import annotations

import math

import torch

from ...delta import Factored
from . import ALL_ROWS, Rows

__all__ = ["bases", "basis_count", "delta"]


def basis_count(min_dim: int, rank: int) -> int:
    """⌈min_dim / r⌉: the number of bases that makes the update full rank (peft's rule)."""
    return math.ceil(min_dim / rank)


def delta(
    randlora_A: torch.Tensor,
    randlora_B: torch.Tensor,
    lambda_: torch.Tensor,
    gamma: torch.Tensor,
    shape: tuple[int, int],
    s: float,
    rows: Rows = ALL_ROWS,
) -> Factored:
    """RandLoRA's ΔW of one module of ``shape`` (d_out, d_in), from the shared bases."""
    d_out, d_in = shape
    small, large = min(d_out, d_in), max(d_out, d_in)
    rank, count = lambda_.shape  # (r, n)
    A = randlora_A.double()[:, :count, :small]  # (r, 1 or n, m)
    B = randlora_B.double()[:large, :count, :]  # (M, n, r)
    scaled_A = lambda_.double()[:, :, None] * A * gamma.double()[None]  # (r, n, m)
    flat_A = scaled_A.reshape(rank * count, small)  # (r·n, m)
    flat_B = B.reshape(large, count * rank)  # (M, n·r)
    if d_in == small:
        return Factored(flat_B[rows], flat_A, s)  # (d_out, n·r) @ (r·n, d_in)
    return Factored(flat_A.T[rows], flat_B.T, s)  # (d_out, r·n) @ (n·r, d_in)


def bases(
    seed: int,
    rank: int,
    largest: tuple[int, int],
    sparsity: float | None = None,
    draw_dtype: torch.dtype = torch.bfloat16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(randlora_A (r, 1, m), randlora_B (M, N, r))`` drawn from ``seed`` as peft draws them.

    ``largest`` is ``(d_out, d_in)`` taken elementwise over every adapted
    module (peft's ``_find_dim``); m and M are its min and max, N = ⌈m / r⌉.
    Dense bases (``sparsity`` None) are Kaiming-uniform draws
    (``a = √5``) in ``draw_dtype`` (peft's: bfloat16 where the machine has
    it, else float16), A then each of the N slices of B, each divided by its
    standard deviation. Sparse ones (peft's ``sparse``: 3, ``very_sparse``: √m)
    are ternary: a uniform draw u in float32 becomes −1 below 1/(2·sparsity),
    +1 above 1 − 1/(2·sparsity), else 0, then divided by its standard deviation.
    """
    small, large = min(largest), max(largest)
    count = basis_count(small, rank)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    if sparsity is None:

        def kaiming(shape: tuple[int, ...]) -> torch.Tensor:
            tensor = torch.empty(shape, dtype=draw_dtype)
            return torch.nn.init.kaiming_uniform_(tensor, a=math.sqrt(5), generator=generator)

        with torch.no_grad():
            A = kaiming((rank, 1, small))  # (r, 1, m)
            B = torch.cat([kaiming((large, 1, rank)) for _ in range(count)], dim=1)  # (M, N, r)
        return A / A.std(), B / B.std()
    uniform_A = torch.rand((rank, 1, small), generator=generator, dtype=torch.float32)  # (r, 1, m)
    uniform_B = torch.rand(
        (large, count, rank), generator=generator, dtype=torch.float32
    )  # (M, N, r)
    return _ternary(uniform_A, sparsity), _ternary(uniform_B, sparsity)


def _ternary(uniform: torch.Tensor, sparsity: float) -> torch.Tensor:
    """−1, 0 or +1 from a uniform draw (tails of mass 1/(2·sparsity)), over its std."""
    signs = torch.zeros(uniform.shape, dtype=torch.float32)
    signs[uniform < 1 / (2 * sparsity)] = -1
    signs[uniform > 1 - 1 / (2 * sparsity)] = 1
    return signs / signs.std()
