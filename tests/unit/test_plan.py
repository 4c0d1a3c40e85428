"""The plan before the run: calibration cached once, costs that follow the flop counts.

The costs are held against the flop counts written out by hand here (n²k for
the CPU's lower-triangle Gram, 4n³/3 for eigvalsh, 4mn² − 4n³/3 for the SVD)
and the shapes against the weights file's own headers, never against
the plan's own output.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

import spectra
from spectra.analysis import calibration as calibration_module
from spectra.analysis import plan as plan_module
from spectra.analysis.calibration import TINY, Calibration, calibrate
from spectra.analysis.costs import module_cost, schedule
from spectra.analysis.plan import plan_modules

RATES = {"gram": 2e10, "eigvalsh": 1e10, "svd": 4e9, "qr": 8e9, "thin": 2e10, "read": 5e8}


@pytest.fixture(autouse=True)
def tiny_calibration(tmp_path, monkeypatch):
    """Never the user's cache; a calibration of milliseconds (its rates mean nothing)."""
    monkeypatch.setenv("SPECTRA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(calibration_module, "SIZES", TINY)


def _cpu(jobs: int = 2) -> Calibration:
    return Calibration({"device": "cpu"}, dict(RATES), jobs=jobs, threads=1, source="cached")


@pytest.fixture
def counted(monkeypatch):
    """The number of benchmark runs ``calibrate`` makes, counted."""
    calls = []
    real = calibration_module._time

    def timed(device, operation, n):
        calls.append(operation)
        return real(device, operation, n)

    monkeypatch.setattr(calibration_module, "_time", timed)
    return calls


def test_the_calibration_is_measured_once_then_read_from_the_cache(tmp_path, counted):
    first = calibrate("cpu", folder=tmp_path, sizes=TINY)
    measured = len(counted)
    assert first.source == "measured" and measured == 6 * 2  # six timed operations, two sizes each
    files = list((tmp_path / "calibration").glob("*.json"))
    assert len(files) == 1
    written = files[0].read_text()
    second = calibrate("cpu", folder=tmp_path, sizes=TINY)
    assert len(counted) == measured  # no benchmark ran again
    assert second.source == "cached" and second.rates == first.rates
    assert files[0].read_text() == written  # nor was the file rewritten
    third = calibrate("cpu", folder=tmp_path, sizes=TINY, recalibrate=True)
    assert third.source == "measured" and len(counted) == 2 * measured


def test_a_new_machine_key_is_measured_again(tmp_path, counted, monkeypatch):
    calibrate("cpu", folder=tmp_path, sizes=TINY)
    measured = len(counted)
    key = calibration_module.calibration_key

    def other_torch(device, jobs):
        return {**key(device, jobs), "torch": "9.9.9"}

    monkeypatch.setattr(calibration_module, "calibration_key", other_torch)
    again = calibrate("cpu", folder=tmp_path, sizes=TINY)
    assert again.source == "measured" and len(counted) == 2 * measured
    assert again.key["torch"] == "9.9.9" and again.key["cpu"] and again.key["threads"] >= 1
    assert len(list((tmp_path / "calibration").glob("*.json"))) == 2


def test_a_damaged_cache_entry_is_measured_again(tmp_path, counted):
    calibrate("cpu", folder=tmp_path, sizes=TINY)
    (entry,) = (tmp_path / "calibration").glob("*.json")
    entry.write_text("{not json")
    assert calibrate("cpu", folder=tmp_path, sizes=TINY).source == "measured"


@pytest.mark.parametrize("n", [1024, 4096])
def test_the_fast_path_costs_its_gram_and_eigvalsh_flops(n):
    seconds, read, held = module_cost((n, 2 * n), "fast", _cpu(), read_bytes=4 * n * 2 * n)
    by_hand = n * n * 2 * n / RATES["gram"] + 4 / 3 * n**3 / RATES["eigvalsh"]
    assert seconds == pytest.approx(by_hand, rel=1e-12)
    assert read == pytest.approx(4 * n * 2 * n / RATES["read"], rel=1e-12)
    # ΔW and its Gram and the eigensolver's copy in float64, plus the float32 tensor read
    assert held == 8 * n * 2 * n + 2 * 8 * n * n + 4 * n * 2 * n


@pytest.mark.parametrize("path", ["fast", "exact"])
def test_dense_predictions_scale_as_n_cubed(path):
    small, _, _ = module_cost((2048, 2048), path, _cpu())
    large, _, _ = module_cost((8192, 8192), path, _cpu())
    assert large / small == pytest.approx(64.0, rel=1e-12)


def test_the_exact_path_costs_a_bidiagonalisation():
    m, n = 3000, 1000
    seconds, _, _ = module_cost((m, n), "exact", _cpu())
    assert seconds == pytest.approx((4 * m * n * n - 4 / 3 * n**3) / RATES["svd"], rel=1e-12)


def test_a_factored_update_costs_far_less_than_its_dense_product():
    factored, _, _ = module_cost((4096, 4096), "factored", _cpu(), rank=16)
    dense, _, _ = module_cost((4096, 4096), "fast", _cpu())
    r = 16
    by_hand = 2 * (2 * 4096 * r * r - 2 / 3 * r**3) / RATES["qr"]
    assert by_hand < factored < by_hand * 1.1 and factored < dense / 1000


def test_the_estimate_path_costs_products_with_probe_blocks():
    """16 probes × 31 Lanczos steps (30 Gauss nodes) × 2 products, and the Krylov blocks."""
    small, _, _ = module_cost((4096, 4096), "estimate", _cpu())
    large, _, _ = module_cost((8192, 8192), "estimate", _cpu())
    products = 2 * 4096 * 4096 * (2 * 16 * 31) / RATES["thin"]
    assert products < small < 1.5 * products
    assert 3.5 < large / small < 4.5  # n² plus a small n·K² SVD
    fast, _, _ = module_cost((8192, 8192), "fast", _cpu())
    assert large < fast / 4


def test_schedule_gives_the_largest_first_to_the_first_free_slot():
    assert schedule([5.0, 4.0, 3.0, 3.0, 3.0], 2) == 10.0  # 5+3 | 4+3+3
    assert schedule([3.0, 3.0, 2.0, 2.0, 2.0], 2) == 7.0  # 3+2+2 | 3+2
    assert schedule([2.0, 2.0], 8) == 2.0
    assert schedule([], 2) == 0.0


def test_the_wall_time_and_peak_memory_of_side_by_side_jobs():
    entries = [
        {"layer": i, "role": "q", "shape": (4096, 4096), "kind": "dense", "read_bytes": 0}
        for i in range(3)
    ]
    plan = plan_modules(entries, [_cpu(jobs=2)])
    one = 4096**3 / RATES["gram"] + 4 / 3 * 4096**3 / RATES["eigvalsh"]
    device = plan.device("cpu")
    assert device.compute_seconds == pytest.approx(3 * one)
    assert device.seconds == pytest.approx(2 * one)  # two side by side, then the third
    assert device.peak_memory == 2 * 3 * 8 * 4096 * 4096  # two jobs, each ΔW + Gram + copy
    assert plan.cluster(nodes=2) == pytest.approx(one)  # four slots for three modules


def test_a_plan_of_a_full_fine_tune_has_the_models_shapes(minilm_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    plan = spectra.plan(minilm_dir, base=minilm_dir, modules="all")
    with safe_open(minilm_dir / "model.safetensors", "pt") as weights:  # the file's own shapes
        linear = {
            name: tuple(weights.get_slice(name).get_shape())
            for name in weights.keys()  # noqa: SIM118 - safe_open is no mapping
            if ".layer." in name and name.endswith(".weight") and "LayerNorm" not in name
        }
    assert len(plan.modules) == len(linear) == 36
    assert sorted(m.shape for m in plan.modules) == sorted(linear.values())
    assert {m.path for m in plan.modules} == {"fast"}
    # float32 tensors of the tuned model and of its base
    assert all(m.read_bytes == 2 * 4 * m.shape[0] * m.shape[1] for m in plan.modules)
    text = repr(plan)
    assert "\n" not in text and "36 modules" in text and "no GPU here" in text
    document = json.loads(json.dumps(plan.to_dict()))
    assert document["devices"][0]["device"] == "cpu" and len(document["modules"]) == 36
    exact = spectra.plan(minilm_dir, base=minilm_dir, modules="all", device="cpu", method="exact")
    assert {m.path for m in exact.modules} == {"exact"}
    # the tests' calibration is timed at tiny sizes, so compare paths by their flop counts
    rates = exact.device("cpu").calibration
    by_svd = sum(  # 4kn² − 4n³/3 flops per float64 SVD, at the calibrated SVD rate
        (4 * max(m.shape) * min(m.shape) ** 2 - 4 * min(m.shape) ** 3 / 3) / rates.rates["svd"]
        for m in exact.modules
    )
    assert exact.device("cpu").compute_seconds == pytest.approx(by_svd, rel=1e-12)


def test_a_lora_adapter_plans_the_factored_path(lora_adapter):
    plan = spectra.plan(lora_adapter.path, device="cpu")
    r = lora_adapter.config["r"]
    assert {m.path for m in plan.modules} == {"factored"}
    assert {m.rank for m in plan.modules} == {r}
    assert len(plan.modules) == 2 * 6  # key and value of six layers
    assert all(m.read_bytes == (384 + 384) * r * 4 for m in plan.modules)


def test_a_gpu_is_planned_beside_the_cpu_when_torch_sees_one(minilm_dir, monkeypatch):
    gpu = Calibration({"device": "Some GPU"}, dict(RATES), jobs=1, threads=1, source="cached")

    def rates(device, recalibrate=False):
        return gpu if torch.device(device).type == "cuda" else _cpu()

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(plan_module, "calibrate", rates)
    plan = spectra.plan(minilm_dir, base=minilm_dir, modules="all")
    assert [d.device for d in plan.devices] == ["cpu", "Some GPU"]
    assert not any("no GPU" in note for note in plan.notes)
    # the GPU forms the whole Gram (2n²k), the CPU its lower triangle (n²k)
    q = next(m for m in plan.modules if m.role == "q")
    n = q.shape[0]
    assert q.seconds["Some GPU"] - q.seconds["cpu"] == pytest.approx(n**3 / RATES["gram"])


def test_a_small_estimate_costs_a_full_svd_and_at_most_n_lanczos_steps():
    """Where the Krylov space would be all of ΔW (7 blocks of 24 ≥ n), it is one SVD."""
    n = 128
    seconds, _, _ = module_cost((n, n), "estimate", _cpu())
    svd = (4 * n**3 - 4 / 3 * n**3) / RATES["svd"]
    lanczos = 2 * n * n * (2 * 16 * 31) / RATES["thin"]
    assert seconds == pytest.approx(svd + lanczos, rel=1e-12)
    tiny, _, _ = module_cost((16, 16), "estimate", _cpu())  # 16 steps, not 31
    assert tiny == pytest.approx(
        (8 / 3 * 16**3) / RATES["svd"] + 2 * 16 * 16 * 2 * 16 * 16 / RATES["thin"]
    )
