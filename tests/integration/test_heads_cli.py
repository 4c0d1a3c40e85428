"""Head diversity on the command line and in figures: analyze, compare and plot with --per-head.

A HydraLoRA folder and a MultiLoRA file with planted heads
(``tests.helpers.multilora``; the numbers themselves are checked against
numpy in tests/unit/test_heads.py): what each command writes and prints,
checked against the numpy definitions (``reference_heads``) where it is a
number, and the figures' panels, labels and drawn values.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner
from spectra_cli.main import cli

import spectra
from spectra import plot
from tests.helpers.checks import folded_column
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

D_OUT, D_IN = 96, 64
KEYS = [(layer, role) for layer in (0, 1) for role in ("k", "v")]
PNG = b"\x89PNG"


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A HydraLoRA folder (layer 1's heads nearly alike) and a MultiLoRA file, with their states."""
    folder = tmp_path_factory.mktemp("heads-cli")
    rng = np.random.default_rng(11)
    hydra = {}
    for layer, role in KEYS:
        A, B = rng.standard_normal((RANK, D_IN)), rng.standard_normal((D_OUT, RANK))
        spread = 0.1 if layer == 1 else 3.0  # layer 1: heads close to one B
        hydra[layer, role] = (A, [B + spread * rng.standard_normal(B.shape) for _ in range(HEADS)])
    multilora = {
        key: (
            rng.standard_normal((HEADS, RANK, D_IN)),
            rng.standard_normal((HEADS, D_OUT, RANK)),
            rng.uniform(0.5, 1.5, (HEADS, D_OUT)),
        )
        for key in KEYS
    }
    return {
        "hydra": (folder / "hydra", save_planted_hydra(folder / "hydra", hydra)),
        "multilora": (folder / "ml.pt", save_planted_multilora(folder / "ml.pt", multilora)),
    }


@pytest.fixture(scope="module")
def analyzed(sources, tmp_path_factory):
    """``spectra analyze hydra/ --per-head --out r/``: its result and the report folder."""
    out = tmp_path_factory.mktemp("analyzed") / "r"
    return _invoke(["analyze", sources["hydra"][0], "--per-head", "--out", out]), out


def _invoke(args):
    result = CliRunner().invoke(cli, [str(arg) for arg in args])
    return result


def _read(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_analyze_per_head_prints_writes_and_draws_head_diversity(sources, analyzed, tmp_path):
    path, state = sources["hydra"]
    result, out = analyzed
    assert result.exit_code == 0, result.output
    assert "head diversity, mean over layers of the mean over head pairs" in result.stdout
    assert "cosine of B heads" in result.stdout
    names = {p.name for p in out.iterdir()}
    assert {"heads.csv", "head_shares.csv", "heads.png", "heads_matrix.png"} <= names
    assert (out / "heads_matrix.png").read_bytes()[:4] == PNG
    rows = _read(out / "heads.csv")
    assert len(rows) == 3 * len(KEYS)
    for row in rows:
        expected = reference_heads(*hydra_factors(state, int(row["layer"]), row["role"]))
        a, b = int(row["head_a"]), int(row["head_b"])
        assert float(row["cosine"]) == pytest.approx(expected["cosine"][a, b], abs=1e-10)
        assert float(row["delta_cosine"]) == pytest.approx(
            expected["delta_cosine"][a, b], abs=1e-10
        )
    shares = _read(out / "head_shares.csv")
    assert [(int(r["layer"]), r["role"], int(r["head"])) for r in shares] == [
        (layer, role, head) for layer, role in KEYS for head in range(HEADS)
    ]
    as_json = _invoke(["analyze", path, "--per-head", "--json", "--layers", "1", "--modules", "v"])
    document = json.loads(as_json.stdout)
    assert len(document["heads"]) == 3 and len(document["head_shares"]) == HEADS
    plain = _invoke(["analyze", path, "--out", tmp_path / "mixture", "-q"])
    assert plain.exit_code == 0 and "head diversity" not in plain.stdout
    assert not (tmp_path / "mixture" / "heads.csv").exists()


def test_compare_per_head_summary_reports_and_figures(sources, tmp_path):
    (hydra, hydra_state), (multi, multi_state) = sources["hydra"], sources["multilora"]
    out = tmp_path / "cmp"
    args = ["compare", hydra, multi, "--label", "Hydra", "--label", "Multi", "--per-head"]
    args += ["--modules", "v"]  # one role: fewer panels to draw
    page = tmp_path / "page.html"
    result = _invoke([*args, "--lora-alpha", ALPHA, "--out", out, "--html", page, "-q"])
    assert result.exit_code == 0, result.output
    assert "head diversity" in result.stdout
    for name in ("heads.png", "heads_matrix_Hydra.png", "heads_matrix_Multi.png"):
        assert (out / name).read_bytes()[:4] == PNG, name
    for label in ("Hydra", "Multi"):
        assert (out / "reports" / label / "heads.csv").is_file()
    factors = {"Hydra": (hydra_factors, hydra_state), "Multi": (multilora_factors, multi_state)}
    for row in _read(out / "summary.csv"):
        take, state = factors[row["label"]]
        per_layer = [
            reference_heads(*take(state, layer, row["role"]))["cosine"][np.triu_indices(HEADS, 1)]
            for layer in (0, 1)
        ]
        assert float(row["head_cosine"]) == pytest.approx(np.mean(per_layer), abs=1e-10)
    # the HTML page folds each report's head tables: numpy's cosines, to their 6 digits
    text = page.read_text()
    for label, (take, state) in factors.items():
        expected = [
            reference_heads(*take(state, layer, "v"))["cosine"][a, b]
            for layer in (0, 1)
            for a, b in zip(*np.triu_indices(HEADS, 1), strict=True)
        ]
        cells = folded_column(text, f"{label}: head diversity (heads.csv): 6 rows", "cosine")
        assert [float(c) for c in cells] == pytest.approx(expected, rel=1e-5, abs=1e-6)
        shares = folded_column(text, f"{label}: head shares (head_shares.csv)", "share")
        assert len(shares) == 2 * HEADS and sum(map(float, shares)) == pytest.approx(2, rel=1e-5)
    plain = spectra.compare([hydra, multi], lora_alpha=ALPHA, device="cpu")  # not per head
    assert "head_cosine" not in plain.columns and not any(r.heads for r in plain.reports)


def test_plot_redraws_head_figures_from_reports(analyzed, tmp_path):
    report = analyzed[1]
    figures = tmp_path / "figs"
    result = _invoke(["plot", report, "--out", figures, "--heads-layer", "0"])
    assert result.exit_code == 0, result.output
    assert "heads.png" in result.stdout and "heads_matrix.png" in result.stdout
    again = _invoke(["plot", report, "--out", figures])
    assert (
        again.exit_code == 1 and "heads.png, " in again.output and "already there" in again.output
    )
    missing = _invoke(["plot", report, "--out", tmp_path / "f2", "--heads-layer", "7"])
    assert missing.exit_code == 1 and "layer 7: no heads there" in missing.output
    assert "heads in layers 0-1" in missing.output and not (tmp_path / "f2").exists()


def test_figures_have_panels_labels_and_the_values_of_the_definitions(sources):
    path, state = sources["hydra"]
    report = spectra.analyze(path, per_head=True, device="cpu")
    fig, axes = plot.head_similarity([report], ["Hydra"])
    assert axes.shape == (3, 2)
    assert [ax.get_title() for ax in axes[0]] == ["k projection", "v projection"]
    assert [ax.get_ylabel().split("\n")[0] for ax in axes[:, 0]] == [
        "cosine of B heads",
        "cosine of ΔW_j",
        "subspace similarity",
    ]
    assert all(ax.get_xlabel() == "layer" for ax in axes[-1])
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["Hydra"]
    for j, role in enumerate(("k", "v")):  # the drawn line: each layer's mean over pairs
        expected = [
            reference_heads(*hydra_factors(state, layer, role))["cosine"][np.triu_indices(HEADS, 1)]
            for layer in (0, 1)
        ]
        np.testing.assert_allclose(
            axes[0, j].lines[0].get_ydata(), np.mean(expected, 1), atol=1e-10
        )
    assert plot.most_alike_layer(report) == 1  # the planted layer of nearly equal heads
    fig, axes = plot.head_matrix(report, label="Hydra")
    assert "heads of layer 1 (heads most alike)" in fig._suptitle.get_text()
    expected = reference_heads(*hydra_factors(state, 1, "v"))
    drawn = axes[1, 1].images[0].get_array()  # ΔW cosine of v at layer 1, diagonal 1
    np.testing.assert_allclose(drawn, expected["delta_cosine"], atol=1e-10)
