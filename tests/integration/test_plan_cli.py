"""The plan on the command line: ``inspect`` shows it, ``analyze --dry-run`` prints it alone.

Calibrated with the tiny sizes (milliseconds) into a temporary cache; the
shapes are held against the weights file's own headers.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from safetensors import safe_open
from spectra_cli.main import cli

import spectra
from spectra.analysis import calibration as calibration_module
from spectra.analysis.calibration import TINY


@pytest.fixture
def runner(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECTRA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(calibration_module, "SIZES", TINY)
    return CliRunner()


@pytest.fixture
def counted(monkeypatch):
    calls = []
    real = calibration_module._time
    monkeypatch.setattr(
        calibration_module, "_time", lambda *args: calls.append(args[1]) or real(*args)
    )
    return calls


def _linear_shapes(folder) -> list[tuple[int, int]]:
    with safe_open(folder / "model.safetensors", "pt") as weights:
        return sorted(
            tuple(weights.get_slice(name).get_shape())
            for name in weights.keys()  # noqa: SIM118 - safe_open is no mapping
            if ".layer." in name and name.endswith(".weight") and "LayerNorm" not in name
        )


def test_analyze_dry_run_prints_the_plan_and_writes_nothing(
    runner, minilm_dir, tmp_path, monkeypatch
):
    def refuse(*args, **kwargs):
        raise AssertionError("--dry-run must not analyse")

    monkeypatch.setattr(spectra, "analyze", refuse)
    out, page = tmp_path / "report", tmp_path / "page.html"
    arguments = ["analyze", str(minilm_dir), "--base", str(minilm_dir), "--modules", "all"]
    written = ["--out", str(out), "--html", str(page), "--dry-run"]
    result = runner.invoke(cli, [*arguments, *written])
    assert result.exit_code == 0, result.output
    assert not out.exists() and not page.exists()
    lines = result.stdout.splitlines()
    assert lines[0].startswith("plan (36 modules; dense ΔW by the Gram eigenvalues)")
    assert any(line.strip().startswith("cpu: ") and "peak" in line for line in lines)
    document = json.loads(runner.invoke(cli, [*arguments, "--dry-run", "--json", "--exact"]).stdout)
    assert document["method"] == "exact"
    assert sorted(tuple(m["shape"]) for m in document["modules"]) == _linear_shapes(minilm_dir)
    assert {m["path"] for m in document["modules"]} == {"exact"}


def test_analyze_dry_run_refuses_what_analyze_refuses(runner, minilm_dir):
    result = runner.invoke(cli, ["analyze", str(minilm_dir), "--dry-run"])
    assert result.exit_code != 0 and "--base" in result.output
    arguments = ["analyze", str(minilm_dir), "--base", str(minilm_dir), "--dry-run"]
    result = runner.invoke(cli, [*arguments, "--esd", "--ray"])  # as a run on Ray refuses it
    assert result.exit_code == 1 and "--esd needs each ΔW beside its σ" in result.output
    result = runner.invoke(cli, [*arguments, "--ray"])  # no Ray is started to plan
    assert result.exit_code == 0, result.output
    assert "with --ray each module is a task on the cluster" in result.stdout


def test_inspect_shows_the_plan_and_recalibrates_only_when_asked(runner, lora_adapter, counted):
    result = runner.invoke(cli, ["inspect", str(lora_adapter.path)])
    assert result.exit_code == 0, result.output
    assert "plan of --modules all (12 modules" in result.stdout
    assert "k 384x384 by the QR core × 6" in result.stdout
    measured = len(counted)
    assert measured > 0
    again = runner.invoke(cli, ["inspect", str(lora_adapter.path), "--json"])
    assert len(counted) == measured  # read from the cache
    plan = json.loads(again.stdout)["plan"]
    assert len(plan["modules"]) == 12 and {m["rank"] for m in plan["modules"]} == {8}
    assert plan["devices"][0]["calibration"]["source"] == "cached"
    runner.invoke(cli, ["inspect", str(lora_adapter.path), "--recalibrate"])
    assert len(counted) == 2 * measured
