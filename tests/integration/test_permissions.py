"""Output folders and files get the modes ``mkdir`` and ``open`` give under the umask.

Reports, comparisons, sweeps and cache entries are built under a temporary
name and renamed into place; the temporary folder must not keep
``tempfile.mkdtemp``'s 0o700, or colleagues on a shared server cannot read
the results. Each test sets the umask itself and restores it after.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from spectra_cli.main import cli

import spectra

# The demo and every writer, under two umasks.
pytestmark = pytest.mark.slow


@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def umask(request) -> int:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def check_tree(folder: Path, umask: int) -> None:
    """``folder`` and every folder under it 0o777 & ~umask, every file 0o666 & ~umask."""
    assert mode(folder) == 0o777 & ~umask, f"{folder}: {oct(mode(folder))}"
    found = list(folder.rglob("*"))
    assert found, f"{folder} is empty"
    for path in found:
        if path.is_symlink():
            continue
        expected = 0o777 & ~umask if path.is_dir() else 0o666 & ~umask
        assert mode(path) == expected, f"{path}: {oct(mode(path))}, expected {oct(expected)}"
    assert not [p for p in folder.parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]


def test_report_folder(umask, lora_adapter, tmp_path):
    report = spectra.analyze(lora_adapter.path, layers=[0])
    out = report.save(tmp_path / "report")
    check_tree(out, umask)
    report.save(out, force=True)  # a replaced report too
    check_tree(out, umask)


def test_comparison_folder(umask, lora_adapter, tmp_path):
    comparison = spectra.compare([lora_adapter.path, lora_adapter.path], ["a", "b"], layers=[0])
    comparison.save(tmp_path / "comparison")
    check_tree(tmp_path / "comparison", umask)


def test_sweep_folder_and_cache_entries(umask, lora_adapter, tmp_path):
    run = tmp_path / "run"
    for step in (10, 20):
        shutil.copytree(lora_adapter.path, run / f"checkpoint-{step}")
    cache = tmp_path / "cache"
    result = spectra.run_sweep(run, layers=[0], cache=cache)
    assert not any(result.cached)
    result.save(tmp_path / "sweep")
    check_tree(tmp_path / "sweep", umask)
    check_tree(cache, umask)  # reports/<xx>/<key>/ entries and file-hashes.json
    assert len(list((cache / "reports").glob("*/*"))) == 1  # both copies: one content key


def test_demo_folder(umask, tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(cli, ["demo", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    check_tree(out, umask)


def test_converted_multilora_folder(umask, tmp_path):
    from spectra.analysis.convert import write_multilora
    from spectra.examples.demo import DEMO_LORA_ALPHA, write_demo_checkpoints

    paths = write_demo_checkpoints(tmp_path / "checkpoints")
    check_tree(tmp_path / "checkpoints", umask)  # the demo's models and adapter, as written
    checkpoint = spectra.load(paths["multilora"], format="multilora", lora_alpha=DEMO_LORA_ALPHA)
    check_tree(write_multilora(checkpoint, tmp_path / "converted"), umask)
