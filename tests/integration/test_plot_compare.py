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
from spectra.errors import ReportExistsError, SpectraError
from spectra.examples.demo import DEMO_LORA_ALPHA, write_demo_checkpoints
from spectra.loaders import ROLES

LABELS = ["FT", "LoRA", "MultiLoRA"]


@pytest.fixture(scope="module")
def demo_paths(tmp_path_factory):
    return write_demo_checkpoints(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def comparison(demo_paths):
    sources = [demo_paths["ft"], demo_paths["lora"], demo_paths["multilora"]]
    return spectra.compare(sources, LABELS, base=demo_paths["base"], lora_alpha=DEMO_LORA_ALPHA)


def _drawn_count(report, module, top):
    """Values per method in a panel: each row's σ above its floors, σ₂ … σ_top of them."""
    count = 0
    for row in report.rows:
        if row["role"] == module:
            sigma = report.spectrum(row["layer"], module)
            floor = max(row["accuracy_floor"], row["noise_floor"] or 0.0)
            count += min(int(np.sum(sigma > floor)), top) - 1  # σ₁/σ₁ = 1 left out
    return count


def test_histogram_panels_labels_legend_and_paper_colours(comparison):
    fig, axes = plot.histogram(comparison.reports, LABELS)
    assert isinstance(fig, Figure) and axes.shape == (1, 2)
    # demo: LoRA r = 8 and MultiLoRA 4 heads × r = 2, so K = 8 of n = 64
    assert [ax.get_title() for ax in axes[0]] == [
        "k projection, all layers\ntop 8 of 64 per matrix, above its floor\nσ₁/σ₁ = 1 left out",
        "v projection, all layers\ntop 8 of 64 per matrix, above its floor\nσ₁/σ₁ = 1 left out",
    ]
    assert all("σ / σ₁" in ax.get_xlabel() for ax in axes[0])
    assert all(ax.get_ylabel() == "fraction of singular values" for ax in axes[0])
    for j, module in enumerate(("k", "v")):
        legend = axes[0, j].get_legend()  # a legend in every panel, with each method's count
        expected_texts = [
            f"{label} ({_drawn_count(report, module, 8)} values)"
            for label, report in zip(LABELS, comparison.reports, strict=True)
        ]
        assert [text.get_text() for text in legend.get_texts()] == expected_texts
    colors = [handle.get_edgecolor()[:3] for handle in legend.legend_handles]
    expected = [
        (1.0, 0.498, 0.055),
        (0.122, 0.467, 0.706),
        (0.173, 0.627, 0.173),
    ]  # orange, blue, green
    np.testing.assert_allclose(colors, expected, atol=2e-3)


def _bars(patch, bins):
    vertices = patch.get_path().vertices  # (0,0), (e0,h0), (e1,h0), (e1,h1), …
    return vertices[1 : 2 * bins : 2, 1], vertices[0 : 2 * bins + 1 : 2, 0]


def test_figure2_is_the_equal_rank_view_of_numpy_top_k_values(comparison, demo_paths):
    """FT's bars: numpy's SVD of W_ft − W_base read with safetensors, top 8 over σ₁ per layer."""
    from safetensors.numpy import load_file

    bins = 10
    _, axes = plot.histogram(comparison.reports[:2], ["FT", "LoRA"], modules=["k"], bins=bins)
    tuned = load_file(str(demo_paths["ft"] / "model.safetensors"))
    base = load_file(str(demo_paths["base"] / "model.safetensors"))
    pooled = []
    for layer in sorted({r["layer"] for r in comparison.reports[0].rows}):
        name = f"model.layers.{layer}.self_attn.k_proj.weight"
        sigma = np.linalg.svd(tuned[name].astype(np.float64) - base[name], compute_uv=False)
        pooled.append(sigma[1:8] / sigma[0])  # far above both floors; σ₁/σ₁ = 1 left out
    ft_values = np.concatenate(pooled)
    lora = comparison.reports[1]
    lora_values = np.concatenate(
        [
            lora.spectrum(r["layer"], "k")[1:] / lora.spectrum(r["layer"], "k")[0]
            for r in lora.rows
            if r["role"] == "k"
        ]
    )
    edges = np.linspace(0.0, max(ft_values.max(), lora_values.max()) * (1 + 1e-9), bins + 1)
    filled = [p for p in axes[0, 0].patches if p.get_fill()]
    for patch, values in zip(filled, (ft_values, lora_values), strict=True):
        heights, drawn_edges = _bars(patch, bins)
        counts, _ = np.histogram(values, bins=edges)
        np.testing.assert_allclose(drawn_edges, edges, rtol=1e-9)
        np.testing.assert_allclose(heights, counts / values.size, atol=1e-9)
    # the picture the paper draws: FT's top 8 decay as i^-½, LoRA's halve each step
    assert np.median(ft_values) > 0.3 > np.median(lora_values)


def _report(sigma, noise_floor, kind="dense", module="k"):
    row = {
        "layer": 0,
        "role": module,
        "head": None,
        "d_out": 16,
        "d_in": 16,
        "kind": kind,
        "accuracy_floor": 1e-12,
        "noise_floor": noise_floor,
    }
    return spectra.Report(rows=[row], spectra={f"L0.{module}": np.asarray(sigma)}, meta={})


def test_no_bar_or_line_below_a_rows_floor():
    noisy = _report([1.0, 0.5, 0.2, 0.05, 0.01, 0.001], noise_floor=0.1)
    _, axes = plot.histogram([noisy], ["FT"], top="all", bins=5)
    assert axes[0, 0].get_legend().get_texts()[0].get_text() == "FT (2 values)"
    (filled,) = [p for p in axes[0, 0].patches if p.get_fill()]
    heights, edges = _bars(filled, 5)
    counts, _ = np.histogram([0.5, 0.2], bins=edges)  # σ₁/σ₁, 0.05 and below left out
    np.testing.assert_allclose(heights, counts / 2, atol=1e-12)
    _, axes = plot.spectrum([noisy], ["FT"])
    line, floor = axes[0, 0].get_lines()
    np.testing.assert_allclose(line.get_ydata(), [1.0, 0.5, 0.2])
    assert floor.get_label() == "FT floor" and floor.get_ydata()[0] == pytest.approx(0.1)


def test_top_k_truncates_dense_rows_and_all_keeps_them():
    dense = _report(np.linspace(1.0, 0.2, 12), noise_floor=None)
    lora = _report([2.0, 1.0, 0.5, 0.25], noise_floor=None, kind="factored")
    _, axes = plot.histogram([dense, lora], ["FT", "LoRA"], bins=4)
    texts = [t.get_text() for t in axes[0, 0].get_legend().get_texts()]
    assert texts == ["FT (3 values)", "LoRA (3 values)"]  # K = the adapter's rank, less σ₁
    assert "top 4 of 16" in axes[0, 0].get_title()
    _, axes = plot.histogram([dense, lora], ["FT", "LoRA"], top="all", bins=4)
    assert axes[0, 0].get_legend().get_texts()[0].get_text() == "FT (11 values)"
    _, axes = plot.histogram([dense, lora], ["FT", "LoRA"], top=3, bins=4)
    assert axes[0, 0].get_legend().get_texts()[1].get_text() == "LoRA (2 values)"


def test_every_role_gets_a_panel_in_a_readable_grid(demo_paths):
    report = spectra.analyze(
        demo_paths["ft"], base=demo_paths["base"], modules=list(ROLES), layers=[0]
    )
    _, axes = plot.histogram([report], ["FT"])
    assert axes.shape == (2, 4)
    visible = [ax for ax in axes.flat if ax.get_visible()]
    assert [ax.get_title().split(" ")[0] for ax in visible] == list(ROLES)
    for draw in (plot.histogram, plot.spectrum, plot.layer_curves):
        _, axes = draw([report], labels=["FT"], modules=["q", "k", "v"])
        assert sum(ax.get_visible() for ax in axes[0]) == 3


def test_histogram_bars_are_the_fractions_of_each_methods_normalised_values(comparison):
    """The drawn bars equal numpy's histogram of σ/σ_1 pooled over layers, as fractions."""
    bins = 10
    _, axes = plot.histogram(
        comparison.reports[1:], ["LoRA", "MultiLoRA"], modules=["k"], bins=bins, top="all"
    )
    pooled = []
    for report in comparison.reports[1:]:
        spectra_k = [report.spectrum(r["layer"], "k") for r in report.rows if r["role"] == "k"]
        pooled.append(np.concatenate([sigma[1:] / sigma[0] for sigma in spectra_k]))
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
    assert axes[2, 1].get_title().startswith("v projection, layer 2\n")
    assert axes[2, 1].get_xscale() == "log" and axes[2, 1].get_legend() is not None
    assert "‖ΔW‖_F" in axes[0, 0].get_xlabel()
    _, axes = plot.histogram(comparison.reports, LABELS, layer=1, normalize="none")
    assert (
        axes[0, 0].get_title().startswith("k projection, layer 1\n")
        and axes[0, 0].get_xlabel() == "singular value, σ"
    )
    with pytest.raises(SpectraError, match="normalisation"):
        plot.histogram(comparison.reports, LABELS, normalize="max")
    with pytest.raises(SpectraError, match="1 label for 3 reports"):
        plot.histogram(comparison.reports, ["one"])
    with pytest.raises(SpectraError, match="layer 9 is not in these reports"):
        plot.histogram(comparison.reports, LABELS, layer=9)
    with pytest.raises(SpectraError, match="no o rows"):
        plot.histogram(comparison.reports, LABELS, modules=["o"])


def test_layer_curves_with_ceilings_and_spectrum(comparison):
    _, axes = plot.layer_curves(comparison.reports, "effective_rank", LABELS)
    lines = axes[0, 0].get_lines()
    assert [line.get_label() for line in lines] == [
        label for name in LABELS for label in (name, f"{name} ceiling")
    ]
    ft = comparison.reports[0]
    expected = [row["effective_rank"] for row in ft.rows if row["role"] == "k"]
    np.testing.assert_allclose(lines[0].get_ydata(), expected)
    # ceilings: n = min(d_out, d_in) = 64 for a dense ΔW, the adapter's rank 8 for LoRA
    assert set(lines[1].get_ydata()) == {64.0} and set(lines[3].get_ydata()) == {8.0}
    assert axes[0, 0].get_xlabel() == "layer" and axes[0, 0].get_ylabel() == "effective rank"
    _, axes = plot.layer_curves(comparison.reports, "normalized_entropy", LABELS)
    lora_ceiling = axes[0, 0].get_lines()[3].get_ydata()
    np.testing.assert_allclose(lora_ceiling, np.log(8) / np.log(64))
    _, axes = plot.spectrum(comparison.reports, LABELS)
    assert axes.shape == (2, 2) and axes[0, 0].get_yscale() == "log"
    assert axes[1, 0].get_ylabel() == "cumulative share of Σσ²"


def _drawn(fig):
    """Lay the figure out as saving would (Agg), so artists have their display extents."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.draw_without_rendering()
    return fig.canvas.get_renderer()


def test_histogram_over_sigma1_leaves_sigma1_out_and_other_normalisations_keep_it():
    report = _report([2.0, 1.0, 0.5, 0.25], noise_floor=None, kind="factored")
    _, axes = plot.histogram([report], ["LoRA"], bins=3)
    (filled,) = [p for p in axes[0, 0].patches if p.get_fill()]
    heights, edges = _bars(filled, 3)
    # σ/σ₁ = 1, 0.5, 0.25, 0.125: the drawn values are the last three, and 1 lies past the bins
    assert edges[-1] == pytest.approx(0.5) and edges[-1] < 1.0
    counts, _ = np.histogram([0.5, 0.25, 0.125], bins=edges)
    np.testing.assert_allclose(heights, counts / 3, atol=1e-12)
    assert axes[0, 0].get_title().endswith("\nσ₁/σ₁ = 1 left out")
    _, axes = plot.histogram([report], ["LoRA"], bins=3, normalize="frobenius")
    (filled,) = [p for p in axes[0, 0].patches if p.get_fill()]
    _, edges = _bars(filled, 3)  # σ₁/‖σ‖ = 2/√5.3125 carries information: drawn
    assert edges[-1] == pytest.approx(2.0 / np.sqrt(5.3125))
    assert "left out" not in axes[0, 0].get_title()


def test_histogram_of_the_demo_holds_no_value_of_one(comparison):
    _, axes = plot.histogram(comparison.reports, LABELS, bins=40)
    for ax in axes[0]:
        for patch in ax.patches:
            # every matrix's σ₂/σ₁ < 1 in the demo: no bar reaches the old σ₁ = 1 bin
            assert patch.get_path().vertices[:, 0].max() < 0.99


def test_layer_curves_take_a_log_axis_when_methods_differ_tenfold(comparison):
    _, axes = plot.layer_curves(comparison.reports, "effective_rank", LABELS)
    # FT ≈ 55 of 64 beside LoRA ≈ 3.9: 64 / 3.9 > 10, a log axis
    assert [ax.get_yscale() for ax in axes[0]] == ["log", "log"]
    _, entropy_axes = plot.layer_curves(comparison.reports, "normalized_entropy", LABELS)
    # 1 (FT's ceiling) / 0.33 (LoRA) < 10: linear
    assert [ax.get_yscale() for ax in entropy_axes[0]] == ["linear", "linear"]
    one_method = [comparison.reports[1]]
    _, lora_axes = plot.layer_curves(one_method, "effective_rank", ["LoRA"])
    assert lora_axes[0, 0].get_yscale() == "linear"  # 3.9 … 8: within a decade


@pytest.mark.parametrize("metric", ["effective_rank", "normalized_entropy"])
def test_layer_curve_legend_covers_no_line(comparison, metric):
    fig, axes = plot.layer_curves(comparison.reports, metric, LABELS)
    renderer = _drawn(fig)
    (legend,) = fig.legends
    assert all(ax.get_legend() is None for ax in axes.flat)
    assert [t.get_text() for t in legend.get_texts()] == [
        label for name in LABELS for label in (name, f"{name} ceiling")
    ]
    box = legend.get_window_extent(renderer)
    for ax in axes.flat:
        panel = ax.get_window_extent(renderer)
        assert not box.overlaps(panel), (box, panel)
        for line in ax.get_lines():  # every point of every line is inside its panel
            points = line.get_transform().transform(line.get_xydata())
            assert np.all(points[:, 0] >= panel.x0 - 1) and np.all(points[:, 0] <= panel.x1 + 1)
            assert np.all(points[:, 1] >= panel.y0 - 1) and np.all(points[:, 1] <= panel.y1 + 1)
    fig_box = fig.bbox
    assert box.x0 >= fig_box.x0 and box.x1 <= fig_box.x1  # and the legend is on the figure


@pytest.mark.slow
def test_histogram_legend_sits_above_every_bar(comparison):
    fig, axes = plot.histogram(comparison.reports, LABELS)
    renderer = _drawn(fig)
    for ax in axes[0]:
        box = ax.get_legend().get_window_extent(renderer)
        for patch in ax.patches:
            tops = patch.get_transform().transform(patch.get_path().vertices)
            under = tops[(tops[:, 0] > box.x0) & (tops[:, 0] < box.x1)]
            assert np.all(under[:, 1] < box.y0), ax.get_title()


def test_summary_equals_the_mean_of_report_metrics(comparison):
    for row in comparison.summary():
        report = comparison.reports[LABELS.index(row["label"])]
        values = [r["effective_rank"] for r in report.rows if r["role"] == row["role"]]
        assert row["effective_rank"] == pytest.approx(sum(values) / len(values), rel=1e-15)
        assert row["rows"] == len(values)


@pytest.mark.slow
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
    figures = ("figure2", "figure2_all_values", "spectrum")
    for name in (*figures, "effective_rank_by_layer", "normalized_entropy_by_layer"):
        data = (out / f"{name}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    with open(out / "summary.csv") as handle:
        summary = list(csv.DictReader(handle))
    reports = {label: spectra.Report.load(out / "reports" / label) for label in LABELS}
    for row in summary:
        rows = [r for r in reports[row["label"]].rows if r["role"] == row["role"]]
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


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--layer", "9"), "layer 9 is not in these reports"),
        (("--layer", "first"), "neither a layer number nor grid"),
        (("--modules", "o"), "no o rows in every report"),
        (("--label", "only-one"), "1 label for 2 reports"),
        (("--top", "0"), "neither a count"),
    ],
)
def test_plot_refuses_what_the_reports_do_not_have(comparison, tmp_path, extra, message):
    folders = []
    for label, report in zip(LABELS[:2], comparison.reports[:2], strict=True):
        folders.append(str(report.save(tmp_path / label)))
    result = CliRunner().invoke(cli, ["plot", *folders, "--out", str(tmp_path / "f"), *extra])
    assert result.exit_code in (1, 2), result.output
    assert message in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    if result.exit_code == 1:
        assert len(lines) == 1 and lines[0].startswith("error: ")
    assert not (tmp_path / "f" / "figure2.png").exists()


def test_sweep_figure_names_each_layer_in_its_own_colour():
    from spectra.plot import sweep_curves

    rows = [
        {"step": step, "layer": layer, "role": module, "effective_rank": step + layer / 10}
        for step in (10, 20)
        for layer in range(12)
        for module in ("k", "v")
    ]
    fig, axes = sweep_curves(rows, ["effective_rank"])
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [f"layer {i}" for i in range(12)]
    legend_colours = [tuple(h.get_color()) for h in legend.legend_handles]
    assert len(set(legend_colours)) == 12  # discrete, distinct colours, no colour bar
    assert len(fig.axes) == len(axes.flat)
    for line in axes.flat[0].get_lines():
        layer = round((line.get_ydata()[0] - 10) * 10)
        assert tuple(line.get_color()) == legend_colours[layer]


@pytest.mark.slow
def test_redraw_keeps_existing_figures_without_force(comparison, tmp_path):
    """The overwrite policy is the library's: Python users get it too."""
    pairs = zip(LABELS, comparison.reports, strict=True)
    folders = [report.save(tmp_path / label) for label, report in pairs]
    written, warnings = plot.redraw(folders, tmp_path / "figs", top="all")
    assert [path.name for path in written] == ["figure2.png", "spectrum.png"] and not warnings
    before = written[0].read_bytes()
    with pytest.raises(ReportExistsError, match="pass force=True"):
        plot.redraw(folders, tmp_path / "figs", top=2)
    assert written[0].read_bytes() == before
    again, _ = plot.redraw(folders, tmp_path / "figs", top=2, force=True)
    assert again == written and written[0].read_bytes() != before
