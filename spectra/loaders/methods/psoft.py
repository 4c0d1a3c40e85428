"""PSOFT: ΔW = s · B (R − I) A, an r×r rotation between W0's top singular vectors (factored).

Follows peft's ``tuners/psoft/layer.py`` (``Linear.get_delta_weight``:
``scaling · B @ (R − I) @ A`` with ``scaling = psoft_alpha / r``). A ``(r, d_in)``
and B ``(d_out, r)`` are not saved: peft rebuilds them whenever the adapter is
loaded, from the SVD of W0 in float32 (``_build_psoft_ab_cache_buffers``):
``W0 ≈ V diag(S) Uh``, S scaled to ``S / scaling``, then ``A = Uh_r`` and
``B = V_r diag(S_r)`` (``psoft_init``) or ``A = diag(√S_r) Uh_r`` and
``B = V_r diag(√S_r)`` (``pissa_init``). The SVD is ``torch.linalg.svd``
(``psoft_svd`` "full") or ``torch.svd_lowrank`` with ``psoft_svd_lowrank_niter``
iterations under ``torch.manual_seed(random_seed)`` ("lowrank"); both are
called here as peft calls them.

R is ``diag(vector_b) · R₀ · diag(vector_a)`` (each vector where saved), with
R₀ from ``psoft_R.weight``: with ``psoft_orth`` the strict upper triangle of
a skew-symmetric Q ``(r(r−1)/2,)``, R₀ = ``(I + Q)(I − Q)⁻¹``, or with
``use_cayley_neumann`` the series of ``methods.oft`` (Q first scaled to a
Frobenius norm of at most ``cayley_neumann_eps``, where set); without
``psoft_orth`` R₀ is the saved ``(r, r)`` matrix itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...delta import Factored
from . import ALL_ROWS, Rows
from .oft import cayley_minus_identity, neumann_minus_identity, skew_symmetric

__all__ = ["PsoftOptions", "delta", "singular_bases"]


@dataclass(frozen=True)
class PsoftOptions:
    """The config fields PSOFT's ΔW depends on, with peft's defaults.

    Args:
        r: the rank.
        alpha: ``psoft_alpha``; the scale is α/r.
        orth: ``psoft_orth``: R₀ from a skew-symmetric Q, else saved whole.
        neumann_terms: ``num_cayley_neumann_terms`` when ``use_cayley_neumann``;
            ``None``: the exact Cayley transform.
        neumann_eps: ``cayley_neumann_eps``; ``None``: Q is not scaled.
        init: ``ab_svd_init``: ``psoft_init`` or ``pissa_init``.
        svd: ``psoft_svd``: ``full`` or ``lowrank``.
        niter: ``psoft_svd_lowrank_niter``.
        seed: ``random_seed`` of the low-rank SVD.

    Example:
        >>> PsoftOptions(r=8, alpha=32).scale
        4.0
    """

    r: int
    alpha: float
    orth: bool = True
    neumann_terms: int | None = None
    neumann_eps: float | None = None
    init: str = "psoft_init"
    svd: str = "full"
    niter: int = 10
    seed: int = 0

    @property
    def scale(self) -> float:
        """α / r, peft's ``scaling``."""
        return self.alpha / self.r


def singular_bases(W0: torch.Tensor, options: PsoftOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``(r, d_in)`` and B ``(d_out, r)`` as peft builds them from W0, in float32.

    Args:
        W0: the whole module's base weight ``(d_out, d_in)``; its float32 values are used.
        options: the config.

    Returns:
        ``(A, B)`` in float32, bit for bit what peft computes on this machine.
    """
    weight = W0.to(torch.float32)  # (d_out, d_in), as peft casts it
    r = options.r
    if options.svd == "full":
        U, S, Vh = torch.linalg.svd(weight, full_matrices=False)
        V_r, S_r, Uh_r = U[:, :r], S[:r], Vh[:r, :]
    elif options.svd == "lowrank":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(options.seed)
            U, S, V = torch.svd_lowrank(weight, q=r, niter=options.niter)
        V_r, S_r, Uh_r = U[:, :r], S[:r], V[:, :r].t()
    else:
        raise ValueError(f"unknown psoft_svd {options.svd!r}; expected 'full' or 'lowrank'")
    scaled = S_r / options.scale  # (r,)
    if options.init == "psoft_init":
        return Uh_r, V_r @ torch.diag(scaled)
    if options.init == "pissa_init":
        root = torch.sqrt(scaled)
        return torch.diag(root) @ Uh_r, V_r @ torch.diag(root)
    raise ValueError(f"unknown ab_svd_init {options.init!r}; expected 'psoft_init' or 'pissa_init'")


def rotation_minus_identity(
    weight: torch.Tensor,
    vector_a: torch.Tensor | None,
    vector_b: torch.Tensor | None,
    options: PsoftOptions,
) -> torch.Tensor:
    """``diag(vector_b) R₀ diag(vector_a) − I`` ``(r, r)`` in float64 (OrthLayer.get_matrix)."""
    r = options.r
    eye = torch.eye(r, dtype=torch.float64)
    if not options.orth:
        minus = weight.double() - eye  # (r, r)
    else:
        Q = skew_symmetric(weight, r)  # (r, r)
        if options.neumann_terms is None:
            minus = cayley_minus_identity(Q)  # (I + Q)(I − Q)⁻¹ − I
        else:
            norm = torch.linalg.matrix_norm(Q)
            eps = options.neumann_eps
            if eps is not None and torch.isfinite(norm) and norm > eps:
                Q = Q * (eps / (norm + 1e-12))
            minus = neumann_minus_identity(Q, options.neumann_terms)
    b = torch.ones(r, dtype=torch.float64) if vector_b is None else vector_b.double()
    a = torch.ones(r, dtype=torch.float64) if vector_a is None else vector_a.double()
    # diag(b)(I + M)diag(a) − I = diag(b) M diag(a) + diag(b ⊙ a − 1)
    return b[:, None] * minus * a[None, :] + torch.diag(b * a - 1.0)


def delta(
    W0: torch.Tensor,
    weight: torch.Tensor,
    vector_a: torch.Tensor | None,
    vector_b: torch.Tensor | None,
    options: PsoftOptions,
    rows: Rows = ALL_ROWS,
) -> Factored:
    """PSOFT's ΔW = s · B (R − I) A from W0 ``(d_out, d_in)`` and the saved ``psoft_R``.

    Args:
        W0: the whole module's base weight ``(d_out, d_in)``.
        weight: ``psoft_R.weight``: ``(r(r−1)/2,)`` with ``psoft_orth``, else ``(r, r)``.
        vector_a: ``psoft_R.vector_a`` ``(r,)``, or ``None`` when not saved.
        vector_b: ``psoft_R.vector_b`` ``(r,)``, or ``None`` when not saved.
        options: the config.
        rows: the rows of ΔW one role owns.

    Returns:
        ``Factored(B (R − I) (rows, r), A (r, d_in), α/r)`` in float64.
    """
    A, B = singular_bases(W0, options)  # (r, d_in), (d_out, r) float32
    minus = rotation_minus_identity(weight, vector_a, vector_b, options)  # (r, r)
    return Factored(B.double()[rows] @ minus, A.double(), options.scale)
