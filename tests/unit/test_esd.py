"""α of the weights' eigenvalue spectrum against WeightWatcher 0.7.7 and a numpy fit.

Two independent references: WeightWatcher itself (``WeightWatcher.analyze``
on ``nn.Linear`` layers holding the matrices, its default ``alpha``), and
the fit written here in numpy from its definition (λ = σ² from numpy's SVD,
λ > 1e-5, every candidate xmin, continuous MLE, least KS distance; the
bias-corrected α and tails of 8 or more below 20 eigenvalues). Matrices: the
real k and v weights of all-MiniLM-L6-v2 and synthetic ones (Gaussian, wide,
tall, heavy-tailed, low rank plus noise, and small enough for the
small-sample fit).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from spectra.analysis.weights import check_weight_options
from spectra.delta import Dense
from spectra.errors import SpectraError
from spectra.metrics.esd import esd_eigenvalues, power_law_fit
from spectra.report import Report
from spectra.svd import singular_values

RNG = np.random.default_rng(11)


def np_power_law(W: np.ndarray) -> tuple[float, float, float, int]:
    """(α, xmin, KS distance, tail) of W's eigenvalue spectrum, from WeightWatcher's definition."""
    lam = np.linalg.svd(W, compute_uv=False) ** 2
    x = np.sort(lam[lam > 1e-5])
    small = len(x) < 20
    best = None
    for i in range(len(x) - 1):
        tail = x[i:]
        n = len(tail)
        spread = np.log(tail / x[i]).sum()
        if small and (n < 8 or spread <= 1e-12):
            continue
        alpha = 1 + (n - 1 if small else n) / spread
        distance = np.abs(1 - (tail / x[i]) ** (1 - alpha) - np.arange(n) / n).max()
        if best is None or distance < best[0]:
            best = (distance, alpha, x[i], n)
    assert best is not None
    return best[1], best[2], best[0], best[3]


def synthetic() -> dict[str, np.ndarray]:
    low_rank = RNG.standard_normal((100, 8)) @ RNG.standard_normal((8, 100))
    return {
        "gaussian 64x64": RNG.standard_normal((64, 64)),
        "wide 100x200": RNG.standard_normal((100, 200)),
        "tall 300x120": RNG.standard_normal((300, 120)),
        "heavy-tailed 200x150": RNG.standard_t(2, size=(200, 150)),
        "low rank + noise 100x100": low_rank + 0.01 * RNG.standard_normal((100, 100)),
        "small sample 12x40": RNG.standard_normal((12, 40)),
        "small sample 19x19": RNG.standard_normal((19, 19)),
    }


@pytest.fixture(scope="module")
def matrices(minilm_dir) -> dict[str, np.ndarray]:
    """MiniLM's real k and v weights and the synthetic matrices, as float32 stores them."""
    weights = load_file(str(minilm_dir / "model.safetensors"))
    found = {
        f"MiniLM L{layer}.{role}": weights[
            next(n for n in weights if n.endswith(f"layer.{layer}.attention.self.{module}.weight"))
        ]
        for layer in (0, 4, 5)  # tails of 67 down to 9 eigenvalues
        for role, module in (("k", "key"), ("v", "value"))
    }
    found.update(synthetic())
    return {name: W.astype(np.float32).astype(np.float64) for name, W in found.items()}


@pytest.fixture(scope="module")
def weightwatcher_fits(matrices) -> dict[str, tuple[float, float, float]]:
    """WeightWatcher 0.7.7: (alpha, xmin, D) of each matrix, one analyze() of nn.Linear layers."""
    import weightwatcher

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    layers = []
    for W in matrices.values():
        linear = torch.nn.Linear(W.shape[1], W.shape[0], bias=False)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(W))
        layers.append(linear)
    details = weightwatcher.WeightWatcher(model=torch.nn.Sequential(*layers)).analyze(plot=False)
    assert len(details) == len(matrices)  # no layer dropped
    assert list(details["N"] * details["M"]) == [W.size for W in matrices.values()]
    return {
        name: (row.alpha, row.xmin, row.D)
        for name, (_, row) in zip(matrices, details.iterrows(), strict=True)
    }


def spectra_fit(W: np.ndarray, method: str):
    """The fit as analyze takes it: σ of W by the run's method, then λ = σ²."""
    return power_law_fit(
        esd_eigenvalues(singular_values(Dense(torch.from_numpy(W)), "cpu", method))
    )


@pytest.mark.parametrize("method", ["fast", "exact"])
def test_alpha_equals_weightwatchers_own_on_minilm_and_synthetic_matrices(
    matrices, weightwatcher_fits, method
):
    for name, W in matrices.items():
        fit = spectra_fit(W, method)
        alpha, xmin, distance = weightwatcher_fits[name]
        assert fit.alpha == pytest.approx(alpha, rel=1e-2), name  # the contract: 1 %
        assert fit.alpha == pytest.approx(alpha, rel=1e-8), name  # measured: the same fit
        assert fit.xmin == pytest.approx(xmin, rel=1e-8), name
        assert fit.ks == pytest.approx(distance, abs=1e-8), name


def test_alpha_equals_the_numpy_fit_of_the_definition(matrices):
    for name, W in matrices.items():
        alpha, xmin, distance, tail = np_power_law(W)
        fit = spectra_fit(W, "exact")
        assert fit.alpha == pytest.approx(alpha, rel=1e-9), name
        assert fit.xmin == pytest.approx(xmin, rel=1e-9), name
        assert fit.ks == pytest.approx(distance, abs=1e-9), name
        assert fit.tail == tail, name


def test_a_sampled_power_law_gives_back_its_exponent():
    for alpha in (2.0, 3.5):
        lam = (1 - RNG.random(2000)) ** (-1 / (alpha - 1))  # Pareto, xmin = 1
        assert power_law_fit(lam).alpha == pytest.approx(alpha, rel=0.06)


def test_a_spectrum_too_short_or_flat_is_refused_saying_why():
    with pytest.raises(
        ValueError, match="7 eigenvalues above 1e-05; a power-law fit needs at least 8"
    ):
        power_law_fit(np.r_[np.linspace(1, 2, 7), np.full(50, 1e-6)])  # the rest below the floor
    with pytest.raises(ValueError, match="all equal"):
        power_law_fit(np.ones(12))  # the small-sample fit
    with pytest.raises(ValueError, match="holds one value"):
        power_law_fit(np.ones(30))  # the standard fit: α = ∞
    with pytest.raises(ValueError, match="finite"):
        power_law_fit([1.0, float("nan")] * 10)
    assert esd_eigenvalues(torch.tensor([3.0, 0.5])).tolist() == [9.0, 0.25]


def test_the_w0_measures_refuse_what_they_cannot_take():
    with pytest.raises(SpectraError, match=r"per_head=True"):
        check_weight_options(True, False, 10, 0.5, {"per_head": True})
    with pytest.raises(SpectraError, match="intruders=True"):
        check_weight_options(True, False, 3, 0.5, {})
    with pytest.raises(SpectraError, match=r"\(0, 1\]"):
        check_weight_options(False, True, 10, 1.5, {})
    check_weight_options(True, True, 3, 0.2, {})  # both asked: fine


def test_the_figure_draws_each_fitted_alpha_and_leaves_refused_ones_out():
    from spectra.plot import esd_alpha

    rows = [
        {"layer": layer, "role": role, "alpha_base": base, "alpha_tuned": tuned}
        for layer, role, base, tuned in [
            (0, "k", 2.5, 2.7),
            (1, "k", None, 3.1),  # α of W0 refused: not drawn
            (0, "v", 4.0, 3.0),
            (1, "v", 4.5, 3.5),
        ]
    ]
    report = Report(rows, {f"L{r['layer']}.{r['role']}": np.ones(2) for r in rows})
    _, axes = esd_alpha(report, ["LoRA"])
    k_panel, v_panel = axes.flat[:2]
    lines = {line.get_label(): line for line in k_panel.get_lines()}
    assert list(lines["W0 (base)"].get_xydata().tolist()) == [[0, 2.5]]
    assert list(lines["LoRA: W0 + ΔW"].get_xydata().tolist()) == [[0, 2.7], [1, 3.1]]
    assert [line.get_ydata().tolist() for line in v_panel.get_lines()] == [[4.0, 4.5], [3.0, 3.5]]
    assert k_panel.get_ylabel() and k_panel.get_xlabel() == "layer"
    plain = Report([{"layer": 0, "role": "k"}], {"L0.k": np.ones(2)})
    with pytest.raises(SpectraError, match="esd=True"):
        esd_alpha(plain, ["LoRA"])
