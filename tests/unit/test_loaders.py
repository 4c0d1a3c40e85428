"""Format detection, the architecture map, selection rules, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import spectra
from spectra.errors import BaseMismatchError, FormatError, MissingBaseError, SelectionError
from spectra.loaders import detect_format
from spectra.loaders.naming.architectures import canonical_name, layer_index, map_modules
from tests.helpers.checks import DTYPES, assert_same_reads, dtype_id, read_deltas, reference_sigma

# The full fine-tune tests run on files saved in float32, bf16 and fp16.
in_each_dtype = pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)

# ------------------------------------------------------------- name map


def test_llama_bert_gpt2_names_map_to_roles():
    names = [
        "model.layers.3.self_attn.k_proj",
        "model.layers.3.self_attn.v_proj",
        "encoder.layer.1.attention.self.key",
        "bert.encoder.layer.2.attention.self.value",
        "bert.encoder.layer.2.output.dense",
        "bert.encoder.layer.2.attention.output.dense",
        "h.0.attn.c_attn",
        "model.embed_tokens",
        "lm_head",
    ]
    found = map_modules(names)
    assert found[(3, "k")].module == "model.layers.3.self_attn.k_proj"
    assert found[(1, "k")].family == "bert"
    assert found[(2, "down")].module == "bert.encoder.layer.2.output.dense"
    assert found[(2, "o")].module == "bert.encoder.layer.2.attention.output.dense"
    q, k, v = (found[(0, role)] for role in "qkv")
    assert (q.index, k.index, v.index, k.fused) == (0, 1, 2, "thirds")
    assert k.conv1d and k.rows(192, 64) == slice(64, 128)
    assert all(ref.module not in ("model.embed_tokens", "lm_head") for ref in found.values())


def test_wrapper_prefixes_are_stripped_and_layers_parsed():
    assert (
        canonical_name("base_model.model.module._orig_mod.model.layers.0.x") == "model.layers.0.x"
    )
    assert layer_index("transformer.h.11.attn.c_attn") == 11
    assert layer_index("model.blocks.2.attn") == 2
    assert layer_index("lm_head") is None


def test_unknown_architecture_uses_suffix_names():
    found = map_modules(["net.blocks.4.mixer.k_proj", "net.blocks.4.mixer.value"])
    assert found[(4, "k")].family == "generic" and (4, "v") in found


def test_two_modules_claiming_one_role_is_an_error():
    with pytest.raises(FormatError, match="two modules claim layer 0"):
        map_modules(["encoder.layer.0.attention.self.key", "decoder.layer.0.attention.self.key"])


# ------------------------------------------------------------- bad input


def test_missing_path(tmp_path):
    with pytest.raises(FormatError, match="no such file or folder"):
        spectra.load(tmp_path / "nope")


def test_empty_and_unrelated_folders_list_what_was_found(tmp_path):
    with pytest.raises(FormatError, match="found nothing"):
        spectra.load(tmp_path)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(FormatError, match=r"adapter_config.json.*found notes.txt"):
        spectra.load(tmp_path)


def _tiny_model(folder, layers=2, d=16, names=("k_proj", "v_proj"), seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    tensors = {
        f"model.layers.{i}.self_attn.{name}.weight": torch.randn(d, d, generator=generator).to(
            dtype
        )
        for i in range(layers)
        for name in names
    }
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


@in_each_dtype
def test_full_finetune_without_base_names_the_flag(tmp_path, dtype):
    ckpt = _tiny_model(tmp_path / "ft", dtype=dtype)
    assert detect_format(ckpt) == "full"
    with pytest.raises(MissingBaseError, match="base="):
        spectra.analyze(ckpt)
    # inspect still works: it computes nothing.
    info = spectra.load(ckpt).describe()
    assert len(info.modules) == 4 and info.warnings


@in_each_dtype
def test_base_with_other_shapes_or_names_is_refused(tmp_path, dtype):
    ckpt = _tiny_model(tmp_path / "ft", d=16, dtype=dtype)
    with pytest.raises(BaseMismatchError, match=r"shape \(8, 8\).*\(16, 16\)"):
        spectra.analyze(ckpt, base=_tiny_model(tmp_path / "small", d=8, dtype=dtype))
    other = _tiny_model(tmp_path / "other", names=("q_proj", "o_proj"), dtype=dtype)
    with pytest.raises(BaseMismatchError, match="has no layer 0 'k' module"):
        spectra.analyze(ckpt, base=other)


@in_each_dtype
def test_missing_base_path_is_reported(tmp_path, dtype):
    with pytest.raises(FormatError, match="base="):
        spectra.load(_tiny_model(tmp_path / "ft", dtype=dtype), base=tmp_path / "missing")


@in_each_dtype
def test_selection_rules(tmp_path, dtype):
    ckpt = _tiny_model(tmp_path / "ft", seed=1, dtype=dtype)
    base = _tiny_model(tmp_path / "base", dtype=dtype)
    with pytest.raises(
        SelectionError, match=r"layer\(s\) 5 not in this checkpoint; it has layers 0-1"
    ):
        spectra.analyze(ckpt, base=base, layers=[5])
    with pytest.raises(SelectionError, match=r"no q modules.*modules='k,v'"):
        spectra.analyze(ckpt, base=base, modules=["q"])
    with pytest.raises(SelectionError, match="unknown module role"):
        spectra.analyze(ckpt, base=base, modules=["x"])
    report = spectra.analyze(ckpt, base=base, modules=["v"], layers=[1], method="exact")
    assert [(row["layer"], row["role"]) for row in report.rows] == [(1, "v")]
    assert report.rows[0]["dtype"] == dtype_id(dtype)
    # the selected module's σ and ΔW, against the files read with safetensors
    name = "model.layers.1.self_attn.v_proj.weight"
    expected = (
        load_file(str(ckpt / "model.safetensors"))[name].double()
        - load_file(str(base / "model.safetensors"))[name].double()
    ).numpy()
    np.testing.assert_allclose(report.spectrum(1, "v"), reference_sigma(expected), rtol=1e-10)
    checkpoint = spectra.load(ckpt, base=base)
    first = read_deltas(checkpoint, modules=["v"], layers=[1])
    second = read_deltas(checkpoint, modules=["v"], layers=[1])
    assert_same_reads(first, second)
    assert second[0].delta.source_dtype == dtype
    np.testing.assert_array_equal(second[0].dense, expected)  # the difference is exact in float64


@in_each_dtype
def test_default_modules_warn_about_a_missing_role(tmp_path, dtype):
    ckpt = _tiny_model(tmp_path / "ft", names=("q_proj", "v_proj"), seed=1, dtype=dtype)
    base = _tiny_model(tmp_path / "base", names=("q_proj", "v_proj"), dtype=dtype)
    report = spectra.analyze(ckpt, base=base)
    assert {row["role"] for row in report.rows} == {"v"}
    assert any("no 'k' modules" in warning for warning in report.warnings)


def _adapter(folder, config, tensors):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(
        config if isinstance(config, str) else json.dumps(config)
    )
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder


LORA_KEYS = {
    "base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight": torch.randn(4, 16),
    "base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight": torch.randn(16, 4),
}


def test_bad_adapter_configs(tmp_path):
    with pytest.raises(FormatError, match="invalid JSON"):
        spectra.load(_adapter(tmp_path / "a", "{not json", LORA_KEYS))
    with pytest.raises(FormatError, match="peft_type 'NO_SUCH' is not supported; spectra reads"):
        spectra.load(_adapter(tmp_path / "b", {"peft_type": "NO_SUCH", "r": 4}, LORA_KEYS))
    with pytest.raises(FormatError, match="number for lora_alpha"):
        spectra.load(_adapter(tmp_path / "c", {"peft_type": "LORA", "r": 4}, LORA_KEYS))


def test_a_shared_tensor_of_another_method_is_listed_not_dropped(tmp_path):
    tensors = LORA_KEYS | {"base_model.vera_A": torch.randn(4, 16)}
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8}
    checkpoint = spectra.load(_adapter(tmp_path / "a", config, tensors))
    left_out = dict(checkpoint.not_analysed())
    assert set(left_out) == {"base_model.vera_A"}
    assert "not a part of a LORA adapter's ΔW" in left_out["base_model.vera_A"]


def test_dora_without_base_names_the_config_field_and_the_flags(tmp_path):
    config = {
        "peft_type": "LORA",
        "r": 4,
        "lora_alpha": 8,
        "use_dora": True,
        "base_model_name_or_path": "org/not-downloaded",
    }
    keys = dict(LORA_KEYS)
    keys["base_model.model.model.layers.0.self_attn.k_proj.lora_magnitude_vector"] = torch.ones(16)
    folder = _adapter(tmp_path / "dora", config, keys)
    with pytest.raises(
        MissingBaseError, match=r"'org/not-downloaded'.*base=DIR.*directional_only=True"
    ):
        spectra.analyze(folder)
    report = spectra.analyze(folder, directional_only=True)
    assert report.rows[0]["kind"] == "factored"
    assert any("directional part" in warning for warning in report.warnings)


def test_adapter_shapes_must_agree_with_config(tmp_path):
    config = {"peft_type": "LORA", "r": 8, "lora_alpha": 16}
    with pytest.raises(FormatError, match=r"r=8.*found lora_A \(4, 16\)"):
        spectra.load(_adapter(tmp_path / "a", config, LORA_KEYS))


def test_adapter_keys_with_adapter_name_and_missing_factor(tmp_path):
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8}
    named = {key.replace(".weight", ".default.weight"): value for key, value in LORA_KEYS.items()}
    report = spectra.analyze(_adapter(tmp_path / "named", config, named))
    assert [(row["layer"], row["role"]) for row in report.rows] == [(0, "k")]
    only_a = {k: v for k, v in LORA_KEYS.items() if "lora_A" in k}
    with pytest.raises(FormatError, match="has no lora_B tensor"):
        spectra.load(_adapter(tmp_path / "half", config, only_a))


def test_pickles_are_loaded_weights_only(tmp_path):
    """A .bin whose pickle would run code is refused, and the code does not run."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    folder = tmp_path / "evil"
    folder.mkdir()
    torch.save({"model.layers.0.self_attn.k_proj.weight": Payload()}, folder / "pytorch_model.bin")
    with pytest.raises(FormatError, match="weights_only=True") as refused:
        spectra.analyze(folder, base=folder)
    assert not marker.exists()
    message = str(refused.value)  # one short line: no torch advice to turn weights_only off
    assert "never runs pickled code" in message and "weights_only=False" not in message
    assert len(message) < 300 + len(str(folder))


def test_detection_unpickles_a_file_once_however_many_formats_ask(monkeypatch, tmp_path):
    """kohya, diffusers, MultiLoRA and the full fine-tune reader all look at a .bin's names
    when asked whether they claim it; the pickle is read for that once, not once each."""
    import spectra.loaders.storage.tensors as tensors
    from spectra.loaders import detect_format

    path = tmp_path / "pytorch_model.bin"
    weights = {f"model.layers.{i}.self_attn.k_proj.weight": torch.ones(4, 4) for i in range(2)}
    torch.save(weights, path, _use_new_zipfile_serialization=False)
    reads = []
    real = tensors._load_pickle

    def counting(file):
        reads.append(file)
        return real(file)

    monkeypatch.setattr(tensors, "_load_pickle", counting)
    assert detect_format(path) == "full"
    assert len(reads) == 1


@in_each_dtype
def test_large_safetensors_tensors_are_mapped_privately_never_written_back(tmp_path, dtype):
    """A tensor of ≥ 1 MiB is mapped copy-on-write: equal to safetensors' own read, and a
    write into one read reaches neither a second read nor the file."""
    from spectra.loaders.storage.tensors import open_store

    generator = torch.Generator().manual_seed(0)
    tensors = {
        "large": torch.randn(1024, 1024, generator=generator).to(dtype),  # ≥ 1 MiB: mapped
        "small": torch.randn(8, 8, generator=generator).to(dtype),  # read into a buffer
    }
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    before = path.read_bytes()
    store = open_store(path)
    first, second = store.load("large"), store.load("large")
    reference = load_file(str(path))
    for name in tensors:
        assert torch.equal(store.load(name), reference[name])
    first.fill_(7)
    assert torch.equal(second, reference["large"])
    assert torch.equal(open_store(path).load("large"), reference["large"])
    assert path.read_bytes() == before
