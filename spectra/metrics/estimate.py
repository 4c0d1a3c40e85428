"""Balance metrics of a dense ΔW estimated with a stated error, far faster than all its σ.

Every balance metric is a function of the eigenvalues λ_i = σ_i² of the Gram
matrix G of the smaller side of ΔW (``ΔWᵀΔW`` or ``ΔWΔWᵀ``, n × n with
n = min(d_out, d_in)). Computing all of them costs a dense n³ eigensolve;
these estimates touch ΔW only through products with a few dozen vectors.

- **Trace functions** by stochastic Lanczos quadrature (SLQ; Ubaru, Chen and
  Saad, "Fast estimation of tr(f(A)) via stochastic Lanczos quadrature",
  SIAM J. Matrix Anal. Appl. 2017): for N unit probes u_v, uniform on the
  sphere of the space left after deflation (below; dimension n' = n − k),
  and m + 1 Lanczos steps on G from each, ``tr f(G) ≈ (n'/N) Σ_v Σ_j τ_vj² f(θ_vj)``,
  θ_vj the nodes and τ_vj² the weights of the v-th probe's quadrature rule
  (each probe's term is unbiased, and exact for a flat spectrum).
  The rule is Laurie's averaged one ("Anti-Gaussian quadrature formulas",
  Math. Comp. 1996): the mean of the m-node Gauss rule and the (m + 1)-node
  anti-Gauss rule (the same Jacobi matrix, its last β times √2), whose
  error is the Gauss rule's with the opposite sign up to degree 2m + 1.
  For √λ near 0 (many small σ, as in a power-law spectrum) it is far more
  accurate than either rule alone: at n = 16384 and m = 20, about 0.2 % on
  the effective rank where the Gauss rule is 3 % off.
  spectra estimates ``Σσ = tr G^½`` and ``Σσ ln σ = tr(½ G^½ ln G)``, so
  ``entropy = ln Σσ − Σσ ln σ / Σσ`` (p_i = σ_i/Σσ, METRICS.md) and
  ``effective_rank = exp(entropy)``; ``Σσ² = ‖ΔW‖_F²`` is computed exactly.
  ``energy_rank@q`` is read from the averaged rule's spectral measure (the
  count of eigenvalues above the level where the energy above reaches
  ``q·Σσ²``, a point x whose ceiling is the rank), unless the top singular
  values below already hold that energy: then it is exact. It is given as
  x + ½ with an error of x's standard error (as below) plus ½, since the
  rank lies in [x, x + 1).
  The error of each is **one standard error**: the jackknife over the
  probes (each probe left out in turn), combined with the quadrature's own
  error, the larger of two estimates: half the gap between the Gauss and
  anti-Gauss rules (they bracket the integral when f's expansion in the
  measure's orthogonal polynomials decays, Laurie 1996), and the averaged
  rule's change from ⌈m/2⌉ to m nodes (which covers real updates, whose many
  tiny σ make both rules err the same way). A probe whose Krylov space
  closes early has an exact rule and adds neither.
- **The top singular values** by randomized block Krylov iteration (Musco
  and Musco, "Randomized block Krylov methods for stronger and faster
  approximate singular value decomposition", NeurIPS 2015): an orthonormal
  basis Q of ``[ΔW Ω, (ΔWΔWᵀ) ΔW Ω, …]`` and the SVD of ``QᵀΔW``. Each Ritz
  value is at most the true σ_i (Cauchy interlacing), and its error is
  **a bound**: a singular value of ΔW lies within ``‖(I − QQᵀ) ΔW v_i‖/√2``
  of it. ``spectral_norm``, ``stable_rank = Σσ²/σ_1²`` and
  ``top_share@m = Σ_{i≤m} σ_i²/Σσ²`` (m ≤ ``top``; else missing) carry it:
  with each σ_i in [θ_i, θ_i + b_i], stable rank's error 2·stable·b_1/θ_1
  and the share's (2Σθb + Σb²)/Σσ² cover the whole interval (both
  one-sided: the Ritz values can only be low, so the share is low and the
  stable rank high).

Everything is float64 and seeded: the same matrix and seed give the same
estimate, bit for bit. ΔW is read in its own memory order: ``ΔW X`` and
``(Xᵀ ΔW)ᵀ``, never ``ΔWᵀ X`` on a row-major ΔW, which BLAS runs up to twice
as slowly for the thin blocks used here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .krylov import block_krylov, top_singular_values
from .lanczos import gram_product, lanczos, quadrature_rules

__all__ = [
    "DEFAULT_PROBES",
    "DEFAULT_STEPS",
    "DEFAULT_TOP",
    "ERROR_KINDS",
    "ESTIMATED",
    "Estimate",
    "estimate_metrics",
    "top_singular_values",
]

# The defaults, chosen on the tests' spectra and real MiniLM updates (docs/accuracy.md): 16
# probes cost a CPU about what 8 do (a product with a thin block is bound by reading ΔW), and
# 30 Gauss nodes hold the effective rank within 3 stated errors and 2.5 % there.
DEFAULT_PROBES, DEFAULT_STEPS, DEFAULT_TOP = 16, 30, 16

# The metrics an estimate gives; the others are left missing (NaN) in its row.
ESTIMATED = (
    "entropy",
    "normalized_entropy",
    "effective_rank",
    "stable_rank",
    "spectral_norm",
    "frobenius_norm",
    "nuclear_norm",
    "energy_rank@0.5",
    "energy_rank@0.9",
    "energy_rank@0.99",
    "top_share@1",
    "top_share@8",
)
STANDARD_ERROR = (
    "one standard error (jackknife over the probe vectors, with the quadrature's error: the "
    "larger of half its Gauss / anti-Gauss gap and its change from m/2 to m nodes)"
)
RESIDUAL_BOUND = "a bound (the Ritz residual of randomized block Krylov)"
COUNT_ERROR = (
    "one standard error of where the energy crosses q (jackknife and quadrature, as for the "
    "entropy), plus half a count: the rank is that point rounded up, given as the point + 1/2"
)
EXACT = "exact"
# The kind of each estimated metric's error; a metric the top σ already give exactly (an energy
# rank reached by them, the Frobenius norm always) says EXACT instead.
ERROR_KINDS = {
    **dict.fromkeys(("entropy", "normalized_entropy", "effective_rank", "nuclear_norm"),
                    STANDARD_ERROR),
    **dict.fromkeys(("stable_rank", "spectral_norm", "top_share@1", "top_share@8"),
                    RESIDUAL_BOUND),
    **dict.fromkeys(("energy_rank@0.5", "energy_rank@0.9", "energy_rank@0.99"), COUNT_ERROR),
    "frobenius_norm": EXACT,
}  # fmt: skip


@dataclass
class Estimate:
    """The estimated metrics of one ΔW, each with its error and what that error is.

    Args:
        values: metric name → estimate.
        errors: metric name → its error (0 where exact).
        error_kinds: metric name → ``STANDARD_ERROR``, ``RESIDUAL_BOUND``,
            ``COUNT_ERROR`` (energy ranks) or ``EXACT``.
        top: the top singular values, descending (Ritz values), float64.
        top_errors: the residual bound of each of ``top``.
        probes: the number of probe vectors of the quadrature.
        steps: the Gauss rule's nodes per probe (one Lanczos step more for the anti-Gauss rule).

    Example:
        >>> e = estimate_metrics(torch.eye(50, dtype=torch.float64), probes=8, steps=5)
        >>> round(e.values["effective_rank"], 9), e.errors["effective_rank"]
        (50.0, 0.0)
        >>> round(e.values["frobenius_norm"] ** 2, 9), e.error_kinds["frobenius_norm"]
        (50.0, 'exact')
    """

    values: dict[str, float]
    errors: dict[str, float]
    error_kinds: dict[str, str]
    top: torch.Tensor
    top_errors: torch.Tensor
    probes: int
    steps: int
    notes: list[str] = field(default_factory=list)


def _sqrt_log(nodes: torch.Tensor) -> torch.Tensor:
    """½·√λ·ln λ = σ ln σ at σ = √λ, 0 at λ = 0."""
    safe = nodes.clamp_min(torch.finfo(torch.float64).tiny)
    return torch.where(nodes > 0, 0.5 * nodes.sqrt() * safe.log(), torch.zeros_like(nodes))


def _energy_rank(
    nodes: torch.Tensor, weights: torch.Tensor, n: int, q: float, exact: torch.Tensor
) -> float:
    """The count of eigenvalues above the level where the energy above reaches ``q`` of all.

    The spectral measure is the ``exact`` eigenvalues (one each) and the
    quadrature's nodes, each counting ``n·τ²/N`` eigenvalues.
    """
    probes = nodes.shape[0]
    levels = torch.cat([exact, nodes.flatten()])
    counts = torch.cat([torch.ones_like(exact), n * weights.flatten() / probes])
    levels, order = levels.sort(descending=True)
    counts = counts[order]
    energy = (counts * levels).cumsum(0)
    if energy[-1] <= 0:
        return 0.0
    goal = q * float(energy[-1])
    index = min(int(torch.searchsorted(energy, goal)), len(energy) - 1)
    before = float(energy[index - 1]) if index > 0 else 0.0
    # the crossing node stands for many eigenvalues of about its level: take what is needed
    needed = (goal - before) / float(levels[index]) if levels[index] > 0 else 0.0
    return max(1.0, float(counts[:index].sum()) + min(needed, float(counts[index])))


def _with_quadrature(
    error: float, gauss: float, anti: float, averaged: float, averaged_half: float
) -> float:
    """A jackknife ``error`` combined with the quadrature's own, estimated two ways.

    Half the Gauss / anti-Gauss gap brackets the quadrature error where the
    two rules err with opposite signs; where many tiny σ make both err the
    same way (real updates, σ down to 1e-4·σ_1), the change of the averaged
    rule from ⌈m/2⌉ to m nodes bounds what is left, since its error falls at
    least twofold from half the nodes to all of them. The larger of the two
    counts. The arguments are the statistic from the Gauss, anti-Gauss,
    averaged and ⌈m/2⌉-node averaged rules.
    """
    gap = abs(gauss - anti) / 2
    change = abs(averaged - averaged_half)
    return math.hypot(error, max(gap, change))


def _jackknife(statistic, per_probe: list[torch.Tensor]) -> tuple[float, float]:
    """The statistic of all probes and its jackknife standard error over them."""
    probes = per_probe[0].shape[0]
    whole = statistic(*per_probe)
    if probes < 2:
        return whole, math.nan
    keep = torch.ones(probes, dtype=torch.bool)
    leave_one_out = []
    for v in range(probes):
        keep[v] = False
        leave_one_out.append(statistic(*(values[keep] for values in per_probe)))
        keep[v] = True
    values = torch.tensor(leave_one_out, dtype=torch.float64)
    spread = float(((values - values.mean()) ** 2).sum())
    return whole, math.sqrt((probes - 1) / probes * spread)


def estimate_metrics(
    matrix: torch.Tensor,
    *,
    probes: int = DEFAULT_PROBES,
    steps: int = DEFAULT_STEPS,
    top: int = DEFAULT_TOP,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> Estimate:
    """Estimate the balance metrics of a dense ΔW with their errors (module docstring).

    Args:
        matrix: ΔW ``(d_out, d_in)``, any float dtype (taken in float64).
        probes: the random probe vectors of the quadrature.
        steps: the Gauss rule's nodes m per probe (m + 1 Lanczos steps, one
            product with ΔW and one with ΔWᵀ each, for the anti-Gauss rule).
        top: how many of the largest singular values to find (``Estimate.top``).
        seed: the seed of the probes and of the Krylov block.
        device: where the matrix products run (``"cuda"`` on a GPU); ``None``
            (the default): where ``matrix`` is. The random draws are made on
            the CPU, so every device sees the same probes.

    Returns:
        An ``Estimate``: the values of ``ESTIMATED`` with their errors.

    Example:
        >>> M = torch.diag(torch.tensor([3.0, 2.0, 1.0] + [0.0] * 37))
        >>> e = estimate_metrics(M, probes=8, steps=10, top=3)
        >>> round(e.values["spectral_norm"], 9), round(e.values["stable_rank"], 6)
        (3.0, 1.555556)
    """
    M = matrix.to(device=device if device is not None else matrix.device, dtype=torch.float64)
    M = M.contiguous()  # (d_out, d_in), row-major: the products read it in memory order
    d_out, d_in = M.shape
    n = min(d_out, d_in)
    sigma, bound, U, V = block_krylov(M, min(top, n), 8, 6, seed + 1)
    # Deflate the converged top directions: their singular values count exactly (Ritz values
    # within a bound of 1e-6·σ_1) and the quadrature runs on the rest, P G P with
    # P = I − V Vᵀ on the Gram side; with f(0) = 0 they add nothing to its traces. An
    # unconverged direction is left to the quadrature: pinching G with inexact vectors
    # would raise every concave trace (Σσ) by the square of their residual.
    gram, _ = gram_product(M)
    converged = bound <= 1e-6 * sigma[0] if float(sigma[0]) > 0 else bound >= 0
    deflated = converged.cumprod(0).bool()  # a prefix: the top values, in order
    vectors = (V if d_out >= d_in else U)[:, deflated]  # (n, k): G's top eigenvectors
    exact_sigma = sigma[deflated]

    def project(X: torch.Tensor) -> torch.Tensor:  # (n, N) → P X
        return X - vectors @ (vectors.T @ X)

    def product(X: torch.Tensor) -> torch.Tensor:  # (n, N) → P G P X
        return project(gram(project(X)))

    steps = max(1, min(steps, n - 1))  # m: Gauss nodes, and m + 1 Lanczos steps
    generator = torch.Generator().manual_seed(seed)
    left = n - vectors.shape[1]  # n': the dimension of P's range, where the probes lie
    recurrence = lanczos(product, n, probes, steps, generator, M.device, project)
    nodes, weights, anti_nodes, anti_weights = quadrature_rules(*recurrence, steps, n)
    half_rules = quadrature_rules(*recurrence, (steps + 1) // 2, n)  # the same rules of ⌈m/2⌉ nodes
    sigma, bound, exact_sigma = sigma.cpu(), bound.cpu(), exact_sigma.cpu()
    flat = M.view(-1)  # (d_out·d_in,): a dot product, with no n² temporary as M * M makes
    sum_sq = float(torch.dot(flat, flat))  # Σσ² = ‖ΔW‖_F², exact
    values: dict[str, float] = {}
    errors: dict[str, float] = {}
    kinds: dict[str, str] = {}

    def put(name: str, value: float, error: float, kind: str | None = None) -> None:
        values[name], errors[name], kinds[name] = value, error, kind or ERROR_KINDS[name]

    # per probe v: n Σ_j τ² f(θ), the probe's estimate of tr f(G)
    top_sigma = exact_sigma[exact_sigma > 0]
    top_sum, top_log = float(top_sigma.sum()), float((top_sigma * top_sigma.log()).sum())

    def traces(rule_nodes: torch.Tensor, rule_weights: torch.Tensor):
        """Per probe v, its estimates n' Σ_j τ² f(θ) of Σσ and Σσ ln σ, top values added."""
        sums = top_sum + left * (rule_weights * rule_nodes.sqrt()).sum(1)  # (N,)
        logs = top_log + left * (rule_weights * _sqrt_log(rule_nodes)).sum(1)  # (N,)
        return sums, logs

    def averaged(gauss_traces, anti_traces):
        return tuple((g + a) / 2 for g, a in zip(gauss_traces, anti_traces, strict=True))

    gauss = traces(nodes, weights)
    anti = traces(anti_nodes, anti_weights)
    # Laurie's averaged rule: the anti-Gauss rule's error is the Gauss rule's, sign reversed,
    # so their mean cancels it to high degree.
    sums, sum_logs = averaged(gauss, anti)
    half = averaged(traces(*half_rules[:2]), traces(*half_rules[2:]))
    # the averaged rule's measure, for the energy ranks: both rules' nodes at half weight
    measure_nodes = torch.cat([nodes, anti_nodes], dim=1)  # (N, 2m + 1)
    measure_weights = torch.cat([weights, anti_weights], dim=1) / 2
    half_nodes = torch.cat([half_rules[0], half_rules[2]], dim=1)  # the same of ⌈m/2⌉ nodes
    half_weights = torch.cat([half_rules[1], half_rules[3]], dim=1) / 2

    def entropy(s: torch.Tensor, sl: torch.Tensor) -> float:
        total = float(s.mean())
        return 0.0 if total <= 0 else math.log(total) - float(sl.mean()) / total

    def with_quadrature(statistic, error: float) -> float:
        """``error`` with the quadrature's own, for a statistic of the traces."""
        return _with_quadrature(
            error, statistic(*gauss), statistic(*anti), statistic(sums, sum_logs), statistic(*half)
        )

    H, H_err = _jackknife(entropy, [sums, sum_logs])
    H_err = with_quadrature(entropy, H_err)
    put("entropy", H, H_err)
    log_n = math.log(n) if n > 1 else math.nan
    put("normalized_entropy", H / log_n, H_err / log_n)
    rank, rank_err = _jackknife(lambda s, sl: math.exp(entropy(s, sl)), [sums, sum_logs])
    rank_err = with_quadrature(lambda s, sl: math.exp(entropy(s, sl)), rank_err)
    put("effective_rank", rank, rank_err)
    nuclear, nuclear_err = _jackknife(lambda s: float(s.mean()), [sums])
    nuclear_err = with_quadrature(lambda s, sl: float(s.mean()), nuclear_err)
    put("nuclear_norm", nuclear, nuclear_err)
    put("frobenius_norm", math.sqrt(sum_sq), 0.0)
    sigma_1, sigma_1_err = float(sigma[0]), float(bound[0])
    put("spectral_norm", sigma_1, sigma_1_err)
    stable = sum_sq / sigma_1**2 if sigma_1 > 0 else math.nan
    put(
        "stable_rank",
        stable,
        2.0 * stable * sigma_1_err / sigma_1 if sigma_1 > 0 else 0.0,
    )
    for m in (1, 8):  # top_share@m = Σ_{i≤m} σ_i² / Σσ², from the Ritz values as σ_1's
        known = min(m, n)
        if len(sigma) < known:  # fewer top σ were asked for: left missing
            continue
        head, head_bound = sigma[:known], bound[:known]
        share = float((head**2).sum()) / sum_sq if sum_sq > 0 else 0.0
        # each σ_i in [θ_i, θ_i + b_i]: the share lies in [Σθ², Σ(θ + b)²] / Σσ²
        widest = float((2 * head * head_bound + head_bound**2).sum())
        spread = widest / sum_sq if sum_sq > 0 else 0.0
        put(f"top_share@{m}", share, spread)
    captured = (sigma**2).cumsum(0)  # energy of the top singular values
    for q in (0.5, 0.9, 0.99):
        name = f"energy_rank@{q:g}"
        reached = (captured >= q * sum_sq * (1 - 1e-12)).nonzero()
        if len(reached) and float(bound.max()) <= 1e-8 * sigma_1:
            put(name, float(reached[0, 0]) + 1, 0.0, EXACT)
            continue

        def crossing(th: torch.Tensor, w: torch.Tensor, q: float = q) -> float:
            return _energy_rank(th, w, left, q, exact_sigma**2)

        point, spread = _jackknife(crossing, [measure_nodes, measure_weights])
        spread = _with_quadrature(
            spread,
            crossing(nodes, weights),
            crossing(anti_nodes, anti_weights),
            point,
            crossing(half_nodes, half_weights),
        )
        # the rank is the crossing point rounded up, in [point, point + 1): its centre ± ½
        put(name, point + 0.5, spread + 0.5)
    return Estimate(values, errors, kinds, sigma, bound, probes, steps)
