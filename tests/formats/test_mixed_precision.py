"""A float32 release fine-tuned and saved in bf16: rounding is not reported as update.

The base is the real MiniLM in float32; the tuned checkpoints are saved in
bf16 by transformers. The reference ΔW is read back with safetensors and the
base rounded to bf16 by torch's own cast, then decomposed by numpy in
float64; the rounding floor is the METRICS.md formula computed here in numpy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from spectra_cli.main import cli

import spectra
from spectra.analysis import measure_subspaces
from tests.helpers.checks import reference_sigma
from tests.helpers.models import MINILM_HIDDEN, ROLE_MODULES, load_bert, planted_update

LAYERS = [0, 1]
BF16_EPS = 2.0**-7


def _save_bf16(folder, base, updates):
    """MiniLM plus ``updates[(layer, role)]`` (float64 arrays), saved in bf16."""
    model = load_bert(base)
    with torch.no_grad():
        for (layer, role), update in updates.items():
            module = getattr(model.encoder.layer[layer].attention.self, ROLE_MODULES[role])
            module.weight += torch.from_numpy(update).float()
    model.to(torch.bfloat16).save_pretrained(str(folder))
    return folder


def _weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _name(layer: int, role: str) -> str:
    return f"encoder.layer.{layer}.attention.self.{ROLE_MODULES[role]}.weight"


@pytest.fixture(scope="module")
def rank2(tmp_path_factory, minilm_dir):
    updates = {
        (layer, role): planted_update(MINILM_HIDDEN, MINILM_HIDDEN, 2, seed=7 * layer + len(role))
        for layer in LAYERS
        for role in ("k", "v")
    }
    return _save_bf16(tmp_path_factory.mktemp("bf16-ft"), minilm_dir, updates)


def test_an_untrained_bf16_cast_has_no_update(tmp_path, minilm_dir):
    cast = _save_bf16(tmp_path / "cast", minilm_dir, {})
    report = spectra.analyze(cast, base=minilm_dir, layers=LAYERS)
    for row in report.rows:
        assert row["spectral_norm"] == 0.0
        assert row["numerical_rank"] == 0 and row["effective_rank"] == 0.0
    assert any("the base is rounded to bfloat16" in w for w in report.warnings)
    assert all(
        any(f"L{r['layer']}.{r['role']}: ΔW is exactly zero" in w for w in report.warnings)
        for r in report.rows
    )


def test_a_bf16_finetune_is_measured_on_the_bf16_grid_with_its_floor(rank2, minilm_dir):
    report = spectra.analyze(rank2, base=minilm_dir, layers=LAYERS)
    tuned, base = _weights(rank2), load_file(str(minilm_dir / "model.safetensors"))
    noisy = {}  # key → numpy's share of Σσ above the tolerance, for rows under half
    for row in report.rows:
        name = _name(row["layer"], row["role"])
        tuned64 = tuned[name].double().numpy()
        delta = tuned64 - base[name].to(torch.bfloat16).double().numpy()
        expected = reference_sigma(delta)
        sigma = report.spectrum(row["layer"], row["role"])
        np.testing.assert_allclose(sigma, expected, rtol=1e-6, atol=3e-7 * expected[0])
        # METRICS.md rounding floor: ε(bf16)·rms(W)·(√d_out + √d_in), W the larger side
        base64 = base[name].double().numpy()
        rms = max(np.linalg.norm(base64), np.linalg.norm(tuned64)) / math.sqrt(base64.size)
        floor = BF16_EPS * rms * 2 * math.sqrt(MINILM_HIDDEN)
        assert row["noise_floor"] == pytest.approx(floor, rel=1e-12)
        assert row["numerical_rank"] == 2  # the planted update, not the rounding
        tol = max(floor, expected[0] * math.sqrt(MINILM_HIDDEN * np.finfo(float).eps))
        share = expected[expected > tol].sum() / expected.sum()
        assert row["share_above_floor"] == pytest.approx(share, rel=1e-9)
        assert ("noise" in (row["health"] or "")) == (share < 0.5)
        if share < 0.5:
            noisy[f"L{row['layer']}.{row['role']}"] = share
    assert 2 <= len(noisy) <= 3  # the case at hand: the summary names the rows themselves
    # one warning for all of them (issue 23 item 8): how many, which, the range of the share
    (summary,) = [w for w in report.warnings if "rounding floor" in w]
    low, high = f"{min(noisy.values()):.0%}", f"{max(noisy.values()):.0%}"
    spread = low if low == high else f"{low} to {high}"
    assert summary.startswith(
        f"{len(noisy)} of {len(report.rows)} modules ({', '.join(noisy)}) have only {spread} "
        "of Σσ above the bfloat16 rounding floor"
    )
    assert "rounding noise, not the update" not in summary


def test_the_cli_marks_rows_at_the_noise_floor_with_one_line(rank2, minilm_dir):
    report = spectra.analyze(rank2, base=minilm_dir, modules="all", layers=LAYERS)
    noisy = [row for row in report.rows if row["share_above_floor"] < 0.5 and row["spectral_norm"]]
    assert len(noisy) >= 2  # several rows at the floor, told once
    args = ["analyze", str(rank2), "--base", str(minilm_dir), "--modules", "all", "--layers", "0,1"]
    result = CliRunner().invoke(cli, [*args, "-q"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len([line for line in lines if "rounding floor" in line]) == 1
    assert len([line for line in lines if line.rstrip().endswith(" noise")]) == len(noisy)


def test_subspaces_compare_the_update_not_the_rounding(tmp_path, minilm_dir):
    """Two bf16 fine-tunes that carry the same rank-2 update: similarity 1, not noise's."""
    update = planted_update(MINILM_HIDDEN, MINILM_HIDDEN, 2, seed=5)
    jitter = np.random.default_rng(9).standard_normal((MINILM_HIDDEN, MINILM_HIDDEN)) * 2e-4
    first = _save_bf16(tmp_path / "a", minilm_dir, {(0, "k"): update})
    second = _save_bf16(tmp_path / "b", minilm_dir, {(0, "k"): update + jitter})
    result = measure_subspaces(
        [first, second], ["a", "b"], ["k"], layers=[0], base=minilm_dir, device="cpu"
    )
    (pair,) = result.pairs
    assert (pair["k_a"], pair["k_b"]) == (2, 2)
    base = load_file(str(minilm_dir / "model.safetensors"))[_name(0, "k")]
    vectors = []
    for folder in (first, second):
        delta = _weights(folder)[_name(0, "k")].double() - base.to(torch.bfloat16).double()
        vectors.append(np.linalg.svd(delta.numpy())[0][:, :2])
    expected = np.sum((vectors[0].T @ vectors[1]) ** 2) / 2
    assert pair["similarity"] == pytest.approx(expected, abs=1e-9)
    assert pair["similarity"] > 0.99


@pytest.mark.slow
def test_comparisons_and_layer_plots_mark_rows_at_the_noise_floor(rank2, minilm_dir):
    comparison = spectra.compare([rank2], ["FT-bf16"], base=minilm_dir, layers=LAYERS)
    (report,) = comparison.reports
    for summary in comparison.summary():
        rows = [r for r in report.rows if r["role"] == summary["role"]]
        assert summary["noise_rows"] == sum(r["share_above_floor"] < 0.5 for r in rows)
    assert sum(s["noise_rows"] for s in comparison.summary()) > 0
    from spectra import plot

    _, axes = plot.layer_curves(comparison.reports, "effective_rank", ["FT-bf16"], ["k"])
    hollow = [ln for ln in axes[0, 0].get_lines() if ln.get_label().endswith("noise floor")]
    noisy_layers = [
        r["layer"] for r in report.rows if r["role"] == "k" and r["share_above_floor"] < 0.5
    ]
    assert [list(ln.get_xdata()) for ln in hollow] == ([noisy_layers] if noisy_layers else [])
    result = CliRunner().invoke(
        cli,
        [
            "compare",
            str(rank2),
            "--base",
            str(minilm_dir),
            "--layers",
            "0",
            "--out",
            str(rank2.parent / "cmp"),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "at noise floor" in result.stdout
