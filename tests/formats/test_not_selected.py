"""A report never looks whole when the file holds more: what the selection leaves out is named.

An all-linear LoRA of MiniLM (q, k, v, o, up, down in 6 layers, and the
pooler) analysed with the default k, v gives 12 rows; the other 24 modules
are counted under ``not_selected`` and named in one line, in report.json,
on the ``Report``, after ``Report.load``, under the analyze table and in
compare. The "nothing dropped" tests list the file's tensors themselves
(safetensors keys) and map them to (layer, role) with their own table.
"""

from __future__ import annotations

import re

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from spectra_cli.main import cli

import spectra
from tests.helpers.adapters import random_peft_model, save_peft_adapter
from tests.helpers.checks import DTYPES, dtype_id

# MiniLM's module paths → roles, written here independently of spectra's map.
ROLE_OF_PATH = {
    "attention.self.query": "q",
    "attention.self.key": "k",
    "attention.self.value": "v",
    "attention.output.dense": "o",
    "intermediate.dense": "up",
    "output.dense": "down",
}
_TENSOR = re.compile(
    r"encoder\.layer\.(\d+)\.("
    + "|".join(re.escape(p) for p in ROLE_OF_PATH)
    + r")\.(?:weight|lora_)"
)
DEFAULT_NOTE = "not selected: q, o, up, down in 6 layers (24 modules); modules='all' for every role"
# The same note made on the command line names the flag, not the Python argument.
DEFAULT_NOTE_CLI = (
    "not selected: q, o, up, down in 6 layers (24 modules); --modules all for every role"
)


@pytest.fixture(scope="module")
def all_linear(tmp_path_factory, minilm_dir):
    """``all_linear(dtype)``: an all-linear LoRA of MiniLM saved in ``dtype`` (made once)."""
    from peft import LoraConfig

    made = {}

    def adapter(dtype: torch.dtype):
        if dtype not in made:
            config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")
            model = random_peft_model(minilm_dir, config, seed=31)
            folder = tmp_path_factory.mktemp(f"all-linear-{dtype_id(dtype)}")
            made[dtype] = save_peft_adapter(model, folder, minilm_dir, dtype)
        return made[dtype]

    return adapter


def _pair(tensor: str) -> tuple[int, str] | None:
    match = _TENSOR.search(tensor)
    return (int(match[1]), ROLE_OF_PATH[match[2]]) if match else None


def _assert_nothing_dropped(report, weights) -> None:
    """Each tensor of the file: analysed, listed not analysed with a reason, or not selected."""
    with safe_open(str(weights), "pt") as file:
        tensors = list(file.keys())
    analysed = {(row["layer"], row["role"]) for row in report.rows}
    not_analysed = {name: reason for name, reason in report.meta["not_analysed"]}
    not_selected = set(report.not_selected)
    assert len(not_selected) == len(report.not_selected)  # each pair once
    assert not analysed & not_selected
    file_pairs = {_pair(name) for name in tensors} - {None}
    assert not_selected <= file_pairs  # nothing counted that the file does not hold
    for name in tensors:
        pair = _pair(name)
        where = [pair in analysed, name in not_analysed, pair in not_selected]
        assert sum(where) == 1, (name, where)
        if name in not_analysed:
            assert not_analysed[name], name  # a reason, not an empty string


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_a_default_run_names_what_it_did_not_select(all_linear, dtype, tmp_path):
    adapter = all_linear(dtype)
    weights = adapter.path / "adapter_model.safetensors"
    report = spectra.analyze(adapter.path)
    assert sorted({row["role"] for row in report.rows}) == ["k", "v"]
    assert len(report.rows) == 12
    _assert_nothing_dropped(report, weights)
    assert sorted(report.not_selected) == sorted(
        (layer, role) for layer in range(6) for role in ("q", "o", "up", "down")
    )
    assert report.not_selected_note == DEFAULT_NOTE
    assert len(report.meta["not_analysed"]) == 2  # the pooler's lora_A and lora_B
    # in report.json, and back through Report.load
    report.save(tmp_path / "report")
    loaded = spectra.Report.load(tmp_path / "report")
    assert loaded.not_selected == report.not_selected
    assert loaded.not_selected_note == DEFAULT_NOTE
    assert loaded == report


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_layers_not_selected_are_named_too(all_linear, dtype):
    adapter = all_linear(dtype)
    weights = adapter.path / "adapter_model.safetensors"
    report = spectra.analyze(adapter.path, modules="q,k,v", layers="0-2")
    assert len(report.rows) == 9
    _assert_nothing_dropped(report, weights)
    assert len(report.not_selected) == 27
    assert report.not_selected_note == (
        "not selected: o, up, down in 6 layers (18 modules) and q, k, v in layers 3-5 "
        "(9 modules); modules='all' for every role, leave out layers= for every layer"
    )
    report = spectra.analyze(adapter.path, modules="o,up", layers=[0, 2, 3, 4, 5])
    _assert_nothing_dropped(report, weights)
    assert report.not_selected_note == (
        "not selected: q, k, v, down in 6 layers (24 modules) and o, up in layer 1 "
        "(2 modules); modules='all' for every role, leave out layers= for every layer"
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_everything_selected_leaves_nothing_to_name(all_linear, dtype):
    adapter = all_linear(dtype)
    report = spectra.analyze(adapter.path, modules="all")
    assert len(report.rows) == 36
    _assert_nothing_dropped(report, adapter.path / "adapter_model.safetensors")
    assert report.not_selected == [] and report.not_selected_note == ""
    assert report.meta["not_selected"] == []


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_a_full_fine_tune_counts_its_other_weights(finetunes, dtype):
    """A full fine-tune holds every weight: the default k, v leaves q, o, up, down."""
    finetune = finetunes("single", dtype)
    report = spectra.analyze(finetune.path, base=finetune.base, layers="1-2")
    assert len(report.rows) == 4
    _assert_nothing_dropped(report, finetune.path / "model.safetensors")
    assert report.not_selected_note == (
        "not selected: q, o, up, down in 6 layers (24 modules) and k, v in layers 0,3-5 "
        "(8 modules); modules='all' for every role, leave out layers= for every layer"
    )


@pytest.mark.slow
def test_the_terminal_prints_it_under_the_table_and_in_compare(all_linear, lora_adapter, tmp_path):
    adapter = all_linear(torch.float32)  # the command line is the same for every dtype
    runner = CliRunner()
    result = runner.invoke(cli, ["analyze", str(adapter.path)])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == DEFAULT_NOTE_CLI  # under the table
    result = runner.invoke(cli, ["analyze", str(lora_adapter.path)])
    assert result.exit_code == 0, result.output
    assert "not selected" not in result.output  # that adapter has k and v only

    out = tmp_path / "compare"
    result = runner.invoke(
        cli, ["compare", str(adapter.path), str(lora_adapter.path), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    noted = [line for line in result.stdout.splitlines() if "not selected" in line]
    assert noted == [f"{adapter.path.name}: {DEFAULT_NOTE_CLI}"]
    saved = spectra.Report.load(out / "reports" / adapter.path.name)
    assert saved.not_selected_note == DEFAULT_NOTE_CLI
