"""The ΔW formulas of ``spectra.loaders.methods`` against independent references.

Each function is given tensors as a file would hold them (float32, bfloat16,
float16) and compared with peft's own ``get_delta_weight`` / ``merge`` run in
float64 on the same values (which every one of these dtypes holds exactly),
or with numpy float64 where peft has no layer for the method (MultiLoRA,
multi-head LoRA), or with hand-computed values. The patterns rule is checked
against peft's ``get_pattern_key``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from spectra.delta import Dense, Factored
from spectra.errors import FormatError
from spectra.loaders.methods import adalora, dora, lora, lycoris, multihead, multilora, vera
from tests.helpers.checks import DTYPES, dtype_id

FUSED_ROWS = slice(4, 12)  # one role's rows of a fused module


class Tiny(nn.Module):
    """Two linear layers of different shapes and a conv, for peft to adapt."""

    def __init__(self, width: int = 12):
        super().__init__()
        self.proj = nn.Linear(width, 16)
        self.proj2 = nn.Linear(8, 10)
        self.conv = nn.Conv2d(6, 8, 3)
        self.wide = nn.Linear(64, 64)
        self.conv32 = nn.Conv2d(32, 32, 3)


def peft_layer(config, module: str, dtype: torch.dtype, seed: int = 0):
    """A peft model in float64 whose every tensor holds values ``dtype`` represents exactly."""
    from peft import get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(Tiny(), config).double()
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:  # VeRA's shared A, B: buffers
            tensor.copy_(torch.randn_like(tensor).to(dtype).double())
    return model, model.base_model.model.get_submodule(module)


def stored(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The tensor as a file of ``dtype`` holds it (exact: its values came from ``dtype``)."""
    return tensor.detach().to(dtype)


def rel_error(rebuilt: torch.Tensor, reference: torch.Tensor | np.ndarray) -> float:
    if isinstance(reference, torch.Tensor):  # peft's result, float64
        reference = reference.detach().numpy()
    expected = np.asarray(reference, dtype=np.float64)
    found = rebuilt.numpy()
    assert found.shape == expected.shape
    return float(np.linalg.norm(found - expected) / np.linalg.norm(expected))


def np64(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().double().numpy()


def assert_rows_match(build, reference: torch.Tensor, tolerance: float) -> None:
    """``build(rows)`` equals ``reference[rows]`` for the whole module and one role's rows."""
    for rows in (slice(None), FUSED_ROWS):
        update = build(rows)
        matrix = update.matrix if isinstance(update, Dense) else update.to_dense()
        assert matrix.dtype == torch.float64
        assert rel_error(matrix, reference[rows]) < tolerance


# -- LoRA, rsLoRA, the pattern rule -------------------------------------------


def test_lora_scale_by_hand():
    assert lora.scale(8, 16) == 2.0
    assert lora.scale(16, 8, rslora=True) == 2.0
    assert lora.scale(4, 6) == 1.5
    assert lora.scale_text(8, 16, "r", "lora_alpha", False) == "lora_alpha/r = 16/8"
    assert lora.scale_text(16, 8, "r", "lora_alpha", True) == "lora_alpha/√r = 8/√16"


@pytest.mark.parametrize("rslora", [False, True], ids=["lora", "rslora"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_lora_factored_against_peft(dtype, rslora):
    from peft import LoraConfig

    config = LoraConfig(
        r=4, lora_alpha=6, use_rslora=rslora, target_modules=["proj"], init_lora_weights=False
    )
    _, layer = peft_layer(config, "proj", dtype)
    A, B = (stored(m["default"].weight, dtype) for m in (layer.lora_A, layer.lora_B))
    s = layer.scaling["default"]
    assert s == (6 / 2 if rslora else 6 / 4)  # peft's scale, by hand
    assert isinstance(lora.factored(B, A, s), Factored)
    reference = layer.get_delta_weight("default")  # (16, 12) float64
    assert_rows_match(lambda rows: lora.factored(B, A, s, rows), reference, 1e-13)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_minus_initial_against_numpy(dtype):
    g = torch.Generator().manual_seed(3)
    B, B0 = (torch.randn(16, 4, generator=g).to(dtype) for _ in range(2))
    A, A0 = (torch.randn(4, 12, generator=g).to(dtype) for _ in range(2))
    update = lora.minus_initial(B, A, B0, A0, 0.75, FUSED_ROWS)
    reference = 0.75 * (np64(B) @ np64(A) - np64(B0) @ np64(A0))
    assert update.rank == 8
    assert rel_error(update.to_dense(), reference[FUSED_ROWS]) < 1e-13


def test_pattern_rule_against_peft():
    from peft.utils.other import get_pattern_key

    patterns = {"query": 2, "layer.1.attention.self.value": 6, "key": 3}
    modules = [
        "encoder.layer.0.attention.self.query",
        "encoder.layer.1.attention.self.value",
        "encoder.layer.0.attention.self.value",
        "encoder.layer.0.attention.self.key",
        "encoder.layer.0.attention.self.xquery",  # a key matches a whole name part only
        "query",
    ]
    for module in modules:
        expected = get_pattern_key(list(patterns), module)
        found = lora.pattern_value(patterns, module)
        if expected == module and module not in patterns:
            assert found is None, module
        else:
            assert found == (expected, patterns[expected]), module
    assert lora.pattern_value(patterns, "encoder.layer.0.attention.self.xquery") is None
    assert lora.pattern_value(None, "query") is None


def test_rank_and_alpha_from_patterns_and_errors():
    config = {
        "r": 8,
        "lora_alpha": 16,
        "rank_pattern": {"value": 4},
        "alpha_pattern": {"layer.2.attention.self.value": 2},
    }
    assert lora.rank_and_alpha(
        config, "encoder.layer.0.attention.self.query", "lora_alpha", "f"
    ) == (
        8,
        16.0,
        "r",
        "lora_alpha",
    )
    assert lora.rank_and_alpha(
        config, "encoder.layer.2.attention.self.value", "lora_alpha", "f"
    ) == (
        4,
        2.0,
        "rank_pattern['value']",
        "alpha_pattern['layer.2.attention.self.value']",
    )
    with pytest.raises(FormatError) as error:
        lora.rank_and_alpha(
            {"r": "8", "lora_alpha": 16}, "q", "lora_alpha", "/x/adapter_config.json"
        )
    assert str(error.value) == "/x/adapter_config.json: expected a number for r, found '8'"
    with pytest.raises(FormatError, match=r"for meta unet\.lora_alpha, found True"):
        lora.rank_and_alpha({"r": 4, "lora_alpha": True}, "q", "lora_alpha", "f", "meta unet.")


# -- DoRA ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_dora_against_peft_merge(dtype):
    from peft import LoraConfig

    config = LoraConfig(
        r=4, lora_alpha=6, use_dora=True, target_modules=["proj"], init_lora_weights=False
    )
    _, layer = peft_layer(config, "proj", dtype, seed=1)
    W0 = layer.base_layer.weight.detach().clone()  # (16, 12) float64
    A, B = (stored(m["default"].weight, dtype) for m in (layer.lora_A, layer.lora_B))
    magnitude = stored(layer.lora_magnitude_vector["default"].weight, dtype)  # (16,)
    s = layer.scaling["default"]
    layer.merge()  # peft's own DoRA merge, in float64
    reference = layer.base_layer.weight.detach() - W0

    def rebuild(rows):
        return dora.delta(stored(W0, dtype), B, A, s, magnitude, rows)

    assert isinstance(rebuild(slice(None)), Dense)
    assert_rows_match(rebuild, reference, 1e-12)


def test_dora_against_numpy_and_inputs_untouched():
    g = torch.Generator().manual_seed(5)
    W0, B, A = (
        torch.randn(6, 5, generator=g),
        torch.randn(6, 2, generator=g),
        torch.randn(2, 5, generator=g),
    )
    m = torch.rand(6, 1, generator=g) + 0.5  # (d_out, 1), as torchtune / MLX shape it
    before = [t.clone() for t in (W0, B, A, m)]
    update = dora.delta(W0, B, A, 0.5, m)
    V = np64(W0) + 0.5 * np64(B) @ np64(A)
    reference = (np64(m).reshape(-1) / np.sqrt((V**2).sum(axis=1)))[:, None] * V - np64(W0)
    assert rel_error(update.matrix, reference) < 1e-13
    assert all(torch.equal(x, y) for x, y in zip(before, (W0, B, A, m), strict=True))


# -- LoHa, LoKr and their Tucker cores --------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_loha_against_peft(dtype):
    from peft import LoHaConfig

    config = LoHaConfig(r=4, alpha=6, target_modules=["proj"], init_weights=False)
    _, layer = peft_layer(config, "proj", dtype, seed=2)
    parts = [
        stored(getattr(layer, f"hada_{p}")["default"], dtype)
        for p in ("w1_a", "w1_b", "w2_a", "w2_b")
    ]
    s = layer.scaling["default"]
    assert s == 1.5
    reference = layer.get_delta_weight("default")  # (16, 12)
    assert_rows_match(lambda rows: lycoris.loha(*parts, s, rows=rows), reference, 1e-13)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_loha_tucker_against_peft_conv(dtype):
    from peft import LoHaConfig

    config = LoHaConfig(
        r=3, alpha=6, target_modules=["conv"], init_weights=False, use_effective_conv2d=True
    )
    _, layer = peft_layer(config, "conv", dtype, seed=4)
    get = {
        p: stored(getattr(layer, f"hada_{p}")["default"], dtype)
        for p in ("w1_a", "w1_b", "w2_a", "w2_b", "t1", "t2")
    }
    assert tuple(get["t1"].shape) == (3, 3, 3, 3) and tuple(get["w1_a"].shape) == (3, 8)
    update = lycoris.loha(
        get["w1_a"], get["w1_b"], get["w2_a"], get["w2_b"], 2.0, t1=get["t1"], t2=get["t2"]
    )
    reference = layer.get_delta_weight("default").reshape(8, -1)  # (8, 6·3·3)
    assert rel_error(update.matrix, reference) < 1e-13


def test_tucker_against_numpy_sum():
    g = torch.Generator().manual_seed(6)
    core, wa, wb = (
        torch.randn(2, 3, 2, 2, generator=g),
        torch.randn(2, 4, generator=g),
        torch.randn(3, 5, generator=g),
    )
    reference = np.zeros((4, 5, 2, 2))
    for i in range(2):
        for j in range(3):
            reference += (
                np64(core)[i, j][None, None] * np.outer(np64(wa)[i], np64(wb)[j])[:, :, None, None]
            )
    assert rel_error(lycoris.tucker(core, wa, wb), reference.reshape(4, 20)) < 1e-13


@pytest.mark.parametrize(
    ("rank", "decompose"), [(2, True), (8, False)], ids=["split-w1-w2", "whole-w1-w2"]
)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_lokr_against_peft(dtype, rank, decompose):
    from peft import LoKrConfig

    config = LoKrConfig(
        r=rank, alpha=3, target_modules=["wide"], init_weights=False, decompose_both=decompose
    )
    _, layer = peft_layer(config, "wide", dtype, seed=7)

    def factor(which: str) -> torch.Tensor:
        whole = getattr(layer, f"lokr_{which}")
        if "default" in whole:
            return lycoris.lokr_factor(whole=stored(whole["default"], dtype))
        a, b = (stored(getattr(layer, f"lokr_{which}_{x}")["default"], dtype) for x in "ab")
        return lycoris.lokr_factor(a=a, b=b)

    split = ("default" in layer.lokr_w1_a, "default" in layer.lokr_w2_a)
    assert split == ((True, True) if decompose else (False, False))
    s = layer.scaling["default"]
    assert s == 3 / rank
    reference = layer.get_delta_weight("default")  # (64, 64)
    assert_rows_match(
        lambda rows: lycoris.lokr(factor("w1"), factor("w2"), s, rows), reference, 1e-13
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_lokr_tucker_against_peft_conv(dtype):
    from peft import LoKrConfig

    config = LoKrConfig(
        r=2, alpha=4, target_modules=["conv32"], init_weights=False, use_effective_conv2d=True
    )
    _, layer = peft_layer(config, "conv32", dtype, seed=8)
    assert "default" in layer.lokr_t2 and "default" in layer.lokr_w1
    w1 = lycoris.lokr_factor(whole=stored(layer.lokr_w1["default"], dtype))
    w2 = lycoris.lokr_factor(
        a=stored(layer.lokr_w2_a["default"], dtype),
        b=stored(layer.lokr_w2_b["default"], dtype),
        core=stored(layer.lokr_t2["default"], dtype),
    )
    update = lycoris.lokr(w1, w2, layer.scaling["default"])
    reference = layer.get_delta_weight("default").reshape(32, -1)  # (32, 32·3·3)
    assert rel_error(update.matrix, reference) < 1e-13


def test_lokr_conv_factor_flattening_by_hand():
    """kron of flattened factors is the flattened 4-D kron (LyCORIS's make_kron), by numpy."""
    g = torch.Generator().manual_seed(9)
    w1, w2 = torch.randn(2, 3, generator=g), torch.randn(4, 5, 3, 3, generator=g)
    reference = np.kron(np64(w1)[:, :, None, None], np64(w2)).reshape(8, -1)  # (8, 15·9)
    update = lycoris.lokr(lycoris.lokr_factor(whole=w1), lycoris.lokr_factor(whole=w2), 0.5)
    assert rel_error(update.matrix, 0.5 * reference) < 1e-13


# -- AdaLoRA, VeRA ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_adalora_against_peft(dtype):
    from peft import AdaLoraConfig

    config = AdaLoraConfig(
        init_r=6, target_r=4, lora_alpha=8, target_modules=["proj"], total_step=10
    )
    _, layer = peft_layer(config, "proj", dtype, seed=10)
    A, B, E = (stored(getattr(layer, f"lora_{p}")["default"], dtype) for p in "ABE")
    s = layer.scaling["default"] / (float(layer.ranknum["default"]) + 1e-5)
    update = adalora.delta(A, B, E, s, FUSED_ROWS)
    reference = layer.get_delta_weight("default")  # (16, 12)
    assert rel_error(update.to_dense(), reference[FUSED_ROWS]) < 1e-13


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_vera_against_peft(dtype):
    from peft import VeraConfig

    config = VeraConfig(r=4, target_modules=["proj", "proj2"], save_projection=True)
    model, _ = peft_layer(config, "proj", dtype, seed=11)
    shared_A = stored(model.base_model.vera_A["default"], dtype)  # (4, 12): the widest d_in
    shared_B = stored(model.base_model.vera_B["default"], dtype)  # (16, 4): the widest d_out
    for name, d_in in (("proj", 12), ("proj2", 8)):
        layer = model.base_model.model.get_submodule(name)
        lambda_b, lambda_d = (
            stored(v["default"], dtype) for v in (layer.vera_lambda_b, layer.vera_lambda_d)
        )
        update = vera.delta(shared_A, shared_B, lambda_b, lambda_d, d_in)
        reference = layer.get_delta_weight("default")
        assert rel_error(update.to_dense(), reference) < 1e-13, name
        assert update.scale == 1.0


# -- MultiLoRA, multi-head LoRA ----------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_multilora_against_numpy(dtype):
    g = torch.Generator().manual_seed(12)
    A = torch.randn(3, 2, 12, generator=g).to(dtype)  # (n, r, d_in)
    B = torch.randn(3, 16, 2, generator=g).to(dtype)  # (n, d_out, r)
    c = torch.randn(3, 16, generator=g).to(dtype)  # (n, d_out)
    heads = [0.5 * np.diag(np64(c)[i]) @ np64(B)[i] @ np64(A)[i] for i in range(3)]
    whole = multilora.summed(A, B, c, 0.5, FUSED_ROWS)
    assert whole.rank == 6
    assert rel_error(whole.to_dense(), sum(heads)[FUSED_ROWS]) < 1e-13
    for update, reference in zip(multilora.each_head(A, B, c, 0.5, FUSED_ROWS), heads, strict=True):
        assert rel_error(update.to_dense(), reference[FUSED_ROWS]) < 1e-13


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_multihead_against_numpy(dtype):
    g = torch.Generator().manual_seed(13)
    A = torch.randn(2, 12, generator=g).to(dtype)  # (r, d_in)
    Bs = [torch.randn(16, 2, generator=g).to(dtype) for _ in range(3)]  # each (d_out, r)
    heads = [1.5 * np64(B) @ np64(A) for B in Bs]
    mixture = multihead.mixture(A, Bs, 1.5, FUSED_ROWS)
    assert rel_error(mixture.to_dense(), (sum(heads) / 3)[FUSED_ROWS]) < 1e-13
    each = multihead.each_head(A, Bs, 1.5, FUSED_ROWS)
    assert len(each) == 3
    for update, reference in zip(each, heads, strict=True):
        assert rel_error(update.to_dense(), reference[FUSED_ROWS]) < 1e-13
    assert math.isclose(mixture.scale, 1.5)
