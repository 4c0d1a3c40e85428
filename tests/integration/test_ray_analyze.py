"""One checkpoint's modules as Ray tasks (``--ray``): the results equal a local run's, bit for bit.

One local Ray cluster (2 CPUs) serves every test here. The reference of each
comparison is the same call run here, without Ray (the serial stream), and
for one module numpy's float64 SVD of the ΔW that was planted.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.numpy import load_file
from spectra_cli.main import cli

import spectra
from spectra import Report
from spectra.errors import SpectraError
from tests.helpers.checks import reference_sigma

pytestmark = pytest.mark.ray
SUMMARY = "summary.csv"


@pytest.fixture(scope="module")
def cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def finetune(finetunes):
    return finetunes("single")


def assert_same_report(on_ray, serial):
    assert on_ray.rows == serial.rows  # every metric, in the same row order
    assert list(on_ray.spectra) == list(serial.spectra)
    for key, sigma in serial.spectra.items():
        assert on_ray.spectra[key].dtype == np.float64
        assert np.array_equal(on_ray.spectra[key], sigma), key
    for field in ("warnings", "not_analysed", "not_selected", "skipped", "layers", "modules"):
        assert on_ray.meta[field] == serial.meta[field], field


def test_full_finetune_on_ray_equals_serial(cluster, finetune, tmp_path):
    serial = spectra.analyze(finetune.path, base=finetune.base, layers="0-2")
    seen = []
    on_ray = spectra.analyze(
        finetune.path, base=finetune.base, layers="0-2", ray=True,
        progress=lambda done, total, label: seen.append((done, total, label)),
    )  # fmt: skip
    assert_same_report(on_ray, serial)
    assert [done for done, _, _ in seen] == list(range(1, 7)) and {t for _, t, _ in seen} == {6}
    assert {label for _, _, label in seen} == set(serial.spectra)
    planted = reference_sigma(finetune.planted[(1, "v")])  # numpy's SVD of the planted ΔW
    top = on_ray.spectra["L1.v"][: len(planted)]
    np.testing.assert_allclose(top[planted > 1e-3], planted[planted > 1e-3], rtol=1e-3)
    executor = on_ray.meta["executor"]
    assert executor["name"] == "ray" and executor["cpus"] == 2 and executor["nodes"] == 1
    assert executor["tasks"] == 6 and ":" in executor["address"]
    assert "executor" not in serial.meta
    on_ray.save(tmp_path / "report")
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["executor"]["name"] == "ray"


def test_lora_on_ray_equals_serial(cluster, lora_adapter):
    serial = spectra.analyze(lora_adapter.path, modules="all")
    on_ray = spectra.analyze(lora_adapter.path, modules="all", ray=True)
    assert_same_report(on_ray, serial)
    assert {row["kind"] for row in on_ray.rows} == {"factored"}
    assert on_ray.meta["executor"]["tasks"] == len(on_ray.rows)


def test_cli_analyze_and_compare_on_ray(cluster, finetune, lora_adapter, tmp_path):
    runner = CliRunner()
    args = [str(finetune.path), "--base", str(finetune.base), "--layers", "4", "--quiet"]
    result = runner.invoke(cli, ["analyze", *args, "--ray", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "r" / "report.json").read_text())
    assert meta["executor"]["name"] == "ray" and meta["executor"]["cpus"] == 2
    sources = [str(finetune.path), str(lora_adapter.path)]
    serial = spectra.compare(sources, ["FT", "LoRA"], base=finetune.base, layers="4,5")
    on_ray = spectra.compare(sources, ["FT", "LoRA"], base=finetune.base, layers="4,5", ray=True)
    for ray_report, serial_report in zip(on_ray.reports, serial.reports, strict=True):
        assert_same_report(ray_report, serial_report)
    assert on_ray.summary() == serial.summary()
    result = runner.invoke(
        cli, ["compare", *sources, "--label", "FT", "--label", "LoRA", "--base",
              str(finetune.base), "--layers", "5", "--ray", "--quiet", "--out",
              str(tmp_path / "cmp")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "cmp" / "reports" / "LoRA" / "report.json").read_text())
    assert meta["executor"]["name"] == "ray"


def test_extract_on_ray_equals_serial(cluster, finetune, tmp_path):
    kwargs = {"modules": "k,v", "layers": "0,3"}
    serial = spectra.extract(finetune.path, finetune.base, tmp_path / "here", rank=4, **kwargs)
    result = CliRunner().invoke(
        cli, ["extract", str(finetune.path), "--base", str(finetune.base), "--rank", "4",
              "--modules", "k,v", "--layers", "0,3", "--ray", "--quiet",
              "--out", str(tmp_path / "ray")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ray" / "extract.csv").read_text() == serial.csv()
    here = load_file(str(tmp_path / "here" / "adapter_model.safetensors"))
    there = load_file(str(tmp_path / "ray" / "adapter_model.safetensors"))
    assert sorted(here) == sorted(there) and len(here) == 8
    assert all(np.array_equal(here[name], there[name]) for name in here)
    executor = json.loads((tmp_path / "ray" / "extract.json").read_text())["executor"]
    assert executor["name"] == "ray" and executor["nodes"] == 1 and executor["tasks"] == 4
    assert serial.executor is None and not (tmp_path / "here" / "extract.json").exists()


def test_what_needs_delta_on_the_driver_is_refused(cluster, finetune):
    with pytest.raises(SpectraError, match=r"ray=True runs σ .* esd=True needs each ΔW"):
        spectra.analyze(finetune.path, base=finetune.base, esd=True, ray=True)
    with pytest.raises(SpectraError, match="subspace=True or interference=True"):
        spectra.compare([finetune.path], base=finetune.base, subspace=True, ray=True)


def test_the_largest_modules_are_submitted_first(finetune):
    from spectra.analysis.costs import flop_cost
    from spectra.analysis.distributed import predicted_cost

    # the plan's model in flops: the Gram's lower triangle n²k and eigvalsh's 4n³/3; two QRs
    # (2mr² − 2r³/3 each), the r×r core product 2r³ and its SVD (4r³ − 4r³/3)
    assert flop_cost((4096, 1024), "dense") == 1024**2 * 4096 + 4 * 1024**3 / 3
    qr = 2 * 4096 * 64 - 2 * 512 / 3 + 2 * 1024 * 64 - 2 * 512 / 3
    assert flop_cost((4096, 1024), "factored", 8) == pytest.approx(qr + 2 * 512 + 8 * 512 / 3)
    checkpoint = spectra.load(finetune.path, base=finetune.base)
    # MiniLM's MLP (1536×384) costs more than its 384×384 attention projections
    assert predicted_cost(checkpoint, (0, "up")) > predicted_cost(checkpoint, (0, "k"))
    # --estimate orders by the estimate's products, with its own settings
    from spectra.analysis.estimated import EstimateSettings

    default = predicted_cost(checkpoint, (0, "up"), "estimate")
    fewer = predicted_cost(checkpoint, (0, "up"), "estimate", EstimateSettings(steps=10))
    assert fewer < default  # (at 384 wide the estimate costs more than the Gram path)


def test_nonfinite_weights_on_ray_as_in_a_local_run(cluster, finetune, tmp_path):
    import shutil

    from safetensors.numpy import save_file

    broken = tmp_path / "nan-ft"
    shutil.copytree(finetune.path, broken)
    tensors = load_file(str(broken / "model.safetensors"))
    name = next(n for n in tensors if "layer.2." in n and "value.weight" in n)
    tensors[name][0, 0] = np.nan
    save_file(tensors, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(spectra.NonFiniteError) as here:
        spectra.analyze(broken, base=finetune.base, layers="1-2")
    with pytest.raises(spectra.NonFiniteError) as there:
        spectra.analyze(broken, base=finetune.base, layers="1-2", ray=True)
    assert str(there.value) == str(here.value) and "layer.2.attention.self.value" in str(here.value)
    kwargs = {"base": finetune.base, "layers": "1-2", "skip_nonfinite": True}
    serial = spectra.analyze(broken, **kwargs)
    on_ray = spectra.analyze(broken, ray=True, **kwargs)
    assert on_ray.meta["skipped"] == ["L2.v"]
    assert_same_report(on_ray, serial)


def test_estimate_on_ray_equals_serial_and_numpy(cluster, finetune, lora_adapter, tmp_path):
    from spectra.analysis.estimated import EstimateSettings

    settings = EstimateSettings(probes=8, steps=12, top=6)
    kwargs = {"base": finetune.base, "layers": "1-2", "estimate": settings}
    serial = spectra.analyze(finetune.path, **kwargs)
    on_ray = spectra.analyze(finetune.path, ray=True, **kwargs)
    assert_same_report(on_ray, serial)  # every estimate and error, bit for bit
    assert on_ray.meta["estimate"] == serial.meta["estimate"]
    assert on_ray.meta["estimate"]["rows"] == ["L1.k", "L1.v", "L2.k", "L2.v"]
    assert on_ray.meta["executor"]["threads_per_task"] == torch.get_num_threads()
    tuned = load_file(str(finetune.path / "model.safetensors"))
    base = load_file(str(finetune.base / "model.safetensors"))
    name = next(n for n in tuned if n.endswith("layer.2.attention.self.value.weight"))
    sigma = reference_sigma(tuned[name].astype(np.float64) - base[name].astype(np.float64))
    row = next(r for r in on_ray.rows if (r["layer"], r["role"]) == (2, "v"))
    assert row["estimated"] is True
    assert row["stable_rank"] == pytest.approx((sigma**2).sum() / sigma[0] ** 2, rel=1e-9)
    p = sigma / sigma.sum()  # numpy's effective rank, against the estimate's stated error
    effective_rank = np.exp(-(p[p > 0] * np.log(p[p > 0])).sum())
    assert abs(row["effective_rank"] - effective_rank) <= 3 * row["effective_rank_err"] + 1e-9
    assert abs(row["effective_rank"] / effective_rank - 1) < 0.05
    sources = [str(finetune.path), str(lora_adapter.path)]
    result = CliRunner().invoke(
        cli, ["compare", *sources, "--label", "FT", "--label", "LoRA", "--base",
              str(finetune.base), "--layers", "5", "--estimate", "--ray", "--quiet",
              "--out", str(tmp_path / "cmp")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    reports = tmp_path / "cmp" / "reports"
    ft, lora = (Report.load(reports / label) for label in ("FT", "LoRA"))
    assert {row["estimated"] for row in ft.rows} == {True}
    assert {row["estimated"] for row in lora.rows} == {False}  # factored ΔW stay exact
    exact = spectra.analyze(lora_adapter.path, layers="5")
    for row, expected in zip(lora.rows, exact.rows, strict=True):
        assert row["effective_rank"] == pytest.approx(expected["effective_rank"], rel=1e-12)
    assert ft.meta["executor"]["name"] == "ray" == lora.meta["executor"]["name"]
    lines = (tmp_path / "cmp" / SUMMARY).read_text().splitlines()
    summary = {(r["label"], r["role"]): r for r in csv.DictReader(lines)}
    assert summary["FT", "k"]["estimated_rows"] == "1"
    assert summary["LoRA", "k"]["estimated_rows"] == "0"
    error = float(summary["FT", "v"]["effective_rank_err"])  # one row: the mean is its error
    assert error == next(r["effective_rank_err"] for r in ft.rows if r["role"] == "v") > 0
    assert float(summary["LoRA", "v"]["effective_rank_err"]) == 0.0


def test_each_task_asks_for_its_memory_at_most_a_nodes(cluster, finetune, monkeypatch):
    import spectra.analysis.distributed as distributed

    predicted = []

    def too_much(*args, **kwargs):  # what the plan predicts, then more than any node has
        predicted.append(module_memory(*args, **kwargs))
        return 10**15

    module_memory = distributed.module_memory
    monkeypatch.setattr(distributed, "module_memory", too_much)
    report = spectra.analyze(finetune.path, base=finetune.base, layers="0", ray=True)
    assert [row["role"] for row in report.rows] == ["k", "v"]  # capped: still scheduled
    # a 384² dense ΔW: ΔW, its Gram matrix and eigvalsh's copy in float64, and the tuned
    # weight and W0 read as float32
    assert predicted == [3 * 8 * 384**2 + 2 * 4 * 384**2] * 2
