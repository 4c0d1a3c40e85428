"""Metrics against closed forms, hand computations and independent formulas."""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spectra import metrics
from spectra.metrics import METRICS, compute

REPOSITORY = Path(__file__).resolve().parents[2]
METRICS_MD = REPOSITORY / "docs" / "METRICS.md"  # the repository's own copy of the contract


def shared_metrics_md() -> Path | None:
    """``shared/METRICS.md`` beside the clone or in any folder above it, if there is one."""
    for folder in REPOSITORY.parents:
        candidate = folder / "shared" / "METRICS.md"
        if candidate.is_file():
            return candidate
    return None


# ---------------------------------------------------------------- registry


def test_registry_holds_every_balance_and_size_metric():
    expected = {
        "entropy",
        "normalized_entropy",
        "effective_rank",
        "energy_entropy",
        "stable_rank",
        "participation_ratio",
        "energy_rank@0.5",
        "energy_rank@0.9",
        "energy_rank@0.99",
        "top_share@1",
        "top_share@8",
        "gini",
        "spectral_norm",
        "frobenius_norm",
        "nuclear_norm",
        "numerical_rank",
        "condition_number",
        "relative_norm",
    }
    assert set(METRICS) == expected


def test_registry_names_are_the_names_in_metrics_md():
    """The balance and size metrics of docs/METRICS.md are exactly the registered ones."""
    text = METRICS_MD.read_text()
    assert "## Subspace" in text
    balance_and_size = text.split("## Subspace")[0]
    documented = set(re.findall(r"^\| `([a-z_]+)(?:@q|@m)?`", balance_and_size, re.M))
    registered = {name.split("@")[0] for name in METRICS}
    assert documented == registered


# SHA-256 of the metrics contract as the project took it (docs/METRICS.md): an edit to the copy
# fails here in every clone; an amended shared contract fails below until it is copied and this
# digest updated with it.
CONTRACT_SHA256 = "87825fee773963932f90ab5b578631bc6510c63f6ab6dfa5640a45c8a47def0e"


def test_docs_metrics_md_is_the_shared_contract():
    """docs/METRICS.md is the contract as taken, in every clone; and, where the shared contract
    is at hand (beside the clone or above it), identical to it."""
    copy = METRICS_MD.read_bytes()
    assert hashlib.sha256(copy).hexdigest() == CONTRACT_SHA256, (
        f"{METRICS_MD} is not the contract as taken: the definitions live in the shared "
        "METRICS.md; copy an amended contract into docs/ and update CONTRACT_SHA256 with it"
    )
    shared = shared_metrics_md()
    if shared is not None:
        assert copy == shared.read_bytes(), (
            f"{METRICS_MD} differs from {shared}: copy the amended contract into docs/"
        )


# ----------------------------------------------------------- closed forms

N = 64  # capacity of the layer in the closed-form tests
SHAPE = (N, 96)


def flat(k: int) -> np.ndarray:
    return np.full(k, 3.0)


@pytest.mark.parametrize("k", [1, 2, 5, 8, 10, 64])
def test_flat_spectrum_closed_forms(k):
    sigma = flat(k)
    assert metrics.entropy(sigma) == pytest.approx(math.log(k), abs=1e-12)
    assert metrics.normalized_entropy(sigma, SHAPE) == pytest.approx(math.log(k) / math.log(N))
    assert metrics.effective_rank(sigma) == pytest.approx(k)
    assert metrics.stable_rank(sigma) == pytest.approx(k)
    assert metrics.participation_ratio(sigma) == pytest.approx(k)
    for q in (0.5, 0.9, 0.99):
        assert metrics.energy_rank(sigma, q) == math.ceil(q * k)
    assert metrics.top_share(sigma, 1) == pytest.approx(1 / k)
    assert metrics.top_share(sigma, 8) == pytest.approx(min(8, k) / k)
    assert metrics.energy_entropy(sigma) == (0.0 if k == 1 else pytest.approx(1.0))
    # Gini over the k used directions: k equal values give 0 whatever N.
    assert metrics.gini(sigma, SHAPE) == pytest.approx(0.0, abs=1e-12)
    assert metrics.numerical_rank(sigma, SHAPE) == k
    assert metrics.condition_number(sigma, SHAPE) == pytest.approx(1.0)


def test_energy_rank_allows_rounding_slack_and_no_more():
    # σ² = 8, 6, 2, 8/9, 2/3, 2/9: Σσ² = 160/9, and the top three hold 16 = 0.9 · 160/9
    # exactly, so 90 % is reached at 3; in floating point the sum falls a hair short of it.
    energies = np.array([8.0, 6.0, 2.0, 8 / 9, 2 / 3, 2 / 9])
    assert np.sum(energies[:3]) == 16.0 and 0.9 * np.sum(energies) == pytest.approx(16.0)
    for scale in (1e-150, 1.0, 1e150):  # σ/σ₁ inside: the same at any scale
        assert metrics.energy_rank(np.sqrt(energies) * scale, 0.9) == 3
    # rounded to 0.889, 0.667, 0.222, the total is 17.778 and 90 % of it (16.0002) is more
    # than the top three hold: 4. A slack wider than rounding (1e-4) would give 3.
    rounded = np.array([8.0, 6.0, 2.0, 0.889, 0.667, 0.222])
    assert 0.9 * np.sum(rounded) - 16.0 == pytest.approx(2e-4)
    assert metrics.energy_rank(np.sqrt(rounded), 0.9) == 4


def test_one_spike_closed_forms():
    sigma = np.zeros(N)
    sigma[0] = 7.0
    assert metrics.entropy(sigma) == 0.0
    assert metrics.normalized_entropy(sigma, SHAPE) == 0.0
    assert metrics.effective_rank(sigma) == 1.0
    assert metrics.stable_rank(sigma) == 1.0
    assert metrics.participation_ratio(sigma) == 1.0
    assert metrics.energy_rank(sigma, 0.99) == 1
    assert metrics.top_share(sigma, 1) == 1.0
    assert metrics.energy_entropy(sigma) == 0.0
    assert metrics.gini(sigma, SHAPE) == 0.0  # one used direction (m = 1)
    assert metrics.spectral_norm(sigma) == 7.0
    assert metrics.numerical_rank(sigma, SHAPE) == 1


def test_geometric_spectrum_against_hand_computed_sums():
    ratio, k = 0.5, 12
    sigma = ratio ** np.arange(k)
    # Hand-derived sums of a geometric series.
    total = (1 - ratio**k) / (1 - ratio)
    energy = (1 - ratio ** (2 * k)) / (1 - ratio**2)
    fourth = (1 - ratio ** (4 * k)) / (1 - ratio**4)
    p = sigma / total
    assert metrics.nuclear_norm(sigma) == pytest.approx(total)
    assert metrics.frobenius_norm(sigma) == pytest.approx(math.sqrt(energy))
    assert metrics.stable_rank(sigma) == pytest.approx(energy)
    assert metrics.participation_ratio(sigma) == pytest.approx(energy**2 / fourth)
    assert metrics.entropy(sigma) == pytest.approx(-sum(p * np.log(p)))
    assert metrics.top_share(sigma, 1) == pytest.approx(1 / energy)
    # Energies 1, 1/4, 1/16, …: 75 % in the first, 93.75 % in two, 99.6 % in four.
    assert metrics.energy_rank(sigma, 0.5) == 1
    assert metrics.energy_rank(sigma, 0.9) == 2
    assert metrics.energy_rank(sigma, 0.99) == 4
    assert metrics.condition_number(sigma) == pytest.approx(2.0 ** (k - 1))


def _gini_by_mean_difference(values: np.ndarray) -> float:
    """Gini's own definition: mean absolute difference over twice the mean."""
    m = len(values)
    mean_difference = np.abs(values[:, None] - values[None, :]).sum() / (m * m)
    return mean_difference / (2 * values.mean())


def test_gini_against_the_mean_absolute_difference_definition():
    sigma = np.array([5.0, 3.0, 1.0, 0.5, 0.0, 0.0])  # two exact zeros: not used directions
    expected = _gini_by_mean_difference(sigma[:4])
    assert metrics.gini(sigma, (6, 10)) == pytest.approx(expected, rel=1e-12)
    # the shape's n − k zeros are not counted either
    assert metrics.gini(sigma[:4], (4096, 4096)) == pytest.approx(expected, rel=1e-12)


def test_gini_leaves_out_values_below_the_tolerance():
    used = np.array([4.0, 2.0, 1.0])
    sigma = np.concatenate([used, np.full(50, 1e-3)])  # a noise tail under tol = 1e-2
    assert metrics.gini(sigma, (64, 64), tol=1e-2) == pytest.approx(
        _gini_by_mean_difference(used), rel=1e-12
    )
    assert metrics.gini(sigma, (64, 64)) > 0.5  # without the tolerance the tail is counted


def test_gini_tells_rank_8_adapters_apart_at_4096():
    """Over all n values every rank-8 LoRA at 4096 scored ≈ 0.998; over its 8, they differ."""
    flat, spiked = np.ones(8), np.array([8.0, *[1.0] * 7])
    assert metrics.gini(flat, (4096, 4096)) == pytest.approx(0.0, abs=1e-12)
    assert metrics.gini(spiked, (4096, 4096)) == pytest.approx(
        _gini_by_mean_difference(spiked), rel=1e-12
    )
    assert metrics.gini(spiked, (4096, 4096)) > 0.3


def weightwatcher_entropy(svals: np.ndarray) -> float:
    """WeightWatcher's matrix_entropy (RMT_Util), transcribed from its definition."""
    n = len(svals)
    rank = np.count_nonzero(svals > svals.max() * n * np.finfo(svals.dtype).eps)
    evals = svals * svals
    p = evals / evals.sum()
    return float(-np.sum(p * np.log(p)) / np.log(rank))


def test_energy_entropy_equals_weightwatchers_entropy():
    sigma = np.random.default_rng(0).gamma(2.0, size=50)
    assert metrics.energy_entropy(sigma) == pytest.approx(weightwatcher_entropy(sigma), rel=1e-12)


def test_relative_norm_needs_the_base():
    sigma = np.array([3.0, 4.0])
    assert metrics.relative_norm(sigma, 10.0) == pytest.approx(0.5)
    assert metrics.relative_norm(sigma, None) is None


# ------------------------------------------------------------ rank floor


@pytest.mark.parametrize(
    "dtype", [torch.float16, torch.bfloat16, torch.float32], ids=lambda d: str(d)[6:]
)
def test_rank_tolerance_counts_a_factored_rank_8_as_8_in_any_dtype(dtype):
    """σ handed over in float16, bfloat16 or float32 gives the float64 answer for the values
    that dtype holds: spectra widens before any arithmetic."""
    shape = (4096, 4096)
    sigma = torch.tensor([1.0, 0.5, 0.25, 0.1, 0.05, 0.01, 0.005, 1e-3], dtype=dtype)
    rounded = sigma.double().numpy()  # the dtype-rounded values, exact in float64
    assert sigma.dtype == dtype and not np.array_equal(rounded[3:], [0.1, 0.05, 0.01, 0.005, 1e-3])
    tol = metrics.rank_tolerance(sigma, shape)
    assert tol == pytest.approx(rounded[0] * 4096 * np.finfo(np.float64).eps, rel=1e-15)
    assert metrics.numerical_rank(sigma, shape, tol) == 8
    # float64 answers for the rounded values, by hand
    p = rounded / rounded.sum()
    energy = rounded**2
    assert metrics.entropy(sigma) == pytest.approx(-np.sum(p * np.log(p)), rel=1e-14)
    assert metrics.effective_rank(sigma) == pytest.approx(np.exp(-np.sum(p * np.log(p))), rel=1e-14)
    assert metrics.stable_rank(sigma) == pytest.approx(energy.sum() / energy[0], rel=1e-14)
    assert metrics.participation_ratio(sigma) == pytest.approx(
        energy.sum() ** 2 / np.sum(energy**2), rel=1e-14
    )
    assert metrics.nuclear_norm(sigma) == pytest.approx(rounded.sum(), rel=1e-15)
    assert metrics.frobenius_norm(sigma) == pytest.approx(np.sqrt(energy.sum()), rel=1e-15)
    # every registered metric, from the dtype's tensor (and a numpy array where numpy has it)
    # equals the one from the rounded values in float64
    expected = compute(rounded, shape, base_norm=3.0)
    assert compute(sigma, shape, base_norm=3.0) == pytest.approx(expected, rel=1e-14)
    if dtype != torch.bfloat16:
        assert compute(sigma.numpy(), shape, base_norm=3.0) == pytest.approx(expected, rel=1e-14)


def test_rank_tolerance_rounding_floor_rejects_bf16_noise():
    """A rank-8 update plus bf16 rounding of the weights: the floor keeps rank 8."""
    rng = np.random.default_rng(1)
    d = 256
    weight = torch.from_numpy(rng.standard_normal((d, d)) * 0.05)
    U, _ = np.linalg.qr(rng.standard_normal((d, 8)))
    V, _ = np.linalg.qr(rng.standard_normal((d, 8)))
    update = torch.from_numpy((U * np.linspace(1.0, 0.3, 8)) @ V.T)
    tuned = (weight + update).to(torch.bfloat16).double()
    delta = tuned - weight.to(torch.bfloat16).double()
    sigma = torch.from_numpy(np.linalg.svd(delta.numpy(), compute_uv=False))
    assert metrics.numerical_rank(sigma, (d, d)) > 100  # numpy's rule counts the noise
    rms = float(weight.square().mean().sqrt())
    tol = metrics.rank_tolerance(sigma, (d, d), source_dtype=torch.bfloat16, weight_rms=rms)
    assert metrics.numerical_rank(sigma, (d, d), tol) == 8


# ------------------------------------------------------------ zero matrix


def test_zero_spectrum_is_all_zero_and_finite():
    values = compute(np.zeros(10), (10, 20), base_norm=1.0)
    assert all(value == 0 for value in values.values()), values


def test_empty_spectrum_of_a_rank_0_module():
    values = compute(np.zeros(0), (10, 20))
    assert all(value in (0, None) for value in values.values())


def test_invalid_spectra_are_rejected():
    with pytest.raises(ValueError, match=">= 0"):
        metrics.entropy([1.0, -0.5])
    with pytest.raises(ValueError, match="finite"):
        metrics.entropy([1.0, float("nan")])


# ------------------------------------------------------------- properties

spectra_strategy = st.lists(
    st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_subnormal=True),
    min_size=1,
    max_size=40,
).filter(lambda values: max(values) > 1e-300)

BALANCE = [name for name, metric in METRICS.items() if metric.group == "balance"]


@settings(max_examples=60, deadline=None)
@given(values=spectra_strategy, scale_exponent=st.floats(-200, 200), seed=st.integers(0, 1000))
def test_balance_metrics_invariant_to_scaling_and_permutation(values, scale_exponent, seed):
    sigma = np.array(values)
    shape = (len(values) + 3, len(values) + 7)
    permuted = np.random.default_rng(seed).permutation(sigma) * 10.0**scale_exponent
    if permuted.max() == 0 or not np.isfinite(permuted).all():
        return
    # A relative tolerance scales with σ, so rank-based metrics stay comparable.
    reference = compute(sigma, shape, tol=1e-9 * sigma.max(), names=BALANCE)
    scaled = compute(permuted, shape, tol=1e-9 * permuted.max(), names=BALANCE)
    for name in BALANCE:
        assert scaled[name] == pytest.approx(reference[name], rel=1e-9, abs=1e-12), name


@settings(max_examples=80, deadline=None)
@given(values=spectra_strategy)
def test_bounds_hold_for_any_nonzero_spectrum(values):
    sigma = np.array(values)
    n = len(values) + 2
    shape = (n, n + 5)
    result = compute(sigma, shape)
    assert all(v is None or math.isfinite(v) for v in result.values())
    assert 1.0 - 1e-9 <= result["effective_rank"] <= n + 1e-9
    assert 0.0 <= result["normalized_entropy"] <= 1.0
    assert 0.0 <= result["energy_entropy"] <= 1.0
    assert 1.0 - 1e-9 <= result["stable_rank"] <= n + 1e-9
    assert 1.0 - 1e-9 <= result["participation_ratio"] <= n + 1e-9
    assert 0.0 <= result["gini"] < 1.0
    assert 0.0 <= result["top_share@1"] <= result["top_share@8"] <= 1.0
    assert 1 <= result["energy_rank@0.5"] <= result["energy_rank@0.9"] <= result["energy_rank@0.99"]
    assert result["energy_rank@0.99"] <= len(values)
    assert result["condition_number"] >= 1.0
    assert result["spectral_norm"] <= result["frobenius_norm"] * (1 + 1e-12)
    assert result["frobenius_norm"] <= result["nuclear_norm"] * (1 + 1e-12)
