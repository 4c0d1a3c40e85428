"""Figures, comparisons and the compare / plot commands."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib.figure import Figure
from spectra_cli.main import cli

import spectra
from spectra import plot
from spectra.demo import DEMO_LORA_ALPHA, write_demo_checkpoints
from spectra.errors import ReportExistsError, SpectraError

LABELS = ["FT", "LoRA", "MultiLoRA"]


@pytest.fixture(scope="module")
def demo_paths(tmp_path_factory):
    return write_demo_checkpoints(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def comparison(demo_paths):
    sources = [demo_paths["ft"], demo_paths["lora"], demo_paths["multilora"]]
    return spectra.compare(sources, LABELS, base=demo_paths["base"], lora_alpha=DEMO_LORA_ALPHA)


def test_histogram_panels_labels_legend_and_paper_colours(comparison):
    fig, axes = plot.histogram(comparison.reports, LABELS)
    assert isinstance(fig, Figure) and axes.shape == (1, 2)
    assert [ax.get_title() for ax in axes[0]] == [
        "k projection, all layers",
        "v projection, all layers",
    ]
    assert all("σ / σ₁" in ax.get_xlabel() for ax in axes[0])
    assert all(ax.get_ylabel() == "fraction of singular values" for ax in axes[0])
    legend = axes[0, -1].get_legend()
    assert [text.get_text() for text in legend.get_texts()] == LABELS
    colors = [handle.get_edgecolor()[:3] for handle in legend.legend_handles]
    expected = [
        (1.0, 0.498, 0.055),
        (0.122, 0.467, 0.706),
        (0.173, 0.627, 0.173),
    ]  # orange, blue, green
    np.testing.assert_allclose(colors, expected, atol=2e-3)


def test_histogram_bars_are_the_fractions_of_each_methods_normalised_values(comparison):
    """The drawn bars equal numpy's histogram of σ/σ_1 pooled over layers, as fractions."""
    bins = 10
    _, axes = plot.histogram(
        comparison.reports[1:], ["LoRA", "MultiLoRA"], modules=["k"], bins=bins
    )
    pooled = []
    for report in comparison.reports[1:]:
        spectra_k = [report.spectrum(r["layer"], "k") for r in report.rows if r["module"] == "k"]
        pooled.append(np.concatenate([sigma / sigma[0] for sigma in spectra_k]))
    edges = np.linspace(0.0, max(v.max() for v in pooled) * (1 + 1e-9), bins + 1)
    filled = [p for p in axes[0, 0].patches if p.get_fill()]
    assert len(filled) == 2
    for patch, values in zip(filled, pooled, strict=True):
        vertices = patch.get_path().vertices  # (0,0), (e0,h0), (e1,h0), (e1,h1), …
        heights, drawn_edges = vertices[1 : 2 * bins : 2, 1], vertices[0 : 2 * bins + 1 : 2, 0]
        counts, _ = np.histogram(values, bins=edges)
        np.testing.assert_allclose(drawn_edges, edges)
        np.testing.assert_allclose(heights, counts / values.size, atol=1e-12)
        assert heights.sum() == pytest.approx(1.0)


def test_histogram_options(comparison):
    _, axes = plot.histogram(
        comparison.reports, LABELS, layer="grid", log_x=True, normalize="frobenius"
    )
    assert axes.shape == (4, 2)
    assert axes[2, 1].get_title() == "v projection, layer 2" and axes[2, 1].get_xscale() == "log"
    assert "‖ΔW‖_F" in axes[0, 0].get_xlabel()
    _, axes = plot.histogram(comparison.reports, LABELS, layer=1, normalize="none")
    assert (
        axes[0, 0].get_title() == "k projection, layer 1"
        and axes[0, 0].get_xlabel() == "singular value, σ"
    )
    with pytest.raises(SpectraError, match="normalisation"):
        plot.histogram(comparison.reports, LABELS, normalize="max")
    with pytest.raises(SpectraError, match="labels for"):
        plot.histogram(comparison.reports, ["one"])


def test_layer_curves_and_spectrum(comparison):
    _, axes = plot.layer_curves(comparison.reports, "effective_rank", LABELS)
    lines = axes[0, 0].get_lines()
    assert [line.get_label() for line in lines] == LABELS
    ft = comparison.reports[0]
    expected = [row["effective_rank"] for row in ft.rows if row["module"] == "k"]
    np.testing.assert_allclose(lines[0].get_ydata(), expected)
    assert axes[0, 0].get_xlabel() == "layer" and axes[0, 0].get_ylabel() == "effective rank"
    _, axes = plot.spectrum(comparison.reports, LABELS)
    assert axes.shape == (2, 2) and axes[0, 0].get_yscale() == "log"
    assert axes[1, 0].get_ylabel() == "cumulative share of Σσ²"


def test_summary_equals_the_mean_of_report_metrics(comparison):
    for row in comparison.summary():
        report = comparison.reports[LABELS.index(row["method"])]
        values = [r["effective_rank"] for r in report.rows if r["module"] == row["module"]]
        assert row["effective_rank"] == pytest.approx(sum(values) / len(values), rel=1e-15)
        assert row["rows"] == len(values)


def test_compare_command_writes_summary_reports_and_figures(demo_paths, tmp_path):
    out = tmp_path / "cmp"
    arguments = [
        "compare",
        str(demo_paths["ft"]),
        str(demo_paths["lora"]),
        str(demo_paths["multilora"]),
        *("--label", "FT", "--label", "LoRA", "--label", "MultiLoRA"),
        *("--base", str(demo_paths["base"]), "--lora-alpha", "16", "--out", str(out)),
    ]
    runner = CliRunner()
    result = runner.invoke(cli, arguments)
    assert result.exit_code == 0, result.output
    assert "norm. entropy" in result.stdout and "MultiLoRA" in result.stdout
    for name in ("figure2", "spectrum", "effective_rank_by_layer", "normalized_entropy_by_layer"):
        data = (out / f"{name}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    with open(out / "summary.csv") as handle:
        summary = list(csv.DictReader(handle))
    reports = {label: spectra.Report.load(out / "reports" / label) for label in LABELS}
    for row in summary:
        rows = [r for r in reports[row["method"]].rows if r["module"] == row["module"]]
        mean = sum(r["normalized_entropy"] for r in rows) / len(rows)
        assert float(row["normalized_entropy"]) == pytest.approx(mean, rel=1e-15)
    assert runner.invoke(cli, arguments).exit_code == 1  # no --force: kept
    # Saved reports compare without recomputing, and plot redraws as PDF and SVG.
    again = runner.invoke(
        cli,
        [
            "compare",
            *(str(out / "reports" / label) for label in LABELS),
            "--out",
            str(tmp_path / "again"),
            "--format",
            "svg",
        ],
    )
    assert again.exit_code == 0, again.output
    assert (tmp_path / "again" / "figure2.svg").read_text().lstrip().startswith("<?xml")
    plotted = runner.invoke(
        cli,
        [
            "plot",
            *(str(out / "reports" / label) for label in LABELS),
            "--label",
            "FT",
            "--label",
            "LoRA",
            "--label",
            "MultiLoRA",
            "--out",
            str(tmp_path / "figs"),
            "--format",
            "pdf",
            "--layer",
            "grid",
        ],
    )
    assert plotted.exit_code == 0, plotted.output
    assert (tmp_path / "figs" / "figure2.pdf").read_bytes()[:5] == b"%PDF-"
    assert (
        runner.invoke(
            cli,
            [
                "plot",
                str(out / "reports" / "FT"),
                "--out",
                str(tmp_path / "figs"),
                "--format",
                "pdf",
            ],
        ).exit_code
        == 1
    )


def test_compare_refuses_a_folder_that_is_not_a_comparison(comparison, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ReportExistsError, match="not a spectra comparison"):
        comparison.save(tmp_path)
