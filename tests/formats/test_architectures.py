"""Fused and interleaved projections on tiny GPT-2, GPT-NeoX and Phi-3 models.

The models are built from a ``transformers`` config with random weights (no
packaged model exists for them); the reference slices are written here from
the layouts in docs/formats.md ("Architectures"), independently of spectra's architecture map.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import spectra
from spectra.errors import MissingBaseError
from tests.helpers.adapters import randomize_adapter
from tests.helpers.checks import reference_sigma
from tests.helpers.models import phi3_config, tiny_gpt2, tiny_llama

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
    assert {(row["layer"], row["role"]) for row in report.rows} == set(expected_by_key)
    for row in report.rows:
        expected = expected_by_key[(row["layer"], row["role"])]
        assert (row["d_out"], row["d_in"]) == expected.shape
        sigma = report.spectrum(row["layer"], row["role"])
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
    with pytest.raises(MissingBaseError, match=r"attention head.*base="):
        spectra.analyze(tmp_path / "lora")


def test_gpt2_lora_fan_in_fan_out_on_fused_c_attn_matches_peft_merge(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import GPT2Model

    torch.manual_seed(0)
    model = tiny_gpt2(embed=HIDDEN, heads=HEADS)
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
    from transformers import Phi3Model

    torch.manual_seed(0)
    model = Phi3Model(phi3_config(intermediate=128, kv_heads=2))
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
    assert [row["role"] for row in rows] == ["q", "k", "v", "o", "gate", "up", "down"]
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


# ------------------------------------------------ Falcon, MPT, OPT, T5 (issue 14)


def _falcon(new_decoder_architecture: bool, multi_query: bool, kv_heads: int | None = None):
    from transformers import FalconConfig, FalconModel

    torch.manual_seed(0)
    config = FalconConfig(
        hidden_size=HIDDEN,
        num_attention_heads=HEADS,
        num_kv_heads=kv_heads,
        num_hidden_layers=2,
        vocab_size=100,
        new_decoder_architecture=new_decoder_architecture,
        multi_query=multi_query,
        bias=False,
    )
    return FalconModel(config)


def _falcon_split(attention, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """q, k, v as transformers' Falcon attention splits its fused output ``tokens``.

    transformers 4 has the split as ``_split_heads``; transformers 5 does it inside
    ``forward``, so there ``forward`` runs (ALiBi on: no rotary) with the projection's
    output replaced by ``tokens`` and an attention function that keeps what it is handed.
    """
    if hasattr(attention, "_split_heads"):
        return attention._split_heads(tokens)
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    kept = {}

    def keep(module, query, key, value, *args, **kwargs):  # each (1, heads, tokens, head_dim)
        kept.update(q=query, k=key, v=value)
        return torch.zeros_like(query.transpose(1, 2), dtype=module.dense.weight.dtype), None

    ALL_ATTENTION_FUNCTIONS.register("spectra_test_keep", keep)
    config = attention.config
    saved = config._attn_implementation, config.alibi
    projection = attention.query_key_value
    replace = projection.register_forward_hook(lambda module, inputs, output: tokens)
    try:
        config._attn_implementation, config.alibi = "spectra_test_keep", True
        with torch.no_grad():
            hidden = torch.zeros((*tokens.shape[:2], projection.in_features))
            attention(hidden.to(projection.weight.dtype), None)
    finally:
        config._attn_implementation, config.alibi = saved
        replace.remove()
    return tuple(kept[name].transpose(1, 2) for name in "qkv")


def _falcon_roles(model, layer: int, fused: np.ndarray) -> dict[str, np.ndarray]:
    """q, k, v of a fused ΔW ``(d_out, d_in)`` split by transformers' own ``_split_heads``.

    Each input direction is one token: ``fused.T`` is ``(tokens = d_in, d_out)``. Falcon
    broadcasts each k/v head to the query heads of its group; one copy per group is kept.
    """
    attention = model.h[layer].self_attention
    tokens = torch.from_numpy(fused.T.copy())[None]  # (1, d_in, d_out)
    q, k, v = _falcon_split(attention, tokens)  # each (1, d_in, heads or kv, head_dim)
    per_group = attention.num_heads // attention.num_kv_heads
    if attention.new_decoder_architecture and k.shape[2] == attention.num_heads:
        k, v = k[:, :, ::per_group], v[:, :, ::per_group]  # transformers 4 broadcast them
    return {
        name: part[0].reshape(part.shape[1], -1).numpy().T  # (rows of the role, d_in)
        for name, part in zip("qkv", (q, k, v), strict=True)
    }


@pytest.mark.parametrize(
    "new_arch, multi_query, kv_heads",
    [(True, False, 2), (False, True, None), (False, False, None)],
    ids=["new-decoder-architecture", "multi-query", "per-head"],
)
def test_falcon_fused_query_key_value_full_finetune(tmp_path, new_arch, multi_query, kv_heads):
    model = _falcon(new_arch, multi_query, kv_heads)
    parameters = dict(model.named_parameters())
    names = {
        "o": "self_attention.dense",
        "up": "mlp.dense_h_to_4h",
        "down": "mlp.dense_4h_to_h",
        "qkv": "self_attention.query_key_value",
    }
    update = {
        f"h.{i}.{name}.weight": 0.1 * torch.randn(parameters[f"h.{i}.{name}.weight"].shape)
        for i in range(2)
        for name in names.values()
    }
    ft, base, stored = _save_pair(model, tmp_path, update)
    roles = ["q", "k", "v", "o", "up", "down"]
    report = spectra.analyze(ft, base=base, modules=roles, method="exact")
    expected = {}
    for i in range(2):
        fused = stored[f"h.{i}.self_attention.query_key_value.weight"]
        for role, part in _falcon_roles(model, i, fused).items():
            expected[(i, role)] = part
        for role in ("o", "up", "down"):
            expected[(i, role)] = stored[f"h.{i}.{names[role]}.weight"]
    _assert_role_spectra(report, expected)


def test_falcon_lora_on_query_key_value_matches_peft_merge(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import FalconModel

    _falcon(True, False, 2).save_pretrained(str(tmp_path / "base"))
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["query_key_value", "dense"])
    peft_model = get_peft_model(FalconModel.from_pretrained(str(tmp_path / "base")), config)
    randomize_adapter(peft_model, seed=5)
    peft_model.save_pretrained(str(tmp_path / "lora"))

    reference = FalconModel.from_pretrained(str(tmp_path / "base"), dtype=torch.float64)
    before = {
        (i, name): getattr(reference.h[i].self_attention, name).weight.detach().clone()
        for i in range(2)
        for name in ("query_key_value", "dense")
    }
    merged = PeftModel.from_pretrained(reference, str(tmp_path / "lora")).merge_and_unload()
    expected = {}
    for i in range(2):
        attention = merged.h[i].self_attention
        fused = (attention.query_key_value.weight.detach() - before[(i, "query_key_value")]).numpy()
        for role, part in _falcon_roles(merged, i, fused).items():
            expected[(i, role)] = part
        expected[(i, "o")] = (attention.dense.weight.detach() - before[(i, "dense")]).numpy()
    # The head count comes from the base named by the adapter's base_model_name_or_path.
    report = spectra.analyze(tmp_path / "lora", modules=["q", "k", "v", "o"])
    _assert_role_spectra(report, expected)
    assert report.meta["not_analysed"] == []
    info = spectra.load(tmp_path / "lora").describe()
    assert {(m.role, m.shape) for m in info.modules if m.layer == 0} == {
        ("q", (HIDDEN, HIDDEN)),
        ("k", (2 * HIDDEN // HEADS, HIDDEN)),
        ("v", (2 * HIDDEN // HEADS, HIDDEN)),
        ("o", (HIDDEN, HIDDEN)),
    }


def test_mpt_wqkv_thirds_full_finetune(tmp_path):
    from transformers import MptConfig, MptModel

    torch.manual_seed(0)
    model = MptModel(MptConfig(d_model=HIDDEN, n_heads=HEADS, n_layers=2, vocab_size=100))
    names = {"o": "attn.out_proj", "up": "ffn.up_proj", "down": "ffn.down_proj"}
    parameters = dict(model.named_parameters())
    update = {
        tensor: 0.1 * torch.randn(parameters[tensor].shape)
        for i in range(2)
        for name in [*names.values(), "attn.Wqkv"]
        if (tensor := f"blocks.{i}.{name}.weight")
    }
    ft, base, stored = _save_pair(model, tmp_path, update)
    report = spectra.analyze(ft, base=base, modules=["q", "k", "v", "o", "up", "down"])
    expected = {}
    for i in range(2):
        # MptAttention: query, key, value = Wqkv(x).chunk(3, dim=2)
        chunks = torch.from_numpy(stored[f"blocks.{i}.attn.Wqkv.weight"]).chunk(3, dim=0)
        for role, chunk in zip("qkv", chunks, strict=True):
            expected[(i, role)] = chunk.numpy()
        for role, name in names.items():
            expected[(i, role)] = stored[f"blocks.{i}.{name}.weight"]
    _assert_role_spectra(report, expected)


def test_opt_lora_matches_peft_merge(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import OPTConfig, OPTModel

    torch.manual_seed(0)
    config = OPTConfig(
        hidden_size=HIDDEN,
        num_attention_heads=HEADS,
        num_hidden_layers=2,
        ffn_dim=128,
        vocab_size=100,
        max_position_embeddings=32,
        word_embed_proj_dim=HIDDEN,
    )
    OPTModel(config).save_pretrained(str(tmp_path / "base"))
    names = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj", "up": "fc1"}
    names["down"] = "fc2"
    peft_model = get_peft_model(
        OPTModel.from_pretrained(str(tmp_path / "base")),
        LoraConfig(r=4, lora_alpha=8, target_modules=list(names.values())),
    )
    randomize_adapter(peft_model, seed=2)
    peft_model.save_pretrained(str(tmp_path / "lora"))

    def weight(model, i, role):
        layer = model.decoder.layers[i]
        module = getattr(layer, names[role]) if role in ("up", "down") else None
        module = module or getattr(layer.self_attn, names[role])
        return module.weight.detach().clone()

    reference = OPTModel.from_pretrained(str(tmp_path / "base"), dtype=torch.float64)
    before = {(i, role): weight(reference, i, role) for i in range(2) for role in names}
    merged = PeftModel.from_pretrained(reference, str(tmp_path / "lora")).merge_and_unload()
    expected = {key: (weight(merged, *key) - w).numpy() for key, w in before.items()}
    report = spectra.analyze(tmp_path / "lora", modules=list(names))
    _assert_role_spectra(report, expected)
    assert report.meta["not_analysed"] == []


def _tiny_t5():
    from transformers import T5Config, T5Model

    torch.manual_seed(0)
    config = T5Config(
        d_model=HIDDEN,
        d_kv=16,
        num_heads=HEADS,
        num_layers=2,
        num_decoder_layers=3,
        d_ff=128,
        vocab_size=100,
        feed_forward_proj="gated-gelu",
    )
    return T5Model(config)


_T5_ROLES = {
    "q": "layer.0.SelfAttention.q",
    "k": "layer.0.SelfAttention.k",
    "v": "layer.0.SelfAttention.v",
    "o": "layer.0.SelfAttention.o",
}


def test_t5_full_finetune_numbers_decoder_blocks_after_the_encoders(tmp_path):
    model = _tiny_t5()
    parameters = dict(model.named_parameters())
    ffn = {"encoder": "layer.1.DenseReluDense", "decoder": "layer.2.DenseReluDense"}
    update, where = {}, {}
    for stack, blocks, offset in (("encoder", 2, 0), ("decoder", 3, 2)):
        for i in range(blocks):
            names = dict(_T5_ROLES)
            names |= {r: f"{ffn[stack]}.{n}" for r, n in (("gate", "wi_0"), ("up", "wi_1"))}
            names["down"] = f"{ffn[stack]}.wo"
            if stack == "decoder":
                names["cross"] = "layer.1.EncDecAttention.k"  # changed, and never analysed
            for role, name in names.items():
                tensor = f"{stack}.block.{i}.{name}.weight"
                update[tensor] = 0.1 * torch.randn(parameters[tensor].shape)
                where[(offset + i, role)] = tensor
    ft, base, stored = _save_pair(model, tmp_path, update)
    roles = ["q", "k", "v", "o", "gate", "up", "down"]
    report = spectra.analyze(ft, base=base, modules=roles, method="exact")
    expected = {key: stored[name] for key, name in where.items() if key[1] != "cross"}
    _assert_role_spectra(report, expected)
    assert report.meta["layers"] == [0, 1, 2, 3, 4]
    left_out = dict(report.meta["not_analysed"])
    assert "EncDecAttention" in left_out["decoder.block.0.layer.1.EncDecAttention.k.weight"]
    assert "outside the transformer blocks" in left_out["shared.weight"]


def test_t5_lora_needs_the_encoder_depth_for_its_decoder_blocks(tmp_path):
    import json

    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import T5Model

    _tiny_t5().save_pretrained(str(tmp_path / "base"))
    peft_model = get_peft_model(
        T5Model.from_pretrained(str(tmp_path / "base")),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q", "v"]),
    )
    randomize_adapter(peft_model, seed=3)
    peft_model.save_pretrained(str(tmp_path / "lora"))

    def weights(model):
        found = {}
        for stack, blocks, offset in ((model.encoder, 2, 0), (model.decoder, 3, 2)):
            for i in range(blocks):
                attention = stack.block[i].layer[0].SelfAttention
                found[(offset + i, "q")] = attention.q.weight.detach().clone()
                found[(offset + i, "v")] = attention.v.weight.detach().clone()
        return found

    reference = T5Model.from_pretrained(str(tmp_path / "base"), dtype=torch.float64)
    before = weights(reference)
    merged = PeftModel.from_pretrained(reference, str(tmp_path / "lora")).merge_and_unload()
    expected = {key: (w - before[key]).numpy() for key, w in weights(merged).items()}

    report = spectra.analyze(tmp_path / "lora", modules=["q", "v"])  # base from the config
    _assert_role_spectra(report, expected)
    left_out = dict(report.meta["not_analysed"])
    assert all("EncDecAttention" in name for name in left_out)  # cross-attention q and v
    assert len(left_out) == 3 * 2 * 2  # 3 decoder blocks × q, v × lora_A, lora_B

    # Without a base, the decoder's blocks cannot be numbered: listed, not guessed.
    config_path = tmp_path / "lora" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = None
    config_path.write_text(json.dumps(config))
    info = spectra.load(tmp_path / "lora").describe()
    assert {m.layer for m in info.modules} == {0, 1}
    reasons = info.not_analysed_by_reason()
    decoder = [r for r in reasons if "numbered after the encoder" in r]
    assert len(decoder) == 1 and "the base model's config.json" in decoder[0]
    assert len(reasons[decoder[0]]) == 3 * 2 * 2  # decoder self-attention q, v: A and B
