"""Report: round trip, file layout, atomic writes and refusal to overwrite."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

import spectra
from spectra import Report
from spectra.errors import FormatError, ReportExistsError, SpectraError
from spectra.metrics import METRICS


@pytest.fixture(scope="module")
def report(tmp_path_factory, minilm_dir):
    from tests.helpers.adapters import make_peft_adapter

    adapter = make_peft_adapter(tmp_path_factory.mktemp("adapter"), minilm_dir, seed=5)
    return spectra.analyze(adapter.path, base=minilm_dir)


def test_rows_and_metadata(report, minilm_dir):
    assert len(report) == 12
    meta = report.meta
    assert meta["source"]["format"] == "peft" and meta["source"]["base"] == str(
        minilm_dir.resolve()
    )
    assert meta["device"] == "cpu" and meta["method"] == "fast" and meta["dtype"] == "float64"
    assert meta["modules"] == ["k", "v"] and meta["layers"] == list(range(6))
    assert meta["scales"]["L0.k"] == {"scale": 2.0, "source": "config: lora_alpha/r = 16/8"}
    assert {"torch", "numpy", "python", "spectra"} <= set(meta["versions"])
    assert all(set(METRICS) <= set(row) for row in report.rows)


def test_save_writes_the_documented_files_and_load_reads_them_back_identically(report, tmp_path):
    out = report.save(tmp_path / "r")
    assert sorted(p.name for p in out.iterdir()) == [
        "metrics.csv",
        "report.json",
        "spectra.safetensors",
    ]
    with open(out / "metrics.csv") as handle:
        header = next(csv.reader(handle))
    assert header[:8] == ["layer", "role", "name", "d_out", "d_in", "kind", "dtype", "scale"]
    assert header[8:13] == [
        "adapter_rank",
        "rank_ceiling",
        "accuracy_floor",
        "noise_floor",
        "share_above_floor",
    ]
    assert header[13:] == [*METRICS, "health"]
    assert {row["adapter_rank"] for row in report.rows} == {8}  # the adapter's r
    assert {row["rank_ceiling"] for row in report.rows} == {8}  # and the most rank B@A can have
    loaded = Report.load(out)
    assert loaded == report
    assert np.array_equal(loaded.spectrum(3, "v"), report.spectrum(3, "v"))


def test_to_pandas_has_one_row_per_module(report):
    frame = report.to_pandas()
    assert list(frame.columns) == report.columns
    assert frame.shape[0] == 12
    assert frame["effective_rank"].tolist() == [row["effective_rank"] for row in report.rows]


def test_existing_report_needs_force_and_is_replaced_whole(report, tmp_path):
    out = report.save(tmp_path / "r")
    (out / "metrics.csv").write_text("stale")  # would break the checksum if kept
    with pytest.raises(ReportExistsError, match="force=True"):
        report.save(out)
    report.save(out, force=True)
    assert Report.load(out) == report
    assert [p.name for p in tmp_path.iterdir()] == ["r"], "no temporary folder left behind"


def test_a_folder_that_is_not_a_report_is_never_replaced(report, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(ReportExistsError, match="not a spectra report"):
        report.save(tmp_path / "mine", force=True)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_failed_write_leaves_nothing(report, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("spectra.report.results.save_numpy", broken)
    with pytest.raises(SpectraError, match="disk full"):
        report.save(tmp_path / "r")
    assert list(tmp_path.iterdir()) == []


def test_load_refuses_files_that_disagree(report, tmp_path):
    out = report.save(tmp_path / "r")
    text = (out / "metrics.csv").read_text().replace(",k,", ",q,", 1)
    (out / "metrics.csv").write_text(text)
    with pytest.raises(FormatError, match="checksum"):
        Report.load(out)
    with pytest.raises(FormatError, match="missing"):
        Report.load(tmp_path)
    meta = json.loads((out / "report.json").read_text())
    assert meta["sha256"]["metrics.csv"]


def test_an_older_report_with_a_flags_column_loads_it_as_health(report, tmp_path):
    """Reports written before the rename (and before rank_ceiling) still load."""
    import hashlib

    out = report.save(tmp_path / "old")
    with open(out / "metrics.csv", newline="") as handle:
        table = list(csv.reader(handle))
    keep = [i for i, name in enumerate(table[0]) if name != "rank_ceiling"]
    table = [[cells[i] for i in keep] for cells in table]
    table[0] = ["flags" if name == "health" else name for name in table[0]]
    text = "".join(",".join(cells) + "\n" for cells in table)
    (out / "metrics.csv").write_text(text)
    meta = json.loads((out / "report.json").read_text())
    meta["columns"] = [
        ["flags" if name == "health" else name, kind]
        for name, kind in meta["columns"]
        if name != "rank_ceiling"
    ]
    meta["sha256"]["metrics.csv"] = hashlib.sha256(text.encode()).hexdigest()
    (out / "report.json").write_text(json.dumps(meta))
    loaded = Report.load(out)
    assert [row["health"] for row in loaded.rows] == [row["health"] for row in report.rows]
    assert all("flags" not in row and "rank_ceiling" not in row for row in loaded.rows)
    assert loaded.columns[-1] == "health" and "rank_ceiling" not in loaded.columns
    assert any(row["health"] for row in loaded.rows)  # the case at hand: some row is flagged


def test_a_report_from_another_version_is_compared_with_a_warning(report, tmp_path):
    out = report.save(tmp_path / "old")
    meta = json.loads((out / "report.json").read_text())
    meta["spectra_version"] = "0.1.0"
    (out / "report.json").write_text(json.dumps(meta))
    comparison = spectra.compare([out], ["old"])
    assert any("made by spectra 0.1.0" in w for w in comparison.reports[0].warnings)
    fresh = spectra.compare([report.save(tmp_path / "new")], ["new"])
    assert not any("made by spectra" in w for w in fresh.reports[0].warnings)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize(("kind", "alpha", "rank"), [("loha", 8, 4), ("lokr", 6, 4)])
def test_dense_adapter_rows_carry_their_scale_in_metrics_csv(
    tmp_path, minilm_dir, dtype, kind, alpha, rank
):
    """LoHa and LoKr are rebuilt dense, scale applied; metrics.csv still says α/r, as peft sets."""
    import torch
    from peft import LoHaConfig, LoKrConfig

    from tests.helpers.adapters import random_peft_model

    config = (LoHaConfig if kind == "loha" else LoKrConfig)(
        r=rank, alpha=alpha, target_modules=["key", "value"]
    )
    model = random_peft_model(minilm_dir, config, seed=3).to(getattr(torch, dtype))
    model.save_pretrained(str(tmp_path / kind))
    report = spectra.analyze(tmp_path / kind)
    with open(report.save(tmp_path / "report") / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 12 and {row["kind"] for row in rows} == {"dense"}
    # peft's LycorisLayer scaling for this config, read from the model itself
    peft_scale = model.base_model.model.encoder.layer[0].attention.self.key.scaling["default"]
    assert peft_scale == alpha / rank
    assert [float(row["scale"]) for row in rows] == [alpha / rank] * 12
    assert [row["scale"] for row in Report.load(tmp_path / "report").rows] == [alpha / rank] * 12
    assert all(row["scale"] == alpha / rank for row in report.rows)  # and in memory, so pandas
