"""torchtune adapters written by torchtune itself, checked against torchtune's own merge.

The model is torchtune's own ``lora_llama3`` builder at the tiny LLaMA's
sizes, loaded with the Hugging Face base through ``convert_weights.hf_to_tune``
(which puts q and k in Meta's row order), its adapter parameters made random,
and saved as torchtune's ``FullModelHFCheckpointer.save_checkpoint`` saves an
adapter (training/checkpointing/_checkpointer.py): ``torch.save`` of the
adapter state dict as ``adapter_model.pt``, the PEFT export made by
``convert_weights.tune_to_peft_adapter_weights`` as ``adapter_model.safetensors``
(metadata ``format: pt``), ``tune_to_peft_adapter_config`` as
``adapter_config.json``, and the base's ``config.json`` copied beside. (The
checkpointer class itself is not called: ``torchtune.training`` 0.6 imports a
torchao API that the torchao peft needs no longer has; the steps are the same
calls.) The reference ΔW is torchtune's own: ``get_merged_lora_ckpt`` on the
float64 state dict, back to Hugging Face's layout with ``tune_to_hf``, minus
the base.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

with warnings.catch_warnings():  # torchao's deprecation notices on import
    warnings.simplefilter("ignore")
    convert_weights = pytest.importorskip("torchtune.models.convert_weights")
    from torchtune.models.llama3._component_builders import lora_llama3
    from torchtune.modules.peft import get_adapter_state_dict, get_merged_lora_ckpt

from spectra_cli.main import cli

import spectra
from spectra.errors import FormatError, MissingBaseError
from spectra.loaders import detect_format, load
from tests.helpers.checks import assert_same_reads, read_deltas, relative_error
from tests.helpers.models import (
    HEADS,
    HF_MODULES,
    HIDDEN,
    INTERMEDIATE,
    KV_HEADS,
    LAYERS,
    PHI3_KV_HEADS,
    PHI3_ROWS,
    phi3_weight,
    random_factor,
    save_tiny_llama,
    save_tiny_phi3,
)

RANK, ALPHA = 4, 16.0
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
ATTENTION = ["q_proj", "k_proj", "v_proj", "output_proj"]


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("llama"))


def _hf_state(base: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(base / "model.safetensors"))


def _convert(state: dict, to: str) -> dict:
    convert = convert_weights.hf_to_tune if to == "tune" else convert_weights.tune_to_hf
    return convert(state, num_heads=HEADS, num_kv_heads=KV_HEADS, dim=HIDDEN)


def write_adapter(
    out: Path, base: Path, dtype=torch.float32, dora: bool = False, output: bool = False
) -> Path:
    """A torchtune LoRA (or DoRA) with random adapter weights, saved as the HF checkpointer does."""
    model = lora_llama3(
        ATTENTION,
        apply_lora_to_mlp=True,
        apply_lora_to_output=output,
        vocab_size=100,
        num_layers=LAYERS,
        num_heads=HEADS,
        num_kv_heads=KV_HEADS,
        embed_dim=HIDDEN,
        max_seq_len=64,
        intermediate_dim=INTERMEDIATE,
        lora_rank=RANK,
        lora_alpha=ALPHA,
        use_dora=dora,
    )
    model.load_state_dict(_convert(_hf_state(base), "tune"), strict=False)
    adapter = get_adapter_state_dict(model.state_dict())
    with torch.no_grad():
        for i, (name, value) in enumerate(sorted(adapter.items())):
            noise = torch.from_numpy(random_factor(value.shape, i))
            # DoRA's magnitude starts as torch.empty until torchtune's recipe initialises it from
            # W0's row norms: give it finite positive values near 1 instead of that memory
            adapter[name] = (1 + 0.1 * noise if "magnitude" in name else noise).to(dtype)
    config = {
        "r": RANK,
        "lora_alpha": ALPHA,
        "target_modules": [*ATTENTION, "w1", "w2", "w3", *(["output"] if output else [])],
        "peft_type": "LORA",
    }
    folder = out / "epoch_0"
    folder.mkdir(parents=True)
    torch.save(adapter, folder / "adapter_model.pt")
    peft = convert_weights.tune_to_peft_adapter_weights(
        adapter, num_heads=HEADS, num_kv_heads=KV_HEADS, dim=HIDDEN
    )
    save_file(peft, folder / "adapter_model.safetensors", metadata={"format": "pt"})
    peft_config = convert_weights.tune_to_peft_adapter_config(config, str(base))
    (folder / "adapter_config.json").write_text(json.dumps(peft_config))
    shutil.copy(base / "config.json", folder / "config.json")
    return out / "epoch_0"


def torchtune_reference(folder: Path, base: Path) -> dict[tuple[int, str], np.ndarray]:
    """torchtune's own merge of the saved adapter, in float64, in Hugging Face's layout."""
    tune = {k: v.double() for k, v in _convert(_hf_state(base), "tune").items()}
    adapter = torch.load(folder / "adapter_model.pt", weights_only=True)
    merged = get_merged_lora_ckpt(
        tune | {k: v.double() for k, v in adapter.items()}, rank=RANK, alpha=ALPHA
    )
    merged_hf, base_hf = _convert(merged, "hf"), _hf_state(base)
    return {
        (layer, role): (merged_hf[n] - base_hf[n].double()).numpy()
        for layer in range(LAYERS)
        for role, module in HF_MODULES.items()
        if (n := f"model.layers.{layer}.{module}.weight")
    }


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_lora_matches_torchtune_merge_and_reads_twice(tmp_path, llama, dtype):
    folder = write_adapter(tmp_path, llama, dtype)
    assert {"adapter_model.pt", "adapter_model.safetensors", "config.json"} <= {
        p.name for p in folder.iterdir()
    }
    reference = torchtune_reference(folder, llama)
    checkpoint = load(folder)  # heads from the config.json torchtune copied beside
    assert detect_format(folder) == "torchtune" and checkpoint.variant == "LoRA (torchtune)"
    first = read_deltas(checkpoint, modules="all")
    assert_same_reads(first, read_deltas(checkpoint, modules="all"))
    assert {(r.delta.layer, r.delta.role) for r in first} == set(reference)
    for read in first:
        key = (read.delta.layer, read.delta.role)
        assert read.delta.source_dtype == dtype and read.delta.update.scale == ALPHA / RANK
        assert relative_error(read.dense, reference[key]) < 1e-6, key
    # torchtune's PEFT export of the same adapter, read as PEFT, gives the same ΔW
    export = {
        (r.delta.layer, r.delta.role): r.dense
        for r in read_deltas(load(folder / "adapter_model.safetensors"), modules="all")
    }
    for read in first:
        key = (read.delta.layer, read.delta.role)
        assert relative_error(read.dense, export[key]) < 1e-12, key


def test_dora_matches_torchtune_merge(tmp_path, llama):
    folder = write_adapter(tmp_path, llama, dora=True)
    reference = torchtune_reference(folder, llama)
    checkpoint = load(folder, base=llama)
    assert checkpoint.variant == "DoRA (LoRA (torchtune))"
    for read in read_deltas(checkpoint, modules="all"):
        key = (read.delta.layer, read.delta.role)
        assert relative_error(read.dense, reference[key]) < 1e-6, key
    with pytest.raises(MissingBaseError, match="needs the base weight W0"):
        load(folder).plan()


def test_without_head_counts_q_and_k_keep_the_stored_order(tmp_path, llama):
    folder = write_adapter(tmp_path, llama)
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(folder / "adapter_model.pt", alone)
    reference = torchtune_reference(folder, llama)
    checkpoint = load(alone, lora_alpha=ALPHA)
    assert any("interleaved RoPE order" in w for w in checkpoint.describe().warnings)
    for read in read_deltas(checkpoint, modules=["q", "k", "v"]):
        key = (read.delta.layer, read.delta.role)
        sigma = np.linalg.svd(read.dense, compute_uv=False)
        np.testing.assert_allclose(
            sigma, np.linalg.svd(reference[key], compute_uv=False), atol=1e-12
        )
        if key[1] == "v":
            assert relative_error(read.dense, reference[key]) < 1e-12
    for read in read_deltas(load(alone, base=llama, lora_alpha=ALPHA), modules=["q", "k"]):
        key = (read.delta.layer, read.delta.role)
        assert relative_error(read.dense, reference[key]) < 1e-6, key


def test_nothing_dropped(tmp_path, llama):
    folder = write_adapter(tmp_path, llama, output=True)
    checkpoint = load(folder)
    names = set(checkpoint.store.names())
    analysed = {m.name + f".lora_{p}.weight" for m in checkpoint.describe().modules for p in "ab"}
    left_out = dict(checkpoint.not_analysed())
    assert analysed | set(left_out) == names and not analysed & set(left_out)
    assert set(left_out) == {"output.lora_a.weight", "output.lora_b.weight"}
    assert all("outside the transformer blocks" in reason for reason in left_out.values())


def test_inspect_says_where_the_scale_came_from(tmp_path, llama):
    folder = write_adapter(tmp_path, llama)
    result = CliRunner().invoke(cli, ["inspect", str(folder)])
    assert result.exit_code == 0, result.output
    assert "torchtune format" in result.output
    assert "adapter_config.json: lora_alpha/r = 16/4" in result.output


def test_inspect_and_the_report_show_the_recipe_state(tmp_path, llama):
    """A recipe's intermediate checkpoint: recipe_state/recipe_state.pt beside epoch_N/."""
    folder = write_adapter(tmp_path, llama)
    state_dir = folder.parent / "recipe_state"
    state_dir.mkdir()
    # what the checkpointer saves: the recipe's state without the model (training/_utils.py keys)
    state = {"seed": 1234, "epochs_run": 1, "total_epochs": 3, "max_steps_per_epoch": 50}
    state |= {"steps_run": 50, "optimizer": {"state": {0: {"exp_avg": torch.zeros(4)}}}}
    torch.save(state, state_dir / "recipe_state.pt")
    result = CliRunner().invoke(cli, ["inspect", str(folder)])
    assert result.exit_code == 0, result.output
    section = result.output.split("training (as torchtune")[1]
    assert "recipe_state.pt" in section
    for name, value in (("seed", 1234), ("epochs_run", 1), ("epochs", 3), ("steps", 50)):
        assert f"{name}:" in section and str(value) in section
    summary = spectra.analyze(folder, base=llama, layers=[0]).meta["training"]["fields"]
    assert summary == {
        "rank": RANK,
        "alpha": ALPHA,
        "target_modules": summary["target_modules"],
        "seed": 1234,
        "epochs_run": 1,
        "epochs": 3,
        "max_steps_per_epoch": 50,
        "steps": 50,
    }


def test_missing_alpha_is_refused_and_lora_alpha_supplies_it(tmp_path, llama):
    folder = write_adapter(tmp_path, llama)
    (folder / "adapter_config.json").unlink()
    with pytest.raises(FormatError) as error:
        load(folder)
    message = str(error.value)
    assert "adapter_model.pt" in message and "lora_alpha / r" in message
    assert "no adapter_config.json" in message and "lora_alpha=ALPHA" in message
    info = spectra.load(folder, lora_alpha=8).describe()
    assert {m.scale_source for m in info.modules} == {"given (lora_alpha=8): lora_alpha/r = 8/4"}


def test_mismatched_rank_is_refused(tmp_path, llama):
    folder = write_adapter(tmp_path, llama)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps(config | {"r": 8}))
    with pytest.raises(FormatError) as error:
        load(folder)
    message = str(error.value)
    assert "adapter_model.pt" in message and "(8, d_in)" in message
    assert "from adapter_config.json (r)" in message and "found lora_a (4, 64)" in message


# -- other model families: Phi-3 (fused base) and Qwen2 (no permutation) ---------------------


def _write_family_adapter(out: Path, model, to_tune, base: Path, dtype):
    """A torchtune adapter of ``model`` with random weights, saved as the HF checkpointer does."""
    model.load_state_dict(to_tune(_hf_state(base)), strict=False)
    adapter = get_adapter_state_dict(model.state_dict())
    with torch.no_grad():
        for i, (name, value) in enumerate(sorted(adapter.items())):
            noise = torch.from_numpy(random_factor(value.shape, 100 + i))
            adapter[name] = (1 + 0.1 * noise if "magnitude" in name else noise).to(dtype)
    out.mkdir(parents=True)
    torch.save(adapter, out / "adapter_model.pt")
    (out / "adapter_config.json").write_text(json.dumps({"r": RANK, "lora_alpha": ALPHA}))
    shutil.copy(base / "config.json", out / "config.json")
    return out


def _family_reference(folder: Path, base: Path, to_tune, to_hf) -> dict[str, np.ndarray]:
    """torchtune's float64 merge, back in Hugging Face names, minus the base: ΔW per HF tensor."""
    tune = {k: v.double() for k, v in to_tune(_hf_state(base)).items()}
    adapter = torch.load(folder / "adapter_model.pt", weights_only=True)
    merged = get_merged_lora_ckpt(
        tune | {k: v.double() for k, v in adapter.items()}, rank=RANK, alpha=ALPHA
    )
    base_hf = _hf_state(base)
    return {n: (t - base_hf[n].double()).numpy() for n, t in to_hf(merged).items() if n in base_hf}


@pytest.fixture(scope="module")
def phi3(tmp_path_factory) -> Path:
    return save_tiny_phi3(tmp_path_factory.mktemp("phi3"))


def _phi3_adapter(out: Path, base: Path, dtype=torch.float32, dora: bool = False):
    from torchtune.models.phi3 import _convert_weights as phi3_weights
    from torchtune.models.phi3._component_builders import lora_phi3

    model = lora_phi3(
        ATTENTION,
        apply_lora_to_mlp=True,
        vocab_size=100,
        num_layers=LAYERS,
        num_heads=HEADS,
        num_kv_heads=PHI3_KV_HEADS,
        embed_dim=HIDDEN,
        intermediate_dim=INTERMEDIATE,
        max_seq_len=64,
        lora_rank=RANK,
        lora_alpha=ALPHA,
        use_dora=dora,
    )

    def to_tune(state):
        return phi3_weights.phi3_hf_to_tune(
            state, num_heads=HEADS, num_kv_heads=PHI3_KV_HEADS, dim=HIDDEN
        )

    folder = _write_family_adapter(out, model, to_tune, base, dtype)
    reference = _family_reference(folder, base, to_tune, phi3_weights.phi3_tune_to_hf)
    by_role = {}  # the fused ΔW cut per role by hand (PHI3_ROWS)
    for layer in range(LAYERS):
        for role, (module, start, end) in PHI3_ROWS.items():
            by_role[(layer, role)] = reference[f"model.layers.{layer}.{module}.weight"][start:end]
    return folder, by_role


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_phi3_relative_norm_is_each_roles_own_rows_of_the_fused_base(tmp_path, phi3, dtype):
    folder, reference = _phi3_adapter(tmp_path / "tt", phi3, dtype)
    report = spectra.analyze(folder, base=phi3, modules="all")
    rows = {(row["layer"], row["role"]): row for row in report.rows}
    assert set(rows) == set(reference)
    for key, delta in reference.items():
        expected = np.linalg.norm(delta) / np.linalg.norm(phi3_weight(phi3, *key))
        assert rows[key]["relative_norm"] == pytest.approx(expected, rel=1e-6), key
    for read in read_deltas(load(folder, base=phi3), modules="all"):
        key = (read.delta.layer, read.delta.role)
        assert relative_error(read.dense, reference[key]) < 1e-6, key
        own_rows = np.linalg.norm(phi3_weight(phi3, *key))
        assert read.delta.base_norm == pytest.approx(own_rows, rel=1e-12), key


def test_phi3_dora_on_the_fused_base_matches_torchtune_merge(tmp_path, phi3):
    folder, reference = _phi3_adapter(tmp_path / "tt", phi3, dora=True)
    for read in read_deltas(load(folder, base=phi3), modules="all"):
        key = (read.delta.layer, read.delta.role)
        assert relative_error(read.dense, reference[key]) < 1e-6, key


def test_qwen2_q_and_k_are_left_as_stored(tmp_path):
    """torchtune's Qwen2 converter keeps Hugging Face's q/k rows: no un-permutation."""
    from torchtune.models.qwen2 import _convert_weights as qwen2_weights
    from torchtune.models.qwen2._component_builders import lora_qwen2
    from transformers import Qwen2Config, Qwen2ForCausalLM

    base = tmp_path / "qwen2"
    torch.manual_seed(0)
    config = Qwen2Config(
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        vocab_size=100,
        tie_word_embeddings=False,
    )
    Qwen2ForCausalLM(config).save_pretrained(str(base))
    model = lora_qwen2(
        ATTENTION,
        vocab_size=100,
        num_layers=LAYERS,
        num_heads=HEADS,
        num_kv_heads=KV_HEADS,
        embed_dim=HIDDEN,
        intermediate_dim=INTERMEDIATE,
        max_seq_len=64,
        lora_rank=RANK,
        lora_alpha=ALPHA,
    )
    folder = _write_family_adapter(
        tmp_path / "tt", model, qwen2_weights.qwen2_hf_to_tune, base, torch.float32
    )
    reference = _family_reference(
        folder, base, qwen2_weights.qwen2_hf_to_tune, qwen2_weights.qwen2_tune_to_hf
    )
    checkpoint = load(folder, base=base)
    assert not any("interleaved" in w for w in checkpoint.describe().warnings)
    for read in read_deltas(checkpoint, modules=["q", "k"]):
        name = f"model.layers.{read.delta.layer}.{HF_MODULES[read.delta.role]}.weight"
        assert relative_error(read.dense, reference[name]) < 1e-6, name
