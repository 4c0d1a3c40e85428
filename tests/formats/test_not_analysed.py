"""Nothing vanishes: every tensor of a checkpoint is analysed, or listed with the reason.

Each test lists the file's tensors itself (``safetensors.safe_open`` or
``torch.load``) and checks that each belongs to an analysed module or is in
``not_analysed()`` with a reason, never both and never neither. The rebuilt
ΔW of what is analysed is checked against peft's own merge.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import save_file
from spectra_cli.main import cli

import spectra
from spectra.errors import FormatError, SelectionError
from spectra.loaders.naming.architectures import canonical_name
from tests.helpers.adapters import make_peft_adapter, random_peft_model, save_peft_adapter
from tests.helpers.checks import reference_sigma

LORA_BIAS = "bias of lora_B: adds a constant, not part of ΔW's spectrum"


def _file_tensors(path) -> list[str]:
    if path.suffix == ".safetensors":
        with safe_open(str(path), "pt") as file:
            return list(file.keys())
    return list(torch.load(path, weights_only=True))


def _assert_nothing_dropped(checkpoint, tensors: list[str]) -> dict[str, str]:
    """Each tensor is part of an analysed module xor listed with a reason; returns the list."""
    info = checkpoint.describe()
    analysed_modules = {m.name for m in info.modules}
    left_out = dict(info.not_analysed)
    assert len(left_out) == len(info.not_analysed)  # each tensor listed once
    assert set(left_out) <= set(tensors)
    for name in tensors:
        module = canonical_name(name)
        # a full fine-tune names the weight itself, an adapter the module its parts adapt
        in_module = name in analysed_modules or any(
            module.startswith(f"{m}.") for m in analysed_modules
        )
        if name in left_out:
            assert left_out[name], name  # a reason, not an empty string
        else:
            assert in_module, f"{name} is neither analysed nor listed as not analysed"
    return left_out


@pytest.mark.slow
@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_lora_bias_is_listed_and_the_weight_analysed(tmp_path, minilm_dir, safe):
    from peft import LoraConfig

    config = LoraConfig(r=4, lora_alpha=8, target_modules=["key", "value"], lora_bias=True)
    model = random_peft_model(minilm_dir, config, seed=3)
    adapter = save_peft_adapter(model, tmp_path / "bias", minilm_dir, safe_serialization=safe)
    weights = adapter.path / ("adapter_model.safetensors" if safe else "adapter_model.bin")
    tensors = _file_tensors(weights)
    biases = [name for name in tensors if name.endswith("lora_B.bias")]
    assert len(biases) == 12  # the premise: peft saved a bias per lora_B

    checkpoint = spectra.load(adapter.path)
    left_out = _assert_nothing_dropped(checkpoint, tensors)
    assert left_out == dict.fromkeys(biases, LORA_BIAS)
    for delta in checkpoint.deltas():
        expected = adapter.reference[(delta.layer, delta.role)]
        rebuilt = delta.update.to_dense().numpy()
        assert np.linalg.norm(rebuilt - expected) / np.linalg.norm(expected) < 1e-10
    report = spectra.analyze(adapter.path)
    assert len(report.rows) == 12
    assert dict(report.meta["not_analysed"]) == left_out
    assert any("12 not analysed (bias of lora_B" in w for w in report.warnings)
    # a layer that is not there is its own error: the biases do not explain it
    with pytest.raises(SelectionError) as missing:
        spectra.analyze(adapter.path, layers=[9])
    assert "layer(s) 9" in str(missing.value) and "lora_B" not in str(missing.value)
    result = CliRunner().invoke(cli, ["inspect", str(adapter.path)])
    assert result.exit_code == 0, result.output
    assert f"{LORA_BIAS} [12]" in result.output


def _two_adapters_in_one_file(adapter, folder):
    """The adapter's keys named ``default``, beside an ``other`` adapter whose B is doubled."""
    folder.mkdir()
    (folder / "adapter_config.json").write_text((adapter.path / "adapter_config.json").read_text())
    tensors = {}
    with safe_open(str(adapter.path / "adapter_model.safetensors"), "pt") as file:
        for key in file.keys():  # noqa: SIM118
            tensor = file.get_tensor(key)
            stem = key.removesuffix(".weight")
            tensors[f"{stem}.default.weight"] = tensor
            tensors[f"{stem}.other.weight"] = (2 if ".lora_B" in key else 1) * tensor
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return list(tensors)


def test_several_adapters_in_one_file_need_a_name(tmp_path, lora_adapter):
    folder = tmp_path / "two"
    tensors = _two_adapters_in_one_file(lora_adapter, folder)
    several = r"several adapters in one file \(default, other\).*adapter=NAME"
    with pytest.raises(FormatError, match=several):
        spectra.load(folder)
    with pytest.raises(FormatError, match=r"no adapter named 'third'.*default, other.*adapter="):
        spectra.load(folder, adapter="third")
    for name, factor in (("default", 1.0), ("other", 2.0)):
        checkpoint = spectra.load(folder, adapter=name)
        left_out = _assert_nothing_dropped(checkpoint, tensors)
        other = "other" if name == "default" else "default"
        assert set(left_out) == {t for t in tensors if f".{other}." in t}
        assert all(f"adapter={other!r}" in reason for reason in left_out.values())
        report = spectra.analyze(folder, adapter=name)
        for row in report.rows:
            key = (row["layer"], row["role"])
            expected = reference_sigma(factor * lora_adapter.reference[key])
            np.testing.assert_allclose(
                report.spectrum(row["layer"], row["role"]), expected[:8], rtol=1e-9
            )


def test_an_adapter_on_a_module_outside_the_blocks_is_listed(tmp_path, minilm_dir):
    """BERT's pooler.dense has no layer: listed by inspect and in the report, with the reason."""
    from peft import LoraConfig

    config = LoraConfig(r=4, lora_alpha=8, target_modules=["key", "value", "pooler.dense"])
    adapter = make_peft_adapter(tmp_path / "pooler", minilm_dir, seed=4, config=config)
    tensors = _file_tensors(adapter.path / "adapter_model.safetensors")
    checkpoint = spectra.load(adapter.path)
    left_out = _assert_nothing_dropped(checkpoint, tensors)
    assert sorted(left_out) == [
        "base_model.model.pooler.dense.lora_A.weight",
        "base_model.model.pooler.dense.lora_B.weight",
    ]
    assert all("outside the transformer blocks" in reason for reason in left_out.values())
    report = spectra.analyze(adapter.path)
    assert dict(report.meta["not_analysed"]) == left_out
    assert any("2 not analysed (outside the transformer blocks" in w for w in report.warnings)
    result = CliRunner().invoke(cli, ["inspect", str(adapter.path)])
    assert result.exit_code == 0, result.output
    assert "not analysed (2 tensors)" in result.output
    assert "pooler.dense.lora_A.weight" in result.output


def test_an_adapter_on_unmapped_modules_only_says_what_it_has(tmp_path):
    """A module the map does not know is listed, and the selection error says so."""
    prefix = "base_model.model.model.layers.{}.mixer.in_proj"
    state = {}
    for layer in range(2):
        state[f"{prefix.format(layer)}.lora_A.weight"] = torch.randn(4, 64)
        state[f"{prefix.format(layer)}.lora_B.weight"] = torch.randn(128, 4)
    state["base_model.model.model.layers.0.mlp.up_proj.lora_A.weight"] = torch.randn(4, 64)
    state["base_model.model.model.layers.0.mlp.up_proj.lora_B.weight"] = torch.randn(96, 4)
    save_file(state, str(tmp_path / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "base_model_name_or_path": None}
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    checkpoint = spectra.load(tmp_path)
    left_out = _assert_nothing_dropped(checkpoint, list(state))
    assert len(left_out) == 4 and all("no role" in reason for reason in left_out.values())
    with pytest.raises(SelectionError, match=r"has roles up.*4 not analysed \(no role"):
        spectra.analyze(tmp_path)
    report = spectra.analyze(tmp_path, modules=["up"])
    assert len(report.rows) == 1 and len(report.meta["not_analysed"]) == 4


def test_full_finetune_lists_every_other_tensor_grouped_by_reason(tmp_path, minilm_dir):
    from tests.helpers.models import make_bert_finetune

    finetune = make_bert_finetune(tmp_path / "ft", minilm_dir, "single", rank=2)
    tensors = _file_tensors(finetune.path / "model.safetensors")
    checkpoint = spectra.load(finetune.path, base=minilm_dir)
    left_out = _assert_nothing_dropped(checkpoint, tensors)
    analysed = [m.name for m in checkpoint.describe().modules]
    assert len(analysed) + len(left_out) == len(tensors)
    groups = checkpoint.describe().not_analysed_by_reason()
    assert {reason.split(":")[0] for reason in groups} == {
        "bias vector",
        "a norm's scale vector, not a matrix",
        "outside the transformer blocks (embeddings, pooler, head, …)",
    }
    assert (
        "pooler.dense.weight"
        in groups[
            "outside the transformer blocks (embeddings, pooler, head, …): no layer in the map"
        ]
    )
    result = CliRunner().invoke(cli, ["inspect", str(finetune.path)])
    assert result.exit_code == 0, result.output
    assert f"not analysed ({len(left_out)} tensors)" in result.output
    block = result.output.split(f"not analysed ({len(left_out)} tensors):")[1].split("\n\n")[0]
    listed = [line for line in block.splitlines() if line.startswith("  ")]
    assert len(listed) == len(groups)  # grouped: one line per reason, not one per tensor


def test_multihead_router_is_listed(tmp_path):
    prefix = "base_model.model.encoder.layer.0.attention.self.key"
    state = {f"{prefix}.lora_A.weight": torch.randn(4, 384)}
    state |= {f"{prefix}.lora_B{j}.weight": torch.randn(384, 4) for j in range(2)}
    state[f"{prefix}.lora_route.weight"] = torch.randn(2, 384)
    torch.save(state, tmp_path / "adapter_model.bin")
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "lora_nums": 2}
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    left_out = _assert_nothing_dropped(spectra.load(tmp_path), list(state))
    assert list(left_out) == [f"{prefix}.lora_route.weight"]
    assert "router" in left_out[f"{prefix}.lora_route.weight"]
