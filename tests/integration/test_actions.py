"""suggest, resize and extract (issue 19, items 1-3) against peft's own loading and merge and
numpy's SVD: a resized or extracted adapter, loaded by peft onto the base and merged, must
give the best rank-k approximation (Eckart–Young, by numpy) of the original ΔW."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from spectra_cli.main import cli

import spectra
from spectra.errors import SpectraError
from tests.helpers.adapters import merged_reference, random_peft_model, save_peft_adapter
from tests.helpers.checks import DTYPES, dtype_id
from tests.helpers.models import MINILM_LAYERS, ROLE_MODULES, load_bert


def best_rank(matrix: np.ndarray, k: int) -> np.ndarray:
    U, S, Vt = np.linalg.svd(matrix, full_matrices=False)
    return (U[:, :k] * S[:k]) @ Vt[:k]


def energy_rank(matrix: np.ndarray, q: float) -> int:
    S = np.linalg.svd(matrix, compute_uv=False)
    shares = np.cumsum(S**2) / np.sum(S**2)
    return int(np.searchsorted(shares, q - 1e-12) + 1)


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def lora_model(minilm_dir):
    from peft import LoraConfig

    config = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=["key", "value"],
        rank_pattern={"layer.2.attention.self.value": 4},
    )
    return random_peft_model(minilm_dir, config, seed=3)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_resized_adapter_merges_to_the_best_rank_k(tmp_path, minilm_dir, lora_model, dtype):
    original = save_peft_adapter(lora_model, tmp_path / "a", minilm_dir, dtype)
    result = spectra.resize(original.path, tmp_path / "r3", rank=3)
    resized = merged_reference(tmp_path / "r3", minilm_dir)  # peft loads and merges it
    assert set(resized) == set(original.reference)
    for key, delta in original.reference.items():
        assert relative(resized[key], best_rank(delta, 3)) < 1e-6, key
    by_module = {row["module"]: row for row in result.rows}
    row = by_module["encoder.layer.2.attention.self.value"]
    delta = original.reference[(2, "v")]
    S = np.linalg.svd(delta, compute_uv=False)
    assert row["rank"] == 4 and row["new_rank"] == 3
    assert row["spectral_error"] == pytest.approx(S[3], rel=1e-9)
    assert row["relative_frobenius_error"] == pytest.approx(
        np.sqrt(np.sum(S[3:] ** 2) / np.sum(S**2)), rel=1e-9
    )
    config = json.loads((tmp_path / "r3" / "adapter_config.json").read_text())
    assert config["r"] == 3 and config["lora_alpha"] == pytest.approx(2.0 * 3)  # scale kept


@pytest.fixture(scope="module")
def rslora_model(minilm_dir):
    from peft import LoraConfig

    config = LoraConfig(
        r=8,
        lora_alpha=16,
        use_rslora=True,  # scale α/√r: 16/√8, and 16/√4 = 8 for the rank_pattern module
        target_modules=["key", "value"],
        rank_pattern={"layer.2.attention.self.value": 4},
    )
    return random_peft_model(minilm_dir, config, seed=5)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_resized_rslora_adapter_merges_to_the_best_rank_k(
    tmp_path, minilm_dir, rslora_model, dtype
):
    from safetensors.torch import load_file

    original = save_peft_adapter(rslora_model, tmp_path / "a", minilm_dir, dtype)
    # the reference (peft's merge) is α/√r·B@A, by hand from the saved file
    tensors = load_file(str(original.path / "adapter_model.safetensors"))
    module = "base_model.model.encoder.layer.2.attention.self.value"
    A = tensors[f"{module}.lora_A.weight"].double().numpy()  # (4, d_in), widened exactly
    B = tensors[f"{module}.lora_B.weight"].double().numpy()  # (d_out, 4)
    assert relative(original.reference[(2, "v")], 16 / np.sqrt(4) * B @ A) < 1e-12
    spectra.resize(original.path, tmp_path / "r3", rank=3)
    resized = merged_reference(tmp_path / "r3", minilm_dir)  # peft loads and merges it
    assert set(resized) == set(original.reference)
    for key, delta in original.reference.items():
        assert relative(resized[key], best_rank(delta, 3)) < 1e-6, key
    config = json.loads((tmp_path / "r3" / "adapter_config.json").read_text())
    assert config["use_rslora"] is True and config["r"] == 3
    assert config["lora_alpha"] == pytest.approx(16 / np.sqrt(8) * np.sqrt(3))  # scale kept


@pytest.mark.slow
def test_resize_by_energy_gives_per_module_ranks(tmp_path, minilm_dir, lora_model):
    original = save_peft_adapter(lora_model, tmp_path / "a", minilm_dir)
    spectra.resize(original.path, tmp_path / "e", energy=0.8)
    resized = merged_reference(tmp_path / "e", minilm_dir)
    for key, delta in original.reference.items():
        k = energy_rank(delta, 0.8)
        assert relative(resized[key], best_rank(delta, k)) < 1e-6, key
    with pytest.raises(spectra.ReportExistsError, match="force=True"):
        spectra.resize(original.path, tmp_path / "e", energy=0.8)


def test_resize_refuses_dora(tmp_path, minilm_dir):
    from peft import LoraConfig

    model = random_peft_model(minilm_dir, LoraConfig(r=4, target_modules=["value"], use_dora=True))
    dora = save_peft_adapter(model, tmp_path / "d", minilm_dir)
    with pytest.raises(SpectraError, match="DoRA's magnitude"):
        spectra.resize(dora.path, tmp_path / "out", rank=2)


def test_suggest_matches_numpy_and_builds_in_peft(tmp_path, minilm_dir, lora_model):
    from peft import LoraConfig, get_peft_model

    original = save_peft_adapter(lora_model, tmp_path / "a", minilm_dir)
    suggestion = spectra.suggest(original.path, energy=0.7)
    config = suggestion.config()
    model = get_peft_model(load_bert(minilm_dir), LoraConfig(**config))
    for layer in range(MINILM_LAYERS):
        for role in ("k", "v"):
            module = getattr(
                model.base_model.model.encoder.layer[layer].attention.self, ROLE_MODULES[role]
            )
            expected = energy_rank(original.reference[(layer, role)], 0.7)
            assert module.r["default"] == expected
            trained_r = 4 if (layer, role) == (2, "v") else 8  # rank_pattern
            assert module.scaling["default"] == pytest.approx(16 / trained_r)  # α/r as trained
    result = CliRunner().invoke(
        cli,
        ["suggest", str(original.path), "--energy", "0.7", "--out", str(tmp_path / "ranks.json")],
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "ranks.json").read_text()) == config


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_extracted_lora_merges_to_the_best_rank_k(tmp_path, finetunes, minilm_in, dtype):
    from safetensors.torch import load_file

    def weights(folder):  # the saved tensors, widened exactly to float64
        return {
            k: v.double().numpy() for k, v in load_file(str(folder / "model.safetensors")).items()
        }

    tuned = finetunes("single", dtype)
    out = tmp_path / "lora"
    result = CliRunner().invoke(
        cli,
        [
            "extract",
            str(tuned.path),
            "--base",
            str(tuned.base),
            "--rank",
            "4",
            "--modules",
            "k,v",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    extracted = merged_reference(out, tuned.base)
    tuned_w, base_w = weights(tuned.path), weights(tuned.base)
    assert len(extracted) == MINILM_LAYERS * 2
    rows = (out / "extract.csv").read_text().splitlines()
    assert len(rows) == 1 + MINILM_LAYERS * 2 and "randomized" in rows[1]
    suboptimal = {line.split(",")[0]: float(line.split(",")[-1]) for line in rows[1:]}
    for (layer, role), merged in extracted.items():
        module = f"encoder.layer.{layer}.attention.self.{ROLE_MODULES[role]}"
        delta = tuned_w[f"{module}.weight"] - base_w[f"{module}.weight"]
        assert relative(merged, best_rank(delta, 4)) < 1e-6, (layer, role)
        # the estimate against numpy: ‖ΔW − merged B@A‖₂ / σ_5, both from full SVDs
        exact = np.linalg.norm(delta - merged, 2) / np.linalg.svd(delta, compute_uv=False)[4]
        assert 1 - 1e-6 <= suboptimal[module] < 1.01, module
        assert abs(suboptimal[module] - exact) < 0.002, (module, suboptimal[module], exact)


def _planted(d_out: int, d_in: int, sigma: np.ndarray, seed: int) -> np.ndarray:
    """U diag(σ) Vᵀ with random orthonormal U, V: a ΔW whose spectrum is exactly ``sigma``."""
    generator = np.random.default_rng(seed)
    U, _ = np.linalg.qr(generator.standard_normal((d_out, len(sigma))))
    V, _ = np.linalg.qr(generator.standard_normal((d_in, len(sigma))))
    return (U * sigma) @ V.T


SLOW_SPECTRA = {
    "0.98^i": lambda n: 0.98 ** np.arange(n),
    "0.995^i": lambda n: 0.995 ** np.arange(n),
    "i^-1/2": lambda n: 1 / np.sqrt(np.arange(1, n + 1)),
    "noise": None,  # Gaussian noise: Marchenko–Pastur, the flattest top
}


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(384, 384), (384, 1152), (1152, 384)], ids=str)
@pytest.mark.parametrize("spectrum", list(SLOW_SPECTRA))
@pytest.mark.parametrize("rank", [1, 4, 16])
def test_suboptimality_estimate_against_numpy(shape, spectrum, rank):
    import torch

    from spectra.actions.truncation import dense_top, spectral_suboptimality

    d_out, d_in = shape
    make = SLOW_SPECTRA[spectrum]
    if make is None:
        delta = np.random.default_rng(rank).standard_normal(shape)
    else:
        delta = _planted(d_out, d_in, make(min(shape)), seed=rank)
    top = dense_top(torch.from_numpy(delta), rank)
    assert top.algorithm.startswith("randomized")
    estimate = spectral_suboptimality(torch.from_numpy(delta), top)
    kept = (top.U.numpy() * top.S.numpy()) @ top.V.numpy().T  # (d_out, d_in)
    sigma = np.linalg.svd(delta, compute_uv=False)
    exact = np.linalg.norm(delta - kept, 2) / sigma[rank]  # numpy's full SVD, both norms
    assert estimate >= 1 - 1e-9
    assert abs(estimate - exact) < 0.002, (estimate, exact)


@pytest.mark.slow
def test_suboptimality_is_nan_when_the_truncation_is_exact():
    import torch

    from spectra.actions.truncation import dense_top, spectral_suboptimality

    delta = _planted(400, 300, np.array([3.0, 2.0, 1.0]), seed=0)  # rank 3
    top = dense_top(torch.from_numpy(delta), 3)
    assert np.isnan(spectral_suboptimality(torch.from_numpy(delta), top))
    top = dense_top(torch.from_numpy(delta), 2)
    assert spectral_suboptimality(torch.from_numpy(delta), top) == pytest.approx(1.0, abs=1e-6)
