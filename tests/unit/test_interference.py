"""Task interference (SAR, STI) against numpy, hand-worked cases and its heat-map.

The references are written here from the definitions of docs/multi-task.md
("Task interference") with numpy's float64 SVD: SAR as the projection
``U_k U_kᵀ ΔW_b`` itself, STI as a literal transcription of the paper's
``‖(UᵀU − I) Σ (VᵀV − I)‖₁`` with the concatenated matrices built whole.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spectra.analysis.interference import (
    InterferenceCollector,
    InterferencePlan,
    InterferenceResult,
    chain,
    plan_interference,
    singular_task_interference,
    subspace_alignment_ratio,
    task_vectors,
)
from spectra.delta import Dense, Factored
from spectra.errors import SpectraError

RNG = np.random.default_rng(25)


# -- references, with numpy ----------------------------------------------------


def np_triplets(delta: np.ndarray, k: int):
    U, S, Vt = np.linalg.svd(delta)
    return U[:, :k], S[:k], Vt[:k].T


def np_sar(delta_a: np.ndarray, delta_b: np.ndarray, k: int) -> float:
    U_k = np_triplets(delta_a, k)[0]
    return float(np.linalg.norm(U_k @ U_k.T @ delta_b, "fro") / np.linalg.norm(delta_b, "fro"))


def np_sti(deltas: list[np.ndarray], ks: list[int]) -> float:
    """The paper's formula as written: U, V and Σ of every task side by side."""
    triplets = [np_triplets(delta, k) for delta, k in zip(deltas, ks, strict=True)]
    U = np.concatenate([t[0] for t in triplets], axis=1)  # (d_out, Σk)
    S = np.diag(np.concatenate([t[1] for t in triplets]))  # (Σk, Σk) block diagonal
    V = np.concatenate([t[2] for t in triplets], axis=1)  # (d_in, Σk)
    eye = np.eye(U.shape[1])
    return float(np.abs((U.T @ U - eye) @ S @ (V.T @ V - eye)).sum())


def low_rank(d_out: int, d_in: int, r: int) -> Factored:
    return Factored(
        torch.from_numpy(RNG.standard_normal((d_out, r))),
        torch.from_numpy(RNG.standard_normal((r, d_in))),
        0.3,
    )


# -- the definitions' known answers ------------------------------------------------


@pytest.mark.parametrize("kind", ["factored", "dense"])
def test_identical_updates_have_sar_one_and_sti_twice_their_nuclear_norm(kind):
    update = low_rank(48, 32, 5)
    if kind == "dense":
        update = Dense(update.to_dense())
    a = task_vectors(update)
    assert a.rank == 5
    assert subspace_alignment_ratio(a, a) == pytest.approx(1.0, abs=1e-12)
    sigma = np.linalg.svd(update.to_dense().numpy(), compute_uv=False)[:5]
    # U_aᵀU_a = V_aᵀV_a = I: each off-diagonal block is Σ_a, ‖Σ_a‖₁ = Σσ
    assert singular_task_interference([a, a]) == pytest.approx(2 * sigma.sum(), rel=1e-12)


def test_updates_with_orthogonal_column_spaces_have_sar_and_sti_zero():
    basis = np.linalg.qr(RNG.standard_normal((40, 40)))[0]
    delta_a = basis[:, :4] @ RNG.standard_normal((4, 30))  # columns in span(q1..q4)
    delta_b = basis[:, 4:10] @ RNG.standard_normal((6, 30))  # columns in span(q5..q10)
    a, b = task_vectors(torch.from_numpy(delta_a)), task_vectors(torch.from_numpy(delta_b))
    assert (a.rank, b.rank) == (4, 6)
    assert subspace_alignment_ratio(a, b) == pytest.approx(0.0, abs=1e-12)
    assert subspace_alignment_ratio(b, a) == pytest.approx(0.0, abs=1e-12)
    assert singular_task_interference([a, b]) == pytest.approx(0.0, abs=1e-12)


def test_a_mixed_case_by_hand():
    """ΔW_a = e1 e1ᵀ; ΔW_b = 3 e1 e1ᵀ + 4 e2 e2ᵀ (σ 4 then 3)."""
    delta_a = np.zeros((3, 3))
    delta_a[0, 0] = 1.0
    delta_b = np.diag([3.0, 4.0, 0.0])
    a, b = task_vectors(torch.from_numpy(delta_a)), task_vectors(torch.from_numpy(delta_b))
    # b's row e1 holds 3 of its ‖ΔW_b‖_F = 5
    assert subspace_alignment_ratio(a, b) == pytest.approx(3 / 5)
    assert subspace_alignment_ratio(b, a) == pytest.approx(1.0)  # span(e2, e1) holds e1
    assert subspace_alignment_ratio(b, a, k=1) == pytest.approx(0.0)  # b's top vector is e2
    # U_aᵀΔW_bV_a = 3, and U_bᵀΔW_aV_b = [[0, 0], [0, 1]]: 3 + 1
    assert singular_task_interference([a, b]) == pytest.approx(4.0)
    assert singular_task_interference([a, b], k=1) == pytest.approx(0.0)


def test_a_zero_update():
    zero = task_vectors(torch.zeros(6, 5))
    other = task_vectors(torch.from_numpy(RNG.standard_normal((6, 5))))
    assert zero.rank == 0
    assert subspace_alignment_ratio(zero, other) == 0.0  # an empty subspace holds nothing
    assert np.isnan(subspace_alignment_ratio(other, zero))  # nothing to project: 0/0
    assert singular_task_interference([zero, other]) == 0.0
    # in the table: SAR towards the zero update is an empty cell, left out of the means
    collectors = [InterferenceCollector("zero"), InterferenceCollector("other")]
    collectors[0].vectors[(0, "k", None)] = zero
    collectors[1].vectors[(0, "k", None)] = other
    result = InterferencePlan([], collectors, None).finish()
    row = result.rows[0]
    assert (row["k_a"], row["k_b"], row["sar_a_to_b"], row["sar_b_to_a"]) == (0, 5, 0.0, None)
    assert result.csv().splitlines()[1] == "0,k,zero,other,0,5,0.0,,0.0"
    assert result.means()[0]["sar_b_to_a"] is None


# -- against numpy on random task vectors -------------------------------------------


@pytest.mark.parametrize("k", [None, 3])
def test_sar_and_sti_match_numpy_on_random_low_rank_task_vectors(k):
    updates = [low_rank(40, 28, 6), Dense(low_rank(40, 28, 5).to_dense()), low_rank(40, 28, 7)]
    deltas = [u.to_dense().numpy() for u in updates]
    vectors = [task_vectors(u) for u in updates]
    ranks = [6, 5, 7]
    assert [v.rank for v in vectors] == ranks
    ks = [r if k is None else min(k, r) for r in ranks]
    for i, j in [(0, 1), (1, 0), (0, 2), (2, 1)]:
        expected = np_sar(deltas[i], deltas[j], ks[i])
        assert subspace_alignment_ratio(vectors[i], vectors[j], k) == pytest.approx(expected)
        expected = np_sti([deltas[i], deltas[j]], [ks[i], ks[j]])
        assert singular_task_interference([vectors[i], vectors[j]], k) == pytest.approx(expected)
    # three tasks at once: the paper's measure has cross terms no pair has
    assert singular_task_interference(vectors, k) == pytest.approx(np_sti(deltas, ks))


def test_a_factored_update_is_never_multiplied_out(monkeypatch):
    def refuse(self):
        raise AssertionError("a dense product of the factors")

    monkeypatch.setattr(Factored, "to_dense", refuse)
    update = low_rank(3000, 2000, 4)  # B (3000, 4), A (4, 2000)
    vectors = task_vectors(update)
    assert vectors.U.shape == (3000, 4) and vectors.V.shape == (2000, 4)
    B, A = update.B.numpy(), update.A.numpy()
    # σ of s·B@A from the small Gram matrices, independently: eig((BᵀB)(AAᵀ)) = σ²/s²
    expected = np.sqrt(np.sort(np.linalg.eigvals((B.T @ B) @ (A @ A.T)).real)[::-1]) * 0.3
    np.testing.assert_allclose(vectors.S.numpy(), expected, rtol=1e-10)


def test_shapes_must_agree():
    a = task_vectors(torch.from_numpy(RNG.standard_normal((6, 5))))
    b = task_vectors(torch.from_numpy(RNG.standard_normal((7, 5))))
    with pytest.raises(SpectraError, match="d_out 6 against 7"):
        subspace_alignment_ratio(a, b)
    with pytest.raises(SpectraError, match="one shape"):
        singular_task_interference([a, b])


# -- what compare refuses before any work ----------------------------------------------


@pytest.mark.parametrize(
    "sources,options,rank,message",
    [
        (["a/", "b/"], {}, 0, "interference_rank=K"),
        (["a/"], {}, None, "two sources or more; drop interference=True"),
        (["a/", "b/"], {"per_head": True}, None, "whole modules: drop per_head=True"),
    ],
)
def test_what_cannot_be_measured_is_refused_first(sources, options, rank, message):
    with pytest.raises(SpectraError, match=message):
        plan_interference(sources, ["a", "b"][: len(sources)], None, options, rank)


def test_a_saved_report_is_refused(tmp_path):
    report = tmp_path / "report"
    report.mkdir()
    (report / "report.json").write_text("{}")
    with pytest.raises(SpectraError, match="pass the checkpoint itself"):
        plan_interference([report, tmp_path / "other"], ["a", "b"], None, {})


def test_chain_calls_each_given_callback():
    calls: list[tuple] = []
    assert chain(None, None) is None
    chain(lambda *a: calls.append(("x", *a)), None, lambda *a: calls.append(("y", *a)))(1, 2)
    assert calls == [("x", 1, 2), ("y", 1, 2)]


# -- the table and the heat-map --------------------------------------------------------


def _row(layer, role, a, b, sar_ab, sar_ba, sti):
    return {
        "layer": layer,
        "role": role,
        "label_a": a,
        "label_b": b,
        "k_a": 4,
        "k_b": 4,
        "sar_a_to_b": sar_ab,
        "sar_b_to_a": sar_ba,
        "sti": sti,
    }


def test_means_and_heatmap_show_the_tables_numbers():
    from spectra.plot import interference_heatmap

    rows = [
        _row(0, "k", "A", "B", 0.2, 0.4, 1.0),
        _row(1, "k", "A", "B", 0.6, float("nan"), 3.0),
        _row(0, "v", "A", "B", 0.1, 0.3, 2.0),
    ]
    result = InterferenceResult(4, rows)
    means = {m["role"]: m for m in result.means()}
    assert means["k"]["sar_a_to_b"] == pytest.approx(0.4) and means["k"]["layers"] == 2
    assert means["k"]["sar_b_to_a"] == pytest.approx(0.4)  # the NaN left out
    assert result.to_pandas().shape == (3, 9)
    assert result.csv().splitlines()[0] == (
        "layer,role,label_a,label_b,k_a,k_b,sar_a_to_b,sar_b_to_a,sti"
    )
    _, axes = interference_heatmap(result)
    assert axes.shape == (2, 2)
    sar_k = axes[0, 0].get_images()[0].get_array()
    np.testing.assert_allclose(sar_k.filled(np.nan), [[0.2, 0.6], [0.4, np.nan]])
    sti_v = axes[1, 1].get_images()[0].get_array()
    np.testing.assert_allclose(sti_v.filled(np.nan), [[2.0, np.nan]])
    labels = [t.get_text() for t in axes[0, 0].get_yticklabels()]
    assert labels == ["A → B", "B → A"]
    assert [t.get_text() for t in axes[1, 0].get_xticklabels()] == ["0", "1"]
    assert axes[1, 0].get_xlabel() == "layer" and axes[0, 1].get_title() == "v projection"
    with pytest.raises(SpectraError, match="no pairs"):
        interference_heatmap(InterferenceResult(None, []))
