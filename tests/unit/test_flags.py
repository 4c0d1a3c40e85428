"""Health flags (issue 19 item 4, issue 23 item 7): each flag fires on a planted spectrum built
for it and stays quiet on its near misses; thresholds are the literal numbers of the docs,
checked with numpy's own sums, and each update is measured against its own rank ceiling
(numpy's matrix rank of peft's merge for real LoHa / LoKr / DoRA / LoRA files)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from spectra_cli.main import cli

import spectra
from spectra.analysis.stream import _row
from spectra.delta import Dense, Factored, LayerDelta
from spectra.report.health import row_flags
from spectra.svd import singular_values
from tests.helpers.adapters import make_peft_adapter, random_peft_model, save_peft_adapter
from tests.helpers.checks import DTYPES, dtype_id


def planted(sigma: list[float], d_out: int = 64, d_in: int = 48, seed: int = 0) -> Factored:
    """ΔW = U diag(σ) Vᵀ with random orthonormal U, V, held as B = U diag(σ), A = Vᵀ."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((d_out, len(sigma))))
    v, _ = np.linalg.qr(rng.standard_normal((d_in, len(sigma))))
    return Factored(torch.from_numpy(u * np.asarray(sigma)), torch.from_numpy(v.T.copy()), 1.0)


def row_of(update, dtype=torch.float32, weight_rms=None) -> dict:
    delta = LayerDelta(0, "v", "m", update, dtype, weight_rms=weight_rms)
    sigma = singular_values(delta)
    rank = update.rank if isinstance(update, Factored) else None
    return _row(delta, sigma, "exact", rank)


def flags_of(update, dtype=torch.float32, weight_rms=None) -> set[str]:
    return set((row_of(update, dtype, weight_rms)["health"] or "").split())


def shares(sigma: list[float]) -> tuple[float, float]:
    s = np.asarray(sigma, dtype=np.float64)
    return s[0] / s[1], s[0] ** 2 / np.sum(s**2)


def numpy_effective_rank(sigma) -> float:
    s = np.asarray(sigma, dtype=np.float64)
    p = s[s > 0] / s.sum()
    return float(np.exp(-np.sum(p * np.log(p))))


def test_a_rank_one_update_in_all_but_name_is_a_spike():
    sigma = [10.0, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.01]
    ratio, top = shares(sigma)
    assert ratio >= 10 and top >= 0.9  # the planted case meets both tests
    assert "spike" in flags_of(planted(sigma))


def test_the_spike_ratio_is_ten():
    # σ₁/σ₂ either side of 10, the top direction holding ≥ 99 % of ‖ΔW‖_F² in both
    assert shares([10.01, 1.0])[1] > 0.99 and shares([9.99, 1.0])[1] > 0.99
    assert "spike" in flags_of(planted([10.01, 1.0]))
    assert "spike" not in flags_of(planted([9.99, 1.0]))


def test_the_spike_share_is_ninety_percent():
    # σ₁/σ₂ = 10.01 in both; the top direction holds 90.1 % or 89.3 % of ‖ΔW‖_F²
    holds, misses = [10.0] + [0.999] * 11, [10.0] + [0.999] * 12
    assert shares(holds) == pytest.approx((10.010, 0.9011), abs=1e-4)
    assert shares(misses) == pytest.approx((10.010, 0.8930), abs=1e-4)
    assert "spike" in flags_of(planted(holds))
    assert "spike" not in flags_of(planted(misses))


def test_a_steep_spread_spectrum_and_a_long_tail_are_not_spikes():
    lora_like = [0.7**i for i in range(8)]  # σ₁ ≫ σ₈, but σ₁/σ₂ = 1.4
    assert "spike" not in flags_of(planted(lora_like))
    tail = [10.0] + [1.0] * 40  # σ₁/σ₂ = 10, yet σ₁ holds only 100/140 of the energy
    ratio, top = shares(tail)
    assert ratio >= 10 and top < 0.9
    assert "spike" not in flags_of(planted(tail, d_out=96, d_in=80))


def test_the_ceiling_is_ninety_percent_of_the_updates_own_rank():
    # r = 8: effective rank either side of 0.9 · 8 = 7.2, by numpy
    above, below = [1.0] * 7 + [0.08], [1.0] * 7 + [0.02]
    assert numpy_effective_rank(above) > 7.2 > numpy_effective_rank(below)
    assert "ceiling" in flags_of(planted(above))
    assert "ceiling" not in flags_of(planted(below))
    assert row_of(planted(above))["rank_ceiling"] == 8


def test_a_dense_update_is_measured_against_min_d_out_d_in():
    flat8 = Dense(planted([1.0] * 8).to_dense())  # 64×48, flat over 8 of its 48 directions
    row = row_of(flat8)
    assert row["rank_ceiling"] == 48 and row["adapter_rank"] is None
    assert numpy_effective_rank([1.0] * 8) == pytest.approx(8) and 8 < 0.9 * 48
    assert "ceiling" not in (row["health"] or "")
    full = Dense(planted([1.0] * 48).to_dense())  # flat over every direction it has
    assert "ceiling" in flags_of(full)
    # a dense adapter update (DoRA) with its r passed as the adapter rank: still min(d)
    delta = LayerDelta(0, "v", "m", flat8, torch.float32)
    dora_like = _row(delta, singular_values(delta), "exact", 4)
    assert dora_like["adapter_rank"] == 4 and dora_like["rank_ceiling"] == 48
    assert "ceiling" not in (dora_like["health"] or "")


def test_a_dense_update_with_a_rank_bound_is_measured_against_it():
    flat8 = planted([1.0] * 8).to_dense()
    assert flags_of(Dense(flat8, rank_bound=8)) == {"ceiling"}
    assert row_of(Dense(flat8, rank_bound=500))["rank_ceiling"] == 48  # capped by min(d)


def test_a_rank_one_update_never_fills_a_ceiling_it_cannot_miss():
    # effective rank 1 ≥ 0.9 · 1 for any rank-1 update: the test would measure nothing
    assert "ceiling" not in flags_of(planted([3.0]))
    assert "ceiling" in flags_of(planted([3.0, 2.9]))  # c = 2 can be missed: measured


def test_spike_and_ceiling_never_hold_at_once():
    # A spike with a long flat tail over c = 30 000 directions: both tests pass by numpy
    n = 30_000
    sigma = np.full(n, 1.0 / (3.0 * np.sqrt(n - 1)) * 0.99)
    sigma[0] = 1.0
    ratio, top = shares(sigma)
    effective = numpy_effective_rank(sigma)
    assert ratio >= 10 and top >= 0.9 and effective >= 0.9 * n
    row = {
        "spectral_norm": 1.0,
        "top_share@1": top,
        "effective_rank": effective,
        "rank_ceiling": n,
        "d_out": n,
        "d_in": n,
        "noise_floor": None,
        "share_above_floor": 1.0,
    }
    assert row_flags(row, sigma[:2].tolist()) == "spike"


def test_an_even_spread_at_the_noise_floor_is_noise_not_ceiling():
    row = {
        "spectral_norm": 1.0,
        "top_share@1": 1 / 48,
        "effective_rank": 48.0,  # flat over all 48 directions …
        "rank_ceiling": 48,
        "d_out": 64,
        "d_in": 48,
        "noise_floor": 1.0,
        "share_above_floor": 0.3,  # … but only 30 % of Σσ above the rounding floor
    }
    assert row_flags(row, [1.0, 1.0]) == "noise"
    assert row_flags(dict(row, share_above_floor=0.6), [1.0, 1.0]) == "ceiling"


def test_rows_of_older_reports_fall_back_to_r_or_min_d():
    old = {"spectral_norm": 1.0, "top_share@1": 0.25, "effective_rank": 3.9, "d_out": 64}
    factored = dict(old, d_in=48, kind="factored", adapter_rank=4)
    assert row_flags(factored, [1.0, 1.0]) == "ceiling"
    assert row_flags(dict(factored, kind="dense"), [1.0, 1.0]) is None  # DoRA: min(d) = 48


def test_zero_and_rounding_noise():
    assert flags_of(planted([0.0] * 4)) == {"zero"}
    rng = np.random.default_rng(1)
    weight_rms = 0.05
    noise = rng.standard_normal((64, 48)) * weight_rms * 2.0**-9  # bf16 rounding-sized ΔW
    assert "noise" in flags_of(Dense(torch.from_numpy(noise)), torch.bfloat16, weight_rms)
    clear = planted([1.0, 0.5]).to_dense()  # far above the bf16 floor
    assert "noise" not in flags_of(Dense(clear), torch.bfloat16, weight_rms)


def _peft_configs():
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    common = {"target_modules": ["value"], "layers_to_transform": [0, 1]}
    return {
        "lora": LoraConfig(r=4, lora_alpha=8, **common),
        "dora": LoraConfig(r=4, lora_alpha=8, use_dora=True, **common),
        "loha": LoHaConfig(r=4, alpha=8, **common),
        "lokr": LoKrConfig(r=4, alpha=6, **common),
        "lokr_both": LoKrConfig(r=2, alpha=4, decompose_both=True, **common),
    }


@pytest.fixture(scope="module")
def peft_models(minilm_dir):
    configs = _peft_configs()
    return {name: random_peft_model(minilm_dir, config, seed=3) for name, config in configs.items()}


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("variant", list(_peft_configs()))
def test_real_adapters_are_measured_against_the_rank_their_update_can_reach(
    tmp_path, minilm_dir, peft_models, variant, dtype
):
    adapter = save_peft_adapter(peft_models[variant], tmp_path / variant, minilm_dir, dtype)
    base = minilm_dir if variant == "dora" else None
    report = spectra.analyze(adapter.path, base=base, modules="v")
    assert len(report.rows) == 2
    for row in report.rows:
        delta = adapter.reference[(row["layer"], "v")]  # peft's own merge, float64
        # random factors reach their bound: LoRA r, LoHa r², LoKr min(w1)·r, DoRA min(d)
        expected = {"lora": 4, "dora": 384, "loha": 16, "lokr": 64, "lokr_both": 4}[variant]
        assert np.linalg.matrix_rank(delta) == expected
        assert row["rank_ceiling"] == expected
        # over the values ΔW has (the fast Gram path adds ~1e-8·σ₁ of noise for the others)
        effective = numpy_effective_rank(np.linalg.svd(delta, compute_uv=False)[:expected])
        assert row["effective_rank"] == pytest.approx(effective, rel=1e-5)
        assert ("ceiling" in (row["health"] or "")) == (effective >= 0.9 * expected)
        if variant == "dora":  # the old rule (≥ 90 % of r = 4) flagged every DoRA row
            assert effective >= 0.9 * 4 and "ceiling" not in (row["health"] or "")


@pytest.fixture(scope="module")
def multilora_state(minilm_dir):
    from spectra.examples.reference import MultiLoRALinear
    from tests.helpers.multilora import wrap_and_train

    model = wrap_and_train(minilm_dir, MultiLoRALinear, steps=2)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_multilora_heads_are_measured_against_their_own_rank(tmp_path, multilora_state, dtype):
    """A MultiLoRA sum of 3 rank-4 heads can reach 12; each head alone, 4 (numpy's rank)."""
    from tests.helpers.multilora import (
        ALPHA,
        HEADS,
        RANK,
        cast_state,
        multilora_delta,
        prefix_of,
    )

    path = tmp_path / "final_checkpoint.pt"
    torch.save(cast_state(multilora_state, dtype), path)
    state = torch.load(path, weights_only=True)
    for per_head in (False, True):
        report = spectra.analyze(path, lora_alpha=ALPHA, per_head=per_head, layers=[0])
        assert len(report.rows) == (2 * HEADS if per_head else 2)
        for row in report.rows:
            heads = multilora_delta(state, prefix_of(row["layer"], row["role"]), per_head=True)
            delta = heads[row["head"]] if per_head else sum(heads)
            expected = RANK if per_head else HEADS * RANK
            assert np.linalg.matrix_rank(delta) == expected == row["rank_ceiling"]
            sigma = np.linalg.svd(delta, compute_uv=False)[:expected]
            flagged = numpy_effective_rank(sigma) >= 0.9 * expected
            assert ("ceiling" in (row["health"] or "")) == flagged


def test_analyze_prints_health_under_the_table(tmp_path, minilm_dir):
    adapter = make_peft_adapter(tmp_path / "a", minilm_dir, r=4, target_modules=["value"])
    result = CliRunner().invoke(cli, ["analyze", str(adapter.path), "--modules", "v"])
    assert result.exit_code == 0, result.output
    # random r=4 factors spread σ evenly over the 4 directions they can hold: that is measured
    assert "ceiling: spread evenly to its rank ceiling (effective rank ≥ 90%" in result.output
    assert "larger r" not in result.output  # which one spectrum cannot tell
    assert result.output.splitlines()[1].split()[-1] == "health"  # the table's last column


@pytest.mark.parametrize("flag", ["spike", "ceiling", "noise", "zero"])
def test_every_flag_is_documented(flag):
    from spectra.report import health as flags

    assert f"``{flag}``" in flags.__doc__


def test_health_survives_a_save_and_load(tmp_path, minilm_dir):
    adapter = make_peft_adapter(tmp_path / "a", minilm_dir, r=8, target_modules=["value"])
    report = spectra.analyze(adapter.path, modules="v")
    report.rows[0]["health"] = None  # an unflagged row beside flagged ones
    report.save(tmp_path / "r")
    loaded = spectra.Report.load(tmp_path / "r")
    assert [row["health"] for row in loaded.rows] == [row["health"] for row in report.rows]
    assert "flags" not in loaded.columns and loaded.columns[-1] == "health"
    frame = loaded.to_pandas()
    health = frame.health  # a column, not DataFrame.flags; missing is NaN, as in every column
    assert health.isna().tolist() == [row["health"] is None for row in report.rows]
    assert health.dropna().tolist() == [r["health"] for r in report.rows if r["health"]]
