"""The command line through click's CliRunner."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from spectra_cli.main import cli

from spectra import Report
from tests.helpers.checks import reference_sigma


@pytest.fixture
def runner():
    return CliRunner()


def test_analyze_adapter_prints_a_table_and_writes_a_report(runner, lora_adapter, tmp_path):
    out = tmp_path / "report"
    result = runner.invoke(
        cli, ["analyze", str(lora_adapter.path), "--out", str(out), "--layers", "0-2,5"]
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("layer"))
    for title in (
        "role",
        "shape",
        "num. rank",
        "norm. entropy",
        "eff. rank",
        "stable rank",
        "energy rank@0.9",
    ):
        assert title in header
    table = [line.split() for line in lines if line[:5].strip().isdigit()]
    assert [(int(row[0]), row[1]) for row in table] == [
        (layer, role) for layer in (0, 1, 2, 5) for role in ("k", "v")
    ]
    assert all(row[2] == "384x384" and row[3] == "8" for row in table)
    report = Report.load(out)
    sigma = report.spectrum(5, "v")
    np.testing.assert_allclose(
        sigma, reference_sigma(lora_adapter.reference[(5, "v")])[:8], rtol=1e-9
    )


def test_analyze_full_finetune_json(runner, bert_finetune):
    result = runner.invoke(
        cli,
        [
            "analyze",
            str(bert_finetune.path),
            "--base",
            str(bert_finetune.base),
            "--json",
            "--exact",
            "--modules",
            "v",
            "--jobs",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["meta"]["method"] == "exact"
    assert [row["role"] for row in payload["rows"]] == ["v"] * 6
    assert all(row["numerical_rank"] == 8 for row in payload["rows"])


def test_existing_report_is_kept_without_force(runner, lora_adapter, tmp_path):
    out = tmp_path / "report"
    assert (
        runner.invoke(cli, ["analyze", str(lora_adapter.path), "--out", str(out), "-q"]).exit_code
        == 0
    )
    before = (out / "report.json").read_text()
    result = runner.invoke(
        cli, ["analyze", str(lora_adapter.path), "--out", str(out), "--layers", "0"]
    )
    assert result.exit_code == 1 and "--force" in result.stderr
    assert (out / "report.json").read_text() == before
    result = runner.invoke(
        cli, ["analyze", str(lora_adapter.path), "--out", str(out), "--layers", "0", "--force"]
    )
    assert result.exit_code == 0 and len(Report.load(out)) == 2


def test_inspect_shows_ranks_scales_and_their_source(runner, lora_adapter):
    result = runner.invoke(cli, ["inspect", str(lora_adapter.path)])
    assert result.exit_code == 0, result.output
    assert "LoRA, peft format" in result.stdout
    rows = [line for line in result.stdout.splitlines() if "factored" in line]
    assert len(rows) == 12
    assert all(" 8 " in row and "lora_alpha/r = 16/8" in row for row in rows)
    payload = json.loads(runner.invoke(cli, ["inspect", str(lora_adapter.path), "--json"]).stdout)
    assert payload["format"] == "peft" and payload["modules"][0]["rank"] == 8


def test_inspect_full_model_without_base(runner, minilm_dir):
    result = runner.invoke(cli, ["inspect", str(minilm_dir)])
    assert result.exit_code == 0
    assert "full fine-tune" in result.stdout and "float32" in result.stdout
    assert "no --base" in result.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["analyze", "{missing}"], "no such file or folder"),
        (["analyze", "{ft}"], "--base"),
        (["analyze", "{ft}", "--base", "{ft}", "--modules", "gate"], "--modules"),
        (["analyze", "{ft}", "--base", "{ft}", "--layers", "40"], "--layers"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(runner, tmp_path, bert_finetune, arguments, message):
    paths = {"missing": tmp_path / "missing", "ft": bert_finetune.path}
    result = runner.invoke(cli, [a.format(**paths) for a in arguments])
    assert result.exit_code == 1, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert message in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "arguments",
    [
        ["analyze", "x", "--layers", "3-1"],
        ["analyze", "x", "--modules", "k,zz"],
        ["analyze", "x", "--device", "tpu"],
        ["analyze", "x", "--jobs", "0"],
    ],
)
def test_usage_errors_exit_2(runner, arguments):
    assert runner.invoke(cli, arguments).exit_code == 2


@pytest.mark.slow
def test_demo_writes_checkpoints_reports_and_figure(runner, tmp_path):
    out = tmp_path / "demo"
    result = runner.invoke(cli, ["demo", "--out", str(out)])
    assert result.exit_code == 0, result.output
    reports = out / "comparison" / "reports"
    ft, lora, multilora = (Report.load(reports / name) for name in ("FT", "LoRA", "MultiLoRA"))
    assert ft.meta["source"]["format"] == "full" and lora.meta["source"]["format"] == "peft"
    assert multilora.meta["source"]["format"] == "multilora"
    # The planted spectra: FT full rank, LoRA rank 8 with energies 4^-i, MultiLoRA 4 heads × rank 2.
    assert all(row["numerical_rank"] == 64 for row in ft.rows)
    assert all(row["numerical_rank"] == 8 for row in lora.rows + multilora.rows)
    assert all(row["top_share@1"] == pytest.approx(0.75 / (1 - 4.0**-8)) for row in lora.rows)
    entropy = {
        name: [r["normalized_entropy"] for r in rep.rows]
        for name, rep in [("ft", ft), ("lora", lora), ("ml", multilora)]
    }
    assert min(entropy["ft"]) > max(entropy["ml"]) > max(entropy["lora"])
    assert "mean over layers" in result.stdout
    assert (out / "comparison" / "figure2.png").stat().st_size > 10_000
    # The demo owns its folder: a second run redoes it, a folder of anything else is refused.
    (out / "comparison" / "figure2.png").unlink()
    again = runner.invoke(cli, ["demo", "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert (out / "comparison" / "figure2.png").is_file()
    assert runner.invoke(cli, ["demo", "--out", str(out), "--force"]).exit_code == 0
    mine = tmp_path / "mine"
    (mine / "checkpoints").mkdir(parents=True)
    (mine / "notes.txt").write_text("keep")
    refused = runner.invoke(cli, ["demo", "--out", str(mine)])
    assert refused.exit_code == 1 and "not a spectra demo folder" in refused.output
    assert sorted(p.name for p in mine.iterdir()) == ["checkpoints", "notes.txt"]


def test_modules_all_means_every_role_the_checkpoint_has(runner, lora_adapter, minilm_dir):
    """BERT has no gate and this adapter only k and v: all is those, not an error."""
    result = runner.invoke(cli, ["analyze", str(lora_adapter.path), "--modules", "all", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert {row["role"] for row in payload["rows"]} == {"k", "v"}
    assert len(payload["rows"]) == 12
    # a full model against itself (ΔW = 0): every BERT role, and BERT has no gate
    args = ["analyze", str(minilm_dir), "--base", str(minilm_dir), "--modules", "all"]
    ft = runner.invoke(cli, [*args, "--layers", "0", "--json"])
    assert ft.exit_code == 0, ft.output
    roles = [row["role"] for row in json.loads(ft.stdout)["rows"]]
    assert roles == ["q", "k", "v", "o", "up", "down"]


@pytest.mark.slow
def test_a_closed_pipe_ends_quietly(lora_adapter, tmp_path):
    """`spectra inspect … | head`: no 'error: Broken pipe' when the reader stops early."""
    import subprocess
    import sys

    script = (
        "import sys\nfrom spectra_cli.main import cli\n"
        "sys.argv = ['spectra', 'inspect', sys.argv[1]]\ncli()\n"
    )
    reader = subprocess.Popen(
        [sys.executable, "-c", script, str(lora_adapter.path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    reader.stdout.close()  # the reader leaves before spectra writes, as head does early
    stderr = reader.stderr.read().decode()
    reader.wait(timeout=120)
    assert "Broken pipe" not in stderr and "Traceback" not in stderr, stderr


def test_convert_refuses_what_is_not_multilora_and_says_what_it_is(runner, lora_adapter, tmp_path):
    result = runner.invoke(cli, ["convert", str(lora_adapter.path), str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "this is a peft checkpoint" in result.output and "--format" not in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_compare_says_where_a_label_that_is_no_file_name_went(runner, lora_adapter, tmp_path):
    out = tmp_path / "cmp"
    args = ["compare", str(lora_adapter.path), "--label", "LoRA r=8", "--out", str(out), "-q"]
    result = runner.invoke(cli, [*args, "--layers", "0"])
    assert result.exit_code == 0, result.output
    assert "the report of 'LoRA r=8' is in" in result.output
    assert (out / "reports" / "LoRA-r-8" / "report.json").is_file()


def test_the_adapter_file_is_read_as_its_folder(runner, lora_adapter, tmp_path):
    weights = lora_adapter.path / "adapter_model.safetensors"
    result = runner.invoke(cli, ["analyze", str(weights), "--json", "--layers", "0"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    expected = reference_sigma(lora_adapter.reference[(0, "k")])
    np.testing.assert_allclose(rows[0]["spectral_norm"], expected[0], rtol=1e-10)
    # the same tensors with no adapter_config.json beside them: the folder is what to pass
    bare = tmp_path / "bare.safetensors"
    bare.write_bytes(weights.read_bytes())
    refused = runner.invoke(cli, ["analyze", str(bare)])
    assert refused.exit_code == 1 and "pass the adapter folder" in refused.output
