"""llama.cpp GGUF LoRA adapters written with gguf's own GGUFWriter, as convert_lora_to_gguf.py does.

The source is a real peft LoRA on a tiny LLaMA (q, k, v, o, gate, up, down).
``to_gguf`` follows llama.cpp's converter: tensor names from gguf's own
``get_tensor_name_map``, ``general.type = adapter``, ``adapter.type = lora``,
``adapter.lora.alpha`` as float32, ``lora_a`` / ``lora_b`` per weight, q and k
``lora_b`` rows permuted as ``LlamaModel.permute`` does, tensors written in
f32, f16, bf16 or q8_0 (gguf's ``quantize``; a tensor whose rows do not split
into q8_0 blocks stays f16, as in the converter). References: ΔW from the
tensors as gguf's GGUFReader and ``dequantize`` read them back, in float64;
and, for the f32 file read with a base, peft's own merge.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

gguf = pytest.importorskip("gguf")

from spectra_cli.main import cli  # noqa: E402

import spectra  # noqa: E402
from spectra.errors import FormatError  # noqa: E402
from spectra.loaders import detect_format, load  # noqa: E402
from tests.helpers.adapters import randomize_adapter  # noqa: E402
from tests.helpers.checks import assert_same_reads, read_deltas, relative_error  # noqa: E402
from tests.helpers.models import (  # noqa: E402
    HEADS,
    HF_MODULES,
    KV_HEADS,
    LAYERS,
    PHI3_ROWS,
    phi3_weight,
    save_tiny_llama,
    save_tiny_phi3,
)

RANK, ALPHA = 4, 16.0
OUTTYPES = ["f32", "f16", "bf16", "q8_0"]


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def peft_lora(tmp_path_factory, llama) -> Path:
    """A peft LoRA on every projection of the tiny LLaMA, with random A and B."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    targets = [module.split(".")[1] for module in HF_MODULES.values()]
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=targets)
    model = get_peft_model(LlamaForCausalLM.from_pretrained(str(llama)), config)
    randomize_adapter(model, seed=3)
    folder = tmp_path_factory.mktemp("peft")
    model.save_pretrained(str(folder))
    return folder


def ggml_permute(rows: np.ndarray, heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: Hugging Face rows → GGML's RoPE order."""
    return (
        rows.reshape(heads, 2, rows.shape[0] // heads // 2, *rows.shape[1:])
        .swapaxes(1, 2)
        .reshape(rows.shape)
    )


def _write(writer, name: str, data: np.ndarray, outtype: str) -> None:
    qtypes = {"bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}
    if outtype == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[qtypes["q8_0"]][0]:
        outtype = "f16"  # rows that do not split into q8_0 blocks stay f16
    if outtype in qtypes:
        raw = gguf.quants.quantize(data, qtypes[outtype])
        writer.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=qtypes[outtype])
    else:
        writer.add_tensor(name, data.astype(np.float16 if outtype == "f16" else np.float32))


def to_gguf(
    peft_folder: Path,
    out: Path,
    outtype: str = "f32",
    alpha: float | None = ALPHA,
    extra: dict[str, np.ndarray] | None = None,
    general_type: str = "adapter",
    arch=None,
    permute: bool = True,
) -> Path:
    """Convert a peft LoRA folder as convert_lora_to_gguf.py does, with gguf's GGUFWriter.

    ``arch`` is the gguf MODEL_ARCH written (LLaMA by default); ``permute`` says
    whether its converter class permutes q/k rows (LlamaModel.permute).
    """
    from safetensors.numpy import load_file

    arch = gguf.MODEL_ARCH.LLAMA if arch is None else arch
    tensors = load_file(str(peft_folder / "adapter_model.safetensors"))
    names = gguf.get_tensor_name_map(arch, LAYERS)
    writer = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_type(general_type)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    if alpha is not None:
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for name in sorted(tensors):
        if ".lora_A." not in name:
            continue
        hf = name.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
        A, B = tensors[name], tensors[name.replace(".lora_A.", ".lora_B.")]
        if permute and hf.endswith("q_proj.weight"):
            B = ggml_permute(B, HEADS)
        if permute and hf.endswith("k_proj.weight"):
            B = ggml_permute(B, KV_HEADS)
        target = names.get_name(hf, try_suffixes=(".weight",))
        _write(writer, target + ".lora_a", A, outtype)
        _write(writer, target + ".lora_b", B, outtype)
    for name, data in (extra or {}).items():
        _write(writer, name, data, "f32")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def gguf_reference(path: Path) -> dict[tuple[int, str], np.ndarray]:
    """ΔW = (α/r)·B@A in float64 from the tensors as gguf's reader and dequantize give them."""
    reader = gguf.GGUFReader(str(path))
    values = {t.name: gguf.quants.dequantize(t.data, t.tensor_type) for t in reader.tensors}
    roles = {"attn_q": "q", "attn_k": "k", "attn_v": "v", "attn_output": "o"}
    roles |= {"ffn_gate": "gate", "ffn_up": "up", "ffn_down": "down"}
    reference = {}
    for name, A in values.items():
        if name.startswith("blk.") and name.endswith(".lora_a"):
            _, layer, weight = name.split(".")[:3]
            B = values[name.removesuffix("_a") + "_b"].astype(np.float64)
            reference[(int(layer), roles[weight])] = (ALPHA / RANK) * B @ A.astype(np.float64)
    return reference


def peft_reference(peft_folder: Path, base: Path) -> dict[tuple[int, str], np.ndarray]:
    """peft's own float64 merge minus the base, per (layer, role)."""
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    original = LlamaForCausalLM.from_pretrained(str(base), dtype=torch.float64)
    before = {k: v.clone() for k, v in original.state_dict().items()}
    merged = PeftModel.from_pretrained(original, str(peft_folder)).merge_and_unload()
    after = merged.state_dict()
    return {
        (layer, role): (after[n] - before[n]).numpy()
        for layer in range(LAYERS)
        for role, module in HF_MODULES.items()
        if (n := f"model.layers.{layer}.{module}.weight")
    }


@pytest.mark.parametrize("outtype", OUTTYPES)
def test_gguf_matches_gguf_dequantisation_and_reads_twice(tmp_path, peft_lora, outtype):
    path = to_gguf(peft_lora, tmp_path / f"adapter-{outtype}.gguf", outtype)
    reference = gguf_reference(path)
    checkpoint = load(path)
    assert detect_format(path) == "gguf" and checkpoint.variant == "LoRA (llama.cpp GGUF)"
    first = read_deltas(checkpoint, modules="all")
    assert_same_reads(first, read_deltas(checkpoint, modules="all"))
    assert {(r.delta.layer, r.delta.role) for r in first} == set(reference)
    for read in first:  # no base: q and k stay in the file's (GGML) row order
        key = (read.delta.layer, read.delta.role)
        assert read.delta.update.scale == ALPHA / RANK
        assert relative_error(read.dense, reference[key]) < 1e-6, key
    assert any("interleaved RoPE order" in w for w in checkpoint.describe().warnings)


@pytest.mark.parametrize("outtype", OUTTYPES)
def test_with_a_base_q_and_k_are_in_hugging_face_order(tmp_path, peft_lora, llama, outtype):
    path = to_gguf(peft_lora, tmp_path / f"adapter-{outtype}.gguf", outtype)
    stored = gguf_reference(path)
    exact = peft_reference(peft_lora, llama) if outtype == "f32" else None
    for read in read_deltas(load(path, base=llama), modules="all"):
        key = (read.delta.layer, read.delta.role)
        assert read.delta.base_norm is not None
        heads = {"q": HEADS, "k": KV_HEADS}.get(key[1])
        back = ggml_permute(read.dense, heads) if heads else read.dense
        assert relative_error(back, stored[key]) < 1e-6, key  # the converter's own permutation
        if exact is not None:  # and what peft trained, for the lossless file
            assert relative_error(read.dense, exact[key]) < 1e-6, key


def test_scale_warnings_and_missing_alpha(tmp_path, peft_lora):
    with_alpha = load(to_gguf(peft_lora, tmp_path / "a.gguf"))
    assert any("drops use_rslora" in w for w in with_alpha.describe().warnings)
    info = load(to_gguf(peft_lora, tmp_path / "b.gguf", alpha=None)).describe()
    assert {m.scale for m in info.modules} == {1.0}
    assert {m.scale_source for m in info.modules} == {
        "GGUF: adapter.lora.alpha absent → 1 (llama.cpp's rule)"
    }
    zero = load(to_gguf(peft_lora, tmp_path / "c.gguf", alpha=0.0)).describe()
    assert {m.scale for m in zero.modules} == {1.0}


def test_nothing_dropped(tmp_path, peft_lora):
    extra = {
        "token_embd.weight.lora_a": np.ones((RANK, 100), np.float32),
        "token_embd.weight.lora_b": np.ones((64, RANK), np.float32),
        "blk.0.attn_norm.weight": np.ones(64, np.float32),
    }
    checkpoint = load(to_gguf(peft_lora, tmp_path / "extra.gguf", extra=extra))
    names = set(checkpoint.store.names())
    analysed = {m.name + ".weight.lora_" + p for m in checkpoint.describe().modules for p in "ab"}
    left_out = dict(checkpoint.not_analysed())
    assert analysed | set(left_out) == names and not analysed & set(left_out)
    assert set(left_out) == set(extra)
    assert "outside the transformer blocks" in left_out["token_embd.weight.lora_a"]
    assert "not ΔW" in left_out["blk.0.attn_norm.weight"]


def test_inspect_says_where_the_scale_came_from(tmp_path, peft_lora):
    path = to_gguf(peft_lora, tmp_path / "adapter.gguf", "q8_0")
    result = CliRunner().invoke(cli, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert "gguf format" in result.output
    assert "GGUF: adapter.lora.alpha/r = 16/4" in result.output
    assert "q8_0/f16" in result.output  # lora_a in q8_0, lora_b's rank-4 rows stay f16


def test_mismatched_rank_is_refused(tmp_path, peft_lora):
    extra = {
        "blk.1.attn_k.weight.lora_a": np.ones((RANK, 64), np.float32),
        "blk.1.attn_k.weight.lora_b": np.ones((16, 8), np.float32),
    }
    writer = gguf.GGUFWriter(str(tmp_path / "bad.gguf"), "llama")
    writer.add_type("adapter")
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    for name, data in extra.items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(FormatError) as error:
        load(tmp_path / "bad.gguf")
    message = str(error.value)
    assert "bad.gguf" in message and "blk.1.attn_k.weight" in message
    assert "lora_a (r, d_in) and lora_b (d_out, r)" in message
    assert "found lora_a (4, 64) and lora_b (16, 8)" in message


def test_a_gguf_model_is_refused(tmp_path, peft_lora):
    path = to_gguf(peft_lora, tmp_path / "model.gguf", general_type="model")
    with pytest.raises(FormatError, match=r"found general\.type = 'model'"):
        load(path)


def test_without_the_gguf_package_the_error_says_how_to_install_it(
    tmp_path, peft_lora, monkeypatch
):
    path = to_gguf(peft_lora, tmp_path / "adapter.gguf")
    monkeypatch.setitem(sys.modules, "gguf", None)
    assert detect_format(path) == "gguf"  # recognised from its magic bytes alone
    with pytest.raises(FormatError, match="pip install gguf"):
        load(path)


# -- architectures: which permute q/k (llama.cpp's converter classes), which fuse ffn_up ------


@pytest.mark.parametrize(
    ("arch", "permuted"),
    [("GRANITE", True), ("SMOLLM3", True), ("QWEN2", False), ("LLAMA4", False)],
)
def test_q_and_k_are_un_permuted_only_where_the_converter_permutes(
    tmp_path, peft_lora, llama, arch, permuted
):
    """Granite, SmolLM3 derive from LlamaModel and permute; Qwen2 does not; Llama 4 turns it off."""
    model_arch = getattr(gguf.MODEL_ARCH, arch)
    path = to_gguf(peft_lora, tmp_path / f"{arch}.gguf", arch=model_arch, permute=permuted)
    exact = peft_reference(peft_lora, llama)
    checkpoint = load(path, base=llama)
    notes = checkpoint.describe().warnings
    assert any("interleaved RoPE order" in w for w in notes) == permuted
    for read in read_deltas(checkpoint, modules=["q", "k", "v"]):
        key = (read.delta.layer, read.delta.role)
        assert relative_error(read.dense, exact[key]) < 1e-6, key


@pytest.fixture(scope="module")
def phi3(tmp_path_factory) -> Path:
    return save_tiny_phi3(tmp_path_factory.mktemp("phi3"))


@pytest.fixture(scope="module")
def peft_phi3(tmp_path_factory, phi3) -> Path:
    """A peft LoRA on the tiny Phi-3's fused qkv_proj and gate_up_proj (and o, down)."""
    from peft import LoraConfig, get_peft_model
    from transformers import Phi3ForCausalLM

    targets = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=targets)
    model = get_peft_model(Phi3ForCausalLM.from_pretrained(str(phi3)), config)
    randomize_adapter(model, seed=5)
    folder = tmp_path_factory.mktemp("peft_phi3")
    model.save_pretrained(str(folder))
    return folder


def _fused_reference(path: Path) -> dict[tuple[int, str], np.ndarray]:
    """ΔW of each role, cut by hand from (α/r)·B@A of the fused tensors as gguf reads them."""
    reader = gguf.GGUFReader(str(path))
    values = {t.name: gguf.quants.dequantize(t.data, t.tensor_type) for t in reader.tensors}
    tensors = {"self_attn.qkv_proj": "attn_qkv", "self_attn.o_proj": "attn_output"}
    tensors |= {"mlp.gate_up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    reference = {}
    for layer in range(LAYERS):
        for role, (module, start, end) in PHI3_ROWS.items():
            name = f"blk.{layer}.{tensors[module]}.weight.lora_"
            B, A = (values[name + part].astype(np.float64) for part in "ba")
            reference[(layer, role)] = ((ALPHA / RANK) * B @ A)[start:end]
    return reference


@pytest.mark.parametrize("outtype", ["f32", "bf16", "f16"])
def test_phi3_ffn_up_is_split_into_gate_and_up(tmp_path, peft_phi3, phi3, outtype):
    path = to_gguf(peft_phi3, tmp_path / f"phi3-{outtype}.gguf", outtype, arch=gguf.MODEL_ARCH.PHI3)
    reference = _fused_reference(path)
    alone = read_deltas(load(path), modules="all")
    assert {(r.delta.layer, r.delta.role) for r in alone} == set(reference)
    for read in alone:  # σ of each half against numpy's SVD of that half
        key = (read.delta.layer, read.delta.role)
        assert read.dense.shape == reference[key].shape, key
        np.testing.assert_allclose(
            np.linalg.svd(read.dense, compute_uv=False),
            np.linalg.svd(reference[key], compute_uv=False),
            rtol=1e-9,
            atol=1e-12,
        )
    report = spectra.analyze(path, base=phi3, modules="all")  # the right base is accepted
    rows = {(row["layer"], row["role"]): row for row in report.rows}
    for key, delta in reference.items():
        expected = np.linalg.norm(delta) / np.linalg.norm(phi3_weight(phi3, *key))
        assert rows[key]["relative_norm"] == pytest.approx(expected, rel=1e-6), key
