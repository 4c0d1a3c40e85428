"""Sweeps over a training run's checkpoints: discovery, numbers, cache, process pool, Ray.

The run is real PEFT LoRA adapters of the packaged MiniLM, saved as the
Hugging Face Trainer lays them out (``checkpoint-<step>/`` with an optimizer
file beside the adapter). Every number is checked against numpy's SVD of
``α/r · B @ A`` read from the saved file with safetensors, independently of
spectra.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.numpy import load_file
from spectra_cli.main import cli

import spectra
from spectra.analysis.cache import ReportCache
from spectra.errors import SpectraError
from tests.helpers.adapters import randomize_adapter
from tests.helpers.checks import reference_sigma
from tests.helpers.models import load_bert

# Sweeps over a run of real adapters, serial, on a process pool and on Ray.
pytestmark = pytest.mark.slow

STEPS = (10, 20, 100)
ALPHA, RANK = 16, 8


def save_checkpoint(model, folder: Path, seed: int) -> None:
    randomize_adapter(model, seed)
    model.save_pretrained(str(folder))
    torch.save({"state": {}}, folder / "optimizer.pt")  # what the Trainer leaves beside it


@pytest.fixture(scope="session")
def lora_run(tmp_path_factory, minilm_dir) -> Path:
    from peft import LoraConfig, get_peft_model

    run = tmp_path_factory.mktemp("run")
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=["key", "value"])
    model = get_peft_model(load_bert(minilm_dir), config)
    for step in STEPS:
        save_checkpoint(model, run / f"checkpoint-{step}", seed=step)
    (run / "runs").mkdir()  # TensorBoard logs: not a checkpoint
    return run


def expected_sigma(folder: Path, layer: int, role: str) -> np.ndarray:
    """numpy's SVD of (α/r)·B@A read straight from the adapter file."""
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    module = {"k": "key", "v": "value"}[role]
    prefix = f"base_model.model.encoder.layer.{layer}.attention.self.{module}"
    B = tensors[f"{prefix}.lora_B.weight"].astype(np.float64)
    A = tensors[f"{prefix}.lora_A.weight"].astype(np.float64)
    return reference_sigma(ALPHA / RANK * B @ A)


def check_frame(frame, run: Path) -> None:
    assert list(frame.columns[:2]) == ["step", "checkpoint"]
    assert sorted(set(frame["step"])) == list(STEPS)
    assert len(frame) == len(STEPS) * 6 * 2
    for row in frame.itertuples():
        sigma = expected_sigma(run / f"checkpoint-{row.step}", row.layer, row.role)[:RANK]
        assert row.frobenius_norm == pytest.approx(np.sqrt(np.sum(sigma**2)), rel=1e-10)
        assert row.spectral_norm == pytest.approx(sigma[0], rel=1e-10)
        assert row.stable_rank == pytest.approx(np.sum(sigma**2) / sigma[0] ** 2, rel=1e-9)


def test_find_checkpoints_orders_by_step_not_by_name(lora_run):
    found = spectra.find_checkpoints(lora_run)
    assert [c.step for c in found] == list(STEPS)  # 100 after 20
    assert all(c.path.name == f"checkpoint-{c.step}" for c in found)


def test_glob_and_trainer_state_step(tmp_path, lora_run):
    run = tmp_path / "run"
    shutil.copytree(lora_run / "checkpoint-10", run / "seed0" / "final")
    (run / "seed0" / "final" / "trainer_state.json").write_text('{"global_step": 500}')
    shutil.copytree(lora_run / "checkpoint-20", run / "seed0" / "epoch-2")
    found = spectra.find_checkpoints(run, "seed0/*")
    assert [(c.step, c.path.name) for c in found] == [(2, "epoch-2"), (500, "final")]
    with pytest.raises(SpectraError, match=r"no checkpoints found.*pattern=PATTERN"):
        spectra.find_checkpoints(run)
    (run / "seed0" / "epoch-2" / "trainer_state.json").write_text('{"global_step": 500}')
    with pytest.raises(SpectraError, match="several checkpoints share step 500"):
        spectra.find_checkpoints(run, "seed0/*")


def test_sweep_numbers_match_numpy(lora_run, tmp_path):
    result = spectra.sweep(lora_run, cache=tmp_path / "cache")
    assert isinstance(result, spectra.Sweep)  # as analyze → Report, compare → Comparison
    check_frame(result.to_pandas(), lora_run)


def test_cache_skips_unchanged_and_redoes_changed(lora_run, tmp_path, monkeypatch, minilm_dir):
    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    cache = ReportCache(tmp_path / "cache")
    first = spectra.run_sweep(run, cache=cache)
    assert first.cached == [False, False, False]

    calls = []
    import spectra.analysis.executors as executors

    real = executors.analyze_job
    def counted(job, *args):
        calls.append(job)
        return real(job, *args)

    monkeypatch.setattr(executors, "analyze_job", counted)
    again = spectra.run_sweep(run, cache=cache)
    assert again.cached == [True, True, True] and calls == []
    for before, after in zip(first.reports, again.reports, strict=True):
        assert before.rows == after.rows

    # a copy elsewhere has the same content: still a hit
    copy = tmp_path / "copy"
    shutil.copytree(run / "checkpoint-20", copy / "checkpoint-20")
    assert spectra.run_sweep(copy, cache=cache).cached == [True]

    # rewrite one checkpoint in place with new weights: only it is analysed again
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        load_bert(minilm_dir), LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=["key", "value"])
    )
    save_checkpoint(model, run / "checkpoint-20", seed=999)
    third = spectra.run_sweep(run, cache=cache)
    assert third.cached == [True, False, True]
    assert [job["path"].name for job in calls] == ["checkpoint-20"]
    check_frame(third.to_pandas(), run)

    # other analysis parameters are another key
    assert spectra.run_sweep(run, cache=cache, layers=[0]).cached == [False] * 3


def test_a_bad_selection_fails_before_any_work(lora_run, tmp_path):
    with pytest.raises(SpectraError, match="checkpoint-10: no o modules"):
        spectra.run_sweep(lora_run, modules=["o"], cache=tmp_path / "cache", workers=2)
    assert not (tmp_path / "cache" / "reports").exists()


def test_process_pool_equals_serial(lora_run):
    serial = spectra.run_sweep(lora_run, cache=False, layers=[0, 5])
    pooled = spectra.run_sweep(lora_run, cache=False, layers=[0, 5], workers=2)
    assert [r.rows for r in pooled.reports] == [r.rows for r in serial.reports]
    for a, b in zip(serial.reports, pooled.reports, strict=True):
        assert all(np.array_equal(a.spectra[k], b.spectra[k]) for k in a.spectra)


@pytest.mark.ray
def test_ray_tasks_equal_serial(lora_run):
    import ray

    serial = spectra.run_sweep(lora_run, cache=False, layers=[1, 2])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = spectra.run_sweep(lora_run, cache=False, layers=[1, 2], ray=True)
        assert ray.is_initialized()  # a Ray the caller started is left running
    finally:
        ray.shutdown()
    assert [r.rows for r in on_ray.reports] == [r.rows for r in serial.reports]
    check_frame_subset = on_ray.to_pandas()
    assert set(check_frame_subset["layer"]) == {1, 2}


def test_ray_missing_is_a_clear_error(lora_run, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(SpectraError, match=r"pip install 'spectra\[ray\]'"):
        spectra.run_sweep(lora_run, cache=False, ray=True)


def test_cli_ray_flag_takes_an_optional_address(lora_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    for extra in (["--ray"], ["--ray", "10.0.0.1:6379"]):
        args = ["sweep", str(lora_run), "--out", str(tmp_path / "o"), "--no-cache", *extra]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1, result.output
        assert "pip install 'spectra[ray]'" in result.output
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_cli_sweep_writes_table_and_figure_and_refuses_to_overwrite(lora_run, tmp_path):
    out, cache = tmp_path / "sweep", tmp_path / "cache"
    args = ["sweep", str(lora_run), "--out", str(out), "--cache", str(cache), "--layers", "0-1"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "0 from the cache" in result.output
    import pandas as pd

    frame = pd.read_csv(out / "sweep.csv")
    assert len(frame) == len(STEPS) * 2 * 2
    for row in frame.itertuples():
        sigma = expected_sigma(lora_run / f"checkpoint-{row.step}", row.layer, row.role)
        assert row.spectral_norm == pytest.approx(sigma[0], rel=1e-10)
    assert (out / "sweep.png").stat().st_size > 10_000
    refused = CliRunner().invoke(cli, args)
    assert refused.exit_code == 1 and "--force" in refused.output
    again = CliRunner().invoke(cli, [*args, "--force", "--metrics", "entropy"])
    assert again.exit_code == 0, again.output
    assert "3 from the cache" in again.output
    bad = CliRunner().invoke(cli, [*args, "--force", "--metrics", "nonsense"])
    assert bad.exit_code == 2 and "nonsense" in bad.output
    assert "effective_rank" in bad.output  # the valid names are listed


def test_a_serial_sweep_opens_each_checkpoint_once(lora_run, monkeypatch):
    import spectra.analysis.stream as stream
    import spectra.analysis.sweeps as sweeps

    opened = []
    real = sweeps.load

    def counted(path, *args, **kwargs):
        opened.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(sweeps, "load", counted)
    monkeypatch.setattr(stream, "load", counted)
    result = spectra.run_sweep(lora_run, cache=False)
    assert len(result.reports) == 3
    assert sorted(opened) == sorted(str(found.path) for found in result.checkpoints)
