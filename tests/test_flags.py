"""Health flags (issue 19, item 4): each flag fires on a planted spectrum built for it and
stays quiet on its near misses; thresholds checked with numpy's own sums, not spectra's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from spectra_cli.main import cli

import spectra
from spectra.analysis.stream import _row
from spectra.delta import Dense, Factored, LayerDelta
from spectra.flags import CEILING_SHARE, SPIKE_RATIO, SPIKE_SHARE
from spectra.svd import singular_values

from .conftest import make_peft_adapter


def planted(sigma: list[float], d_out: int = 64, d_in: int = 48, seed: int = 0) -> Factored:
    """ΔW = U diag(σ) Vᵀ with random orthonormal U, V, held as B = U diag(σ), A = Vᵀ."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((d_out, len(sigma))))
    v, _ = np.linalg.qr(rng.standard_normal((d_in, len(sigma))))
    return Factored(torch.from_numpy(u * np.asarray(sigma)), torch.from_numpy(v.T.copy()), 1.0)


def flags_of(update, dtype=torch.float32, weight_rms=None) -> set[str]:
    delta = LayerDelta(0, "v", "m", update, dtype, weight_rms=weight_rms)
    sigma = singular_values(delta)
    rank = update.rank if isinstance(update, Factored) else None
    return set((_row(delta, sigma, "exact", rank)["flags"] or "").split())


def shares(sigma: list[float]) -> tuple[float, float]:
    s = np.asarray(sigma, dtype=np.float64)
    return s[0] / s[1], s[0] ** 2 / np.sum(s**2)


def test_a_rank_one_update_in_all_but_name_is_a_spike():
    sigma = [10.0, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.01]
    ratio, top = shares(sigma)
    assert ratio >= SPIKE_RATIO and top >= SPIKE_SHARE  # the planted case meets both tests
    assert "spike" in flags_of(planted(sigma))


def test_a_steep_spread_spectrum_and_a_long_tail_are_not_spikes():
    lora_like = [0.7**i for i in range(8)]  # σ₁ ≫ σ₈, but σ₁/σ₂ = 1.4
    assert "spike" not in flags_of(planted(lora_like))
    tail = [10.0] + [1.0] * 40  # σ₁/σ₂ = 10, yet σ₁ holds only 100/140 of the energy
    ratio, top = shares(tail)
    assert ratio >= SPIKE_RATIO and top < SPIKE_SHARE
    assert "spike" not in flags_of(planted(tail, d_out=96, d_in=80))


def test_a_flat_update_over_all_r_directions_is_at_the_ceiling():
    assert "ceiling" in flags_of(planted([1.0] * 8))
    steep = [0.5**i for i in range(8)]
    p = np.asarray(steep) / np.sum(steep)
    assert np.exp(-np.sum(p * np.log(p))) < CEILING_SHARE * 8  # effective rank by hand
    assert "ceiling" not in flags_of(planted(steep))
    dense = Dense(planted([1.0] * 8).to_dense())  # a full fine-tune has no r: no ceiling
    assert "ceiling" not in flags_of(dense)


def test_zero_and_rounding_noise():
    assert flags_of(planted([0.0] * 4)) == {"zero"}
    rng = np.random.default_rng(1)
    weight_rms = 0.05
    noise = rng.standard_normal((64, 48)) * weight_rms * 2.0**-9  # bf16 rounding-sized ΔW
    assert "noise" in flags_of(Dense(torch.from_numpy(noise)), torch.bfloat16, weight_rms)
    clear = planted([1.0, 0.5]).to_dense()  # far above the bf16 floor
    assert "noise" not in flags_of(Dense(clear), torch.bfloat16, weight_rms)


def test_analyze_prints_flags_under_the_table(tmp_path, minilm_dir):
    adapter = make_peft_adapter(tmp_path / "a", minilm_dir, r=4, target_modules=["value"])
    result = CliRunner().invoke(cli, ["analyze", str(adapter.path), "--modules", "v"])
    assert result.exit_code == 0, result.output
    # random r=4 factors give a near-flat σ over the 4 directions: the ceiling flag
    assert "ceiling: effective rank ≥ 90% of the adapter rank r" in result.output
    assert "flags" in result.output.splitlines()[1]  # a column of the table header


@pytest.mark.parametrize("flag", ["spike", "ceiling", "noise", "zero"])
def test_every_flag_is_documented(flag):
    from spectra import flags

    assert f"``{flag}``" in flags.__doc__


def test_flags_survive_a_save_and_load(tmp_path, minilm_dir):
    adapter = make_peft_adapter(tmp_path / "a", minilm_dir, r=8, target_modules=["value"])
    report = spectra.analyze(adapter.path, modules="v")
    report.rows[0]["flags"] = None  # an unflagged row beside flagged ones
    report.save(tmp_path / "r")
    loaded = spectra.Report.load(tmp_path / "r")
    assert [row["flags"] for row in loaded.rows] == [row["flags"] for row in report.rows]
