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
  ``spectral_suboptimality`` (‖ΔW − U_r Σ_r V_rᵀ‖₂ / σ_{r+1} by Rayleigh–Ritz on
  a block Krylov space of the residual: ≥ 1, within 0.002 of the exact ratio).

``lora_factors`` splits U_r Σ_r V_rᵀ into B (d_out, r) and A (r, d_in) for a
given LoRA scale s (B@A·s = U_r Σ_r V_rᵀ, √σ on each side).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..arguments import ENERGY, RANK
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
SUBOPTIMALITY_BLOCK = 8  # vectors added to the estimate's subspace per Krylov step
SUBOPTIMALITY_BLOCKS = 40  # at most this many blocks (320 products with ΔW and ΔWᵀ)
SUBOPTIMALITY_TOLERANCE = 1e-5  # stop once both norms move less than this share in one block
SUBOPTIMALITY_MIN_BLOCKS = 4  # and not before this many blocks (Krylov degree 3)
SUBOPTIMALITY_ACCURACY = 2e-3  # measured distance to the exact ratio (spectral_suboptimality)
ROUNDING_FLOOR = 1e-12  # σ_{r+1} / σ₁ below this: ΔW has rank ≤ r, the ratio is NaN


def check_amount(rank: int | None, energy: float | None) -> None:
    """How much of each ΔW to keep: exactly one of ``rank`` ≥ 1 or ``energy`` ∈ (0, 1]."""
    if (rank is None) == (energy is None):
        raise SpectraError(
            f"give one of {RANK('R')} or {ENERGY('Q')} (how much of each ΔW to keep)"
        )
    if rank is not None and rank < 1:
        raise SpectraError(f"{RANK} must be at least 1, got {rank}")
    if energy is not None and not 0 < energy <= 1:
        raise SpectraError(f"{ENERGY} must be in (0, 1], got {energy}")


@dataclass(frozen=True)
class Truncation:
    """The top singular triplets of ΔW: U (d_out, k), σ (k,), V (d_in, k), float64, CPU."""

    U: torch.Tensor
    S: torch.Tensor
    V: torch.Tensor
    algorithm: str  # "factored QR core", "full SVD" or "randomized (p=10, q=4)"
    next_sigma: float  # σ_{r+1} (the range finder's estimate when randomized; 0 past the rank)

    @property
    def rank(self) -> int:
        return self.U.shape[1]

    def first(self, k: int) -> Truncation:
        """The top ``k`` of these triplets (all of them when there are fewer)."""
        following = float(self.S[k]) if len(self.S) > k else self.next_sigma
        return Truncation(self.U[:, :k], self.S[:k], self.V[:, :k], self.algorithm, following)


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
    algorithm = f"randomized (p={OVERSAMPLING}, q={POWER_ITERATIONS})"
    return Truncation(U[:, :rank], S[:rank], V[:, :rank], algorithm, float(S[rank]))


def lora_factors(top: Truncation, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """B (d_out, k) and A (k, d_in) with scale·B@A = U diag(σ) Vᵀ, √(σ/scale) on each side."""
    root = torch.sqrt(top.S / scale)  # (k,)
    B = top.U * root  # (d_out, k)
    A = (top.V * root).T.contiguous()  # (k, d_in)
    return B, A


def spectral_suboptimality(matrix: torch.Tensor, top: Truncation, seed: int = 1) -> float:
    """‖ΔW − U Σ Vᵀ‖₂ / σ_{r+1}: 1 for the optimal truncation (Eckart–Young), ≥ 1 always.

    Both norms come from one subspace S of ℝ^{d_in} (Rayleigh–Ritz): S holds
    V and a block Krylov space of RᵀR, R = ΔW − U Σ Vᵀ the residual, grown
    ``SUBOPTIMALITY_BLOCK`` vectors at a time (matrix products only, never an
    SVD of ΔW). With Q an orthonormal basis of S, the estimate is
    σ₁(R Q) / σ_{r+1}(ΔW Q): the numerator is ≤ ‖R‖₂, the denominator ≤ σ_{r+1},
    both grow towards their exact values as S grows, and the ratio is ≥ 1
    for any S, since σ_{r+1}(ΔW Q) ≤ ‖(ΔW − U Σ Vᵀ) Q‖₂ (U Σ Vᵀ Q has rank r).
    S grows until both norms move by less than ``SUBOPTIMALITY_TOLERANCE``
    of their value from one block to the next, after at least
    ``SUBOPTIMALITY_MIN_BLOCKS`` (at most ``SUBOPTIMALITY_BLOCKS``; exact
    once S is all of ℝ^{d_in}).

    Accuracy (``SUBOPTIMALITY_ACCURACY``): within 0.002 of the exact ratio
    from a full float64 SVD, on slowly decaying spectra where the randomized
    path is taken (σ_i = 0.98^i, 0.995^i, i^-½ and Gaussian noise, d ≤ 2048,
    r = 1-16; tests/integration/test_actions.py and the measurements behind them), five
    times finer than the 1.01 that ``extract`` warns at. The denominator
    converges last, so the estimate errs high (towards a warning); the
    flattest spectra (noise) converge slowest. NaN when σ_{r+1} is at the
    rounding floor (ΔW has rank ≤ r: the truncation is exact).
    """
    matrix = matrix.to(torch.float64)  # (d_out, d_in)
    d_in = matrix.shape[1]
    generator = torch.Generator().manual_seed(seed)

    def residual(x: torch.Tensor) -> torch.Tensor:  # R x = ΔW x − U Σ Vᵀ x, (d_out, b)
        return matrix @ x - top.U @ (top.S[:, None] * (top.V.T @ x))

    def residual_t(y: torch.Tensor) -> torch.Tensor:  # Rᵀ y, (d_in, b)
        return matrix.T @ y - top.V @ (top.S[:, None] * (top.U.T @ y))

    def orthonormal_extension(basis: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
        """``block`` (d_in, b) made orthogonal to ``basis`` (twice) and orthonormal; (d_in, ≤ b)."""
        for _ in range(2):
            block = block - basis @ (basis.T @ block)
        Q, R_factor = torch.linalg.qr(block)  # (d_in, b), (b, b)
        kept = R_factor.diagonal().abs() > 1e-10 * max(float(R_factor.abs().max()), 1e-300)
        return Q[:, kept]

    basis = orthonormal_extension(torch.zeros(d_in, 0, dtype=torch.float64), top.V)  # (d_in, r)
    tuned_part = matrix @ basis  # ΔW Q, (d_out, m)
    residual_part = residual(basis)  # R Q, (d_out, m)
    tuned_gram = tuned_part.T @ tuned_part  # (m, m)
    residual_gram = residual_part.T @ residual_part  # (m, m)
    block = torch.randn(d_in, SUBOPTIMALITY_BLOCK, dtype=torch.float64, generator=generator)
    previous = (0.0, 0.0)
    for blocks in range(1, SUBOPTIMALITY_BLOCKS + 1):
        block = orthonormal_extension(basis, block)  # (d_in, b ≤ SUBOPTIMALITY_BLOCK)
        if block.shape[1] == 0:  # S is all of ℝ^{d_in}, or the Krylov space is invariant
            break
        basis = torch.cat([basis, block], dim=1)  # (d_in, m + b)
        new_tuned, new_residual = matrix @ block, residual(block)  # (d_out, b) each
        tuned_gram = _extend_gram(tuned_gram, tuned_part, new_tuned)
        residual_gram = _extend_gram(residual_gram, residual_part, new_residual)
        tuned_part = torch.cat([tuned_part, new_tuned], dim=1)  # (d_out, m + b)
        residual_part = torch.cat([residual_part, new_residual], dim=1)  # (d_out, m + b)
        tuned_sigma = torch.linalg.eigvalsh(tuned_gram).flip(0).clamp(min=0).sqrt()  # (m + b,)
        now = (
            float(tuned_sigma[top.rank]) if len(tuned_sigma) > top.rank else 0.0,
            float(torch.linalg.eigvalsh(residual_gram)[-1]) ** 0.5,
        )  # σ_{r+1}(ΔW Q), σ₁(R Q), to ε·σ₁²/σ_{r+1}²: enough to see them settle
        settled = all(
            abs(new - old) <= SUBOPTIMALITY_TOLERANCE * new
            for new, old in zip(now, previous, strict=True)
        )
        if blocks >= SUBOPTIMALITY_MIN_BLOCKS and settled:
            break
        previous = now
        block = residual_t(new_residual)  # the next Krylov block of RᵀR, (d_in, b)
    tuned_sigma = torch.linalg.svdvals(tuned_part)  # (min(d_out, m),) descending, the final values
    if len(tuned_sigma) <= top.rank or tuned_sigma[top.rank] <= ROUNDING_FLOOR * tuned_sigma[0]:
        return math.nan
    return float(torch.linalg.matrix_norm(residual_part, ord=2)) / float(tuned_sigma[top.rank])


def _extend_gram(gram: torch.Tensor, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """[old, new]ᵀ[old, new] from ``gram`` = oldᵀold (m, m), old (d_out, m), new (d_out, b)."""
    cross = old.T @ new  # (m, b)
    top_rows = torch.cat([gram, cross], dim=1)  # (m, m + b)
    bottom_rows = torch.cat([cross.T, new.T @ new], dim=1)  # (b, m + b)
    return torch.cat([top_rows, bottom_rows], dim=0)  # (m + b, m + b)
