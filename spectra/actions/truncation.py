"""Best rank-r approximations of ΔW, as LoRA factors, and how far each is from optimal.

Eckart–Young: the best rank-r approximation of ΔW in both the spectral and
the Frobenius norm is its truncated SVD U_r Σ_r V_rᵀ, with errors σ_{r+1}
and √(Σ_{i>r} σ_i²). This module finds it two ways:

- ``factored_top``: for ΔW = s·B@A held as factors, exactly, from the QR
  core (``subspace.singular_vectors``: never forms the d_out × d_in matrix);
- ``dense_top``: for a dense ΔW, by a full float64 SVD when r is a large part
  of n = min(d_out, d_in), else by a randomized range finder with power
  iterations (Halko, Martinsson & Tropp 2011, Alg. 4.4 via ``torch.svd_lowrank``,
  oversampling p = 10, q = 4 power iterations), followed by the accuracy check
  ``spectral_suboptimality``.

``lora_factors`` splits U_r Σ_r V_rᵀ into B (d_out, r) and A (r, d_in) for a
given LoRA scale s (B@A·s = U_r Σ_r V_rᵀ, √σ on each side).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..delta import Factored
from ..errors import SpectraError
from ..subspace import singular_vectors

__all__ = [
    "Truncation",
    "check_amount",
    "dense_top",
    "factored_top",
    "lora_factors",
    "spectral_suboptimality",
]

OVERSAMPLING = 10  # extra random directions of the range finder (Halko et al. §4.2)
POWER_ITERATIONS = 4  # (ΔW ΔWᵀ)^q sharpens a slowly decaying spectrum (Halko et al. §4.5)
FULL_SVD_SHARE = 0.25  # r above this share of n: a full SVD costs about the same, and is exact


def check_amount(rank: int | None, energy: float | None) -> None:
    """How much of each ΔW to keep: exactly one of ``rank`` ≥ 1 or ``energy`` ∈ (0, 1]."""
    if (rank is None) == (energy is None):
        raise SpectraError("give one of --rank R or --energy Q (how much of each ΔW to keep)")
    if rank is not None and rank < 1:
        raise SpectraError(f"--rank must be at least 1, got {rank}")
    if energy is not None and not 0 < energy <= 1:
        raise SpectraError(f"--energy must be in (0, 1], got {energy}")


@dataclass(frozen=True)
class Truncation:
    """The top singular triplets of ΔW: U (d_out, k), σ (k,), V (d_in, k), float64, CPU."""

    U: torch.Tensor
    S: torch.Tensor
    V: torch.Tensor
    method: str  # "factored QR core", "full SVD" or "randomized (p=10, q=4)"
    next_sigma: float  # σ_{r+1} (the range finder's estimate when randomized; 0 past the rank)

    @property
    def rank(self) -> int:
        return self.U.shape[1]

    def first(self, k: int) -> Truncation:
        """The top ``k`` of these triplets (all of them when there are fewer)."""
        following = float(self.S[k]) if len(self.S) > k else self.next_sigma
        return Truncation(self.U[:, :k], self.S[:k], self.V[:, :k], self.method, following)


def factored_top(update: Factored, rank: int) -> Truncation:
    """The top ``rank`` triplets of s·B@A, exactly; fewer where the numerical rank is lower."""
    vectors = singular_vectors(update, k=rank)
    keep = vectors.U.shape[1]  # cut at the numerical rank: no direction of rounding noise
    following = float(vectors.S[keep]) if len(vectors.S) > keep else 0.0
    return Truncation(vectors.U, vectors.S[:keep], vectors.V, "factored QR core", following)


def dense_top(matrix: torch.Tensor, rank: int, seed: int = 0) -> Truncation:
    """The top ``rank`` triplets of a dense ΔW ``(d_out, d_in)`` (module docstring)."""
    matrix = matrix.to(torch.float64)
    n = min(matrix.shape)
    rank = min(rank, n)
    if rank + OVERSAMPLING >= FULL_SVD_SHARE * n:
        U, S, Vh = torch.linalg.svd(matrix, full_matrices=False)  # (d_out, n), (n,), (n, d_in)
        following = float(S[rank]) if len(S) > rank else 0.0
        return Truncation(U[:, :rank], S[:rank], Vh[:rank].T, "full SVD", following)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # the same ΔW gives the same factors
    try:
        U, S, V = torch.svd_lowrank(matrix, q=rank + OVERSAMPLING, niter=POWER_ITERATIONS)
    finally:
        torch.random.set_rng_state(generator_state)
    method = f"randomized (p={OVERSAMPLING}, q={POWER_ITERATIONS})"
    return Truncation(U[:, :rank], S[:rank], V[:, :rank], method, float(S[rank]))


def lora_factors(top: Truncation, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """B (d_out, k) and A (k, d_in) with scale·B@A = U diag(σ) Vᵀ, √(σ/scale) on each side."""
    root = torch.sqrt(top.S / scale)  # (k,)
    B = top.U * root  # (d_out, k)
    A = (top.V * root).T.contiguous()  # (k, d_in)
    return B, A


def spectral_suboptimality(
    matrix: torch.Tensor, top: Truncation, next_sigma: float, iterations: int = 30
) -> float:
    """An estimate of ‖ΔW − U Σ Vᵀ‖₂ / σ_{r+1}: 1 for the optimal truncation (Eckart–Young).

    ``next_sigma`` is σ_{r+1} (or the range finder's estimate of it, which is
    never larger, so the ratio errs towards reporting a worse truncation).
    ‖R‖₂ of the residual R comes from power iterations on RᵀR, matrix-vector
    products only. NaN when σ_{r+1} is 0 (the truncation is then exact).
    """
    if next_sigma <= 0:
        return float("nan")
    matrix = matrix.to(torch.float64)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(matrix.shape[1], 1, dtype=torch.float64, generator=generator)  # (d_in, 1)

    def residual(v: torch.Tensor) -> torch.Tensor:  # R v = ΔW v − U Σ Vᵀ v, (d_out, 1)
        return matrix @ v - top.U @ (top.S[:, None] * (top.V.T @ v))

    def residual_t(u: torch.Tensor) -> torch.Tensor:  # Rᵀ u, (d_in, 1)
        return matrix.T @ u - top.V @ (top.S[:, None] * (top.U.T @ u))

    norm = 0.0
    for _ in range(iterations):
        x = residual_t(residual(x))
        size = float(torch.linalg.vector_norm(x))
        if size == 0:
            return 0.0
        x /= size
        norm = float(torch.linalg.vector_norm(residual(x)))
    return norm / next_sigma
