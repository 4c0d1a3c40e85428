"""Every PEFT variant saved in float32, bfloat16 and float16, read twice, against peft in float64.

The reference is independent of spectra: peft loads the *saved* adapter
tensors onto the float64 base, the model is widened to float64 and merged
with ``merge_and_unload()``, and the base weight is subtracted. Half-precision
values are exact in float64, so a rebuild done wholly in float64 matches that
merge to ~1e-15 relative; one arithmetic step taken in the checkpoint's dtype
(bf16 keeps 8 bits) shows up as an error of 1e-4 or so. Hence the 1e-10
bound, and σ against numpy's float64 SVD of the reference to 1e-10.

Each adapter is read twice through one ``Checkpoint``: the second read must be
bit-identical to the first (no loader writes into a tensor it does not own)
and right against the reference.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open

import spectra
from tests.helpers.adapters import random_peft_model, save_peft_adapter
from tests.helpers.checks import (
    DTYPES,
    assert_same_reads,
    dtype_id,
    read_deltas,
    reference_sigma,
    relative_error,
)

# Every PEFT variant in three dtypes, each merged by peft in float64.
pytestmark = pytest.mark.slow

LAYERS = [0, 1]  # two layers carry every code path; the rest would only cost time


def _configs():
    from peft import AdaLoraConfig, LoHaConfig, LoKrConfig, LoraConfig, VeraConfig

    common = {"target_modules": ["key", "value"], "layers_to_transform": LAYERS}
    return {
        "lora": LoraConfig(r=8, lora_alpha=16, **common),
        "lora-bin": LoraConfig(r=8, lora_alpha=16, **common),  # adapter_model.bin
        "rslora": LoraConfig(r=4, lora_alpha=8, use_rslora=True, **common),
        "patterns": LoraConfig(
            r=8,
            lora_alpha=16,
            target_modules=["query", "key", "value"],
            layers_to_transform=LAYERS,
            rank_pattern={"key": 4},
            alpha_pattern={"layer.1.attention.self.value": 64},
        ),
        "dora": LoraConfig(r=4, lora_alpha=8, use_dora=True, **common),
        "adalora": AdaLoraConfig(init_r=6, target_r=3, lora_alpha=8, total_step=100, **common),
        "loha": LoHaConfig(r=4, alpha=8, **common),
        "lokr": LoKrConfig(r=4, alpha=6, **common),
        "vera": VeraConfig(r=16, save_projection=True, **common),
    }


VARIANTS = [
    "lora",
    "lora-bin",
    "rslora",
    "patterns",
    "dora",
    "adalora",
    "loha",
    "lokr",
    "vera",
]


@pytest.fixture(scope="module")
def peft_model(minilm_dir):
    """``peft_model(variant)``: a random float32 peft model, kept while its dtypes are saved."""
    last = {}

    def model(variant: str):
        if variant not in last:
            last.clear()  # variants come one after another: hold one model at a time
            config, seed = _configs()[variant], VARIANTS.index(variant)
            last[variant] = random_peft_model(minilm_dir, config, seed)
        return last[variant]

    return model


@pytest.fixture(
    scope="module",
    params=[(variant, dtype) for variant in VARIANTS for dtype in DTYPES],
    ids=lambda param: f"{param[0]}-{dtype_id(param[1])}",
)
def saved(request, peft_model, tmp_path_factory, minilm_dir):
    """Each variant saved from one model in each dtype, with peft's float64 merge of the file."""
    variant, dtype = request.param
    folder = tmp_path_factory.mktemp(f"{variant}-{dtype_id(dtype)}")
    safe = variant != "lora-bin"
    return variant, dtype, save_peft_adapter(peft_model(variant), folder, minilm_dir, dtype, safe)


def _options(variant: str, base) -> dict:
    """DoRA needs the base; the patterns adapter also adapts q, which is not a default role."""
    return {"dora": {"base": base}, "patterns": {"modules": ["q", "k", "v"]}}.get(variant, {})


def _saved_dtypes(folder) -> set[torch.dtype]:
    """The dtypes of the floating tensors in the saved adapter file, read without spectra."""
    if (folder / "adapter_model.bin").is_file():
        state = torch.load(folder / "adapter_model.bin", weights_only=True)
        return {tensor.dtype for tensor in state.values() if tensor.is_floating_point()}
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as file:
        return {file.get_tensor(key).dtype for key in file.keys()}  # noqa: SIM118


def test_adapter_in_each_dtype_read_twice_matches_peft_merge_in_float64(saved, minilm_dir):
    variant, dtype, adapter = saved
    assert _saved_dtypes(adapter.path) == {dtype}  # the premise: the file really is in dtype
    assert len(adapter.reference) == (6 if variant == "patterns" else 4)

    options = _options(variant, minilm_dir)
    checkpoint = spectra.load(adapter.path, base=options.get("base"))
    first = read_deltas(checkpoint, modules=options.get("modules"))
    second = read_deltas(checkpoint, modules=options.get("modules"))
    assert_same_reads(first, second)
    assert {(r.delta.layer, r.delta.role) for r in second} == set(adapter.reference)

    for read in second:
        delta = read.delta
        reference = adapter.reference[(delta.layer, delta.role)]
        assert delta.source_dtype == dtype, delta.key
        assert read.dense.shape == reference.shape
        error = relative_error(read.dense, reference)
        assert error < 1e-10, (delta.key, error)
        sigma = spectra.singular_values(delta, device="cpu", method="exact").numpy()
        expected = reference_sigma(reference)
        k = len(sigma)
        np.testing.assert_allclose(
            sigma, expected[:k], rtol=1e-10, atol=1e-12 * expected[0], err_msg=delta.key
        )
        assert np.all(expected[k:] <= 1e-12 * expected[0]), delta.key


def test_report_of_an_adapter_in_each_dtype_states_it_and_matches_numpy(saved, minilm_dir):
    """analyze() (the pipeline, not deltas()) in each dtype: the row's dtype, σ against numpy."""
    variant, dtype, adapter = saved
    options = _options(variant, minilm_dir)
    report = spectra.analyze(adapter.path, method="exact", layers=[1], **options)
    assert {(row["layer"], row["role"]) for row in report.rows} == {
        key for key in adapter.reference if key[0] == 1
    }
    assert {row["dtype"] for row in report.rows} == {dtype_id(dtype)}
    for row in report.rows:
        sigma = report.spectrum(row["layer"], row["role"])
        expected = reference_sigma(adapter.reference[(row["layer"], row["role"])])
        k = len(sigma)
        np.testing.assert_allclose(sigma, expected[:k], rtol=1e-10, atol=1e-12 * expected[0])
