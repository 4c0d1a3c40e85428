"""peft 0.21's newest methods made by real peft on MiniLM, against peft's own float64 merge.

DEFT, FRoD, OSF, PEANuT, Super-Tuning and LN tuning (on projections) are
rebuilt: each adapter is saved in float32, bfloat16 and float16, and the
dense rebuild must equal peft's merge minus W0 to 1e-10, σ must equal numpy's
SVD of it, two reads must agree, and every tensor of the file is analysed or
listed. BEFT, LN tuning on LayerNorms and trainable tokens change no
projection's weight: every tensor is listed with what it is. The peft_types
with no single static ΔW (and Arrow, aLoRA, X-LoRA's sub-folders) are refused
with the reason.
"""

from __future__ import annotations

import copy
import json
import re
import shutil

import numpy as np
import pytest
import torch

import spectra
from spectra.errors import FormatError, MissingBaseError
from tests.helpers.adapters import (
    Adapter,
    merged_reference,
    random_peft_model,
    save_peft_adapter,
)
from tests.helpers.checks import (
    DTYPES,
    assert_same_reads,
    dtype_id,
    read_deltas,
    reference_sigma,
    relative_error,
)
from tests.helpers.models import (
    MINILM_LAYERS,
    ROLE_MODULES,
    bert_weight,
    load_bert,
    save_tiny_llama,
)
from tests.helpers.peft_methods import file_dtypes

TARGETS = {"target_modules": ["key", "value"], "layers_to_transform": [0, 1]}
TARGET_REGEX = r".*layer\.[01]\.attention\.self\.(key|value)"  # configs without layers_to_transform


def _configs():
    import peft

    return {
        "deft": peft.DeftConfig(r=4, alpha=8, **TARGETS),
        "deft_para_qr": peft.DeftConfig(r=3, para=True, decomposition_method="qr", **TARGETS),
        # FRoD shares V across the layers of a role: both layers of v, one category (fast).
        "frod": peft.FrodConfig(
            sparse_rate=0.01,
            progressbar=False,
            target_modules=["value"],
            layers_to_transform=[0, 1],
        ),
        "osf": peft.OSFConfig(
            effective_rank=370, target_modules=r".*layer\.0\.attention\.self\.(key|value)"
        ),
        "peanut": peft.PeanutConfig(r=4, depth=1, act_fn="gelu", scaling=0.5, **TARGETS),
        "supra": peft.SupertuningConfig(sparsity=0.99, r=4, target_modules=TARGET_REGEX),
        "ln_tuning": peft.LNTuningConfig(target_modules=TARGET_REGEX),
    }


METHODS = ["deft", "deft_para_qr", "frod", "osf", "peanut", "supra", "ln_tuning"]
VARIANT = {
    "deft": "DEFT",
    "deft_para_qr": "DEFT (PaRa)",
    "frod": "FRoD",
    "osf": "OSF",
    "peanut": "PEANuT",
    "supra": "Super-Tuning (Supra)",
    "ln_tuning": "LN tuning",
}


def _perturb(model, method: str, seed: int) -> None:
    """Move the trained tensors off their start by a few percent, where random values would not.

    FRoD's λ starts at the column norms that rebuild W0 and OSF's factors at
    W0's own low singular part, and LN tuning's copy at W0 itself: scaling
    them a little keeps ΔW a small update of W0 (the hard case: a difference
    of two nearly equal weights), instead of the −W0 that random values give.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not parameter.requires_grad:
                continue
            noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
            if method == "frod" and "lambda_s_values" in name:
                parameter.copy_(0.01 * noise)
            elif method in ("frod", "osf", "ln_tuning"):
                parameter.mul_(1 + 0.05 * noise)


class _Float64Torch:
    """``torch`` with ``float32`` read as ``float64``: DEFT's merge, run by peft in float64."""

    def __getattr__(self, name):
        return torch.float64 if name == "float32" else getattr(torch, name)


def _frod_u_from_saved_v(peft_model) -> None:
    """Give each FRoD layer the frozen U peft computes from the V saved in the file.

    peft computes U at load from the V it regenerates from the base (in the
    dtype the base is loaded in), then loads the saved V: the two agree for a
    float32 file, and for a half-precision one only when the base is loaded in
    that dtype too. U from the saved V, by peft's own function, is that
    consistent case.
    """
    from peft.tuners.frod.layer import FrodLayer

    for module in peft_model.modules():
        if isinstance(module, FrodLayer):
            weight = module.get_base_layer().weight
            U, _ = module._calculate_frod_u_and_lambda(module.frod_V["default"], weight)
            module.frod_U["default"] = U.to(torch.float64)


def _peft_merge(folder, base, prepare=None) -> dict:
    """peft's load and float64 merge minus W0 per (layer, role), ``prepare`` run before merging."""
    from peft import PeftModel

    model = load_bert(base, torch.float64)
    before = {
        (layer, role): bert_weight(model, layer, role)
        for layer in range(MINILM_LAYERS)
        for role in ROLE_MODULES
    }
    peft_model = PeftModel.from_pretrained(model, str(folder)).double()
    if prepare is not None:
        prepare(peft_model)
    merged = peft_model.merge_and_unload()
    return {
        key: bert_weight(merged, *key) - weight
        for key, weight in before.items()
        if np.any(bert_weight(merged, *key) != weight)
    }


def _save(model, folder, dtype):
    """Save a copy of the peft model cast to ``dtype`` (peft writes tensors as held)."""
    (copy.deepcopy(model).to(dtype) if dtype != torch.float32 else model).save_pretrained(
        str(folder)
    )
    return folder


@pytest.fixture(scope="module")
def made(tmp_path_factory, minilm_dir):
    """``made(method)``: {dtype: Adapter} of one method's peft model, saved in every dtype once.

    The reference is peft's float64 merge of the saved file, with DEFT's
    float32 projection run in float64, and FRoD's U from the saved V
    (``_frod_u_from_saved_v``: peft's own merge for a float32 file).
    """
    from peft import get_peft_model
    from peft.tuners.deft import layer as deft_layer

    cache = {}

    def make(method: str):
        if method not in cache:
            config = _configs()[method]
            if method in ("frod", "osf", "ln_tuning"):
                torch.manual_seed(3)
                model = get_peft_model(load_bert(minilm_dir), config)
                _perturb(model, method, seed=3)
            else:
                model = random_peft_model(minilm_dir, config, seed=3)
            saved = {}
            for dtype in DTYPES:
                folder = _save(model, tmp_path_factory.mktemp(f"{method}-{dtype_id(dtype)}"), dtype)
                half_frod = method == "frod" and dtype != torch.float32
                with pytest.MonkeyPatch.context() as patch:
                    if method.startswith("deft"):  # peft projects in float32: run it in float64
                        patch.setattr(deft_layer, "torch", _Float64Torch())
                    prepare = _frod_u_from_saved_v if half_frod else None
                    reference = _peft_merge(folder, minilm_dir, prepare)
                saved[dtype] = Adapter(folder, reference, config.to_dict())
            cache[method] = saved
        return cache[method]

    return make


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("method", METHODS)
def test_rebuild_matches_peft_merge(made, minilm_dir, method, dtype):
    adapter = made(method)[dtype]
    assert {str(t.dtype) for t in _saved_floats(adapter.path)} == {str(dtype)}  # the premise
    checkpoint = spectra.load(adapter.path, base=minilm_dir)
    assert checkpoint.variant == VARIANT[method]
    first = read_deltas(checkpoint)
    assert_same_reads(first, read_deltas(checkpoint))  # and no read wrote into a tensor
    assert {(r.delta.layer, r.delta.role) for r in first} == set(adapter.reference)
    for read in first:
        reference = adapter.reference[(read.delta.layer, read.delta.role)]
        assert relative_error(read.dense, reference) < 1e-10, (read.delta.key, method)

    # jobs=1: σ from ΔW rebuilt on the thread count peft merged with. OSF's initial part (a
    # float32 SVD of W0) and FRoD's U (rounded to float32) are float32 recomputations whose
    # last bits follow the BLAS thread count, in peft as here (see docs/formats.md).
    report = spectra.analyze(adapter.path, base=minilm_dir, modules=["v"], method="exact", jobs=1)
    for row in report.rows:
        sigma = report.spectrum(row["layer"], row["role"])
        expected = reference_sigma(adapter.reference[(row["layer"], row["role"])])
        k = len(sigma)
        np.testing.assert_allclose(sigma, expected[:k], rtol=0, atol=1e-10 * expected[0])
        assert np.all(expected[k:] <= 1e-10 * expected[0])

    # Nothing vanishes: a tensor is a part of an analysed module, shared, or listed with why.
    listed = dict(checkpoint.not_analysed())
    analysed = {read.delta.name for read in first}
    for name in file_dtypes(adapter.path):
        if name in listed:
            assert listed[name], name
        else:  # a part of an analysed module, or FRoD's shared basis of its role
            shared = name.startswith("base_model.frod_")
            assert shared or any(name.startswith(f"base_model.model.{m}.") for m in analysed), name


def _saved_floats(folder) -> list[torch.Tensor]:
    from safetensors.torch import load_file

    return [
        t
        for t in load_file(str(folder / "adapter_model.safetensors")).values()
        if t.is_floating_point()
    ]


def test_deft_float64_rebuild_is_peft_float32_merge_to_its_rounding(made, minilm_dir):
    """peft's own merge projects in float32: the float64 rebuild agrees to float32's rounding."""
    adapter = made("deft")[torch.float32]
    peft_float32 = merged_reference(adapter.path, minilm_dir)
    for key, reference in adapter.reference.items():
        assert relative_error(reference, peft_float32[key]) < 1e-5, key


@pytest.mark.parametrize("method", [m for m in METHODS if m != "supra"])  # Supra: no W0 needed
def test_without_a_base_the_error_names_it(made, tmp_path, method):
    folder = tmp_path / method
    shutil.copytree(made(method)[torch.float32].path, folder)
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = "nowhere/to-be-found"
    config_path.write_text(json.dumps(config))
    with pytest.raises(MissingBaseError, match=r"nowhere/to-be-found.*base=DIR"):
        spectra.analyze(folder, layers=[0])


def test_supertuning_positions_picked_again_from_the_base(tmp_path, minilm_dir):
    """save_precomputed_indices=False: the top-k |W0| support is picked again, as peft does."""
    from peft import SupertuningConfig

    config = SupertuningConfig(
        sparsity=0.99, select_top=False, save_precomputed_indices=False, target_modules=TARGET_REGEX
    )
    model = random_peft_model(minilm_dir, config, seed=4)
    adapter = save_peft_adapter(model, tmp_path / "super", minilm_dir)
    assert not any("indices" in name for name in file_dtypes(adapter.path))  # the premise
    checkpoint = spectra.load(adapter.path, base=minilm_dir)
    assert any("picked again" in warning for warning in checkpoint.describe().warnings)
    reads = read_deltas(checkpoint)
    assert {(r.delta.layer, r.delta.role) for r in reads} == set(adapter.reference)
    for read in reads:
        reference = adapter.reference[(read.delta.layer, read.delta.role)]
        assert relative_error(read.dense, reference) < 1e-10


def test_peanut_activations_are_transformers_own():
    from transformers.activations import ACT2FN

    from spectra.loaders.methods.peanut import ACTIVATIONS

    x = torch.linspace(-6, 6, 1001, dtype=torch.float64)
    for name, function in ACTIVATIONS.items():
        np.testing.assert_allclose(function(x), ACT2FN[name](x), rtol=1e-15, atol=1e-15)


# ---------------------------------------------------------------- nothing to analyse


@pytest.mark.parametrize(
    "kind, what",
    [
        ("beft", "BEFT bias vector"),
        ("layernorm", "a norm layer's weight"),
        ("tokens", "embedding rows of the tokens in token_indices"),
    ],
)
def test_methods_that_change_no_projection_weight_list_every_tensor(
    tmp_path, minilm_dir, kind, what
):
    import peft

    config = {
        "beft": peft.BeftConfig(target_modules=TARGET_REGEX),
        "layernorm": peft.LNTuningConfig(target_modules=["LayerNorm"]),
        "tokens": peft.TrainableTokensConfig(token_indices=[1, 5, 7]),
    }[kind]
    folder = _save(random_peft_model(minilm_dir, config, seed=1), tmp_path, torch.float32)
    tensors = file_dtypes(folder)
    with pytest.raises(FormatError) as error:
        spectra.load(folder, base=minilm_dir)
    message = str(error.value)
    assert what in message
    assert re.search(
        r"no (attention or MLP projection is adapted|projection weight changes)", message
    )
    counts = [int(n) for n in re.findall(r"(\d+) not analysed \(", message)]
    assert sum(counts) == len(tensors), (message, len(tensors))  # every tensor, each with why


# ---------------------------------------------------------------- refused


_REFUSED_CONFIGS = {
    "POLY": ("PolyConfig", {"r": 2}, "task id"),
    "LILY": ("LilyConfig", {}, "router"),
    "SHADOW": ("ShadowConfig", {}, "not a weight update"),
    "CARTRIDGE": (
        "CartridgeConfig",
        {"num_virtual_tokens": 4, "task_type": "CAUSAL_LM"},
        "KV-cache",
    ),
    "PROMPT_TUNING": (
        "PromptTuningConfig",
        {"num_virtual_tokens": 4, "task_type": "CAUSAL_LM"},
        "soft-prompt",
    ),
    "MULTITASK_PROMPT_TUNING": (
        "MultitaskPromptTuningConfig",
        {"num_virtual_tokens": 4, "task_type": "CAUSAL_LM"},
        "soft prompt per task",
    ),
    "P_TUNING": (
        "PromptEncoderConfig",
        {"num_virtual_tokens": 4, "task_type": "CAUSAL_LM"},
        "P-tuning",
    ),
    "PREFIX_TUNING": (
        "PrefixTuningConfig",
        {"num_virtual_tokens": 4, "task_type": "CAUSAL_LM"},
        "key/value prefixes",
    ),
    "ADAPTION_PROMPT": ("AdaptionPromptConfig", {"adapter_len": 4, "adapter_layers": 1}, "gated"),
    "CPT": ("CPTConfig", {"cpt_token_ids": [1, 2], "task_type": "CAUSAL_LM"}, "context tokens"),
    "ADAMSS": ("AdamssConfig", {}, "k-means"),
}


@pytest.mark.parametrize("peft_type", sorted(_REFUSED_CONFIGS))
def test_peft_types_with_no_static_update_are_refused_with_the_reason(tmp_path, peft_type):
    import peft

    class_name, fields, reason = _REFUSED_CONFIGS[peft_type]
    getattr(peft, class_name)(**fields).save_pretrained(str(tmp_path))  # peft's own config file
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == peft_type
    with pytest.raises(
        FormatError,
        match=rf"adapter_config.json: peft_type {peft_type} is not analysed: .*{reason}",
    ):
        spectra.load(tmp_path)


@pytest.fixture(scope="module")
def llama_experts(tmp_path_factory):
    """A tiny LLaMA and two LoRA experts on its k and v, saved by peft."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    from tests.helpers.adapters import randomize_adapter

    root = tmp_path_factory.mktemp("experts")
    base = save_tiny_llama(root / "llama")
    experts = {}
    for seed, name in enumerate(("maths", "code")):
        config = LoraConfig(r=2, lora_alpha=4, target_modules=["k_proj", "v_proj"])
        model = get_peft_model(LlamaForCausalLM.from_pretrained(str(base)), config)
        randomize_adapter(model, seed)
        model.save_pretrained(str(root / name))
        experts[name] = root / name
    return base, experts


def test_xlora_is_refused_and_its_experts_are_read_from_their_own_folders(llama_experts, tmp_path):
    from peft import XLoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    base, experts = llama_experts
    model = LlamaForCausalLM.from_pretrained(str(base))
    model.config.use_cache = False
    config = XLoraConfig(
        task_type="CAUSAL_LM", hidden_size=64, adapters={k: str(v) for k, v in experts.items()}
    )
    get_peft_model(model, config).save_pretrained(str(tmp_path))
    with pytest.raises(FormatError, match=r"XLORA is not analysed: X-LoRA mixes LoRA experts"):
        spectra.load(tmp_path, base=base)
    # peft's sub-folders 0, 1 hold incomplete experts: refused, pointing at the expert folders
    assert (tmp_path / "0" / "adapter_config.json").is_file()
    with pytest.raises(
        FormatError,
        match=rf"0/adapter_config.json: a sub-folder of the X-LoRA .*maths → {experts['maths']}",
    ):
        spectra.load(tmp_path, adapter="0", base=base)
    report = spectra.analyze(experts["maths"], base=base)
    assert {row["role"] for row in report.rows} == {"k", "v"} and len(report.rows) == 4


def test_arrow_router_is_refused_and_its_experts_are_read(llama_experts, tmp_path):
    from peft import ArrowConfig
    from peft.tuners.lora.arrow import create_arrow_model
    from transformers import LlamaForCausalLM

    base, experts = llama_experts
    model = create_arrow_model(
        LlamaForCausalLM.from_pretrained(str(base)),
        [str(experts["maths"]), str(experts["code"])],
        ArrowConfig(top_k=1),
    )
    model.save_pretrained(str(tmp_path))
    with pytest.raises(
        FormatError, match=r"Arrow .*no single static ΔW.*adapter=NAME \(task_0, task_1\)"
    ):
        spectra.load(tmp_path, adapter="arrow_router", base=base)
    report = spectra.analyze(tmp_path, adapter="task_1", base=base)
    assert len(report.rows) == 4


def test_alora_is_refused(llama_experts, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    base, _ = llama_experts
    config = LoraConfig(
        r=2, target_modules=["v_proj"], task_type="CAUSAL_LM", alora_invocation_tokens=[5, 6]
    )
    get_peft_model(LlamaForCausalLM.from_pretrained(str(base)), config).save_pretrained(
        str(tmp_path)
    )
    with pytest.raises(FormatError, match=r"aLoRA .*only to the tokens after .*not what runs"):
        spectra.load(tmp_path, base=base)
