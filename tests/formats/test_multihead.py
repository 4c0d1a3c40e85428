"""MultiLoRA and multi-head LoRA (HydraLoRA) checkpoints against numpy.

``spectra.examples.reference``'s layers wrap the real MiniLM's key and value
projections, are trained a few steps (so the scaling vectors and routers
move away from their initial values), and are saved in the reference
on-disk layouts. ΔW is rebuilt here in numpy from the saved tensors with the
formulas of docs/formats.md ("MultiLoRA", "Multi-head LoRA"), independently
of spectra's loaders, and the layer's forward pass is checked against that
formula too.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from spectra_cli.main import cli

import spectra
from spectra import Report
from spectra.examples.reference import MultiHeadLoRALinear, MultiLoRALinear
from tests.helpers.checks import (
    DTYPES,
    assert_same_reads,
    dtype_id,
    read_deltas,
    reference_sigma,
    relative_error,
)
from tests.helpers.models import MINILM_LAYERS
from tests.helpers.multilora import (
    ALPHA,
    HEADS,
    RANK,
    cast_state,
    multilora_delta,
    prefix_of,
    wrap_and_train,
)

# MultiLoRA and HydraLoRA layers trained a few steps on MiniLM, in every dtype.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def multilora(tmp_path_factory, minilm_dir):
    model = wrap_and_train(minilm_dir, MultiLoRALinear)
    path = tmp_path_factory.mktemp("multilora") / "final_checkpoint.pt"
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save(state, path)
    # The module computes exactly the formula's ΔW: check once on a random input.
    module = model.encoder.layer[0].attention.self.key
    x = torch.randn(5, 384)
    delta = multilora_delta(state, "encoder.layer.0.attention.self.key")
    with torch.no_grad():
        expected = x.double().numpy() @ (module.base.weight.double().numpy() + delta).T
        np.testing.assert_allclose(
            module(x).double().numpy() - module.base.bias.double().numpy(), expected, atol=1e-4
        )
    return path, state


def test_multilora_sum_matches_numpy(multilora):
    path, state = multilora
    report = spectra.analyze(path, lora_alpha=ALPHA)
    assert report.meta["source"]["format"] == "multilora"
    assert len(report) == 2 * MINILM_LAYERS and "head" not in report.columns
    for row in report.rows:
        expected = reference_sigma(multilora_delta(state, prefix_of(row["layer"], row["role"])))
        sigma = report.spectrum(row["layer"], row["role"])
        assert len(sigma) == HEADS * RANK
        np.testing.assert_allclose(sigma, expected[: HEADS * RANK], rtol=1e-9)
        assert row["numerical_rank"] == HEADS * RANK
        assert row["scale"] == ALPHA / RANK


def test_multilora_per_head_matches_numpy(multilora, tmp_path):
    path, state = multilora
    report = spectra.analyze(path, lora_alpha=ALPHA, per_head=True, layers=[0, 5])
    assert [(r["layer"], r["role"], r["head"]) for r in report.rows] == [
        (layer, role, head) for layer in (0, 5) for role in ("k", "v") for head in range(HEADS)
    ]
    for row in report.rows:
        heads = multilora_delta(state, prefix_of(row["layer"], row["role"]), per_head=True)
        expected = reference_sigma(heads[row["head"]])
        np.testing.assert_allclose(
            report.spectrum(row["layer"], row["role"], row["head"]), expected[:RANK], rtol=1e-9
        )
    saved = Report.load(report.save(tmp_path / "r"))
    assert saved == report and "head" in saved.columns


def test_multilora_without_alpha_warns_and_leaves_balance_alone(multilora):
    path, _ = multilora
    scaled = spectra.analyze(path, lora_alpha=ALPHA, layers=[2])
    unscaled = spectra.analyze(path, layers=[2])
    assert any("saves no α" in w for w in unscaled.warnings)
    for a, b in zip(scaled.rows, unscaled.rows, strict=True):
        assert b["spectral_norm"] == pytest.approx(a["spectral_norm"] * RANK / ALPHA)
        assert b["effective_rank"] == pytest.approx(a["effective_rank"])
        assert b["normalized_entropy"] == pytest.approx(a["normalized_entropy"])


def test_convert_to_spectra_layout_and_back_gives_the_same_report(multilora, tmp_path):
    path, _ = multilora
    runner = CliRunner()
    result = runner.invoke(
        cli, ["convert", str(path), str(tmp_path / "ml"), "--lora-alpha", str(ALPHA)]
    )
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "ml" / "adapter_config.json").read_text())
    assert config["peft_type"] == "SPECTRA_MULTILORA"
    assert (config["r"], config["num_heads"], config["lora_alpha"]) == (RANK, HEADS, ALPHA)
    original, converted = spectra.analyze(path, lora_alpha=ALPHA), spectra.analyze(tmp_path / "ml")
    assert original.rows == converted.rows
    assert (
        runner.invoke(cli, ["convert", str(path), str(tmp_path / "ml")]).exit_code == 1
    )  # no --force
    inspect = runner.invoke(cli, ["inspect", str(tmp_path / "ml")])
    assert (
        inspect.exit_code == 0
        and "multilora" in inspect.stdout
        and "config: lora_alpha/r = 8/4" in inspect.stdout
    )


def _check_read_twice(checkpoint, expected: dict, layers, dtype) -> None:
    """deltas() twice: bit-identical, and each ΔW and σ against the numpy formula to 1e-10."""
    first = read_deltas(checkpoint, layers=layers)
    second = read_deltas(checkpoint, layers=layers)
    assert_same_reads(first, second)
    assert {(r.delta.layer, r.delta.role, r.delta.head) for r in second} == set(expected)
    for read in second:
        delta = read.delta
        reference = expected[delta.layer, delta.role, delta.head]
        assert delta.source_dtype == dtype, delta.key
        assert relative_error(read.dense, reference) < 1e-10, delta.key
        sigma = spectra.singular_values(delta, device="cpu").numpy()
        reference_values = reference_sigma(reference)
        k = len(sigma)
        np.testing.assert_allclose(
            sigma, reference_values[:k], rtol=1e-10, atol=1e-12 * reference_values[0]
        )
        assert np.all(reference_values[k:] <= 1e-12 * reference_values[0]), delta.key


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_multilora_in_each_dtype_read_twice_matches_numpy(multilora, tmp_path, dtype):
    """The trained checkpoint saved in float32, bf16 and fp16; the reference is the numpy
    formula on the saved tensors, widened to float64 (exact), so any step taken in the
    checkpoint's dtype (c_i ⊙ B_i, the stacking) shows as an error far above 1e-10."""
    _, trained = multilora
    path = tmp_path / "final_checkpoint.pt"
    torch.save(cast_state(trained, dtype), path)
    state = torch.load(path, weights_only=True)  # what the file holds, read with torch
    assert {t.dtype for k, t in state.items() if ".lora_" in k} == {dtype}
    layers = [5]
    summed = {
        (layer, role, None): multilora_delta(state, prefix_of(layer, role))
        for layer in layers
        for role in ("k", "v")
    }
    _check_read_twice(spectra.load(path, lora_alpha=ALPHA), summed, layers, dtype)
    per_head = {
        (layer, role, head): delta
        for layer in layers
        for role in ("k", "v")
        for head, delta in enumerate(multilora_delta(state, prefix_of(layer, role), True))
    }
    _check_read_twice(spectra.load(path, lora_alpha=ALPHA, per_head=True), per_head, layers, dtype)


def test_untrained_multilora_is_exactly_zero_with_defined_metrics(tmp_path, minilm_dir):
    model = wrap_and_train(minilm_dir, MultiLoRALinear, steps=0)
    path = tmp_path / "fresh.pt"
    torch.save(model.state_dict(), path)
    report = spectra.analyze(path, lora_alpha=ALPHA)
    assert all(row["spectral_norm"] == 0 and row["effective_rank"] == 0 for row in report.rows)
    assert any("every lora_scaling vector is zero" in w for w in report.warnings)
    assert sum("ΔW is exactly zero" in w for w in report.warnings) == 2 * MINILM_LAYERS


@pytest.fixture(scope="module")
def hydra(tmp_path_factory, minilm_dir):
    model = wrap_and_train(minilm_dir, MultiHeadLoRALinear, seed=3)
    folder = tmp_path_factory.mktemp("hydra")
    state = {}
    for name, tensor in model.state_dict().items():
        if "lora_" in name:
            state[f"base_model.model.{name}"] = tensor.detach().clone()
    torch.save(state, folder / "adapter_model.bin")
    module = model.encoder.layer[2].attention.self.value
    x = torch.randn(5, 384)
    with torch.no_grad():
        route = torch.softmax(x @ module.lora_route.weight.T, -1).double().numpy()  # (5, N)
        heads = _hydra_heads(state, 2, "v")  # each (d_out, d_in)
        delta_x = sum(route[:, j : j + 1] * (x.double().numpy() @ heads[j].T) for j in range(HEADS))
        np.testing.assert_allclose(
            (module(x) - module.base(x)).double().numpy(), delta_x, atol=1e-5
        )
    config = {
        "peft_type": "LORA",
        "r": RANK,
        "lora_alpha": ALPHA,
        "lora_nums": HEADS,
        "target_modules": ["key", "value"],
    }
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder, state


def _hydra_heads(state, layer, role):
    prefix = f"base_model.model.{prefix_of(layer, role)}"
    A = state[f"{prefix}.lora_A.weight"].double().numpy()  # (r, d_in)
    return [
        (ALPHA / RANK) * state[f"{prefix}.lora_B{j}.weight"].double().numpy() @ A
        for j in range(HEADS)
    ]


def test_hydra_uniform_mixture_by_default(hydra):
    folder, state = hydra
    report = spectra.analyze(folder)
    assert report.meta["source"]["variant"] == "multi-head LoRA (uniform mixture)"
    assert any("router" in w for w in report.warnings)
    for row in report.rows:
        mixture = sum(_hydra_heads(state, row["layer"], row["role"])) / HEADS
        np.testing.assert_allclose(
            report.spectrum(row["layer"], row["role"]), reference_sigma(mixture)[:RANK], rtol=1e-9
        )


def test_hydra_per_head(hydra):
    folder, state = hydra
    report = spectra.analyze(folder, per_head=True, modules=["v"])
    assert report.meta["source"]["variant"] == "multi-head LoRA (per head)"
    assert [row["head"] for row in report.rows] == list(range(HEADS)) * MINILM_LAYERS
    for row in report.rows:
        expected = reference_sigma(_hydra_heads(state, row["layer"], "v")[row["head"]])
        np.testing.assert_allclose(
            report.spectrum(row["layer"], "v", row["head"]), expected[:RANK], rtol=1e-9
        )
    info = spectra.load(folder).describe()
    assert {m.heads for m in info.modules} == {HEADS}


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_hydra_in_each_dtype_read_twice_matches_numpy(hydra, tmp_path, dtype):
    """The multi-head adapter saved in float32, bf16 and fp16: mixture and per-head ΔW
    against the numpy formula on the saved tensors, read twice."""
    folder, trained = hydra
    saved = tmp_path / "hydra"
    saved.mkdir()
    (saved / "adapter_config.json").write_text((folder / "adapter_config.json").read_text())
    torch.save(cast_state(trained, dtype), saved / "adapter_model.bin")
    state = torch.load(saved / "adapter_model.bin", weights_only=True)
    assert {tensor.dtype for tensor in state.values()} == {dtype}
    layers = [4]
    heads = {(layer, role): _hydra_heads(state, layer, role) for layer in layers for role in "kv"}
    mixture = {(layer, role, None): sum(h) / HEADS for (layer, role), h in heads.items()}
    _check_read_twice(spectra.load(saved), mixture, layers, dtype)
    per_head = {
        (layer, role, head): delta
        for (layer, role), h in heads.items()
        for head, delta in enumerate(h)
    }
    _check_read_twice(spectra.load(saved, per_head=True), per_head, layers, dtype)
