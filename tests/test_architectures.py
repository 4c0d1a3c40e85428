"""Fused and interleaved projections on tiny GPT-2, GPT-NeoX and Phi-3 models.

The models are built from a ``transformers`` config with random weights (no
packaged model exists for them); the reference slices are written here from
the layouts in FORMATS.md, independently of spectra's architecture map.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import spectra
from spectra.errors import MissingBaseError

from .conftest import randomize_adapter, reference_sigma, tiny_llama

HIDDEN, HEADS = 64, 4


def _save_pair(model, tmp_path, update):
    """Save ``model`` as the base, add ``update``, save as the fine-tune.

    Returns the folders and the float32 differences actually stored (name → float64 array).
    """
    model.save_pretrained(str(tmp_path / "base"))
    stored = {}
    with torch.no_grad():
        parameters = dict(model.named_parameters())
        for name, delta in update.items():
            before = parameters[name].detach().double().clone()
            parameters[name] += delta
            stored[name] = (parameters[name].detach().double() - before).numpy()
    model.save_pretrained(str(tmp_path / "ft"))
    return tmp_path / "ft", tmp_path / "base", stored


def _assert_role_spectra(report, expected_by_key, rtol=1e-6):
    assert {(row["layer"], row["module"]) for row in report.rows} == set(expected_by_key)
    for row in report.rows:
        expected = expected_by_key[(row["layer"], row["module"])]
        assert (row["d_out"], row["d_in"]) == expected.shape
        sigma = report.spectrum(row["layer"], row["module"])
        reference = reference_sigma(expected)
        np.testing.assert_allclose(
            sigma, reference[: len(sigma)], rtol=rtol, atol=1e-9 * reference[0]
        )


def _neox_rows(role_index: int, heads: int, head_dim: int) -> np.ndarray:
    """GPT-NeoX's query_key_value output, viewed as (heads, 3, head_dim): one role's rows."""
    return np.array(
        [
            h * 3 * head_dim + role_index * head_dim + i
            for h in range(heads)
            for i in range(head_dim)
        ]
    )


def _tiny_neox():
    from transformers import GPTNeoXConfig, GPTNeoXModel

    torch.manual_seed(0)
    config = GPTNeoXConfig(
        hidden_size=HIDDEN,
        num_attention_heads=HEADS,
        num_hidden_layers=2,
        intermediate_size=128,
        vocab_size=100,
        max_position_embeddings=32,
    )
    return GPTNeoXModel(config)


def test_gpt_neox_interleaved_query_key_value_full_finetune(tmp_path):
    model = _tiny_neox()
    update = {
        f"layers.{i}.attention.query_key_value.weight": 0.1 * torch.randn(3 * HIDDEN, HIDDEN)
        for i in range(2)
    }
    ft, base, stored = _save_pair(model, tmp_path, update)
    report = spectra.analyze(ft, base=base, modules=["q", "k", "v"], method="exact")
    head_dim = HIDDEN // HEADS
    expected = {
        (i, role): stored[f"layers.{i}.attention.query_key_value.weight"][
            _neox_rows(j, HEADS, head_dim)
        ]
        for i in range(2)
        for j, role in enumerate("qkv")
    }
    _assert_role_spectra(report, expected)


def test_gpt_neox_lora_on_query_key_value_matches_peft_merge(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    model = _tiny_neox()
    model.save_pretrained(str(tmp_path / "base"))
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["query_key_value"])
    )
    randomize_adapter(peft_model, seed=4)
    peft_model.save_pretrained(str(tmp_path / "lora"))

    from transformers import GPTNeoXModel

    reference_model = GPTNeoXModel.from_pretrained(str(tmp_path / "base"), dtype=torch.float64)
    before = {
        i: reference_model.layers[i].attention.query_key_value.weight.detach().clone()
        for i in range(2)
    }
    merged = PeftModel.from_pretrained(reference_model, str(tmp_path / "lora")).merge_and_unload()
    head_dim = HIDDEN // HEADS
    expected = {}
    for i in range(2):
        delta = (merged.layers[i].attention.query_key_value.weight.detach() - before[i]).numpy()
        for j, role in enumerate("qkv"):
            expected[(i, role)] = delta[_neox_rows(j, HEADS, head_dim)]

    # The head count comes from the base's config.json.
    report = spectra.analyze(tmp_path / "lora", base=tmp_path / "base", modules=["q", "k", "v"])
    _assert_role_spectra(report, expected)
    assert {row["kind"] for row in report.rows} == {"factored"}
    assert {row["numerical_rank"] for row in report.rows} == {4}


def test_gpt_neox_lora_without_any_base_asks_for_one(tmp_path):
    import json

    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(
        _tiny_neox(), LoraConfig(r=4, lora_alpha=8, target_modules=["query_key_value"])
    )
    randomize_adapter(peft_model, seed=4)
    peft_model.save_pretrained(str(tmp_path / "lora"))
    config_path = tmp_path / "lora" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = None
    config_path.write_text(json.dumps(config))
    with pytest.raises(MissingBaseError, match=r"attention head.*--base"):
        spectra.analyze(tmp_path / "lora")


def test_gpt2_lora_fan_in_fan_out_on_fused_c_attn_matches_peft_merge(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    model = GPT2Model(
        GPT2Config(n_layer=2, n_embd=HIDDEN, n_head=HEADS, vocab_size=100, n_positions=32)
    )
    model.save_pretrained(str(tmp_path / "base"))
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True)
    peft_model = get_peft_model(model, config)
    randomize_adapter(peft_model, seed=6)
    peft_model.save_pretrained(str(tmp_path / "lora"))

    reference_model = GPT2Model.from_pretrained(str(tmp_path / "base"), dtype=torch.float64)
    before = {i: reference_model.h[i].attn.c_attn.weight.detach().clone() for i in range(2)}
    merged = PeftModel.from_pretrained(reference_model, str(tmp_path / "lora")).merge_and_unload()
    expected = {}
    for i in range(2):
        conv1d = (merged.h[i].attn.c_attn.weight.detach() - before[i]).numpy()  # (d_in, 3E)
        for j, role in enumerate("qkv"):
            expected[(i, role)] = conv1d.T[j * HIDDEN : (j + 1) * HIDDEN]  # (E, d_in)

    report = spectra.analyze(tmp_path / "lora", modules=["q", "k", "v"])
    _assert_role_spectra(report, expected)
    checkpoint = spectra.load(tmp_path / "lora")
    for delta in checkpoint.deltas(modules=["k"]):
        reference = expected[(delta.layer, "k")]
        error = np.linalg.norm(delta.update.to_dense().numpy() - reference) / np.linalg.norm(
            reference
        )
        assert error < 1e-6


def test_phi3_qkv_proj_rows_q_then_k_then_v(tmp_path):
    from transformers import Phi3Config, Phi3Model

    torch.manual_seed(0)
    config = Phi3Config(
        hidden_size=HIDDEN,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        vocab_size=100,
        pad_token_id=0,
    )
    model = Phi3Model(config)
    kv = HIDDEN // 8 * 2
    update = {
        f"layers.{i}.self_attn.qkv_proj.weight": 0.1 * torch.randn(HIDDEN + 2 * kv, HIDDEN)
        for i in range(2)
    }
    update |= {
        f"layers.{i}.mlp.gate_up_proj.weight": 0.1 * torch.randn(256, HIDDEN) for i in range(2)
    }
    ft, base, stored = _save_pair(model, tmp_path, update)
    report = spectra.analyze(ft, base=base, modules=["q", "k", "v", "gate", "up"], method="exact")
    expected = {}
    for i in range(2):
        qkv = stored[f"layers.{i}.self_attn.qkv_proj.weight"]
        expected[(i, "q")], expected[(i, "k")], expected[(i, "v")] = (
            qkv[:HIDDEN],
            qkv[HIDDEN : HIDDEN + kv],
            qkv[HIDDEN + kv :],
        )
        gate_up = stored[f"layers.{i}.mlp.gate_up_proj.weight"]
        expected[(i, "gate")], expected[(i, "up")] = gate_up[:128], gate_up[128:]
    _assert_role_spectra(report, expected)


def test_all_modules_of_a_llama_model(tmp_path):
    torch.manual_seed(0)
    model = tiny_llama(layers=1, heads=4)
    names = {
        "q": "self_attn.q_proj",
        "k": "self_attn.k_proj",
        "v": "self_attn.v_proj",
        "o": "self_attn.o_proj",
    }
    names |= {"gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}
    parameters = dict(model.named_parameters())
    update = {
        f"layers.0.{n}.weight": 0.1 * torch.randn(parameters[f"layers.0.{n}.weight"].shape)
        for n in names.values()
    }
    ft, base, stored = _save_pair(model, tmp_path, update)
    from click.testing import CliRunner
    from spectra_cli.main import cli

    result = CliRunner().invoke(
        cli, ["analyze", str(ft), "--base", str(base), "--modules", "all", "--json"]
    )
    assert result.exit_code == 0, result.output
    import json

    rows = json.loads(result.stdout)["rows"]
    assert [row["module"] for row in rows] == ["q", "k", "v", "o", "gate", "up", "down"]
    report = spectra.analyze(ft, base=base, modules=list(names), method="exact")
    _assert_role_spectra(
        report, {(0, role): stored[f"layers.0.{name}.weight"] for role, name in names.items()}
    )


def test_llama_gqa_lora_matches_peft_merge(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import LlamaModel

    torch.manual_seed(1)
    tiny_llama().save_pretrained(str(tmp_path / "base"))
    model = LlamaModel.from_pretrained(str(tmp_path / "base"))
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=16, use_rslora=True, target_modules=["k_proj", "v_proj"])
    )
    randomize_adapter(peft_model, seed=8)
    peft_model.save_pretrained(str(tmp_path / "lora"))
    reference_model = LlamaModel.from_pretrained(str(tmp_path / "base"), dtype=torch.float64)
    names = {"k": "k_proj", "v": "v_proj"}
    before = {
        (i, role): getattr(reference_model.layers[i].self_attn, name).weight.detach().clone()
        for i in range(2)
        for role, name in names.items()
    }
    merged = PeftModel.from_pretrained(reference_model, str(tmp_path / "lora")).merge_and_unload()
    expected = {
        key: (
            getattr(merged.layers[key[0]].self_attn, names[key[1]]).weight.detach() - weight
        ).numpy()
        for key, weight in before.items()
    }
    report = spectra.analyze(tmp_path / "lora")
    _assert_role_spectra(report, expected)
    assert {(row["d_out"], row["d_in"]) for row in report.rows} == {(16, HIDDEN)}
    assert {row["scale"] for row in report.rows} == {16 / 2.0}  # α/√r


def test_unknown_architecture_lists_the_module_names_found(tmp_path):
    from safetensors.torch import save_file

    from spectra.errors import FormatError

    folder = tmp_path / "odd"
    folder.mkdir()
    save_file(
        {"trunk.mixers.0.wqkv.weight": torch.zeros(6, 4), "head.weight": torch.zeros(2, 4)},
        str(folder / "model.safetensors"),
    )
    with pytest.raises(FormatError, match=r"module names found: head, trunk.mixers.0.wqkv"):
        spectra.load(folder)
