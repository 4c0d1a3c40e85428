"""``--force`` replaces only what spectra wrote (issue 23, item 1).

resize, extract, convert and suggest, on the command line and in Python:
a user's folder (a Trainer checkpoint, a trained adapter), a PEFT
``adapter_config.json``, an output that is, holds or lies inside a source
are refused with one line naming the place and what to do, and every file
the user had is still there byte for byte; an output spectra wrote itself
is replaced with ``--force``.
"""

from __future__ import annotations

import importlib
import json
import shutil

import pytest
from click.testing import CliRunner
from spectra_cli.main import cli

import spectra
from spectra.errors import ReportExistsError
from spectra.examples.demo import DEMO_LORA_ALPHA, write_demo_checkpoints

# The demo, then every writer's refusals.
pytestmark = pytest.mark.slow

# What a Hugging Face Trainer leaves in checkpoint-N/ beside a PEFT adapter.
TRAINER_FILES = {
    "optimizer.pt": b"optimizer state",
    "scheduler.pt": b"scheduler state",
    "trainer_state.json": b'{"global_step": 4}',
    "rng_state.pth": b"rng",
    "training_args.bin": b"args",
    "README.md": b"# my adapter\n",
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo_checkpoints(tmp_path_factory.mktemp("demo"))


def snapshot(folder):
    """Every file under ``folder`` with its bytes."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def trainer_checkpoint(demo, folder):
    """A copy of the demo's LoRA adapter with a Trainer's state files beside it."""
    shutil.copytree(demo["lora"], folder)
    for name, data in TRAINER_FILES.items():
        (folder / name).write_bytes(data)
    return folder


def refused(args):
    """Run ``spectra ARGS``: it must exit 1 with one line."""
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize("force", [False, True])
def test_resize_never_replaces_a_trainer_checkpoint(demo, tmp_path, force):
    checkpoint = trainer_checkpoint(demo, tmp_path / "checkpoint-4")
    before = snapshot(checkpoint)
    args = ["resize", str(demo["lora"]), "--rank", "2", "--out", str(checkpoint)]
    line = refused(args + (["--force"] if force else []))
    assert str(checkpoint) in line and "not a spectra" in line and "choose another --out" in line
    assert snapshot(checkpoint) == before
    with pytest.raises(
        ReportExistsError, match=r"not a spectra adapter folder.*choose another out="
    ):
        spectra.resize(demo["lora"], checkpoint, rank=2, force=True)
    assert snapshot(checkpoint) == before


def test_resize_onto_its_own_source_is_refused(demo, tmp_path):
    adapter = shutil.copytree(demo["lora"], tmp_path / "lora")
    before = snapshot(adapter)
    line = refused(["resize", str(adapter), "--rank", "2", "--out", str(adapter), "--force"])
    assert "is the source" in line and "choose another --out" in line
    line = refused(["resize", str(adapter), "--rank", "2", "--out", str(adapter / "r2")])
    assert "lies inside the source" in line
    line = refused(["resize", str(adapter), "--rank", "2", "--out", str(tmp_path), "--force"])
    assert "holds the source" in line
    assert snapshot(adapter) == before


def test_resize_replaces_its_own_output_with_force(demo, tmp_path):
    out = tmp_path / "r2"
    assert (
        CliRunner()
        .invoke(cli, ["resize", str(demo["lora"]), "--rank", "2", "--out", str(out)])
        .exit_code
        == 0
    )
    line = refused(["resize", str(demo["lora"]), "--rank", "3", "--out", str(out)])
    assert "--force" in line
    result = CliRunner().invoke(
        cli, ["resize", str(demo["lora"]), "--rank", "3", "--out", str(out), "--force"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 3


def test_extract_never_replaces_a_trained_adapter_or_its_sources(demo, tmp_path):
    adapter = shutil.copytree(demo["lora"], tmp_path / "mylora")
    before = snapshot(adapter)
    base, tuned = str(demo["base"]), str(demo["ft"])
    line = refused(
        ["extract", tuned, "--base", base, "--rank", "2", "--out", str(adapter), "--force"]
    )
    assert str(adapter) in line and "not a spectra" in line
    assert snapshot(adapter) == before
    for inside in (demo["ft"], demo["base"]):
        kept = snapshot(inside)
        line = refused(
            ["extract", tuned, "--base", base, "--rank", "2", "--out", str(inside / "x"), "--force"]
        )
        assert "lies inside the source" in line
        assert snapshot(inside) == kept
    out = tmp_path / "extracted"
    spectra.extract(demo["ft"], demo["base"], out, rank=2)
    with pytest.raises(ReportExistsError, match="force=True"):
        spectra.extract(demo["ft"], demo["base"], out, rank=3)
    spectra.extract(demo["ft"], demo["base"], out, rank=3, force=True)
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 3


def test_convert_never_replaces_a_peft_adapter(demo, tmp_path):
    adapter = shutil.copytree(demo["lora"], tmp_path / "mylora")
    before = snapshot(adapter)
    source = str(demo["multilora"])
    alpha = str(DEMO_LORA_ALPHA)
    line = refused(["convert", source, str(adapter), "--lora-alpha", alpha, "--force"])
    assert str(adapter) in line and "not a spectra" in line and "DST" in line
    assert snapshot(adapter) == before
    out = tmp_path / "converted"
    assert (
        CliRunner().invoke(cli, ["convert", source, str(out), "--lora-alpha", alpha]).exit_code == 0
    )
    assert "--force" in refused(["convert", source, str(out), "--lora-alpha", alpha])
    result = CliRunner().invoke(
        cli, ["convert", source, str(out), "--lora-alpha", alpha, "--force"]
    )
    assert result.exit_code == 0, result.output


def test_suggest_never_overwrites_a_peft_config(demo, tmp_path):
    adapter = shutil.copytree(demo["lora"], tmp_path / "mylora")
    config = adapter / "adapter_config.json"
    before = config.read_bytes()
    line = refused(["suggest", str(demo["lora"]), "--out", str(config), "--force"])
    assert str(config) in line and "will not replace it" in line
    line = refused(["suggest", str(adapter), "--out", str(config), "--force"])  # its own config
    assert str(config) in line and "lies inside the source" in line
    assert config.read_bytes() == before
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": 1}\n')
    refused(["suggest", str(adapter), "--out", str(notes), "--force"])
    assert notes.read_text() == '{"mine": 1}\n'
    ranks = tmp_path / "ranks.json"
    assert CliRunner().invoke(cli, ["suggest", str(adapter), "--out", str(ranks)]).exit_code == 0
    assert "--force" in refused(["suggest", str(adapter), "--out", str(ranks)])
    result = CliRunner().invoke(
        cli, ["suggest", str(adapter), "--energy", "0.5", "--out", str(ranks), "--force"]
    )
    assert result.exit_code == 0, result.output
    suggestion = spectra.suggest(adapter, energy=0.5)
    assert json.loads(ranks.read_text()) == suggestion.config()
    with pytest.raises(ReportExistsError, match="force=True"):
        suggestion.save(ranks)
    with pytest.raises(ReportExistsError, match="lies inside the source"):
        suggestion.save(config, force=True)
    with pytest.raises(ReportExistsError, match="will not replace it"):
        spectra.suggest(demo["lora"], energy=0.5).save(config, force=True)
    assert config.read_bytes() == before


def test_convert_in_python_keeps_a_peft_adapter_and_its_source(demo, tmp_path):
    from spectra.analysis.convert import convert

    adapter = shutil.copytree(demo["lora"], tmp_path / "mylora")
    before = snapshot(adapter)
    with pytest.raises(ReportExistsError, match=r"not a spectra MultiLoRA folder.*even with"):
        convert(demo["multilora"], adapter, lora_alpha=DEMO_LORA_ALPHA, force=True)
    assert snapshot(adapter) == before
    source = shutil.copy(demo["multilora"], tmp_path / "multilora.pt")
    with pytest.raises(ReportExistsError, match="is the source"):
        convert(source, source, lora_alpha=DEMO_LORA_ALPHA, force=True)
    assert (tmp_path / "multilora.pt").read_bytes() == demo["multilora"].read_bytes()
    out = tmp_path / "converted"
    convert(source, out, lora_alpha=DEMO_LORA_ALPHA)
    with pytest.raises(ReportExistsError, match="force=True"):
        convert(source, out, lora_alpha=DEMO_LORA_ALPHA)
    convert(source, out, lora_alpha=DEMO_LORA_ALPHA, force=True)
    assert json.loads((out / "adapter_config.json").read_text())["lora_alpha"] == DEMO_LORA_ALPHA


def test_suggest_never_writes_inside_what_it_reads(demo, tmp_path):
    adapter = shutil.copytree(demo["lora"], tmp_path / "mylora")
    before = snapshot(adapter)
    line = refused(["suggest", str(adapter), "--out", str(adapter / "ranks.json")])
    assert "lies inside the source" in line and "choose another --out" in line
    with pytest.raises(ReportExistsError, match=r"lies inside the source.*choose another out="):
        spectra.suggest(adapter, energy=0.5).save(adapter / "ranks.json")
    assert snapshot(adapter) == before


def test_html_force_replaces_only_a_page_spectra_wrote(demo, tmp_path):
    notes = tmp_path / "notes.html"
    notes.write_text("<!DOCTYPE html>\n<html><head><title>mine</title></head></html>\n")
    before = notes.read_bytes()
    args = ["analyze", str(demo["lora"]), "-q", "--html", str(notes), "--force"]
    line = refused(args)
    assert str(notes) in line and "not a spectra HTML report" in line
    assert "choose another --html" in line
    assert notes.read_bytes() == before
    page = tmp_path / "page.html"
    ok = ["analyze", str(demo["lora"]), "-q", "--html", str(page)]
    assert CliRunner().invoke(cli, ok).exit_code == 0
    assert "--force" in refused(ok)
    page.write_text(page.read_text().replace("</body>", "<!-- a mark --></body>"))
    result = CliRunner().invoke(cli, [*ok, "--force"])
    assert result.exit_code == 0, result.output
    assert "<!-- a mark -->" not in page.read_text()  # replaced by the new page


def test_every_writer_asks_the_one_check(monkeypatch, demo, tmp_path):
    """resize, extract, suggest, convert, a report and its page ask ``atomic.check_output``."""
    import spectra.io.atomic as atomic

    asked = []
    real = atomic.check_output

    def spy(out, force, what, ours, **options):
        asked.append(what)
        return real(out, force, what, ours, **options)

    for name in (
        "spectra.actions.lora_folder",
        "spectra.actions.suggest",
        "spectra.analysis.comparison",
        "spectra.analysis.convert",
        "spectra.analysis.sweeps",
        "spectra.html.page",
        "spectra.report.results",
    ):
        monkeypatch.setattr(importlib.import_module(name), "check_output", spy)
    spectra.resize(demo["lora"], tmp_path / "r", rank=2)
    spectra.extract(demo["ft"], demo["base"], tmp_path / "e", rank=2)
    spectra.suggest(demo["lora"]).save(tmp_path / "s.json")
    report = spectra.analyze(demo["lora"])
    report.save(tmp_path / "a")
    report.to_html(tmp_path / "a.html")
    from spectra.analysis.convert import convert

    convert(demo["multilora"], tmp_path / "m", lora_alpha=DEMO_LORA_ALPHA)
    assert set(asked) == {
        "adapter folder",
        "rank suggestion (JSON)",
        "report",
        "HTML report",
        "MultiLoRA folder",
    }
