"""Subspace metrics against numpy, hand-built cases, and real MiniLM checkpoints.

References are computed here with numpy's float64 SVD from the definitions
in METRICS.md ("Subspace"), from ΔW read independently of spectra (peft's
merge for the adapter, safetensors for the fine-tune).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.numpy import load_file
from spectra_cli.main import cli

import spectra
from spectra.analysis import measure_subspaces
from spectra.delta import Dense, Factored
from spectra.errors import SpectraError
from spectra.subspace import (
    amplification,
    intruder_dimensions,
    singular_vectors,
    subspace_similarity,
)
from tests.helpers.adapters import random_peft_model, save_peft_adapter
from tests.helpers.models import bert_weight, load_bert, make_bert_finetune

RNG = np.random.default_rng(7)


# -- references, written from METRICS.md with numpy ---------------------------


def np_similarity(delta_a: np.ndarray, delta_b: np.ndarray, i: int, j: int) -> float:
    U_a = np.linalg.svd(delta_a)[0][:, :i]
    U_b = np.linalg.svd(delta_b)[0][:, :j]
    return float(np.linalg.norm(U_a.T @ U_b, "fro") ** 2 / min(i, j))


def np_amplification(delta: np.ndarray, W0: np.ndarray, r: int) -> float:
    U, _, Vt = np.linalg.svd(delta)
    projected = U[:, :r].T @ W0 @ Vt[:r].T
    return float(np.linalg.norm(delta, "fro") / np.linalg.norm(projected, "fro"))


def np_intruders(W0: np.ndarray, delta: np.ndarray, k: int = 10, eps: float = 0.5) -> int:
    U_base = np.linalg.svd(W0, full_matrices=False)[0]
    U_tuned = np.linalg.svd(W0 + delta, full_matrices=False)[0][:, :k]
    return int(np.sum(np.abs(U_tuned.T @ U_base).max(axis=1) < eps))


def factored(d_out: int, d_in: int, r: int, scale: float = 0.7) -> Factored:
    return Factored(
        torch.from_numpy(RNG.standard_normal((d_out, r))),
        torch.from_numpy(RNG.standard_normal((r, d_in))),
        scale,
    )


# -- the building blocks ------------------------------------------------------


@pytest.mark.parametrize("shape,r", [((40, 30), 6), ((30, 50), 4), ((20, 20), 25)])
def test_singular_vectors_of_a_factored_update_match_numpy(shape, r):
    update = factored(*shape, r)
    dense = update.to_dense().numpy()
    U, S, Vt = np.linalg.svd(dense)
    vectors = singular_vectors(update, k=5)
    rank = min(r, *shape)
    assert vectors.k == min(5, rank)
    np.testing.assert_allclose(vectors.S[:rank].numpy(), S[:rank], rtol=1e-10)
    # the same vectors up to sign: |u_iᵀ u_i| = 1
    k = vectors.k
    np.testing.assert_allclose(np.abs(np.sum(vectors.U.numpy() * U[:, :k], 0)), 1, atol=1e-8)
    np.testing.assert_allclose(np.abs(np.sum(vectors.V.numpy() * Vt[:k].T, 0)), 1, atol=1e-8)


def test_k_stops_at_the_numerical_rank():
    update = factored(30, 30, 3)
    assert singular_vectors(update, k=8).k == 3
    assert singular_vectors(Dense(update.to_dense()), k=8).k == 3
    assert singular_vectors(Dense(torch.zeros(5, 4)), k=2).k == 0


def test_similarity_by_hand():
    basis = torch.linalg.qr(torch.from_numpy(RNG.standard_normal((10, 4))))[0]
    assert subspace_similarity(basis[:, :2], basis[:, :2]) == pytest.approx(1)
    assert subspace_similarity(basis[:, :2], basis[:, 2:]) == pytest.approx(0, abs=1e-15)
    # one shared direction out of two: ‖·‖_F² = 1, min(i, j) = 2
    assert subspace_similarity(basis[:, :2], basis[:, 1:3]) == pytest.approx(0.5)
    # a subspace inside a larger one: 1 whatever the sizes
    assert subspace_similarity(basis[:, :1], basis[:, :3]) == pytest.approx(1)
    assert np.isnan(subspace_similarity(basis[:, :0], basis))


def test_similarity_amplification_and_intruders_match_numpy_on_random_matrices():
    W0 = RNG.standard_normal((40, 32))
    a, b = factored(40, 32, 8), Dense(torch.from_numpy(RNG.standard_normal((40, 32))))
    va, vb = singular_vectors(a, 6), singular_vectors(b, 4)
    dense_a = a.to_dense().numpy()
    assert subspace_similarity(va.U, vb.U) == pytest.approx(
        np_similarity(dense_a, b.matrix.numpy(), 6, 4), rel=1e-10
    )
    W0_t = torch.from_numpy(W0)
    assert amplification(va, W0_t) == pytest.approx(np_amplification(dense_a, W0, 6), rel=1e-10)
    for update, dense in ((a, dense_a), (Dense(b.matrix * 3), 3 * b.matrix.numpy())):
        for eps in (0.3, 0.5, 0.8):
            assert intruder_dimensions(W0_t, update, 10, eps) == np_intruders(W0, dense, 10, eps)


def test_a_planted_intruder_is_counted():
    # W0's left singular vectors are the unit vectors; ΔW adds a strong direction that
    # makes an angle of cos = 1/√n ≈ 0.18 with each of them: exactly one intruder.
    n = 30
    W0 = torch.diag(torch.linspace(3, 1, n, dtype=torch.float64))
    x = torch.ones(n, 1, dtype=torch.float64) / n**0.5
    y = torch.zeros(1, n, dtype=torch.float64)
    y[0, 5] = 1
    assert intruder_dimensions(W0, Factored(x, y, 50.0)) == 1
    assert intruder_dimensions(W0, Factored(x, y, 1e-3)) == 0  # too weak to rank in the top 10


# -- on real checkpoints -------------------------------------------------------


@pytest.fixture(scope="module")
def ft_single(tmp_path_factory, minilm_dir):
    return make_bert_finetune(tmp_path_factory.mktemp("ft-subspace"), minilm_dir, "single")


def saved_delta(ft, layer: int, role: str) -> np.ndarray:
    tuned = load_file(str(ft.path / "model.safetensors"))
    base = load_file(str(ft.base / "model.safetensors"))
    module = {"k": "key", "v": "value"}[role]
    name = next(n for n in tuned if n.endswith(f"layer.{layer}.attention.self.{module}.weight"))
    base_name = next(n for n in base if n.endswith(f"layer.{layer}.attention.self.{module}.weight"))
    return tuned[name].astype(np.float64) - base[base_name].astype(np.float64)


@pytest.mark.slow
def test_compare_subspace_on_minilm_ft_and_lora(ft_single, lora_adapter, minilm_dir, tmp_path):
    comparison = spectra.compare(
        [ft_single.path, lora_adapter.path],
        ["FT", "LoRA"],
        base=minilm_dir,
        layers=[0, 3],
        subspace=True,
        subspace_rank=4,
    )
    result = comparison.subspace
    base_model = load_bert(minilm_dir, torch.float64)
    assert len(result.pairs) == 4 and len(result.modules) == 8
    for pair in result.pairs:
        layer, role = pair["layer"], pair["role"]
        ft_delta = saved_delta(ft_single, layer, role)
        lora_delta = lora_adapter.reference[(layer, role)]
        assert pair["similarity"] == pytest.approx(
            np_similarity(ft_delta, lora_delta, 4, 4), rel=1e-6
        )
    for row in result.modules:
        layer, role = row["layer"], row["role"]
        delta = (
            saved_delta(ft_single, layer, role)
            if row["label"] == "FT"
            else lora_adapter.reference[(layer, role)]
        )
        W0 = bert_weight(base_model, layer, role)
        assert row["amplification"] == pytest.approx(np_amplification(delta, W0, 4), rel=1e-6)
        assert row["intruder_dimensions"] == np_intruders(W0, delta)
    summary = {(row["label"], row["role"]): row for row in comparison.summary()}
    ft_k = [
        r["amplification"] for r in result.modules if r["label"] == "FT" and r["role"] == "k"
    ]
    assert summary[("FT", "k")]["amplification"] == pytest.approx(np.mean(ft_k))

    out = comparison.save(tmp_path / "cmp", figure_format="svg")
    header = (out / "subspace_similarity.csv").read_text().splitlines()[0]
    assert header == "layer,role,label_a,label_b,d_out,k_a,k_b,similarity"
    # the heat-map marks what random subspaces of these sizes would score: max(k_a, k_b)/d
    from spectra.plot import chance_levels, similarity_heatmap

    expected = sorted({max(r["k_a"], r["k_b"]) / 384 for r in result.pairs})
    assert chance_levels(result) == pytest.approx(expected)
    figure, _ = similarity_heatmap(result)
    marks = sorted(line.get_ydata()[0] for line in figure.axes[-1].get_lines())
    assert marks == pytest.approx(expected)
    assert (out / "subspace_similarity.svg").stat().st_size > 5_000
    assert "amplification" in (out / "summary.csv").read_text().splitlines()[0]

    # a saved report keeps no vectors, and is never re-opened behind the user's back
    with pytest.raises(SpectraError, match="pass the checkpoint itself"):
        spectra.compare(
            [out / "reports" / "FT", lora_adapter.path],
            ["FT", "LoRA"],
            base=minilm_dir,
            subspace=True,
        )
    # the standalone pass gives the same numbers as the one inside compare
    again = measure_subspaces(
        [ft_single.path, lora_adapter.path],
        ["FT", "LoRA"],
        ["k", "v"],
        layers=[0, 3],
        base=minilm_dir,
        rank=4,
    )
    assert again.pairs == result.pairs and again.modules == result.modules


@pytest.mark.slow
def test_compare_with_subspaces_reads_each_checkpoint_once(
    ft_single, lora_adapter, minilm_dir, monkeypatch
):
    from spectra.loaders.base import Checkpoint

    reads: list[str] = []
    real = Checkpoint.deltas_for

    def counted(self, selection):
        reads.append(str(self.path))
        return real(self, selection)

    monkeypatch.setattr(Checkpoint, "deltas_for", counted)
    comparison = spectra.compare(
        [ft_single.path, lora_adapter.path],
        ["FT", "LoRA"],
        base=minilm_dir,
        layers=[1],
        subspace=True,
    )
    assert sorted(reads) == sorted([str(ft_single.path), str(lora_adapter.path)])
    assert len(comparison.subspace.pairs) == 2  # k and v of layer 1


@pytest.fixture(scope="module")
def second_lora(tmp_path_factory, minilm_dir):
    """Another real peft LoRA (rank 4, its own seed, layer 1 only), saved in bf16."""
    from peft import LoraConfig

    config = LoraConfig(r=4, lora_alpha=4, target_modules=["key", "value"], layers_to_transform=[1])
    model = random_peft_model(minilm_dir, config, seed=21)
    folder = tmp_path_factory.mktemp("second-lora")
    return save_peft_adapter(model, folder, minilm_dir, torch.bfloat16)


@pytest.mark.slow
def test_two_adapters_without_base_match_numpy_and_leave_w0_metrics_empty(
    lora_adapter, second_lora
):
    """Two different checkpoints: similarity from each one's ΔW, read by peft's merge."""
    comparison = spectra.compare(
        [lora_adapter.path, second_lora.path],
        ["r8", "r4"],
        layers=[1],
        subspace=True,
        subspace_rank=6,
    )
    assert all(row["amplification"] is None for row in comparison.subspace.modules)
    assert all(row["intruder_dimensions"] is None for row in comparison.subspace.modules)
    assert any("base=" in warning for warning in comparison.subspace.warnings)
    pairs = comparison.subspace.pairs
    assert [(row["layer"], row["role"]) for row in pairs] == [(1, "k"), (1, "v")]
    for row in pairs:
        key = (row["layer"], row["role"])
        # k stops at each update's rank: 6 of the rank-8 adapter's, all 4 of the other's
        assert (row["label_a"], row["label_b"], row["k_a"], row["k_b"]) == ("r8", "r4", 6, 4)
        expected = np_similarity(lora_adapter.reference[key], second_lora.reference[key], 6, 4)
        assert row["similarity"] == pytest.approx(expected, rel=1e-6)
        assert row["similarity"] < 0.5  # independent random updates: far from the same subspace


def test_per_head_is_refused_for_subspaces(lora_adapter):
    with pytest.raises(SpectraError, match="per_head=True"):
        spectra.compare([lora_adapter.path] * 2, ["a", "b"], subspace=True, per_head=True)


@pytest.mark.slow
def test_cli_compare_subspace(ft_single, lora_adapter, minilm_dir, tmp_path):
    out = tmp_path / "cmp"
    result = CliRunner().invoke(
        cli,
        [
            "compare",
            str(ft_single.path),
            str(lora_adapter.path),
            "--label",
            "FT",
            "--label",
            "LoRA",
            "--base",
            str(minilm_dir),
            "--layers",
            "2",
            "--subspace",
            "--subspace-rank",
            "3",
            "--out",
            str(out),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "subspace similarity of the top-3" in result.output
    rows = (out / "subspace_modules.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 2  # header, 2 methods × (k, v)
    assert (out / "subspace_similarity.png").is_file()
