"""The HTML report (``--html FILE``, ``write_html``): self-contained, the report's numbers, and
rendered by a real headless Chromium (Debian's ``chromium`` package, or one on PATH). Without
a browser the browser tests are skipped, saying how to install it; with ``CI=true`` (``.ci/run``
installs Chromium) they fail instead.

The checkpoints are the demo's (``spectra.examples.demo``): a full fine-tune, a PEFT LoRA
adapter and a MultiLoRA checkpoint in their real formats, small enough to keep this file fast.
"""

from __future__ import annotations

import json
import math
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from spectra_cli.main import cli

from spectra import Report
from spectra.analysis.comparison import Comparison
from spectra.errors import ReportExistsError, SpectraError
from spectra.examples.demo import DEMO_LORA_ALPHA, write_demo_checkpoints
from spectra.html import SPECTRUM_POINTS, write_html
from spectra.html.data import _spectrum_points, script_json

LABELS = ["FT", "LoRA", "MultiLoRA"]


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict[str, Path]:
    return write_demo_checkpoints(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def compared(demo, tmp_path_factory) -> tuple[Path, Path]:
    """``spectra compare FT LoRA MultiLoRA --out DIR --html FILE``: (the page, the folder)."""
    folder = tmp_path_factory.mktemp("compare")
    page = folder / "comparison.html"
    result = CliRunner().invoke(
        cli,
        [
            "compare",
            str(demo["ft"]),
            str(demo["lora"]),
            str(demo["multilora"]),
            *[arg for label in LABELS for arg in ("--label", label)],
            "--base",
            str(demo["base"]),
            "--lora-alpha",
            str(DEMO_LORA_ALPHA),
            "--out",
            str(folder / "cmp"),
            "--html",
            str(page),
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"HTML report written to {page}" in result.output
    return page, folder / "cmp"


class _Elements(HTMLParser):
    """Every start tag with its attributes, and the text of each table.data's cells."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.tables: list[list[dict[str, str]]] = []
        self._cell: str | None = None
        self._body = False
        self._text = ""

    def handle_starttag(self, tag, attrs):
        attrs = {name: value or "" for name, value in attrs}
        self.tags.append((tag, attrs))
        if tag == "table" and attrs.get("class") == "data":
            self.tables.append([])
        elif tag == "tbody" and self.tables:
            self._body = True
        elif tag == "tr" and self.tables and self._body:
            self.tables[-1].append({})
        elif tag == "td" and "data-column" in attrs:
            self._cell, self._text = attrs["data-column"], ""

    def handle_data(self, data):
        if self._cell is not None:
            self._text += data

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._body = False
        if tag == "td" and self._cell is not None:
            self.tables[-1][-1][self._cell] = self._text
            self._cell = None

    def find(self, tag: str, **wanted: str) -> list[dict[str, str]]:
        return [
            attrs
            for name, attrs in self.tags
            if name == tag and all(wanted[k] in attrs.get(k, "").split() for k in wanted)
        ]


def parse(text: str) -> _Elements:
    parser = _Elements()
    parser.feed(text)
    return parser


def embedded(text: str) -> dict:
    """The JSON the page's script reads."""
    start = text.index('<script type="application/json" id="spectra-data">')
    start = text.index(">", start) + 1
    return json.loads(text[start : text.index("</script>", start)])


def assert_self_contained(text: str) -> None:
    page = parse(text)
    for tag, attrs in page.tags:
        for name in ("src", "href", "xlink:href", "action", "data"):
            value = attrs.get(name, "")
            assert not value.startswith(("http:", "https:", "//")), (tag, name, value)
        assert not (tag == "script" and "src" in attrs), attrs
        assert not (tag == "link" and attrs.get("rel") == "stylesheet"), attrs
    assert "@import" not in text and "url(http" not in text


def cell(value: object) -> str:
    """A number as the page's tables write it (6 significant digits)."""
    if value is None or value == "":
        return "–"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def assert_json_rows_are_the_reports(method: dict, report: Report) -> None:
    assert len(method["rows"]) == len(report.rows)
    for entry, row in zip(method["rows"], report.rows, strict=True):
        for column in report.columns:
            value = row.get(column)
            if value in ("", None):  # a str column read back from CSV: "" for None
                assert entry[column] in ("", None), (entry["key"], column)
            elif isinstance(value, float) and not math.isfinite(value):
                assert entry[column] == ("NaN" if math.isnan(value) else "Infinity")
            else:
                assert entry[column] == value, (entry["key"], column)  # exact: floats by repr
        sigma = report.spectrum(row["layer"], row["role"], row.get("head"))
        spectrum = entry["spectrum"]
        assert spectrum["count"] == sigma.size
        index = np.asarray(spectrum.get("index", np.arange(1, sigma.size + 1)))
        np.testing.assert_array_equal(np.asarray(spectrum["sigma"]), sigma[index - 1])


def chromium(browser: str, *arguments: str) -> subprocess.CompletedProcess:
    """Run the headless Chromium at ``browser``, offline, with a throw-away profile."""
    with tempfile.TemporaryDirectory(prefix="spectra-chromium-") as profile:
        return subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                *arguments,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )


# ---------------------------------------------------------------- the command line


@pytest.mark.slow
def test_analyze_html_holds_the_reports_numbers_and_needs_force(demo, tmp_path):
    runner, page, out = CliRunner(), tmp_path / "lora.html", tmp_path / "report"
    arguments = ["analyze", str(demo["lora"]), "--out", str(out), "--html", str(page), "-q"]
    result = runner.invoke(cli, arguments)
    assert result.exit_code == 0, result.output
    text = page.read_text()
    assert_self_contained(text)
    report = Report.load(out)
    data = embedded(text)
    assert data["kind"] == "analyze" and data["default_metric"] == "normalized_entropy"
    assert [m["label"] for m in data["methods"]] == ["LoRA"]
    assert_json_rows_are_the_reports(data["methods"][0], report)
    (table,) = parse(text).tables  # the rows, every column to 6 digits
    assert len(table) == len(report.rows)
    for shown, row in zip(table, report.rows, strict=True):
        assert shown == {column: cell(row.get(column)) for column in report.columns}

    # an existing file is kept without --force, named with the flag; the check comes first
    before = page.read_bytes()
    again = runner.invoke(cli, ["analyze", str(demo["lora"]), "--html", str(page)])
    assert again.exit_code == 1
    assert str(page) in again.output and "--force" in again.output
    assert page.read_bytes() == before
    forced = runner.invoke(cli, [*arguments, "--force"])
    assert forced.exit_code == 0, forced.output
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]  # nothing left behind


@pytest.mark.slow
def test_compare_html_holds_the_summary_and_every_report(compared):
    page, folder = compared
    text = page.read_text()
    assert_self_contained(text)
    reports = [Report.load(folder / "reports" / label) for label in LABELS]
    comparison = Comparison(LABELS, reports)
    data = embedded(text)
    assert data["kind"] == "compare"
    assert [m["label"] for m in data["methods"]] == LABELS
    for method, report in zip(data["methods"], reports, strict=True):
        assert_json_rows_are_the_reports(method, report)
    tables = parse(text).tables  # the summary, then each report's rows
    assert len(tables) == 1 + len(LABELS)
    summary = comparison.summary()
    assert len(tables[0]) == len(summary) == 6
    for shown, row in zip(tables[0], summary, strict=True):
        assert shown == {column: cell(row.get(column)) for column in comparison.columns}
    # Figure 2 is inline SVG with its text as text: the legend counts the drawn values
    # (4 layers × σ₂ … σ₈: σ₁/σ₁ = 1 is left out of the normalised histogram)
    assert text.count("<svg") == 1 and "FT (28 values)" in text and "LoRA (28 values)" in text


# ---------------------------------------------------------------- Python


@pytest.mark.slow
def test_python_writes_the_same_page_and_refuses_what_it_should(compared, demo, tmp_path):
    page, folder = compared
    reports = [Report.load(folder / "reports" / label) for label in LABELS]
    comparison = Comparison(LABELS, reports)
    written = comparison.to_html(tmp_path / "cmp.html")  # from the saved reports
    for method, report in zip(embedded(written.read_text())["methods"], reports, strict=True):
        assert_json_rows_are_the_reports(method, report)
    assert parse(written.read_text()).tables == parse(page.read_text()).tables
    with pytest.raises(ReportExistsError, match=r"cmp\.html.*force=True"):
        write_html(comparison, written)
    assert reports[2].to_html(tmp_path / "ml.html").is_file()
    with pytest.raises(ReportExistsError, match="is a folder"):
        reports[0].to_html(tmp_path)
    with pytest.raises(SpectraError, match="Report or a Comparison"):
        write_html([reports[0]], tmp_path / "list.html")


@pytest.mark.slow
def test_labels_and_text_cannot_break_out_of_the_page(compared, tmp_path):
    folder = compared[1]
    report = Report.load(folder / "reports" / "LoRA")
    label = '</script><img src="https://example.org/x.png">'
    text = write_html(Comparison([label], [report]), tmp_path / "odd.html").read_text()
    assert label not in text
    assert_self_contained(text)
    assert embedded(text)["methods"][0]["label"] == label


def test_long_spectra_keep_their_head_and_log_spaced_values():
    sigma = np.sort(np.random.default_rng(0).random(5000))[::-1]
    points = _spectrum_points(sigma)
    index = np.asarray(points["index"])
    assert points["count"] == 5000 and len(index) <= SPECTRUM_POINTS
    assert index[:64].tolist() == list(range(1, 65)) and index[-1] == 5000
    np.testing.assert_array_equal(points["sigma"], sigma[index - 1])
    assert "index" not in _spectrum_points(sigma[:100])
    # non-finite numbers (condition_number of a zero ΔW) stay valid JSON
    assert json.loads(script_json({"x": math.inf, "y": math.nan})) == {
        "x": "Infinity",
        "y": "NaN",
    }


# ---------------------------------------------------------------- a real browser


def test_without_a_browser_the_tests_skip_saying_why_and_fail_in_ci(monkeypatch, tmp_path):
    from tests.helpers.browser import chromium_or_skip

    monkeypatch.setenv("SPECTRA_CHROMIUM", str(tmp_path / "no-such-browser"))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install -y chromium"):
        chromium_or_skip()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"CI=true.*failing, not skipping"):
        chromium_or_skip()
    fake = tmp_path / "chromium"
    fake.write_text("#!/bin/sh\n")
    monkeypatch.setenv("SPECTRA_CHROMIUM", str(fake))
    assert chromium_or_skip() == str(fake)


@pytest.mark.slow
@pytest.mark.browser
def test_the_page_renders_in_chromium(compared, tmp_path, chromium_path):
    page, _ = compared
    data = embedded(page.read_text())
    dom = parse(chromium(chromium_path, "--dump-dom", page.as_uri() + "#L2.v").stdout)
    (body,) = dom.find("body")
    assert body.get("data-ready") == "1", "the page's script did not finish"
    assert all("hidden" in attrs for attrs in dom.find("div") if attrs.get("id") == "js-error")
    # the heat-maps: one table per method, one cell per row, the metric's exact value
    assert len(dom.find("table", **{"class": "heatmap"})) == len(LABELS)
    cells = dom.find("td", **{"class": "cell"})
    rows = [row for method in data["methods"] for row in method["rows"]]
    assert len(cells) == len(rows) == 24
    for attrs, row in zip(cells, rows, strict=True):
        assert attrs["data-key"] == row["key"]
        assert float(attrs["data-value"]) == row["normalized_entropy"]
    assert [a["data-key"] for a in dom.find("td", **{"class": "selected"})] == ["L2.v"] * 3
    # the spectrum of L2.v (the #hash): one line per method, each value above its floor
    lines = dom.find("polyline", **{"class": "series"})
    assert [line["data-label"] for line in lines] == LABELS
    for line, method in zip(lines, data["methods"], strict=True):
        (row,) = [r for r in method["rows"] if r["key"] == "L2.v"]
        assert int(line["data-count"]) == row["spectrum"]["above_floor"] > 0
        assert len(line["points"].split()) == row["spectrum"]["above_floor"]
    assert len(dom.find("option")) == len(data["metrics"]) >= 10

    # another metric (?metric=, as the <select> sets it): the cells repainted with its values
    dom = parse(chromium(chromium_path, "--dump-dom", page.as_uri() + "?metric=top_share@1").stdout)
    values = [float(attrs["data-value"]) for attrs in dom.find("td", **{"class": "cell"})]
    assert values == [row["top_share@1"] for row in rows]
    assert [a["data-key"] for a in dom.find("td", **{"class": "selected"})] == ["L0.k"] * 3

    shot = tmp_path / "page.png"
    chromium(chromium_path, f"--screenshot={shot}", "--window-size=1400,1000", page.as_uri())
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[:2] == (1000, 1400)
    colours = np.unique((pixels[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 100, "the screenshot is (nearly) blank"
    viridis_low = np.array([0x44, 0x01, 0x54])  # a dark heat-map cell was painted
    assert (np.abs(colours.astype(int) - viridis_low).sum(axis=1) < 30).any()


@pytest.mark.slow
@pytest.mark.browser
def test_a_per_head_report_renders_with_a_column_per_head(demo, tmp_path, chromium_path):
    import spectra

    report = spectra.analyze(
        demo["multilora"], lora_alpha=DEMO_LORA_ALPHA, per_head=True, layers="0-1"
    )
    page = report.to_html(tmp_path / "heads.html")
    dom = parse(chromium(chromium_path, "--dump-dom", page.as_uri()).stdout)
    (body,) = dom.find("body")
    assert body.get("data-ready") == "1"
    assert len(dom.find("td", **{"class": "cell"})) == len(report.rows) == 16
    assert embedded(page.read_text())["methods"][0]["columns"] == [
        f"{role}.h{head}" for role in ("k", "v") for head in range(4)
    ]
