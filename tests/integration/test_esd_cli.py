"""``analyze --esd --intruders`` on real checkpoints, against numpy, peft and the files themselves.

W0 and W0 + ΔW are read independently of spectra: MiniLM's safetensors for
the base, the fine-tune's safetensors for W_tuned, peft's own merge for a
LoRA's ΔW. α is checked against the numpy fit of ``tests/unit/test_esd.py``
(WeightWatcher's definition; that file checks it against WeightWatcher
itself), intruders against numpy's SVD and against peft's
``reduce_intruder_dimension``, which counts them on its way to removing them.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.numpy import load_file
from safetensors.torch import load_file as load_torch
from safetensors.torch import save_file
from spectra_cli.main import cli

import spectra
from spectra import Report
from spectra.errors import MissingBaseError
from tests.helpers.adapters import random_peft_model, save_peft_adapter
from tests.helpers.models import HF_MODULES, save_tiny_llama
from tests.unit.test_esd import np_power_law
from tests.unit.test_subspace import np_intruders

ESD = ("alpha_base", "xmin_base", "ks_base", "alpha_tuned", "xmin_tuned", "ks_tuned")


def minilm_weights(folder) -> dict[tuple[int, str], np.ndarray]:
    weights = load_file(str(folder / "model.safetensors"))
    modules = {"k": "key", "v": "value"}
    return {
        (layer, role): weights[
            next(n for n in weights if n.endswith(f"layer.{layer}.attention.self.{module}.weight"))
        ].astype(np.float64)
        for layer in (0, 1)
        for role, module in modules.items()
    }


def assert_matches_numpy(row, W0: np.ndarray, tuned: np.ndarray) -> None:
    for side, W in (("base", W0), ("tuned", tuned)):
        alpha, xmin, distance, _ = np_power_law(W)
        assert row[f"alpha_{side}"] == pytest.approx(alpha, rel=1e-6), (row.key, side)
        assert row[f"xmin_{side}"] == pytest.approx(xmin, rel=1e-6), (row.key, side)
        assert row[f"ks_{side}"] == pytest.approx(distance, abs=1e-6), (row.key, side)
    assert row["intruder_dimensions"] == np_intruders(W0, tuned - W0), row.key


@pytest.fixture(scope="module")
def ft_run(tmp_path_factory, finetunes):
    """``analyze --esd --intruders --out`` of a MiniLM full fine-tune, layers 0-1."""
    ft = finetunes("single")
    out = tmp_path_factory.mktemp("esd") / "report"
    result = CliRunner().invoke(
        cli,
        ["analyze", str(ft.path), "--base", str(ft.base), "--layers", "0-1", "--esd",
         "--intruders", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return ft, out, result


def test_a_full_finetune_gets_the_alpha_of_w0_and_w_tuned_and_its_intruders(ft_run):
    ft, out, result = ft_run
    report = Report.load(out)
    base, tuned = minilm_weights(ft.base), minilm_weights(ft.path)
    assert [row.key for row in report.rows] == ["L0.k", "L0.v", "L1.k", "L1.v"]
    for row in report.rows:
        assert_matches_numpy(row, base[row.layer, row.role], tuned[row.layer, row.role])
    columns = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert columns[-8:] == [*ESD, "intruder_dimensions", "health"]
    meta = json.loads((out / "report.json").read_text())
    assert ["intruder_dimensions", "int"] in meta["columns"]
    assert meta["weights"]["intruders"] == {"top": 10, "eps": 0.5}
    assert (out / "esd_alpha.png").stat().st_size > 10_000
    table = result.stdout[result.stdout.index("the weights W0 and W0+ΔW") :].splitlines()
    assert table[1].split()[:4] == ["layer", "role", "α", "W0"]
    first = report.rows[0]
    assert table[3].split()[:3] == ["0", "k", f"{first['alpha_base']:.4g}"]


def test_spectra_plot_redraws_the_alpha_figure_and_keeps_it_without_force(ft_run, tmp_path):
    _, out, _ = ft_run
    figures = tmp_path / "figures"
    result = CliRunner().invoke(cli, ["plot", str(out), "--out", str(figures), "--format", "svg"])
    assert result.exit_code == 0, result.output
    svg = (figures / "esd_alpha.svg").read_text()
    assert "esd_alpha.svg" in result.output and len(svg) > 10_000
    again = CliRunner().invoke(cli, ["plot", str(out), "--out", str(figures), "--format", "svg"])
    assert again.exit_code == 1 and "already there" in again.output
    assert (figures / "esd_alpha.svg").read_text() == svg


@pytest.fixture(scope="module")
def small_lora(tmp_path_factory, minilm_dir):
    """A peft LoRA on k and v of MiniLM's layers 0-1, in memory and saved (with peft's merge)."""
    from peft import LoraConfig

    config = LoraConfig(
        r=8, lora_alpha=16, target_modules=["key", "value"], layers_to_transform=[0, 1]
    )
    model = random_peft_model(minilm_dir, config, seed=5)
    return model, save_peft_adapter(model, tmp_path_factory.mktemp("lora01"), minilm_dir)


def test_a_lora_adapter_matches_peft_merge_and_peft_own_intruder_count(small_lora, minilm_dir):
    from peft.tuners.lora.intruders import reduce_intruder_dimension

    model, adapter = small_lora
    report = spectra.analyze(adapter.path, base=minilm_dir, esd=True, intruders=True)
    base = minilm_weights(minilm_dir)
    assert [row.key for row in report.rows] == ["L0.k", "L0.v", "L1.k", "L1.v"]
    for row in report.rows:
        W0 = base[row.layer, row.role]
        assert_matches_numpy(row, W0, W0 + adapter.reference[row.layer, row.role])
    # peft counts the intruders of every LoRA layer (in float32) before it mitigates them
    logged: list[str] = []
    reduce_intruder_dimension(model, logging_sink=logged.append)
    peft_counts = {}
    for line in logged:
        if ".attention.self." in line:
            name, _, said = line.partition(": ")
            layer = int(name.split(".layer.")[1].split(".")[0])
            role = {"key": "k", "value": "v"}[name.rsplit(".", 1)[1]]
            peft_counts[layer, role] = 0 if said == "No intruders" else int(said.split()[-1])
    assert {(row.layer, row.role): row["intruder_dimensions"] for row in report.rows} == peft_counts
    assert any(row["intruder_dimensions"] > 0 for row in report.rows)  # the check can fail


def test_the_config_base_is_used_and_no_base_is_refused_naming_the_argument(lora_adapter, tmp_path):
    # peft wrote MiniLM's local folder as base_model_name_or_path: W0 is read from there
    report = spectra.analyze(lora_adapter.path, layers=[0], modules="v", esd=True)
    assert report.rows[0]["alpha_tuned"] is not None
    assert "intruder_dimensions" not in report.rows[0]
    assert any("base_model_name_or_path" in warning for warning in report.warnings)
    orphan = tmp_path / "orphan"
    shutil.copytree(lora_adapter.path, orphan)
    config = json.loads((orphan / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "nobody/no-such-model"
    (orphan / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(MissingBaseError, match=r"esd=True needs the base .* base=DIR"):
        spectra.analyze(orphan, esd=True)
    result = CliRunner().invoke(cli, ["analyze", str(orphan), "--intruders"])
    assert result.exit_code == 1
    assert "--intruders needs the base" in result.output and "--base DIR" in result.output


def test_a_spectrum_too_short_for_the_fit_leaves_alpha_missing_with_a_warning(tmp_path):
    """A tiny LLaMA whose layer-0 k is rank 5 in the base: 5 eigenvalues, fewer than 8."""
    base = save_tiny_llama(tmp_path / "base")
    tuned = tmp_path / "tuned"
    shutil.copytree(base, tuned)
    weights = load_torch(str(base / "model.safetensors"))
    name = f"model.layers.0.{HF_MODULES['k']}.weight"
    generator = torch.Generator().manual_seed(3)
    low_rank = torch.randn(16, 5, generator=generator) @ torch.randn(5, 64, generator=generator)
    weights[name] = low_rank.contiguous()
    save_file(weights, str(base / "model.safetensors"), metadata={"format": "pt"})
    update = 0.05 * torch.randn(16, 64, generator=generator)
    weights[name] = (low_rank + update).contiguous()
    save_file(weights, str(tuned / "model.safetensors"), metadata={"format": "pt"})

    report = spectra.analyze(tuned, base=base, modules="k", layers=[0], esd=True)
    row = report.rows[0]
    assert row["alpha_base"] is None and row["xmin_base"] is None and row["ks_base"] is None
    assert (
        "L0.k: alpha_base left missing: 5 eigenvalues above 1e-05; a power-law fit needs at "
        "least 8" in report.warnings
    )
    W0, W1 = low_rank.double().numpy(), weights[name].double().numpy()
    alpha, xmin, _, _ = np_power_law(W1)  # 16 eigenvalues: the small-sample fit
    assert row["alpha_tuned"] == pytest.approx(alpha, rel=1e-6)
    assert row["xmin_tuned"] == pytest.approx(xmin, rel=1e-6)
    assert np.sum(np.linalg.svd(W0, compute_uv=False) ** 2 > 1e-5) == 5
