"""``analyze --estimate`` on real checkpoints, against numpy's exact spectrum of the same file.

The full fine-tune is MiniLM with a dense, full-rank power-law update added
to k and v of layers 0 and 1 (σ_i ∝ i^-0.7, 384 of them), saved in float32;
ΔW is read back from the two safetensors files and decomposed by numpy in
float64, independently of spectra. Each estimated metric must lie within 3
of its stated errors of numpy's value (plus the float32 rounding the files
add, far below); a LoRA (factored ΔW) must give the exact rows of a plain
run.
"""

from __future__ import annotations

import html
import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.numpy import load_file
from spectra_cli.main import cli

import spectra
from spectra import Report
from spectra.analysis.estimated import EstimateSettings
from spectra.metrics.estimate import ESTIMATED
from tests.helpers.models import ROLE_MODULES, load_bert

SETTINGS = EstimateSettings(probes=12, steps=30, top=8)
LAYERS = (0, 1)
ROLES = ("k", "v")


def power_law_update(n: int, seed: int) -> np.ndarray:
    """A dense n × n update with σ_i = 0.05·i^-0.7 and random singular vectors."""
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((n, n)))
    V, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (U * (0.05 * np.arange(1, n + 1) ** -0.7)) @ V.T


@pytest.fixture(scope="module")
def dense_ft(tmp_path_factory, minilm_dir):
    """MiniLM with a dense power-law ΔW in k, v of layers 0-1, float32; its base is MiniLM."""
    folder = tmp_path_factory.mktemp("ft-dense")
    model = load_bert(minilm_dir)
    with torch.no_grad():
        for layer in LAYERS:
            for role in ROLES:
                module = getattr(model.encoder.layer[layer].attention.self, ROLE_MODULES[role])
                update = power_law_update(module.weight.shape[0], seed=7 * layer + len(role))
                module.weight += torch.from_numpy(update).float()
    model.save_pretrained(str(folder))
    return folder


def file_deltas(tuned, base) -> dict[tuple[int, str], np.ndarray]:
    """ΔW of each (layer, role) from the two safetensors files, in float64."""
    W1, W0 = load_file(str(tuned / "model.safetensors")), load_file(str(base / "model.safetensors"))
    found = {}
    for layer in LAYERS:
        for role in ROLES:
            suffix = f"layer.{layer}.attention.self.{ROLE_MODULES[role]}.weight"
            name_1 = next(n for n in W1 if n.endswith(suffix))
            name_0 = next(n for n in W0 if n.endswith(suffix))
            found[layer, role] = W1[name_1].astype(np.float64) - W0[name_0].astype(np.float64)
    return found


def np_metrics(delta: np.ndarray) -> dict[str, float]:
    """The estimated metrics from numpy's float64 SVD, by METRICS.md's definitions."""
    s = np.linalg.svd(delta, compute_uv=False)
    p = s / s.sum()
    entropy = float(-(p[p > 0] * np.log(p[p > 0])).sum())
    energy = np.cumsum(s**2) / (s**2).sum()
    values = {
        "entropy": entropy,
        "normalized_entropy": entropy / math.log(len(s)),
        "effective_rank": math.exp(entropy),
        "stable_rank": float((s**2).sum() / s[0] ** 2),
        "spectral_norm": float(s[0]),
        "frobenius_norm": float(np.sqrt((s**2).sum())),
        "nuclear_norm": float(s.sum()),
    }
    for m in (1, 8):
        values[f"top_share@{m}"] = float((s[:m] ** 2).sum() / (s**2).sum())
    for q in (0.5, 0.9, 0.99):
        values[f"energy_rank@{q}"] = float(np.searchsorted(energy, q * (1 - 1e-12)) + 1)
    return values


@pytest.fixture(scope="module")
def estimated(dense_ft, minilm_dir):
    return spectra.analyze(dense_ft, base=minilm_dir, layers="0-1", device="cpu", estimate=SETTINGS)


def test_estimates_hold_numpy_within_three_errors(estimated, dense_ft, minilm_dir):
    deltas = file_deltas(dense_ft, minilm_dir)
    assert len(estimated) == len(deltas)
    for row in estimated.rows:
        assert row["estimated"] is True
        exact = np_metrics(deltas[row.layer, row.role])
        for name in ESTIMATED:
            error = row[f"{name}_err"]
            assert error >= 0, (row.key, name)
            # float32 files: the exact value of the stored ΔW differs from numpy's by rounding
            assert abs(row[name] - exact[name]) <= 3 * error + 1e-6 * abs(exact[name]), (
                row.key,
                name,
                row[name],
                exact[name],
                error,
            )
        deviation = abs(row["effective_rank"] - exact["effective_rank"])
        assert deviation <= 0.05 * exact["effective_rank"], row.key
        # what the estimate does not give is missing, never taken from the top σ
        for name in ("numerical_rank", "gini", "participation_ratio", "condition_number"):
            assert row[name] is None, (row.key, name)
        assert row["share_above_floor"] is None
        # the stored spectrum is the top-k σ: each at most numpy's σ_i, within its bound
        top = estimated.spectrum(row.layer, row.role)
        s = np.linalg.svd(deltas[row.layer, row.role], compute_uv=False)
        assert len(top) == SETTINGS.top
        assert np.all(top <= s[: SETTINGS.top] * (1 + 1e-6))
        assert abs(top[0] - s[0]) <= 3 * row["spectral_norm_err"] + 1e-6 * s[0]


def test_meta_says_which_error_each_column_holds(estimated):
    meta = estimated.meta["estimate"]
    assert (meta["probes"], meta["steps"], meta["top"], meta["seed"]) == (12, 30, 8, 0)
    assert "standard error" in meta["errors"]["effective_rank_err"]
    assert "bound" in meta["errors"]["spectral_norm_err"]
    assert meta["errors"]["frobenius_norm_err"] == "exact"
    assert sorted(meta["rows"]) == sorted(row.key for row in estimated.rows)
    assert "top 8" in meta["spectrum"]


def test_save_load_round_trips_the_new_columns(estimated, tmp_path):
    estimated.save(tmp_path / "report")
    loaded = Report.load(tmp_path / "report")
    assert loaded == estimated
    frame = loaded.to_pandas()
    assert frame["estimated"].tolist() == [True] * len(loaded)
    assert frame["numerical_rank"].isna().all()
    assert (frame["effective_rank_err"] > 0).all()
    document = json.loads((tmp_path / "report" / "report.json").read_text())
    assert document["estimate"]["top"] == SETTINGS.top
    assert "half a count" in document["estimate"]["errors"]["energy_rank@0.9_err"]
    # the HTML page, read without report.json, says what each error column holds
    page = loaded.to_html(tmp_path / "page.html").read_text()
    assert "Estimated: estimated rows" in page
    for column, kind in document["estimate"]["errors"].items():
        assert f"<li><code>{column}</code>: {html.escape(kind)}</li>" in page, column


def test_factored_rows_stay_exact(lora_adapter):
    plain = spectra.analyze(lora_adapter.path, layers="0-1", device="cpu")
    guessed = spectra.analyze(lora_adapter.path, layers="0-1", device="cpu", estimate=SETTINGS)
    assert guessed.meta["estimate"]["rows"] == []
    for exact_row, row in zip(plain.rows, guessed.rows, strict=True):
        assert row["estimated"] is False
        assert all(row[f"{name}_err"] == 0.0 for name in ESTIMATED)
        assert {k: row[k] for k in exact_row} == dict(exact_row)
    assert all(np.array_equal(plain.spectra[k], guessed.spectra[k]) for k in plain.spectra)


def test_cli_table_says_estimated(dense_ft, minilm_dir):
    result = CliRunner().invoke(
        cli,
        ["analyze", str(dense_ft), "--base", str(minilm_dir), "--layers", "0", "--estimate"],
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any("estimated" in line and "_err" in line for line in lines), result.output
    table = [line for line in lines if line.lstrip().startswith("0 ")]
    assert table and all("~" in line for line in table), result.output


def test_estimate_steps_set_the_quadrature_and_need_estimate(dense_ft, minilm_dir, tmp_path):
    """--estimate-steps reaches report.json and the plan; alone it is one line and exit 1."""
    args = ["analyze", str(dense_ft), "--base", str(minilm_dir), "--layers", "0"]
    result = CliRunner().invoke(cli, [*args, "--estimate", "--estimate-steps", "7", "--quiet",
                                      "--out", str(tmp_path / "r")])  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "r" / "report.json").read_text())
    assert saved["estimate"]["steps"] == 7
    runs = [
        CliRunner().invoke(cli, [*args, "--estimate", *steps, "--dry-run", "--json"])
        for steps in ([], ["--estimate-steps", "7"])
    ]
    plans = [json.loads(run.output) for run in runs]
    seconds = [sum(m["seconds"]["cpu"] for m in plan["modules"]) for plan in plans]
    assert seconds[1] < seconds[0]  # 8 Lanczos steps cost less than the default 31
    alone = CliRunner().invoke(cli, [*args, "--estimate-steps", "7"])
    assert alone.exit_code == 1
    assert "--estimate-steps" in alone.output and "add --estimate" in alone.output


def test_zero_update_is_zero_as_on_the_exact_path(dense_ft, minilm_dir):
    """Layer 2 was not tuned: ΔW = 0, every metric 0 (METRICS.md), estimated or not."""
    guessed = spectra.analyze(
        dense_ft, base=minilm_dir, layers="2", device="cpu", estimate=SETTINGS
    )
    for row in guessed.rows:
        assert row["estimated"] is True
        assert all(row[name] == 0.0 and row[f"{name}_err"] == 0.0 for name in ESTIMATED), row
        assert row["health"] == "zero"


def test_figures_draw_only_what_is_known(estimated):
    """Figure 2 draws an estimated row's top-k σ when it asks for no more; else leaves it out."""
    from spectra.plot import histogram, spectrum

    _, axes = histogram([estimated], ["FT"], top=SETTINGS.top)
    assert all("estimated rows: their top-k σ" in ax.get_title() for ax in axes.flat)
    _, axes = histogram([estimated], ["FT"], top="all")
    assert all("estimated rows left out" in ax.get_title() for ax in axes.flat)
    assert all(not ax.patches for ax in axes.flat)  # nothing drawn as if it were every σ
    _, grid = spectrum([estimated], ["FT"])
    titles = [ax.get_title() for ax in grid[0]]
    assert all("2 estimated rows left out" in title for title in titles), titles
