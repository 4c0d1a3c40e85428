"""Mixture-of-experts: one row per expert of each routed projection, routers listed as not analysed.

The models are transformers' own tiny Mixtral and Qwen2-MoE (with a shared
expert and a dense layer), built from a config with random weights and saved
with ``save_pretrained`` in float32, bfloat16 and float16, which writes one
weight per expert (``block_sparse_moe.experts.N.w1`` …, ``mlp.experts.N.gate_proj``
…). The fine-tune moves every parameter in memory and is saved the same way.
The reference ΔW is read back from the two files with safetensors and
subtracted in float64. LoRA on experts is a PEFT folder laid out as peft
names per-expert Linear modules (transformers < 5, where experts are
``nn.Linear``), checked against s·B@A in float64.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import spectra
from spectra.errors import BaseMismatchError
from spectra.loaders.naming.architectures import canonical_name
from tests.helpers.checks import DTYPES, assert_same_reads, dtype_id, read_deltas, relative_error

EXPERTS = 3
SMALL = dict(
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_experts_per_tok=2,
    vocab_size=50,
)


def _model(kind: str, experts: int = EXPERTS):
    if kind == "mixtral":
        from transformers import MixtralConfig, MixtralForCausalLM

        return MixtralForCausalLM(MixtralConfig(**SMALL, num_local_experts=experts))
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    config = Qwen2MoeConfig(
        **SMALL,
        moe_intermediate_size=24,
        shared_expert_intermediate_size=40,
        num_experts=experts,
        mlp_only_layers=[1],  # layer 1 is a dense MLP
    )
    return Qwen2MoeForCausalLM(config)


def _tensors(folder) -> dict[str, torch.Tensor]:
    with safe_open(str(folder / "model.safetensors"), "pt") as file:
        return {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118 - safe_open has no __iter__


class Tuned:
    """A base and a fine-tune saved by save_pretrained, and ΔW per tensor name from the files."""

    def __init__(self, root, kind: str, dtype: torch.dtype, experts: int = EXPERTS):
        torch.manual_seed(0)
        model = _model(kind, experts).to(dtype)
        self.base = root / "base"
        model.save_pretrained(str(self.base))
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for parameter in model.parameters():
                noise = torch.randn(parameter.shape, generator=generator)
                parameter.copy_((parameter.float() + 0.02 * noise).to(dtype))
        self.path = root / "tuned"
        model.save_pretrained(str(self.path))
        base, tuned = _tensors(self.base), _tensors(self.path)
        self.names = list(tuned)
        self.reference = {n: (tuned[n].double() - base[n].double()).numpy() for n in tuned}


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    made = {}

    def make(kind: str, dtype: torch.dtype = torch.float32, experts: int = EXPERTS) -> Tuned:
        if (kind, dtype, experts) not in made:
            root = tmp_path_factory.mktemp(f"{kind}-{dtype_id(dtype)}-{experts}")
            made[kind, dtype, experts] = Tuned(root, kind, dtype, experts)
        return made[kind, dtype, experts]

    return make


@pytest.mark.parametrize("kind", ["mixtral", "qwen2_moe"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_moe_fine_tune_one_row_per_expert(tuned, kind, dtype):
    case = tuned(kind, dtype)
    checkpoint = spectra.load(case.path, base=case.base)
    first = read_deltas(checkpoint, modules="all")
    experts = [r for r in first if r.delta.expert is not None]
    # routed experts: layers 0-1 (Mixtral) or 0 (Qwen2-MoE) × gate, up, down × 3 experts
    assert len(experts) == (2 if kind == "mixtral" else 1) * 3 * EXPERTS
    assert {r.delta.expert for r in experts} == set(range(EXPERTS))
    for read in first:
        reference = case.reference[read.delta.name]
        assert relative_error(read.dense, reference) < 1e-6, read.delta.key
    assert_same_reads(first, read_deltas(checkpoint, modules="all"))
    labels = {r.delta.key for r in experts}
    assert "L0.gate.e2" in labels and "L0.down.e0" in labels
    if kind == "mixtral":  # w1 is gate, w3 up, w2 down
        by_label = {r.delta.key: r.delta.name for r in experts}
        assert by_label["L0.gate.e1"].endswith("experts.1.w1.weight")
        assert by_label["L0.up.e1"].endswith("experts.1.w3.weight")
        assert by_label["L0.down.e1"].endswith("experts.1.w2.weight")
    else:  # layer 1 is dense: its MLP has no expert
        dense = [r for r in first if r.delta.layer == 1 and r.delta.role == "gate"]
        assert [r.delta.expert for r in dense] == [None]
    kv = [r for r in first if r.delta.role in ("k", "v")]
    assert len(kv) == 4 and all(r.delta.expert is None for r in kv)  # attention unchanged


def test_default_selection_is_attention_k_and_v(tuned):
    case = tuned("mixtral")
    reads = read_deltas(spectra.load(case.path, base=case.base))
    assert sorted(r.delta.key for r in reads) == ["L0.k", "L0.v", "L1.k", "L1.v"]


def test_nothing_dropped_and_routers_listed(tuned):
    for kind in ("mixtral", "qwen2_moe"):
        case = tuned(kind)
        checkpoint = spectra.load(case.path, base=case.base)
        analysed = {r.delta.name for r in read_deltas(checkpoint, modules="all")}
        left_out = dict(checkpoint.not_analysed())
        for name in case.names:
            assert (name in analysed) != (name in left_out), name
            assert name not in left_out or left_out[name], name
        routers = [n for n in case.names if n.endswith(("moe.gate.weight", "mlp.gate.weight"))]
        assert routers and all("router" in left_out[n] for n in routers)
        if kind == "qwen2_moe":
            shared = [n for n in case.names if "shared_expert" in n]
            assert len(shared) == 4 and all("shared expert" in left_out[n] for n in shared)


def test_report_has_an_expert_column(tuned, tmp_path):
    case = tuned("mixtral", torch.bfloat16)
    report = spectra.analyze(case.path, base=case.base, modules="gate,k", layers=[0])
    assert "expert" in report.columns and "head" not in report.columns
    rows = {(row["role"], row["expert"]) for row in report.rows}
    assert rows == {("k", None)} | {("gate", e) for e in range(EXPERTS)}
    sigma = report.spectrum(0, "gate", expert=2)
    name = "model.layers.0.block_sparse_moe.experts.2.w1.weight"
    reference = np.linalg.svd(case.reference[name], compute_uv=False)
    assert np.allclose(sigma, reference, rtol=1e-6, atol=1e-9 * reference[0])
    saved = spectra.Report.load(report.save(tmp_path / "report"))
    ids = [(row["layer"], row["role"], row["expert"], row["name"]) for row in report.rows]
    assert [(row["layer"], row["role"], row["expert"], row["name"]) for row in saved.rows] == ids
    assert np.array_equal(saved.spectrum(0, "gate", expert=2), sigma)
    header = (tmp_path / "report" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[:4] == ["layer", "role", "expert", "name"]
    info = spectra.load(case.path, base=case.base).describe()
    gate = next(m for m in info.modules if m.layer == 0 and m.role == "gate")
    assert gate.experts == EXPERTS and "experts.*.w1" in gate.name


def test_plain_model_report_has_no_expert_column(tuned):
    case = tuned("qwen2_moe")
    report = spectra.analyze(case.path, base=case.base, layers=[1])  # k, v of a dense layer
    assert "expert" not in report.columns


def test_base_with_other_expert_count_is_refused(tuned):
    case, other = tuned("mixtral"), tuned("mixtral", experts=2)
    checkpoint = spectra.load(case.path, base=other.base)
    with pytest.raises(BaseMismatchError) as caught:
        list(checkpoint.deltas(modules="gate"))
    message = str(caught.value)
    assert "2 expert(s)" in message and "has 3" in message
    assert str(other.base / "model.safetensors") in message and "base" in message


def _lora_on_experts(folder, base_tensors: dict[str, torch.Tensor], dtype: torch.dtype):
    """A PEFT LoRA on Mixtral's expert w1/w2/w3 and k_proj, as peft names per-expert Linears."""
    from peft import LoraConfig

    r, alpha = 4, 8
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=["w1", "w2", "w3", "k_proj"])
    config = config.to_dict()
    config["peft_type"], config["task_type"] = "LORA", "CAUSAL_LM"
    config["target_modules"] = sorted(config["target_modules"])
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps(config, default=str))
    generator = torch.Generator().manual_seed(3)
    tensors, reference = {}, {}
    for name, weight in base_tensors.items():
        module = name.removesuffix(".weight")
        if not module.endswith((".w1", ".w2", ".w3", ".k_proj")):
            continue
        d_out, d_in = weight.shape
        A = (0.1 * torch.randn(r, d_in, generator=generator)).to(dtype)
        B = (0.1 * torch.randn(d_out, r, generator=generator)).to(dtype)
        tensors[f"base_model.model.{module}.lora_A.weight"] = A
        tensors[f"base_model.model.{module}.lora_B.weight"] = B
        reference[module] = (alpha / r) * (B.double() @ A.double()).numpy()
    save_file(tensors, folder / "adapter_model.safetensors")
    return reference, list(tensors)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_lora_on_experts(tuned, tmp_path, dtype):
    case = tuned("mixtral")
    reference, names = _lora_on_experts(tmp_path / "adapter", _tensors(case.base), dtype)
    checkpoint = spectra.load(tmp_path / "adapter", base=case.base)
    first = read_deltas(checkpoint, modules="all")
    assert len(first) == len(reference) == 2 * (3 * EXPERTS + 1)
    for read in first:
        assert relative_error(read.dense, reference[read.delta.name]) < 1e-6, read.delta.key
    assert {r.delta.expert for r in first if r.delta.role != "k"} == set(range(EXPERTS))
    assert_same_reads(first, read_deltas(checkpoint, modules="all"))
    analysed = {r.delta.name for r in first}
    assert all(canonical_name(n).rsplit(".lora_", 1)[0] in analysed for n in names)
    assert checkpoint.not_analysed() == []
    # the same adapter without a base: shapes from the adapter alone
    assert len(read_deltas(spectra.load(tmp_path / "adapter"), modules="gate")) == 2 * EXPERTS


def test_figures_draw_expert_rows(tuned):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from spectra import plot

    case = tuned("mixtral")
    report = spectra.analyze(case.path, base=case.base, modules="gate,down")
    for draw in (plot.histogram, plot.layer_curves, plot.spectrum):
        fig, _ = draw([report], labels=["FT"])
        plt.close(fig)


def _energy_rank(delta: np.ndarray, share: float) -> int:
    """The smallest k keeping ``share`` of Σσ² (numpy's SVD)."""
    sigma = np.linalg.svd(delta, compute_uv=False)
    kept = np.cumsum(sigma**2) / np.sum(sigma**2)
    return int(np.searchsorted(kept, share - 1e-12) + 1)


def test_suggest_gives_each_expert_its_rank(tuned):
    case = tuned("mixtral")
    report = spectra.analyze(case.path, base=case.base, modules="gate,k", layers=[0])
    suggestion = spectra.suggest(report, energy=0.6)
    by_module = {row["module"]: row for row in suggestion.rows}
    assert len(by_module) == 1 + EXPERTS  # k and one row per expert of gate (w1)
    ranks = {}
    for expert in range(EXPERTS):
        module = f"model.layers.0.block_sparse_moe.experts.{expert}.w1"
        expected = _energy_rank(case.reference[f"{module}.weight"], 0.6)
        assert by_module[module]["suggested_rank"] == expected, module
        ranks[module] = expected
    k_module = "model.layers.0.self_attn.k_proj"
    ranks[k_module] = _energy_rank(case.reference[f"{k_module}.weight"], 0.6)
    config = suggestion.config()
    for module, rank in ranks.items():
        assert config["rank_pattern"].get(module, config["r"]) == rank, module


def test_logger_scalars_keep_one_key_per_expert(tuned):
    from spectra.integrations import scalars

    case = tuned("mixtral")
    report = spectra.analyze(case.path, base=case.base, modules="gate", layers="0-1")
    values = scalars(report, ["frobenius_norm"])
    per_row = {k: v for k, v in values.items() if k.startswith("spectra/L")}
    assert len(per_row) == len(report.rows) == 2 * EXPERTS
    norms = []
    for layer in (0, 1):
        for expert in range(EXPERTS):
            name = f"model.layers.{layer}.block_sparse_moe.experts.{expert}.w1.weight"
            norm = float(np.linalg.norm(case.reference[name]))
            norms.append(norm)
            logged = per_row[f"spectra/L{layer}.gate.e{expert}/frobenius_norm"]
            assert logged == pytest.approx(norm, rel=1e-9)
    assert values["spectra/gate/frobenius_norm"] == pytest.approx(np.mean(norms), rel=1e-9)
