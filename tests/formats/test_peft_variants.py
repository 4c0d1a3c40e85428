"""Every PEFT variant, made with real peft on the real MiniLM, against peft's own merge.

spectra's rebuilt ΔW (dense, in the test) must match ``merge_and_unload()``
minus the base weight to 1e-6 relative Frobenius error, and its singular
values must match numpy's SVD of that difference.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import spectra
from spectra.errors import FormatError, MissingBaseError
from tests.helpers.adapters import (
    make_peft_adapter,
    merged_reference,
    random_peft_model,
    randomize_adapter,
    save_peft_adapter,
)
from tests.helpers.checks import DTYPES, dtype_id, reference_sigma
from tests.helpers.models import load_bert


def _check_against_reference(adapter, report_options=None, load_options=None, modules=None):
    """Dense rebuild and σ of every module against the merged reference."""
    options = load_options or {}
    checkpoint = spectra.load(adapter.path, **options)
    seen = set()
    for delta in checkpoint.deltas(modules=modules):
        reference = adapter.reference[(delta.layer, delta.role)]
        rebuilt = delta.update.to_dense().numpy()
        error = np.linalg.norm(rebuilt - reference) / np.linalg.norm(reference)
        assert error < 1e-6, (delta.key, error)
        seen.add((delta.layer, delta.role))
    assert seen == set(adapter.reference)
    report = spectra.analyze(adapter.path, modules=modules, **(report_options or options))
    for row in report.rows:
        sigma = report.spectrum(row["layer"], row["role"])
        expected = reference_sigma(adapter.reference[(row["layer"], row["role"])])
        k = len(sigma)
        # Dense ΔW takes the Gram path: values below √(max(d)·ε₆₄)·σ_1 ≈ 3e-7·σ_1 are noise.
        floor = 3e-7 if row["kind"] == "dense" else 1e-9
        np.testing.assert_allclose(sigma, expected[:k], rtol=1e-6, atol=floor * expected[0])
        assert np.all(expected[k:] <= 1e-9 * expected[0])
    return report


@pytest.fixture(scope="module")
def dora(tmp_path_factory, minilm_dir):
    from peft import LoraConfig

    config = LoraConfig(r=4, lora_alpha=8, target_modules=["key", "value"], use_dora=True)
    return make_peft_adapter(tmp_path_factory.mktemp("dora"), minilm_dir, seed=11, config=config)


def test_dora_matches_peft_merge(dora, minilm_dir):
    report = _check_against_reference(dora, load_options={"base": minilm_dir})
    assert report.meta["source"]["variant"] == "DoRA (LoRA)"
    assert {row["kind"] for row in report.rows} == {"dense"}
    # The magnitude vector makes ΔW full rank, unlike its rank-4 directional part.
    assert min(row["numerical_rank"] for row in report.rows) > 4


def test_dora_finds_its_base_from_the_config(dora):
    """peft wrote base_model_name_or_path = the MiniLM folder, so no --base is needed."""
    report = spectra.analyze(dora.path, layers=[0])
    assert any("base model found from base_model_name_or_path" in w for w in report.warnings)
    assert report.rows[0]["kind"] == "dense"


def test_dora_directional_part_on_request(dora, tmp_path):
    folder = tmp_path / "dora"
    shutil.copytree(dora.path, folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "nowhere/to-be-found"
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(MissingBaseError, match="nowhere/to-be-found"):
        spectra.analyze(folder)
    report = spectra.analyze(folder, directional_only=True)
    assert [row["numerical_rank"] for row in report.rows] == [4] * 12


def test_adalora_with_pruned_and_rank_0_modules(tmp_path, minilm_dir):
    from peft import AdaLoraConfig, get_peft_model

    from tests.helpers.models import load_bert

    config = AdaLoraConfig(
        init_r=6, target_r=3, lora_alpha=8, target_modules=["key", "value"], total_step=100
    )
    model = get_peft_model(load_bert(minilm_dir), config)
    randomize_adapter(model, seed=5)
    # Budget allocation's outcome: a keep-mask per module; layer 1's key keeps nothing.
    pattern = {}
    for layer in range(6):
        for role in ("key", "value"):
            keep = [True, False, True, True, False, False]
            if layer == 1 and role == "key":
                keep = [False] * 6
            pattern[f"encoder.layer.{layer}.attention.self.{role}.lora_E"] = keep
    model.peft_config["default"].rank_pattern = pattern
    folder = tmp_path / "adalora"
    model.save_pretrained(str(folder))
    reference = merged_reference(folder, minilm_dir)
    assert (1, "k") not in reference  # ΔW = 0 there: peft's merge leaves W0 as it was

    report = spectra.analyze(folder)
    assert report.meta["source"]["variant"] == "AdaLoRA"
    for row in report.rows:
        key = (row["layer"], row["role"])
        sigma = report.spectrum(*key)
        if key == (1, "k"):
            assert len(sigma) == 0 and row["numerical_rank"] == 0 and row["effective_rank"] == 0
            continue
        expected = reference_sigma(reference[key])
        np.testing.assert_allclose(sigma, expected[:3], rtol=1e-6)
        assert row["numerical_rank"] == 3
        assert row["scale"] == pytest.approx(8 / (6 + 1e-5))
    assert any("L1.k: ΔW is exactly zero" in warning for warning in report.warnings)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["loha", "lokr", "lokr_both", "vera"])
def test_lycoris_and_vera_match_peft_merge(tmp_path, minilm_dir, kind):
    from peft import LoHaConfig, LoKrConfig, VeraConfig

    config = {
        "loha": LoHaConfig(r=4, alpha=8, target_modules=["key", "value"]),
        "lokr": LoKrConfig(r=4, alpha=6, target_modules=["key", "value"]),
        "lokr_both": LoKrConfig(r=2, alpha=4, target_modules=["key", "value"], decompose_both=True),
        "vera": VeraConfig(r=16, target_modules=["key", "value"], save_projection=True),
    }[kind]
    adapter = make_peft_adapter(tmp_path / kind, minilm_dir, seed=7, config=config)
    report = _check_against_reference(adapter)
    expected_kind = "factored" if kind == "vera" else "dense"
    assert {row["kind"] for row in report.rows} == {expected_kind}


# BERT module paths by role, for the modules merged_reference does not cover
_BERT_MODULES = {
    "k": "attention.self.key",
    "o": "attention.output.dense",
    "up": "intermediate.dense",
    "down": "output.dense",
}


def _saved_tensors(folder) -> list[torch.Tensor]:
    from safetensors.torch import load_file

    return list(load_file(str(folder / "adapter_model.safetensors")).values())


def _merged_bert(folder, base) -> dict[tuple[int, str], np.ndarray]:
    """peft's merge in float64 minus the base, for every role of ``_BERT_MODULES``."""
    from peft import PeftModel

    def weights(model):
        return {
            (layer, role): model.get_submodule(f"encoder.layer.{layer}.{path}")
            .weight.detach()
            .double()
            .numpy()
            .copy()
            for layer in range(6)
            for role, path in _BERT_MODULES.items()
        }

    model = load_bert(base, torch.float64)
    before = weights(model)
    merged = PeftModel.from_pretrained(model, str(folder)).double().merge_and_unload()
    return {key: weight - before[key] for key, weight in weights(merged).items()}


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_vera_over_modules_of_different_widths(tmp_path, minilm_dir, dtype):
    """vera_A is as wide as the widest module (1536): each module's d_in comes from the base."""
    from peft import VeraConfig

    config = VeraConfig(
        r=8, target_modules=["key", "intermediate.dense", "output.dense"], save_projection=True
    )
    model = random_peft_model(minilm_dir, config, seed=2)
    adapter = save_peft_adapter(model, tmp_path / "vera", minilm_dir, dtype=dtype)
    assert {t.dtype for t in _saved_tensors(adapter.path)} == {dtype}  # the premise
    reference = _merged_bert(adapter.path, minilm_dir)
    roles = list(_BERT_MODULES)
    checkpoint = spectra.load(adapter.path)  # the base, from base_model_name_or_path
    first = [(d.key, d.update.to_dense().numpy()) for d in checkpoint.deltas(modules=roles)]
    second = [(d.key, d.update.to_dense().numpy()) for d in checkpoint.deltas(modules=roles)]
    assert [label for label, _ in first] == [label for label, _ in second]
    for (_, a), (_, b) in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    shapes = {"k": (384, 384), "o": (384, 384), "up": (1536, 384), "down": (384, 1536)}
    for delta in checkpoint.deltas(modules=roles):
        expected = reference[(delta.layer, delta.role)]
        assert delta.shape == shapes[delta.role] == expected.shape
        rebuilt = delta.update.to_dense().numpy()
        assert np.linalg.norm(rebuilt - expected) / np.linalg.norm(expected) < 1e-10

    # Without the base, d_in is unknown: refused, never cut to the width of vera_A.
    config_path = adapter.path / "adapter_config.json"
    data = json.loads(config_path.read_text())
    data["base_model_name_or_path"] = "nowhere/to-be-found"
    config_path.write_text(json.dumps(data))
    with pytest.raises(MissingBaseError, match=r"adapter_config.json: VeRA .*d_in.*base=DIR"):
        spectra.analyze(adapter.path, modules=["k"])
    with pytest.raises(MissingBaseError, match="base=DIR"):
        list(spectra.load(adapter.path).deltas(modules=["k"]))
    info = spectra.load(adapter.path).describe()
    assert {m.shape for m in info.modules if m.role == "k"} == {(384, None)}
    assert any("d_in comes from the base model" in w for w in info.warnings)
    report = spectra.analyze(adapter.path, base=minilm_dir, modules=["k", "down"])
    for row in report.rows:
        expected = reference_sigma(reference[(row["layer"], row["role"])])
        np.testing.assert_allclose(
            report.spectrum(row["layer"], row["role"]), expected[:8], rtol=1e-9
        )

    # A shared vera_A narrower than a module of the base: the base is not this adapter's.
    from safetensors.torch import load_file, save_file

    weights_path = adapter.path / "adapter_model.safetensors"
    tensors = load_file(str(weights_path))
    shared = next(name for name in tensors if name.endswith("vera_A"))
    tensors[shared] = tensors[shared][:, :384].contiguous()
    save_file(tensors, str(weights_path))
    with pytest.raises(FormatError, match=r"vera_A \(8, 384\).*cannot be narrower.*base="):
        spectra.analyze(adapter.path, base=minilm_dir, modules=["down"])


@pytest.fixture(scope="module")
def unsaved_vera_model(minilm_dir):
    from peft import VeraConfig

    config = VeraConfig(
        r=8,
        target_modules=["key", "intermediate.dense", "output.dense"],
        layers_to_transform=[0, 1],
        save_projection=False,
        projection_prng_key=1234,
    )
    return random_peft_model(minilm_dir, config, seed=4)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_vera_saved_without_its_bases_draws_them_as_peft_does(
    tmp_path, minilm_dir, unsaved_vera_model, dtype
):
    """save_projection=False: vera_A (8, 1536) and vera_B (1536, 8) are drawn from the seed."""
    adapter = save_peft_adapter(unsaved_vera_model, tmp_path / "vera", minilm_dir, dtype=dtype)
    names = {t for t in load_file_names(adapter.path)}
    assert not any(name.endswith(("vera_A", "vera_B")) for name in names)  # the premise
    reference = _merged_bert(adapter.path, minilm_dir)
    roles = list(_BERT_MODULES)
    checkpoint = spectra.load(adapter.path, base=minilm_dir)
    assert any("drawn again from projection_prng_key" in w for w in checkpoint.warnings())
    reads = [[(d.key, d.update.to_dense().numpy()) for d in checkpoint.deltas(modules=roles)]]
    reads.append([(d.key, d.update.to_dense().numpy()) for d in checkpoint.deltas(modules=roles)])
    for (key, first), (_, second) in zip(*reads, strict=True):
        np.testing.assert_array_equal(first, second)
        expected = reference[(int(key[1]), key.split(".")[1])]
        assert np.linalg.norm(first - expected) / np.linalg.norm(expected) < 1e-10
    changed = {f"L{layer}.{role}" for (layer, role), d in reference.items() if np.any(d != 0)}
    assert {key for key, _ in reads[0]} == changed == {
        f"L{layer}.{role}" for layer in (0, 1) for role in ("k", "o", "up", "down")
    }
    assert checkpoint.not_analysed() == []
    config_path = adapter.path / "adapter_config.json"  # a base that cannot be found
    config_path.write_text(
        json.dumps(json.loads(config_path.read_text()) | {"base_model_name_or_path": "nowhere"})
    )
    with pytest.raises(MissingBaseError, match="base=DIR"):  # the widest module needs W0
        list(spectra.load(adapter.path).deltas(modules=["k"]))


def load_file_names(folder) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as handle:
        return list(handle.keys())


def test_adapter_bin_with_modules_to_save_and_an_init_that_moves_w0(tmp_path, minilm_dir):
    from peft import LoraConfig, get_peft_model

    from tests.helpers.models import load_bert

    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["key", "value"], modules_to_save=["pooler.dense"]
    )
    model = get_peft_model(load_bert(minilm_dir), config)
    randomize_adapter(model, seed=3)
    folder = tmp_path / "bin"
    model.save_pretrained(str(folder), safe_serialization=False)
    assert (folder / "adapter_model.bin").is_file()
    reference = merged_reference(folder, minilm_dir)
    config_path = folder / "adapter_config.json"
    data = json.loads(config_path.read_text())
    data["init_lora_weights"] = "pissa"
    config_path.write_text(json.dumps(data))

    info = spectra.load(folder).describe()
    assert info.details["modules_to_save"] == [
        "base_model.model.pooler.dense.bias",
        "base_model.model.pooler.dense.weight",
    ]
    assert any("modules_to_save" in w for w in info.warnings)
    assert any("pissa" in w and "modifi" in w for w in info.warnings)
    report = spectra.analyze(folder)
    for row in report.rows:
        expected = reference_sigma(reference[(row["layer"], row["role"])])
        np.testing.assert_allclose(
            report.spectrum(row["layer"], row["role"]), expected[:4], rtol=1e-9
        )


def test_sub_folder_adapters_need_a_name(tmp_path, minilm_dir):
    from peft import LoraConfig, get_peft_model

    from tests.helpers.models import load_bert

    model = get_peft_model(
        load_bert(minilm_dir), LoraConfig(r=4, lora_alpha=8, target_modules=["key", "value"])
    )
    model.add_adapter("other", LoraConfig(r=2, lora_alpha=2, target_modules=["query"]))
    randomize_adapter(model, seed=1)
    model.set_adapter("other")
    randomize_adapter(model, seed=9)
    folder = tmp_path / "two"
    model.save_pretrained(str(folder), selected_adapters=["other"])
    assert (folder / "other" / "adapter_config.json").is_file()
    with pytest.raises(FormatError, match=r"sub-folders \(other\).*adapter=NAME"):
        spectra.load(folder)
    with pytest.raises(FormatError, match="no adapter named 'missing'"):
        spectra.load(folder, adapter="missing")
    reference = merged_reference(folder / "other", minilm_dir, adapter_name="other")
    report = spectra.analyze(folder, adapter="other", modules=["q"])
    assert [row["numerical_rank"] for row in report.rows] == [2] * 6
    for row in report.rows:
        expected = reference_sigma(reference[(row["layer"], "q")])
        np.testing.assert_allclose(report.spectrum(row["layer"], "q"), expected[:2], rtol=1e-9)


def test_base_found_in_a_local_hugging_face_cache(tmp_path, minilm_dir, lora_adapter, monkeypatch):
    snapshot = tmp_path / "hub" / "models--acme--minilm" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).symlink_to(minilm_dir / name)
    (tmp_path / "hub" / "models--acme--minilm" / "refs").mkdir()
    (tmp_path / "hub" / "models--acme--minilm" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    from spectra.analysis.sources import cached_base as resolve_base

    assert resolve_base("acme/minilm") == snapshot
    assert resolve_base("acme/other") is None
    assert resolve_base(str(minilm_dir)) == minilm_dir


@pytest.mark.parametrize("lora_nums, heads", [(2, 3), (3, 2), (None, 2)])
def test_heads_that_disagree_with_lora_nums_are_an_error(tmp_path, lora_nums, heads):
    """lora_B0 … lora_B{heads-1} against the config's lora_nums: no head is dropped silently."""
    prefix = "base_model.model.encoder.layer.0.attention.self.key"
    state = {f"{prefix}.lora_A.weight": torch.randn(4, 384)}
    state |= {f"{prefix}.lora_B{j}.weight": torch.randn(384, 4) for j in range(heads)}
    state[f"{prefix}.lora_route.weight"] = torch.randn(heads, 384)
    torch.save(state, tmp_path / "adapter_model.bin")
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "lora_nums": lora_nums}
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    found = ", ".join(f"lora_B{j}" for j in range(heads))
    expected = rf"adapter_model.bin: .*key has heads {found}, but .*lora_nums = {lora_nums}"
    with pytest.raises(FormatError, match=expected):
        spectra.load(tmp_path)
