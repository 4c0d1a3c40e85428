"""Subspace metrics (METRICS.md "Subspace"): the only place spectra takes singular vectors.

- ``subspace_similarity(U_a, U_b)``: ``‖U_aᵀ U_b‖_F² / min(i, j)`` for the top-i
  and top-j left singular vectors of two ΔW, in [0, 1] (Hu et al. 2021, LoRA,
  §7.2, their φ);
- ``amplification(delta, W0, r)``: ``‖ΔW‖_F / ‖U_rᵀ W0 V_r‖_F`` with ``U_r``,
  ``V_r`` the top-r singular vectors of ΔW: how much ΔW magnifies directions
  W0 barely uses (LoRA, §7.3);
- ``intruder_dimensions(W0, delta, k, eps)``: how many of the top-k left
  singular vectors of ``W0 + ΔW`` have ``max |cos|`` below ``eps`` with every
  left singular vector of ``W0`` (Shuttleworth et al. 2024, "LoRA vs Full
  Fine-tuning: An Illusion of Equivalence"; k = 10, ε = 0.5 by default).

``singular_vectors(update, k)`` takes the top-k vectors in float64: from the
r×r QR core for a factored ΔW (``B = Q_b R_b``, ``Aᵀ = Q_a R_a``,
``s·R_b R_aᵀ = U_c Σ V_cᵀ``, so ``U = Q_b U_c`` and ``V = Q_a V_c``), by
``torch.linalg.svd`` for a dense one. Vectors past the numerical rank are
not singular vectors of anything, so ``k`` is cut to the rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .defaults import INTRUDER_EPS, INTRUDER_TOP, SUBSPACE_RANK
from .delta import Dense, Factored
from .metrics import numerical_rank, rank_tolerance
from .svd import accuracy_floor

__all__ = [
    "INTRUDER_EPS",
    "INTRUDER_TOP",
    "SUBSPACE_RANK",
    "Vectors",
    "amplification",
    "count_intruders",
    "intruder_dimensions",
    "singular_vectors",
    "subspace_similarity",
]



@dataclass(frozen=True)
class Vectors:
    """The top singular triplets of one ΔW, float64 on the CPU."""

    U: torch.Tensor  # (d_out, k) left singular vectors, by descending σ
    S: torch.Tensor  # (n,) every singular value computed, descending
    V: torch.Tensor  # (d_in, k) right singular vectors

    @property
    def k(self) -> int:
        return self.U.shape[1]

    @property
    def frobenius(self) -> float:
        return float(torch.linalg.vector_norm(self.S))


def singular_vectors(
    update: Dense | Factored,
    k: int = SUBSPACE_RANK,
    device: str | torch.device = "cpu",
    rounding_floor: float | None = None,
) -> Vectors:
    """The top-``k`` singular vectors of ΔW (fewer when its rank is lower), in float64.

    ``k`` is cut to the numerical rank of METRICS.md, the one the report uses:
    σ above the larger of the float64 SVD's floor ``σ_1·max(d)·ε₆₄`` and
    ``rounding_floor`` (``analysis.stream.rounding_floor_of(delta)`` for a dense ΔW
    subtracted from stored weights), so no vector of rounding noise is compared.
    """
    if isinstance(update, Factored):
        Qb, Rb = torch.linalg.qr(update.B.to(device, torch.float64))  # (d_out, r), (r, r)
        Qa, Ra = torch.linalg.qr(update.A.to(device, torch.float64).T)  # (d_in, r), (r, r)
        core = update.scale * (Rb @ Ra.T)  # (r, r)
        Uc, S, Vch = torch.linalg.svd(core)
        U, V = Qb @ Uc, Qa @ Vch.T  # (d_out, r), (d_in, r)
    else:
        U, S, Vh = torch.linalg.svd(update.matrix.to(device, torch.float64), full_matrices=False)
        V = Vh.T  # (d_in, n)
    S = S.cpu()
    kind = "factored" if isinstance(update, Factored) else "dense"
    exact = accuracy_floor(update.shape, kind, "exact")  # the vectors come from an exact SVD
    tol = rank_tolerance(S, update.shape, relative_floor=exact, rounding=rounding_floor)
    keep = min(k, numerical_rank(S, update.shape, tol=tol))
    return Vectors(U[:, :keep].cpu(), S, V[:, :keep].cpu())


def subspace_similarity(U_a: torch.Tensor, U_b: torch.Tensor) -> float:
    """``‖U_aᵀ U_b‖_F² / min(i, j)`` for orthonormal ``U_a (d, i)`` and ``U_b (d, j)``.

    NaN when either side has no vectors (ΔW = 0).
    """
    smaller = min(U_a.shape[1], U_b.shape[1])
    if smaller == 0:
        return float("nan")
    overlap = U_a.T @ U_b  # (i, j)
    return float(torch.sum(overlap**2) / smaller)


def amplification(vectors: Vectors, W0: torch.Tensor) -> float:
    """``‖ΔW‖_F / ‖U_rᵀ W0 V_r‖_F`` over the r = ``vectors.k`` top directions of ΔW.

    NaN when ΔW is zero; inf when W0 has no component in those directions.
    """
    if vectors.k == 0:
        return float("nan")
    projected = vectors.U.T @ W0.to(torch.float64) @ vectors.V  # (r, r)
    norm = float(torch.linalg.matrix_norm(projected))
    return vectors.frobenius / norm if norm > 0 else float("inf")


def intruder_dimensions(
    W0: torch.Tensor,
    update: Dense | Factored,
    top: int = INTRUDER_TOP,
    eps: float = INTRUDER_EPS,
    device: str | torch.device = "cpu",
    base_vectors: torch.Tensor | None = None,
) -> int:
    """How many of the top-``top`` left singular vectors of ``W0 + ΔW`` are intruders.

    A vector is an intruder when its largest ``|cos|`` with every left
    singular vector of ``W0`` is below ``eps``. ``base_vectors`` (the left
    singular vectors of ``W0``, ``(d_out, n)``) may be passed to reuse them.
    """
    W0 = W0.to(device, torch.float64)  # (d_out, d_in)
    if base_vectors is None:
        base_vectors = base_singular_vectors(W0)
    tuned = W0 + update.to_dense().to(device, torch.float64)  # (d_out, d_in)
    U_tuned = torch.linalg.svd(tuned, full_matrices=False)[0]  # (d_out, n)
    return count_intruders(U_tuned, base_vectors.to(device), top, eps)


def count_intruders(
    U_tuned: torch.Tensor,
    U_base: torch.Tensor,
    top: int = INTRUDER_TOP,
    eps: float = INTRUDER_EPS,
) -> int:
    """How many of the top ``top`` vectors in ``U_tuned`` have ``max |cos| < eps`` with ``U_base``.

    ``U_tuned`` ``(d, ≥ top)`` holds the left singular vectors of ``W0 + ΔW``
    by descending σ and ``U_base`` ``(d, n)`` every left singular vector of
    ``W0``, both orthonormal columns on one device: the definition of the
    authors' code (github.com/reeceshuttle/intruder-dimensions,
    ``find_intruder_dimensions.py``) and of peft's ``reduce_intruder_dimension``,
    which compare with all ``min(d_out, d_in)`` vectors of W0 and count a
    strict ``< eps``.
    """
    best = (U_tuned[:, :top].T @ U_base).abs().amax(dim=1)  # (top,)
    return int((best < eps).sum())


def base_singular_vectors(W0: torch.Tensor) -> torch.Tensor:
    """Every left singular vector of ``W0``, ``(d_out, min(d_out, d_in))`` float64."""
    return torch.linalg.svd(W0.to(torch.float64), full_matrices=False)[0]
