"""VB-LoRA, RandLoRA, TinyLoRA, UniLoRA, PVeRA and DeLoRA, made by peft 0.21 on MiniLM.

Each method's adapter is made once (k and v of layers 0 and 1, trainable
tensors random) and saved in float32, bfloat16 and float16; the reference is
peft's own float64 merge of the saved file minus W₀. spectra's rebuilt ΔW must
match it to 1e-10 relative Frobenius error, its exact σ numpy's SVD of it to
1e-10 of σ₁; two reads must give the same tensors, and every tensor of the
file must be analysed or listed with a reason. The frozen bases peft draws
again from a seed (RandLoRA, PVeRA with ``save_projection=False``) are drawn
by spectra too; the files whose rebuild depends on what no file records
(UniLoRA without its indices, TinyLoRA without its projections) are refused.
"""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open

import spectra
from spectra.errors import FormatError, MissingBaseError
from spectra.loaders.naming.architectures import canonical_name
from tests.helpers.adapters import random_peft_model, save_peft_adapter
from tests.helpers.checks import (
    DTYPES,
    assert_same_reads,
    dtype_id,
    read_deltas,
    reference_sigma,
    relative_error,
)
from tests.helpers.peft_methods import file_dtypes, float_dtypes

TARGETS = {"target_modules": ["key", "value"], "layers_to_transform": [0, 1]}
MODULES = {(layer, role) for layer in (0, 1) for role in ("k", "v")}
# k (384, 384), o (384, 384), up (1536, 384) and down (384, 1536) of layer 0
WIDTHS = {
    "target_modules": ["key", "intermediate.dense", "output.dense"],
    "layers_to_transform": [0],
}


def _config(case: str):
    import peft

    return {
        "vblora": lambda: peft.VBLoRAConfig(r=4, num_vectors=32, vector_length=128, **TARGETS),
        "vblora_topk": lambda: peft.VBLoRAConfig(
            r=4, num_vectors=32, vector_length=128, topk=3, save_only_topk_weights=True, **TARGETS
        ),
        "randlora": lambda: peft.RandLoraConfig(r=32, randlora_alpha=64, **TARGETS),
        "randlora_drawn": lambda: peft.RandLoraConfig(
            r=48, projection_prng_key=5, save_projection=False, **TARGETS
        ),
        "randlora_sparse": lambda: peft.RandLoraConfig(
            r=32, sparse=True, save_projection=False, **TARGETS
        ),
        "tinylora": lambda: peft.TinyLoraConfig(r=4, u=8, projection_seed=7, **TARGETS),
        # q before k in the model, after it in the file: 4 modules, 3 vectors (the last two share)
        "tinylora_tied": lambda: peft.TinyLoraConfig(
            r=3, u=5, weight_tying=0.25, target_modules=["query", "key"], layers_to_transform=[0, 1]
        ),
        "tinylora_unsaved": lambda: peft.TinyLoraConfig(r=4, u=8, save_projection=False, **TARGETS),
        "unilora": lambda: peft.UniLoraConfig(r=4, theta_d_length=64, save_indices=True, **TARGETS),
        "unilora_unsaved": lambda: peft.UniLoraConfig(r=4, theta_d_length=64, **TARGETS),
        "pvera": lambda: peft.PveraConfig(r=8, **TARGETS),
        "pvera_drawn": lambda: peft.PveraConfig(
            r=6, projection_prng_key=3, save_projection=False, **TARGETS
        ),
        "delora": lambda: peft.DeloraConfig(r=4, **TARGETS),
        "randlora_widths": lambda: peft.RandLoraConfig(r=64, save_projection=False, **WIDTHS),
        "pvera_widths": lambda: peft.PveraConfig(r=4, save_projection=False, **WIDTHS),
    }[case]()


# The tensors each method shares across modules (the rest belong to a module).
SHARED = {
    "VB-LoRA": {"vblora_vector_bank"},
    "RandLoRA": {"randlora_A", "randlora_B"},
    "TinyLoRA": {"tinylora_v.0", "tinylora_v.1", "tinylora_v.2", "tinylora_v.3"},
    "UniLoRA": {"unilora_theta_d"},
    "PVeRA": {"pvera_A", "pvera_B"},
    "DeLoRA": set(),
}


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, minilm_dir):
    """``adapters(case, dtype)``: the case's peft model (made once) saved in ``dtype``."""
    models, saved = {}, {}

    def made(case: str, dtype: torch.dtype = torch.float32, reference: bool = True):
        if (case, dtype) not in saved:
            if case not in models:
                models[case] = random_peft_model(minilm_dir, _config(case), seed=11)
            folder = tmp_path_factory.mktemp(f"{case}-{dtype_id(dtype)}")
            if reference:
                saved[case, dtype] = save_peft_adapter(models[case], folder, minilm_dir, dtype)
            else:
                model = models[case] if dtype == torch.float32 else copy.deepcopy(models[case])
                model.to(dtype).save_pretrained(str(folder))
                saved[case, dtype] = folder
        return saved[case, dtype]

    return made


def _check_against_peft(adapter, dtype: torch.dtype, tolerance: float = 1e-10) -> None:
    """Rebuild, σ, two reads and nothing dropped, against peft's float64 merge."""
    modules = set(adapter.reference)  # the premise: peft's merge moved each module
    assert len(modules) == 4 and {role for _, role in modules} <= {"q", "k", "v"}
    roles = sorted({role for _, role in modules})
    assert all(np.linalg.norm(ref) > 0 for ref in adapter.reference.values())
    tensors = file_dtypes(adapter.path)
    assert float_dtypes(adapter.path) == {dtype}

    checkpoint = spectra.load(adapter.path)
    first, second = read_deltas(checkpoint, modules=roles), read_deltas(checkpoint, modules=roles)
    assert_same_reads(first, second)
    assert {(read.delta.layer, read.delta.role) for read in first} == modules
    for read in first:
        assert read.delta.source_dtype == dtype
        reference = adapter.reference[(read.delta.layer, read.delta.role)]
        assert relative_error(read.dense, reference) <= tolerance, read.delta.key

    report = spectra.analyze(adapter.path, modules=roles, method="exact")
    assert {row["kind"] for row in report.rows} == {"factored"}
    for row in report.rows:
        sigma = report.spectrum(row["layer"], row["role"])
        expected = reference_sigma(adapter.reference[(row["layer"], row["role"])])
        k = len(sigma)
        np.testing.assert_allclose(sigma, expected[:k], rtol=0, atol=tolerance * expected[0])
        assert np.all(expected[k:] <= tolerance * expected[0])

    _assert_nothing_dropped(checkpoint, tensors)


def _assert_nothing_dropped(checkpoint, tensors) -> None:
    """Each tensor of the file: a part of an analysed module, a shared one, or listed."""
    info = checkpoint.describe()
    left_out = dict(info.not_analysed)
    analysed = {m.name for m in info.modules}
    shared = SHARED[info.variant]
    for name in tensors:
        module = canonical_name(name).rpartition(".")[0]
        if name in left_out:
            assert left_out[name], name
        elif module in analysed:
            continue
        else:
            assert name.removeprefix("base_model.") in shared, f"{name} vanished"


CASES = ["vblora", "randlora", "tinylora", "unilora", "pvera", "delora"]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", CASES)
def test_matches_peft_merge(adapters, case, dtype):
    _check_against_peft(adapters(case, dtype), dtype)


@pytest.mark.slow
@pytest.mark.parametrize(
    "case, dtype",
    [
        ("randlora_drawn", torch.bfloat16),  # dense bases drawn in bfloat16 from the seed
        ("randlora_sparse", torch.float32),  # ternary bases drawn from a float32 uniform
        ("pvera_drawn", torch.float16),
        ("tinylora_tied", torch.float32),  # each module's vector, from the seed of its P
    ],
)
def test_bases_drawn_from_the_seed_and_tied_vectors(adapters, case, dtype):
    adapter = adapters(case, dtype)
    names = set(file_dtypes(adapter.path))
    if case.endswith("drawn") or case.endswith("sparse"):
        assert not names & {"base_model.randlora_A", "base_model.pvera_A"}  # the premise
    else:
        assert {n for n in names if "tinylora_v" in n} == {
            f"base_model.tinylora_v.{i}" for i in range(3)
        }
    _check_against_peft(adapter, dtype)


def _vblora_topk_reference(folder) -> dict[tuple[int, str], np.ndarray]:
    """ΔW of a top-k-only VB-LoRA file in numpy float64, from peft's layout, per (layer, role)."""
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as file:
        tensors = {name: file.get_tensor(name).double().numpy() for name in file.keys()}  # noqa: SIM118
    bank = tensors["base_model.vblora_vector_bank"]  # (n, L)

    def factor(prefix: str) -> np.ndarray:  # (…, L): Σ_j w_j · bank[index_j]
        first = tensors[f"{prefix}_topk_weights"]
        weights = np.concatenate([first, 1 - first.sum(-1, keepdims=True)], axis=-1)
        indices = tensors[f"{prefix}_topk_indices"].astype(np.int64)
        return np.einsum("...k,...kl->...l", weights, bank[indices])

    reference = {}
    for layer, role in MODULES:
        name = {"k": "key", "v": "value"}[role]
        stem = f"base_model.model.encoder.layer.{layer}.attention.self.{name}"
        A = factor(f"{stem}.vblora_logits_A")  # (r, d_in/L, L)
        B = factor(f"{stem}.vblora_logits_B")  # (d_out/L, r, L)
        rank = A.shape[0]
        reference[layer, role] = B.transpose(0, 2, 1).reshape(-1, rank) @ A.reshape(rank, -1)
    return reference


@pytest.mark.slow
def test_vblora_saved_as_top_k_weights(adapters, tmp_path):
    """``save_only_topk_weights``: k−1 weights and k indices per piece, the k-th weight 1 − Σ.

    peft's reload turns the weights into logits (their float32 log) and back
    through a softmax, exact but for rounding: against its merge, 1e-6; against
    the weights as saved, summed in numpy float64, 1e-12. peft cannot reload
    such a file saved in half precision at all; spectra reads it.
    """
    adapter = adapters("vblora_topk")
    checkpoint = spectra.load(adapter.path)
    exact = _vblora_topk_reference(adapter.path)
    for delta in checkpoint.deltas():
        rebuilt = delta.update.to_dense().numpy()
        assert relative_error(rebuilt, adapter.reference[(delta.layer, delta.role)]) < 1e-6
        assert relative_error(rebuilt, exact[(delta.layer, delta.role)]) < 1e-12
    _assert_nothing_dropped(checkpoint, file_dtypes(adapter.path))

    folder = adapters("vblora_topk", torch.bfloat16, reference=False)
    exact = _vblora_topk_reference(folder)
    reads = read_deltas(spectra.load(folder))
    assert {read.delta.source_dtype for read in reads} == {torch.bfloat16}
    for read in reads:
        assert relative_error(read.dense, exact[(read.delta.layer, read.delta.role)]) < 1e-12


def _without_base(folder, tmp_path):
    """A copy of an adapter folder whose config names a base that cannot be found."""
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    config = json.loads((copy / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "nowhere/to-be-found"
    (copy / "adapter_config.json").write_text(json.dumps(config))
    return copy


@pytest.mark.slow
@pytest.mark.parametrize("case", ["randlora", "pvera", "randlora_drawn"])
def test_shapes_from_the_base_model(adapters, case, tmp_path, minilm_dir):
    """RandLoRA and PVeRA save no module's d_in (nor RandLoRA which side is smaller)."""
    adapter = adapters(case, torch.bfloat16 if case == "randlora_drawn" else torch.float32)
    folder = _without_base(adapter.path, tmp_path)
    with pytest.raises(MissingBaseError, match="base=DIR"):
        spectra.analyze(folder)
    info = spectra.load(folder).describe()
    assert {m.shape[1] for m in info.modules} == {None}
    assert any("comes from the base model" in warning for warning in info.warnings)
    report = spectra.analyze(folder, base=minilm_dir, method="exact")
    for row in report.rows:
        expected = reference_sigma(adapter.reference[(row["layer"], row["role"])])
        sigma = report.spectrum(row["layer"], row["role"])
        np.testing.assert_allclose(sigma, expected[: len(sigma)], rtol=0, atol=1e-10 * expected[0])


@pytest.mark.slow
@pytest.mark.parametrize("case", ["vblora", "tinylora", "unilora", "delora"])
def test_no_base_needed(adapters, case, tmp_path):
    """Everything these need is in the file: DeLoRA saves W₀'s column norms (delora_w_norm)."""
    adapter = adapters(case)
    report = spectra.analyze(_without_base(adapter.path, tmp_path), method="exact")
    assert {(row["layer"], row["role"]) for row in report.rows} == MODULES


@pytest.mark.slow
@pytest.mark.parametrize(
    "case, match",
    [
        ("unilora_unsaved", r"save_indices is False.*named_modules.*save_indices=True"),
        ("tinylora_unsaved", r"save_projection is false.*named_modules.*save_projection=True"),
    ],
)
def test_refused_where_the_file_does_not_say_how_peft_rebuilds(adapters, case, match):
    """peft rebuilds these from a seed and the model's module order, which nothing saves."""
    folder = adapters(case, reference=False)
    with pytest.raises(FormatError, match=match):
        spectra.load(folder)


def _merged_by_module(folder, base) -> dict[str, np.ndarray]:
    """peft's float64 merge minus W₀ for every linear layer it changed, by module path."""
    from peft import PeftModel

    from tests.helpers.models import load_bert

    def linears(model) -> dict[str, np.ndarray]:
        return {
            name: module.weight.detach().double().numpy().copy()
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear)
        }

    model = load_bert(base, torch.float64)
    before = linears(model)
    merged = linears(PeftModel.from_pretrained(model, str(folder)).double().merge_and_unload())
    return {name: merged[name] - W0 for name, W0 in before.items() if np.any(merged[name] != W0)}


@pytest.mark.slow
@pytest.mark.parametrize("case", ["randlora_widths", "pvera_widths"])
def test_modules_of_different_widths(adapters, case, minilm_dir):
    """Bases drawn at the largest (1536, 1536) and sliced; RandLoRA turned where d_out < d_in."""
    folder = adapters(case, reference=False)
    reference = _merged_by_module(folder, minilm_dir)
    shapes = {name: matrix.shape for name, matrix in reference.items()}
    assert sorted(shapes.values()) == [(384, 384), (384, 384), (384, 1536), (1536, 384)]
    reads = read_deltas(spectra.load(folder), modules=["k", "o", "up", "down"])
    assert {read.delta.name for read in reads} == set(reference)
    for read in reads:
        assert relative_error(read.dense, reference[read.delta.name]) <= 1e-10, read.delta.key
