"""ΔW's products read in memory order, and the Lanczos quadrature rules built from them.

``metrics.estimate`` is made of these: ``gram_product`` applies the Gram
matrix of ΔW's smaller side to a block of vectors in two passes over ΔW,
each read along its rows; ``lanczos`` runs the Lanczos recurrence from a
block of random unit probes side by side; ``quadrature_rules`` turns the
recurrence into each probe's m-node Gauss rule and (m + 1)-node anti-Gauss
rule (Laurie, "Anti-Gaussian quadrature formulas", Math. Comp. 1996).
"""

from __future__ import annotations

import math

import torch

__all__ = ["gram_product", "jacobi_rule", "lanczos", "quadrature_rules", "transposed_product"]


def transposed_product(matrix: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """``matrixᵀ X`` as ``(Xᵀ matrix)ᵀ``: a row-major matrix read along its rows."""
    return (X.T @ matrix).T


def gram_product(matrix: torch.Tensor):
    """``X ↦ G X`` for the Gram matrix of the smaller side, and its size n."""
    d_out, d_in = matrix.shape
    if d_out >= d_in:  # G = ΔWᵀΔW, (d_in, d_in)
        return (lambda X: transposed_product(matrix, matrix @ X)), d_in
    return (lambda X: matrix @ transposed_product(matrix, X)), d_out  # G = ΔWΔWᵀ


def jacobi_rule(alpha: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights of the quadrature rule of a Jacobi matrix (diagonal α, off-diagonal β)."""
    T = torch.diag(alpha) + torch.diag(beta, 1) + torch.diag(beta, -1)  # (m, m)
    theta, vectors = torch.linalg.eigh(T)  # (m,), (m, m)
    return theta.clamp_min(0.0), vectors[0] ** 2  # G is positive semidefinite


def lanczos(
    product, n: int, probes: int, steps: int, generator: torch.Generator, device=None, project=None
):
    """The Lanczos recurrence of N random unit probes: ``(α, β, length)``, m + 1 steps each.

    The probes are Gaussian, drawn on the CPU (the same on every device),
    ``project``-ed (the deflation's P; none by default) and normalised:
    uniform on the unit sphere of P's range.

    Every probe runs side by side (one matrix product per step for all of
    them) with full reorthogonalisation. α and β are (m + 1, N) CPU tensors
    (β_j the norm of step j's residual), ``length`` (N,) the steps a probe
    took before its Krylov space closed (β ≈ 0; m + 1 if it did not).
    ``quadrature_rules`` makes the quadrature rules of any m' ≤ m from them.
    """
    products = min(steps + 1, n)  # m + 1 steps: the anti-Gauss rule takes one more than Gauss
    tiny = torch.finfo(torch.float64).tiny
    q = torch.randn(n, probes, generator=generator, dtype=torch.float64).to(device)  # (n, N)
    if project is not None:
        q = project(q)
    q = q / q.norm(dim=0).clamp_min(tiny)  # (n, N): unit probes (0 if nothing is left)
    on = {"dtype": torch.float64, "device": device}
    basis = torch.zeros(probes, products, n, **on)  # (N, m + 1, n): rows q_j of each probe
    alpha = torch.zeros(products, probes, **on)
    beta = torch.zeros(products, probes, **on)
    alive = torch.ones(probes, dtype=torch.bool, device=device)
    length = torch.full((probes,), products, dtype=torch.int64, device=device)
    scale = None
    for j in range(products):
        basis[:, j] = q.T
        w = product(q)  # (n, N)
        alpha[j] = (q * w).sum(0)
        if scale is None:
            scale = w.norm(dim=0).clamp_min(tiny)
        # full reorthogonalisation against every basis vector so far, twice
        earlier = basis[:, : j + 1]  # (N, j+1, n)
        for _ in range(2):
            coefficients = torch.bmm(earlier, w.T.unsqueeze(2))  # (N, j+1, 1)
            w = w - torch.bmm(earlier.transpose(1, 2), coefficients).squeeze(2).T
        norms = w.norm(dim=0)  # (N,)
        closed = alive & (norms <= 1e-10 * scale)
        length[closed] = j + 1
        alive &= ~closed
        if j + 1 < products:
            q = torch.where(alive, w / norms.clamp_min(tiny), 0.0)
        beta[j] = torch.where(alive, norms, torch.zeros_like(norms))
        if not bool(alive.any()):
            break
    return alpha.cpu(), beta.cpu(), length.cpu()


def quadrature_rules(
    alpha: torch.Tensor, beta: torch.Tensor, length: torch.Tensor, steps: int, n: int
):
    """The m-node Gauss and (m + 1)-node anti-Gauss rules of each probe, m = ``steps``.

    Returns ``(gauss_nodes, gauss_weights, anti_nodes, anti_weights)``, (N, m)
    and (N, m + 1): the anti-Gauss rule is the Jacobi matrix of m + 1 steps
    with its last β times √2 (Laurie 1996). A probe whose Krylov space closed
    within m steps has an exact Gauss rule of the steps it took; its
    anti-Gauss rule is that rule, and its later weights are zero.
    """
    probes = alpha.shape[1]
    gauss_nodes = torch.zeros(probes, steps, dtype=torch.float64)
    gauss_weights = torch.zeros(probes, steps, dtype=torch.float64)
    anti_nodes = torch.zeros(probes, steps + 1, dtype=torch.float64)
    anti_weights = torch.zeros(probes, steps + 1, dtype=torch.float64)
    for v in range(probes):
        m = min(int(length[v]), steps)
        nodes, weights = jacobi_rule(alpha[:m, v], beta[: m - 1, v])
        gauss_nodes[v, :m], gauss_weights[v, :m] = nodes, weights
        if int(length[v]) <= steps:  # closed within m steps: the Gauss rule is exact
            anti_nodes[v, :m], anti_weights[v, :m] = nodes, weights
            continue
        off = beta[:m, v].clone()  # β_1 … β_m of m + 1 steps
        off[-1] *= math.sqrt(2.0)
        nodes, weights = jacobi_rule(alpha[: m + 1, v], off)
        anti_nodes[v, : m + 1], anti_weights[v, : m + 1] = nodes, weights
    # Nodes at the Gram matrix's rounding level (n·ε₆₄·λ_max) are zeros: √ would lift them.
    floor = n * torch.finfo(torch.float64).eps * float(gauss_nodes.max().clamp_min(0.0))
    gauss_nodes[gauss_nodes <= floor] = 0.0
    anti_nodes[anti_nodes <= floor] = 0.0
    return gauss_nodes, gauss_weights, anti_nodes, anti_weights
