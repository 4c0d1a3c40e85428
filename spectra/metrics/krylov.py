"""The top singular values of a dense ΔW by randomized block Krylov, each with a bound.

Musco and Musco, "Randomized block Krylov methods for stronger and faster
approximate singular value decomposition", NeurIPS 2015: an orthonormal
basis Q of ``[ΔW Ω, (ΔWΔWᵀ) ΔW Ω, …]`` and the SVD of ``QᵀΔW``. Each Ritz
value θ_i is at most the true σ_i (Cauchy interlacing, which needs Q
orthonormal: ``_new_directions`` keeps it so when the Krylov space closes),
and a singular value of ΔW lies within ``‖(I − QQᵀ) ΔW v_i‖/√2`` of it.
``metrics.estimate`` takes its top σ, their bounds and vectors from here.
"""

from __future__ import annotations

import math

import torch

__all__ = ["block_krylov", "top_singular_values"]


def top_singular_values(
    matrix: torch.Tensor, k: int, *, oversample: int = 8, iterations: int = 6, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The top ``k`` singular values of ``matrix`` by randomized block Krylov, with bounds.

    Args:
        matrix: ``(d_out, d_in)``, any float dtype (taken in float64).
        k: how many of the largest singular values to return.
        oversample: extra columns of the starting block.
        iterations: the Krylov steps (the space has ``(iterations + 1)·(k + oversample)`` columns).
        seed: the seed of the Gaussian starting block.

    Returns:
        ``(sigma, bound)``, each ``(k,)`` float64: the Ritz values, descending
        (each at most the true σ_i), and for each a residual bound within
        which a singular value of ``matrix`` lies.

    Example:
        >>> sigma, bound = top_singular_values(torch.diag(torch.arange(20.0, 0, -1)), 3)
        >>> [round(float(s), 6) for s in sigma], bool(bound.max() < 1e-8)
        ([20.0, 19.0, 18.0], True)
    """
    sigma, bound, _, _ = block_krylov(matrix, k, oversample, iterations, seed)
    return sigma, bound


def _new_directions(candidate: torch.Tensor, blocks: list[torch.Tensor]) -> torch.Tensor:
    """An orthonormal basis of what ``candidate`` (d, b) adds to the span of ``blocks``.

    Block Gram–Schmidt twice, then QR. Where the Krylov space has closed in
    some direction (a spectrum with few distinct σ), the projected candidate
    is rank-deficient (R's diagonal falls below 1e-6 of its largest) and QR
    completes its basis with arbitrary columns, far from orthogonal to the
    earlier blocks (Ritz values would then exceed the true σ). Then the QR
    basis is projected twice more: a column that keeps over half its norm is
    a direction the earlier blocks lack (kept, re-orthonormalised; an
    arbitrary one only enlarges the space), one that loses more is dropped.

    Returns:
        ``(d, b')``, b' ≤ b, orthonormal and orthogonal to every block; b' = 0 when nothing is new.
    """

    def project(X: torch.Tensor) -> torch.Tensor:  # (d, b) → (I − QQᵀ) X, twice
        for _ in range(2):
            for earlier in blocks:
                X = X - earlier @ (earlier.T @ X)
        return X

    basis, triangle = torch.linalg.qr(project(candidate))  # (d, b), (b, b)
    scale = triangle.diagonal().abs()
    if bool(scale.min() > 1e-6 * scale.max()):  # full rank: QR's basis is orthogonal already
        return basis
    basis = project(basis)
    kept = basis.norm(dim=0) > 0.5
    return torch.linalg.qr(basis[:, kept]).Q if bool(kept.any()) else basis[:, :0]


def block_krylov(matrix: torch.Tensor, k: int, oversample: int, iterations: int, seed: int):
    """(σ, bound, U, V) of the top ``k`` Ritz triplets; see ``top_singular_values``.

    U ``(d_out, k)`` and V ``(d_in, k)`` are the Ritz vectors, which
    ``metrics.estimate`` deflates from its quadrature.
    """
    M = matrix.double().contiguous()  # (d_out, d_in), row-major
    d_out, d_in = M.shape
    k = min(k, d_out, d_in)
    block = min(k + oversample, d_out, d_in)
    if block * (iterations + 1) >= min(d_out, d_in):  # the space would be all of it
        U, sigma, Vh = torch.linalg.svd(M, full_matrices=False)
        residual = M @ Vh[:k].T - U[:, :k] * sigma[:k]  # (d_out, k): rounding only
        return sigma[:k].clone(), residual.norm(dim=0) / math.sqrt(2.0), U[:, :k], Vh[:k].T
    generator = torch.Generator().manual_seed(seed)
    omega = torch.randn(d_in, block, generator=generator, dtype=torch.float64).to(M.device)
    current = torch.linalg.qr(M @ omega).Q  # (d_out, b)
    blocks = [current]
    rows = []  # blockᵀ M of each block, (b, d_in): kept, so that QᵀM costs no extra pass
    width = block
    for _ in range(iterations):
        if width + block > min(d_out, d_in):
            break
        rows.append(current.T @ M)  # (b, d_in) = (Mᵀ current)ᵀ, read in memory order
        current = _new_directions(M @ rows[-1].T, blocks)  # (d_out, b' ≤ b)
        if current.shape[1] == 0:  # the Krylov space closed: its Ritz values are exact
            break
        blocks.append(current)
        width += current.shape[1]
    if current.shape[1] > 0:  # the last block's rows (none to add when the space closed)
        rows.append(current.T @ M)
    Q = torch.cat(blocks, dim=1)  # (d_out, K): orthonormal basis
    small = torch.cat(rows, dim=0)  # (K, d_in) = QᵀM
    U_small, sigma, Vh = torch.linalg.svd(small, full_matrices=False)
    V = Vh[:k].T  # (d_in, k)
    U = Q @ U_small[:, :k]  # (d_out, k)
    residual = M @ V - U * sigma[:k]  # (d_out, k): (I − QQᵀ) M v_i
    return sigma[:k].clone(), residual.norm(dim=0) / math.sqrt(2.0), U, V
