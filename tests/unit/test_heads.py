"""Head diversity (``analysis.heads``) against numpy: HydraLoRA and MultiLoRA, planted heads.

Each file is written with chosen heads (``tests.helpers.multilora``), in
float32, bf16 and fp16; the reference is the definition in dense float64
numpy on the tensors as saved (``reference_heads``), independent of spectra.

Planted: identical heads score cosine, ΔW cosine and subspace similarity 1;
a head −2× another scores cosine −1 and subspace similarity 1; heads that
differ only by a factor γ_j (MultiLoRA's scaling vectors γ_j·1) take shares
γ_j² / Σγ². Independent random heads score near 0, within bounds derived
here for Gaussian factors (N(0, 1) entries):

- cosine of two independent B (d_out × r, any diagonal row scaling c): given
  one, ⟨B_a, B_b⟩ is a sum of m = d_out·r independent zero-mean terms, so
  the cosine has standard deviation ≈ 1/√m;
- ΔW cosine, MultiLoRA (A_a, A_b independent): E⟨ΔW_a, ΔW_b⟩² = d_out·d_in·r²
  and ‖ΔW‖² ≈ d_out·d_in·r, so σ ≈ 1/√(d_out·d_in); HydraLoRA (one A, M = A Aᵀ):
  E⟨B_aA, B_bA⟩² = d_out·tr(M²) and ‖B A‖² ≈ d_out·tr(M), so σ ≈ √tr(M²) / (√d_out·tr M);
- subspace similarity of two independent k-dimensional column spaces in R^d:
  E‖U_aᵀU_b‖²_F = k²/d with variance ≈ 2k²/d², so the similarity
  (divided by k) is k/d ± √2/d.

Each is asserted within 6 σ (a chance of about 2e-9 for a Gaussian).
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

import spectra
from spectra import Report
from spectra.analysis.heads import head_diversity, mean_head_cosine
from spectra.delta import Dense, Factored
from spectra.errors import FormatError
from tests.helpers.checks import DTYPES, dtype_id
from tests.helpers.multilora import (
    ALPHA,
    HEADS,
    RANK,
    hydra_factors,
    multilora_factors,
    reference_heads,
    save_planted_hydra,
    save_planted_multilora,
)

D_OUT, D_IN = 256, 128
MODULES = [(layer, role) for layer in (0, 1) for role in ("k", "v")]
PLANTED = (0, "k")  # the module with planted heads; the others are independent and random
GAMMA = np.array([1.0, 2.0, 3.0])  # MultiLoRA's planted scalings: c_j = γ_j·1


def _hydra_heads(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    heads = {}
    for key in MODULES:
        A = rng.standard_normal((RANK, D_IN))
        Bs = [rng.standard_normal((D_OUT, RANK)) for _ in range(HEADS)]
        if key == PLANTED:
            Bs = [Bs[0], Bs[0].copy(), -2 * Bs[0]]  # identical; −2×: cosine −1, share 4×
        heads[key] = (A, Bs)
    return heads


def _multilora_heads(seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    heads = {}
    for key in MODULES:
        A = rng.standard_normal((HEADS, RANK, D_IN))
        B = rng.standard_normal((HEADS, D_OUT, RANK))
        c = rng.uniform(0.5, 1.5, (HEADS, D_OUT))
        if key == PLANTED:  # one LoRA, scaled by γ_j: the scalings alone split the update
            A, B = np.stack([A[0]] * HEADS), np.stack([B[0]] * HEADS)
            c = GAMMA[:, None] * np.ones((HEADS, D_OUT))
        heads[key] = (A, B, c)
    return heads


def _planted(folder, dtype: torch.dtype) -> dict:
    """HydraLoRA and MultiLoRA files with planted heads in ``dtype``, analysed per head."""
    hydra_state = save_planted_hydra(folder / "hydra", _hydra_heads(), dtype)
    multi_state = save_planted_multilora(folder / "ml.pt", _multilora_heads(), dtype)
    assert {t.dtype for t in (*hydra_state.values(), *multi_state.values())} == {dtype}
    hydra = spectra.analyze(folder / "hydra", per_head=True, device="cpu")
    multi = spectra.analyze(folder / "ml.pt", lora_alpha=ALPHA, per_head=True, device="cpu")
    return {
        "hydra": (hydra, hydra_state, hydra_factors),
        "multilora": (multi, multi_state, multilora_factors),
        "folder": folder,
    }


@pytest.fixture(scope="module", params=DTYPES, ids=dtype_id)
def planted(request, tmp_path_factory):
    return _planted(tmp_path_factory.mktemp(f"heads-{dtype_id(request.param)}"), request.param)


@pytest.fixture(scope="module")
def planted32(tmp_path_factory):
    """The planted files in float32 only, for what does not depend on the dtype."""
    return _planted(tmp_path_factory.mktemp("heads-f32"), torch.float32)


def _by_module(table) -> dict:
    rows: dict = {}
    for row in table:
        rows.setdefault((row["layer"], row["role"]), []).append(row)
    return rows


@pytest.mark.parametrize("method", ["hydra", "multilora"])
def test_every_pair_and_share_matches_numpy(planted, method):
    report, state, factors = planted[method]
    pairs, shares = _by_module(report.heads), _by_module(report.head_shares)
    assert sorted(pairs) == sorted(MODULES) and sorted(shares) == sorted(MODULES)
    for key in MODULES:
        expected = reference_heads(*factors(state, *key))
        assert [(r["head_a"], r["head_b"]) for r in pairs[key]] == [(0, 1), (0, 2), (1, 2)]
        for row in pairs[key]:
            a, b = row["head_a"], row["head_b"]
            assert row["cosine"] == pytest.approx(expected["cosine"][a, b], abs=1e-10)
            assert row["delta_cosine"] == pytest.approx(expected["delta_cosine"][a, b], abs=1e-10)
            assert row["subspace_similarity"] == pytest.approx(
                expected["subspace"][a, b], abs=1e-10
            )
        got = [row["share"] for row in sorted(shares[key], key=lambda r: r["head"])]
        np.testing.assert_allclose(got, expected["shares"], rtol=1e-10)


def test_planted_hydra_heads_score_one_minus_one_and_their_shares(planted):
    report, _, _ = planted["hydra"]
    rows = {(r["head_a"], r["head_b"]): r for r in _by_module(report.heads)[PLANTED]}
    for pair, sign in (((0, 1), 1.0), ((0, 2), -1.0), ((1, 2), -1.0)):
        assert rows[pair]["cosine"] == pytest.approx(sign, abs=1e-12)
        assert rows[pair]["delta_cosine"] == pytest.approx(sign, abs=1e-12)
        assert rows[pair]["subspace_similarity"] == pytest.approx(1.0, abs=1e-12)
    shares = [r["share"] for r in _by_module(report.head_shares)[PLANTED]]
    np.testing.assert_allclose(shares, [1 / 6, 1 / 6, 4 / 6], rtol=1e-12)


def test_planted_multilora_scalings_split_the_update(planted):
    report, _, _ = planted["multilora"]
    for row in _by_module(report.heads)[PLANTED]:  # one LoRA under three scalings
        for measure in ("cosine", "delta_cosine", "subspace_similarity"):
            assert row[measure] == pytest.approx(1.0, abs=1e-12)
    shares = [r["share"] for r in _by_module(report.head_shares)[PLANTED]]
    np.testing.assert_allclose(shares, GAMMA**2 / np.sum(GAMMA**2), rtol=1e-12)


@pytest.mark.parametrize("method", ["hydra", "multilora"])
def test_independent_random_heads_are_near_zero_within_the_derived_bounds(planted, method):
    report, state, factors = planted[method]
    k = RANK
    for key, rows in _by_module(report.heads).items():
        if key == PLANTED:
            continue
        _, downs, _ = factors(state, *key)
        if method == "hydra":  # one A: σ ≈ √tr(M²) / (√d_out · tr M), M = A Aᵀ
            M = downs[0] @ downs[0].T
            delta_sigma = np.sqrt(np.trace(M @ M)) / (np.sqrt(D_OUT) * np.trace(M))
        else:
            delta_sigma = 1 / np.sqrt(D_OUT * D_IN)
        for row in rows:
            assert abs(row["cosine"]) < 6 / np.sqrt(D_OUT * RANK), (key, row)
            assert abs(row["delta_cosine"]) < 6 * delta_sigma, (key, row)
            assert abs(row["subspace_similarity"] - k / D_OUT) < 6 * np.sqrt(2) / D_OUT, (key, row)


def test_the_tables_are_saved_as_csv_and_loaded_back(planted32, tmp_path):
    report, _, _ = planted32["hydra"]
    folder = report.save(tmp_path / "report")
    with open(folder / "heads.csv", newline="") as file:
        header, *rows = list(csv.reader(file))
    assert header == [
        "layer", "role", "head_a", "head_b", "cosine", "delta_cosine", "subspace_similarity"
    ]  # fmt: skip
    assert len(rows) == len(report.heads) == 3 * len(MODULES)
    with open(folder / "head_shares.csv", newline="") as file:
        assert next(csv.reader(file)) == ["layer", "role", "head", "share"]
    loaded = Report.load(folder)
    assert loaded == report and loaded.heads == report.heads
    assert list(loaded.heads.to_pandas().columns) == header
    assert loaded.head_shares.to_pandas()["share"].dtype == float
    (folder / "heads.csv").write_text((folder / "heads.csv").read_text().replace("0.", "1.", 1))
    with pytest.raises(FormatError, match=r"heads\.csv: does not match the checksum"):
        Report.load(folder)


def test_without_per_head_there_are_no_heads_and_no_files(planted32, tmp_path):
    report = spectra.analyze(planted32["folder"] / "hydra", device="cpu")  # the uniform mixture
    assert not report.heads and not report.head_shares
    folder = report.save(tmp_path / "mixture")
    assert not (folder / "heads.csv").exists() and Report.load(folder) == report
    (folder / "heads.csv").write_text("layer,role\n")  # a stray file from another run
    with pytest.raises(FormatError, match=r"not listed in report\.json"):
        Report.load(folder)


def test_zero_heads_have_no_direction_and_say_so(tmp_path):
    rng = np.random.default_rng(5)
    A = rng.standard_normal((RANK, D_IN))
    B = [rng.standard_normal((D_OUT, RANK)) for _ in range(HEADS)]
    zero = np.zeros((D_OUT, RANK))
    heads = {(0, "k"): (A, [zero, B[1], B[2]]), (0, "v"): (A, [zero, zero, zero])}
    save_planted_hydra(tmp_path / "hydra", heads)
    report = spectra.analyze(tmp_path / "hydra", per_head=True, device="cpu")
    pairs, shares = _by_module(report.heads), _by_module(report.head_shares)
    for row in pairs[0, "k"]:
        defined = row["head_a"] != 0
        for measure in ("cosine", "delta_cosine", "subspace_similarity"):
            assert (row[measure] is not None) == defined, row
    energy = [np.sum((B[j] @ A) ** 2) for j in (1, 2)]
    assert [r["share"] for r in shares[0, "k"]] == pytest.approx(
        [0, *np.divide(energy, sum(energy))]
    )
    assert all(r[m] is None for r in pairs[0, "v"] for m in ("cosine", "subspace_similarity"))
    assert all(r["share"] is None for r in shares[0, "v"])
    assert any("2 modules have a head with ΔW = 0 (L0.k, L0.v)" in w for w in report.warnings)


def test_dense_heads_match_numpy_and_have_no_b_cosine():
    rng = np.random.default_rng(7)
    matrices = [rng.standard_normal((40, 3)) @ rng.standard_normal((3, 30)) for _ in range(3)]
    found = head_diversity([Dense(torch.tensor(m, dtype=torch.float32)) for m in matrices])
    as_saved = [torch.tensor(m, dtype=torch.float32).double().numpy() for m in matrices]
    expected = reference_heads(as_saved, [np.eye(30)] * 3, 1.0)
    assert found.cosine is None
    np.testing.assert_allclose(found.delta_cosine, expected["delta_cosine"], atol=1e-12)
    np.testing.assert_allclose(found.subspace_similarity, expected["subspace"], atol=1e-10)
    np.testing.assert_allclose(found.shares, expected["shares"], rtol=1e-12)
    factored = head_diversity([Factored(torch.ones(4, 1), torch.ones(1, 3), -1.0)] * 2)
    assert factored.delta_cosine[0, 1] == pytest.approx(1.0)  # a negative scale: ΔW·ΔW > 0


def test_compare_summary_gives_each_labels_mean_head_cosine(planted32, tmp_path):
    folder = planted32["folder"]
    plain = spectra.analyze(folder / "ml.pt", lora_alpha=ALPHA, device="cpu").save(tmp_path / "r")
    comparison = spectra.compare(
        [folder / "hydra", folder / "ml.pt", plain],
        ["HydraLoRA", "MultiLoRA", "sum"],
        lora_alpha=ALPHA,
        per_head=True,
        device="cpu",
    )
    assert "head_cosine" in comparison.columns
    for row in comparison.summary():
        if row["label"] == "sum":  # a saved report without heads
            assert row["head_cosine"] is None
            continue
        _, state, factors = planted32["hydra" if row["label"] == "HydraLoRA" else "multilora"]
        per_layer = []
        for layer in (0, 1):
            ups = factors(state, layer, row["role"])[0]
            flat = np.stack([up.ravel() for up in ups])  # the B heads, flattened
            cosine = (flat @ flat.T) / np.outer(*[np.linalg.norm(flat, axis=1)] * 2)
            per_layer.append(cosine[np.triu_indices(HEADS, k=1)].mean())  # R-LoRA's mean
        assert row["head_cosine"] == pytest.approx(np.mean(per_layer), abs=1e-10)
        report = comparison.reports[comparison.labels.index(row["label"])]
        assert mean_head_cosine(report, row["role"]) == row["head_cosine"]
