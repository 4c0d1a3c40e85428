"""``--estimate``'s metrics against numpy's exact spectrum, with their stated errors.

Each estimate must fall within 3 of its stated errors of the exact value and,
for the effective rank, within 5 % of it: on synthetic spectra with known
shapes (flat, power law, a few spikes over a small bulk, exponential decay)
and on a real fine-tune (MiniLM trained a few Adam steps here, so that ΔW is
what an optimiser makes, not a planted low-rank matrix).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spectra.metrics.estimate import (
    COUNT_ERROR,
    EXACT,
    RESIDUAL_BOUND,
    STANDARD_ERROR,
    estimate_metrics,
    top_singular_values,
)
from tests.helpers.models import load_bert

D = 320


def _with_spectrum(sigma: np.ndarray, seed: int, shape=(D, D)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    U = np.linalg.qr(rng.standard_normal((shape[0], len(sigma))))[0]
    V = np.linalg.qr(rng.standard_normal((shape[1], len(sigma))))[0]
    return (U * sigma) @ V.T


def _synthetic(kind: str) -> np.ndarray:
    i = np.arange(1, D + 1, dtype=np.float64)
    rng = np.random.default_rng(7)
    sigma = {
        "flat": np.ones(D),
        "power-law": i**-0.7,
        "spikes": np.concatenate([[40.0, 25, 12, 6], 0.02 * rng.random(D - 4)]),
        "decay": np.exp(-i / 60),
    }[kind]
    return _with_spectrum(np.sort(sigma)[::-1], seed=len(kind))


def _exact(matrix: np.ndarray) -> dict[str, float]:
    """The metrics from numpy's full SVD, written out here from METRICS.md."""
    s = np.linalg.svd(matrix, compute_uv=False)
    p = s / s.sum()
    H = -np.sum(p[p > 0] * np.log(p[p > 0]))
    energy = np.cumsum(s**2) / np.sum(s**2)
    exact = {
        "entropy": H,
        "normalized_entropy": H / np.log(len(s)),
        "effective_rank": np.exp(H),
        "stable_rank": np.sum(s**2) / s[0] ** 2,
        "spectral_norm": s[0],
        "frobenius_norm": np.sqrt(np.sum(s**2)),
        "nuclear_norm": s.sum(),
        "top_share@1": s[0] ** 2 / np.sum(s**2),
        "top_share@8": np.sum(s[:8] ** 2) / np.sum(s**2),
    }
    for q in (0.5, 0.9, 0.99):
        exact[f"energy_rank@{q:g}"] = int(np.searchsorted(energy, q * (1 - 1e-12)) + 1)
    return exact


def _check(estimate, exact: dict[str, float], rank_tolerance: float = 0.05) -> None:
    for name in ("entropy", "normalized_entropy", "effective_rank", "nuclear_norm"):
        value, error = estimate.values[name], estimate.errors[name]
        assert estimate.error_kinds[name] == STANDARD_ERROR
        assert abs(value - exact[name]) <= 3 * error + 1e-9 * abs(exact[name]), (name, value, exact)
    relative = abs(estimate.values["effective_rank"] / exact["effective_rank"] - 1)
    assert relative <= rank_tolerance, relative
    for name in ("spectral_norm", "stable_rank", "top_share@1", "top_share@8"):
        assert estimate.error_kinds[name] == RESIDUAL_BOUND
        assert (
            abs(estimate.values[name] - exact[name]) <= estimate.errors[name] + 1e-9 * exact[name]
        )
    assert estimate.error_kinds["frobenius_norm"] == EXACT
    assert estimate.values["frobenius_norm"] == pytest.approx(exact["frobenius_norm"], rel=1e-12)
    for q in (0.5, 0.9, 0.99):
        name = f"energy_rank@{q:g}"
        value, error = estimate.values[name], estimate.errors[name]
        if estimate.error_kinds[name] == EXACT:
            assert value == exact[name]
        else:  # a count read from the quadrature: its centre ± half a count and the spread
            assert estimate.error_kinds[name] == COUNT_ERROR
            assert abs(value - exact[name]) <= 3 * error, (q, value, error, exact[name])


@pytest.mark.parametrize("kind", ["flat", "power-law", "spikes", "decay"])
def test_synthetic_spectra_within_their_stated_errors(kind):
    matrix = _synthetic(kind)
    exact = _exact(matrix)
    for seed in range(5):
        _check(estimate_metrics(torch.from_numpy(matrix), seed=seed), exact)


def test_a_wide_matrix_uses_its_smaller_side():
    i = np.arange(1, 121, dtype=np.float64)
    matrix = _with_spectrum(i**-0.5, seed=1, shape=(120, 700))
    _check(estimate_metrics(torch.from_numpy(matrix)), _exact(matrix))


def test_the_same_seed_gives_the_same_estimate_bit_for_bit():
    matrix = torch.from_numpy(_synthetic("power-law"))
    first, second = estimate_metrics(matrix, seed=5), estimate_metrics(matrix, seed=5)
    assert first.values == second.values and first.errors == second.errors


def test_top_singular_values_are_lower_bounds_within_their_residual():
    matrix = _synthetic("decay")
    exact = np.linalg.svd(matrix, compute_uv=False)
    sigma, bound = top_singular_values(torch.from_numpy(matrix), 12)
    assert np.all(sigma.numpy() <= exact[:12] * (1 + 1e-12))
    assert np.all(np.abs(sigma.numpy() - exact[:12]) <= bound.numpy() + 1e-12 * exact[0])


@pytest.fixture(scope="module")
def adam_update(minilm_dir):
    """k and v ΔW of MiniLM's layer 2 after 8 Adam steps of its attention on a random task."""
    model = load_bert(minilm_dir, torch.float32)
    attention = model.encoder.layer[2].attention.self
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    trained = [attention.key.weight, attention.value.weight]
    for parameter in trained:
        parameter.requires_grad_(True)
    before = [parameter.detach().double().clone() for parameter in trained]
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(trained, lr=1e-4)
    target = torch.randn(4, 12, 384, generator=generator)
    for _ in range(8):
        tokens = torch.randint(1000, 5000, (4, 12), generator=generator)
        loss = ((model(input_ids=tokens).last_hidden_state - target) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {role: p.detach().double() - b for role, p, b in zip("kv", trained, before, strict=True)}


@pytest.mark.parametrize("role", ["k", "v"])
def test_a_real_fine_tune_within_its_stated_errors(adam_update, role):
    """Five seeds: the stated errors must hold for each draw of the probes, not one lucky one.

    These σ reach down to 1e-4·σ_1, where the Gauss and anti-Gauss rules err
    the same way and only the rule's change from m/2 to m nodes covers it.
    """
    matrix = adam_update[role].numpy()
    exact = _exact(matrix)
    for seed in range(5):
        _check(estimate_metrics(torch.from_numpy(matrix), seed=seed), exact)


def test_the_probes_are_exact_on_a_flat_spectrum_after_deflation():
    """Probes uniform on the sphere of what deflation leaves: tr P is n − k for every probe."""
    matrix = _synthetic("flat")
    estimate = estimate_metrics(torch.from_numpy(matrix), seed=1)
    assert estimate.values["nuclear_norm"] == pytest.approx(D, rel=1e-10)
    assert estimate.values["effective_rank"] == pytest.approx(D, rel=1e-10)
    assert estimate.errors["effective_rank"] < 1e-6 * D


@pytest.mark.parametrize("kind", ["identity plus rank 4", "two distinct values"])
def test_a_spectrum_of_few_distinct_values_keeps_ritz_values_below_the_truth(kind):
    # The Krylov space closes after a few blocks; its basis must stay orthonormal, else the
    # Ritz values exceed the true σ and a top share exceeds 1.
    rng = np.random.default_rng(3)
    if kind == "identity plus rank 4":
        A = rng.standard_normal((300, 4))
        matrix = np.eye(300) + A @ A.T
    else:
        matrix = _with_spectrum(np.concatenate([np.ones(10), 0.5 * np.ones(290)]), seed=4)
    s = np.linalg.svd(matrix, compute_uv=False)
    estimate = estimate_metrics(torch.from_numpy(matrix))
    top = estimate.top.numpy()
    assert np.all(top <= s[: len(top)] * (1 + 1e-12))
    assert np.all(s[: len(top)] - top <= estimate.top_errors.numpy() + 1e-12 * s[0])
    for m in (1, 8):
        exact = np.sum(s[:m] ** 2) / np.sum(s**2)
        value, error = estimate.values[f"top_share@{m}"], estimate.errors[f"top_share@{m}"]
        assert value <= exact * (1 + 1e-12) and exact - value <= error + 1e-12


def test_a_summary_mean_has_an_error_only_where_every_row_has_one():
    from types import SimpleNamespace

    from spectra.analysis.estimated import summary_means

    estimated = [SimpleNamespace(meta={"estimate": {}})]
    rows = [
        {"estimated": True, "effective_rank": 2.0, "effective_rank_err": 0.2, "top_share@1": 0.5,
         "top_share@1_err": 0.01},
        {"estimated": False, "effective_rank": 4.0, "top_share@1": 0.25},  # exact: error 0
    ]  # fmt: skip
    means = summary_means(rows, estimated)
    assert means["effective_rank"] == 3.0 and means["effective_rank_err"] == pytest.approx(0.1)
    assert means["top_share@1_err"] == pytest.approx(0.005) and means["estimated_rows"] == 1
    old = [{"estimated": True, "effective_rank": 2.0, "effective_rank_err": 0.2}]  # saved before
    means = summary_means(old, estimated)  # top_share@1 was estimated: no value, no error
    assert means["top_share@1"] is None and means["top_share@1_err"] is None
    assert "estimated_rows" not in summary_means(rows, [SimpleNamespace(meta={})])
