"""Pleasant from the shell and from a notebook (issue 17): fast help, strings as on the
command line, objects that explain themselves, DataFrames, warnings, sweeps that stop.

References are independent of the code under test: layer and role sets written out by
hand, numpy's SVD of α/r·B@A read with safetensors, the rows a report holds.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from spectra_cli.main import cli

import spectra
from spectra.errors import SelectionError, SpectraWarning
from spectra.selection import parse_layers, parse_modules
from tests.helpers.adapters import make_peft_adapter
from tests.helpers.checks import reference_sigma

COMMANDS = ("analyze", "inspect", "compare", "sweep", "plot", "convert", "demo")


# --- item 4: --help is fast and shows examples -------------------------------------------


def _modules_loaded_by(code: str) -> set[str]:
    """The top-level modules a fresh interpreter has loaded after running ``code``."""
    probe = f"{code}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    return set(result.stdout.split())


@pytest.mark.slow
@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_loads_neither_torch_nor_matplotlib(command):
    args = ["--help"] if command is None else [command, "--help"]
    code = (
        f"from spectra_cli.main import cli\ntry:\n    cli({args!r})\nexcept SystemExit:\n    pass"
    )
    loaded = _modules_loaded_by(code)
    assert "click" in loaded  # the probe did run the command line
    assert not {"torch", "matplotlib", "numpy", "safetensors"} & loaded


@pytest.mark.slow
def test_import_spectra_is_light_until_a_name_is_used():
    assert "torch" not in _modules_loaded_by("import spectra")
    assert "torch" in _modules_loaded_by("import spectra\nspectra.analyze")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_shows_an_example(command):
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output and f"spectra {command}" in result.output


def test_help_is_well_under_half_a_second():
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "spectra_cli.main", "--help"], check=True, capture_output=True
    )
    elapsed = time.perf_counter() - start
    print(f"spectra --help: {elapsed:.2f} s")  # reported, not asserted: machines differ
    assert elapsed < 5  # a loose bound that still catches torch coming back (2+ s here)


# --- item 8: strings work as on the command line -------------------------------------------


def test_module_and_layer_strings_parse_as_on_the_command_line():
    assert parse_modules("k,v") == ("k", "v") == parse_modules(["k", "v"])
    assert parse_modules(" all ") == "all" == parse_modules(["all"])
    assert parse_modules("q, k,q") == ("q", "k")
    assert parse_layers("0-3,7") == (0, 1, 2, 3, 7) == parse_layers([7, 0, 1, 2, 3])
    assert parse_layers(5) == (5,) == parse_layers(np.int64(5))
    assert parse_layers(["0-1", 4]) == (0, 1, 4)
    for bad in ("a", "k,x", ""):
        with pytest.raises(SelectionError, match=r"modules="):
            parse_modules(bad)
    for bad in ("-1", "3-1", "x", "", True):
        with pytest.raises(SelectionError, match=r"layers="):
            parse_layers(bad)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, minilm_dir):
    return make_peft_adapter(
        tmp_path_factory.mktemp("usable"), minilm_dir, target_modules=["query", "value"]
    )


def test_analyze_takes_strings_like_lists(adapter):
    every = spectra.analyze(adapter.path, modules="all", layers="0-2")
    pairs = {(row["layer"], row["role"]) for row in every.rows}
    assert pairs == {(layer, role) for layer in (0, 1, 2) for role in ("q", "v")}
    listed = spectra.analyze(adapter.path, modules=["q", "v"], layers=[0, 1, 2])
    assert every.rows == listed.rows
    one = spectra.analyze(adapter.path, modules="v", layers=4)
    assert [(row["layer"], row["role"]) for row in one.rows] == [(4, "v")]
    with pytest.raises(SelectionError, match=r"unknown module role\(s\) 'x'.*modules="):
        spectra.analyze(adapter.path, modules="v,x")


# --- items 9 and 10: objects that explain themselves, DataFrames -------------------------------


def test_reprs_are_short_and_say_what_is_there(adapter):
    checkpoint = spectra.load(adapter.path)
    text = repr(checkpoint)
    assert "object at" not in text and "LoRA" in text and "layers 0-5 × q, v" in text
    delta = next(checkpoint.deltas(modules="v", layers=0))
    shown = repr(delta)
    assert len(shown) < 200 and "tensor(" not in shown
    assert "L0.v" in shown and "r=8" in shown and "384×384" in shown
    report = spectra.analyze(adapter.path, layers="0-1")
    assert "2 rows, layers 0-1 × v" in repr(report) and "1 warning" in repr(report)


def test_report_html_table_holds_the_report_numbers(adapter):
    report = spectra.analyze(adapter.path)
    page = report._repr_html_()
    assert page.count("<tr>") == len(report) + 1  # a header, then one row per row
    for row in report.rows:
        assert f"<td>{row['effective_rank']:.4g}</td>" in page
    assert "no &#x27;k&#x27; modules" in page  # the warning, escaped


def test_dataframes_have_float_columns_and_nan_for_missing(adapter):
    report = spectra.analyze(adapter.path)
    frame = report.to_pandas()
    assert frame["relative_norm"].dtype == np.float64 and frame["relative_norm"].isna().all()
    assert frame["effective_rank"].tolist() == [row["effective_rank"] for row in report.rows]
    comparison = spectra.compare([adapter.path, adapter.path], labels=["a", "b"])
    summary = comparison.to_pandas()
    assert summary.to_dict("records") == comparison.summary()
    assert "<table>" in comparison._repr_html_() and "Comparison(a, b: v)" in repr(comparison)


def test_spectra_are_numpy_and_match_numpy_svd(adapter):
    from safetensors.numpy import load_file

    report = spectra.analyze(adapter.path, modules="v", layers=3)
    sigma = report.spectrum(3, "v")
    assert isinstance(sigma, np.ndarray) and sigma.dtype == np.float64
    tensors = load_file(str(adapter.path / "adapter_model.safetensors"))
    prefix = "base_model.model.encoder.layer.3.attention.self.value"
    B = tensors[f"{prefix}.lora_B.weight"].astype(np.float64)
    A = tensors[f"{prefix}.lora_A.weight"].astype(np.float64)
    expected = reference_sigma(16 / 8 * B @ A)[:8]
    np.testing.assert_allclose(sigma[:8], expected, rtol=1e-10)


# --- item 11: warnings and errors in Python ---------------------------------------------------


def test_python_gets_spectra_warnings_and_argument_names(adapter, tmp_path):
    with pytest.warns(SpectraWarning, match="no 'k' modules"):
        spectra.analyze(adapter.path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpectraWarning)  # users can filter the category
        with pytest.raises(SpectraWarning):
            spectra.analyze(adapter.path)
    report = spectra.analyze(adapter.path, layers=0)
    report.save(tmp_path / "r")
    with pytest.raises(spectra.ReportExistsError) as refused:
        report.save(tmp_path / "r")
    assert "force=True" in str(refused.value) and "--force" not in str(refused.value)


def test_the_command_line_prints_warnings_and_names_flags(adapter, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = CliRunner().invoke(cli, ["analyze", str(adapter.path), "--layers", "0"])
    assert result.exit_code == 0 and "warning: no 'k' modules" in result.stderr
    assert not [w for w in caught if issubclass(w.category, SpectraWarning)]
    out = tmp_path / "r"
    for _ in range(2):
        result = CliRunner().invoke(cli, ["analyze", str(adapter.path), "--out", str(out)])
    assert (
        result.exit_code == 1 and "--force" in result.stderr and "force=True" not in result.stderr
    )


# --- item 12: spectra.sweep has a real signature ---------------------------------------------


def test_sweep_has_run_sweeps_signature_and_its_own_docs():
    sweep_parameters = inspect.signature(spectra.sweep).parameters
    assert list(sweep_parameters) == list(inspect.signature(spectra.run_sweep).parameters)
    assert {"base", "modules", "layers", "pattern", "cache", "workers"} <= set(sweep_parameters)
    assert "Example" in spectra.sweep.__doc__ and len(spectra.sweep.__doc__) > 400


# --- item 7: sweeps show progress, stop on Ctrl-C, keep what finished, warn once ---------------


@pytest.fixture(scope="module")
def v_only_run(tmp_path_factory, minilm_dir) -> Path:
    """Three checkpoints of an adapter on value only: each gives the same warning (no k)."""
    run = tmp_path_factory.mktemp("run")
    for step in (1, 2, 3):
        make_peft_adapter(
            run / f"checkpoint-{step}", minilm_dir, seed=step, target_modules=["value"]
        )
    return run


def test_sweep_warns_once_per_warning_with_its_steps(v_only_run):
    with pytest.warns(SpectraWarning) as caught:
        result = spectra.run_sweep(v_only_run, cache=False, layers="0")
    assert result.warnings == [
        "every step (3 checkpoints): no 'k' modules in this checkpoint (it has v); analysing v"
    ]
    assert len([w for w in caught if "no 'k'" in str(w.message)]) == 1


def test_sweep_progress_starts_at_once_and_names_the_checkpoint(v_only_run):
    calls = []
    spectra.run_sweep(
        v_only_run,
        cache=False,
        layers="0-1",
        progress=lambda done, total, label: calls.append((done, total, label)),
    )
    assert calls[0] == (0, 3, "checking step 1")  # before any checkpoint is opened
    assert (1, 6, "step 1: L0.v") in calls and calls[-1] == (6, 6, "step 3 done")


def test_interrupted_sweep_keeps_finished_checkpoints_in_the_cache(v_only_run, tmp_path):
    cache = tmp_path / "cache"

    def stop_after_first(done, total, label):
        if label == "step 1 done":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt, match=r"1 of 3 .* kept in the cache"):
        spectra.run_sweep(v_only_run, cache=cache, layers="0", progress=stop_after_first)
    again = spectra.run_sweep(v_only_run, cache=cache, layers="0")
    assert again.cached == [True, False, False]


@pytest.mark.slow
def test_ctrl_c_stops_a_process_pool_at_once(v_only_run):
    from spectra.analysis import executors

    jobs = [{"path": v_only_run / f"checkpoint-{step}", "modules": "all"} for step in (1, 2, 3)]
    seen = []

    def interrupt(index, report):
        seen.append(index)
        raise KeyboardInterrupt

    start = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        executors.run_on_processes(jobs * 4, list(range(12)), 2, interrupt)
    elapsed = time.perf_counter() - start
    assert seen  # the first finished checkpoint was handed over before the stop
    import multiprocessing

    time.sleep(0.5)
    assert not [p for p in multiprocessing.active_children() if p.is_alive()]
    print(f"pool stopped {elapsed:.1f} s after start (12 jobs of ~1 s queued)")
    assert elapsed < 60
