"""Initialisations that move W₀ (PiSSA, OLoRA): ΔW against the initial adapter (``--initial``).

Made with real peft on the real MiniLM: ``init_lora_weights="pissa"`` (or
``"olora"``) subtracts s·B₀@A₀ from the base weights; the adapter is saved
before training (the initial adapter), its weights are then moved (a
stand-in for training) and it is saved again, in float32, bfloat16 or
float16. The reference is peft's own conversion,
``save_pretrained(path_initial_model_for_weight_conversion=…)`` (a plain LoRA
of rank 2r), merged by peft onto the ORIGINAL base in float64, minus that
base.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from spectra_cli.main import cli

import spectra
from spectra.errors import FormatError
from spectra.loaders.naming.architectures import canonical_name
from tests.helpers.adapters import make_peft_adapter, merged_reference
from tests.helpers.checks import DTYPES, assert_same_reads, dtype_id, read_deltas, relative_error
from tests.helpers.models import load_bert

# PiSSA and OLoRA adapters, initialised and converted by peft on MiniLM.
pytestmark = pytest.mark.slow

R, ALPHA = 8, 16


def _moved_init_model(base, init: str):
    """A peft model initialised with ``init`` (which rewrites W₀), before and after 'training'."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = LoraConfig(
        r=R, lora_alpha=ALPHA, target_modules=["key", "value"], init_lora_weights=init
    )
    model = get_peft_model(load_bert(base), config)
    initial = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                noise = torch.randn(parameter.shape, generator=generator)
                parameter.add_(0.02 * noise * parameter.abs().mean())
    return initial, model


class Moved:
    """The initial and tuned adapter folders of one init and dtype, and peft's reference ΔW."""

    def __init__(self, root, base, initial_model, tuned_model, dtype):
        self.initial = root / "initial"
        self.tuned = root / "tuned"
        converted = root / "converted"
        start = copy.deepcopy(initial_model).to(dtype)
        start.peft_config["default"].init_lora_weights = True  # as peft's docs save it
        start.save_pretrained(str(self.initial))
        tuned = copy.deepcopy(tuned_model).to(dtype)
        tuned.save_pretrained(str(self.tuned))
        tuned.save_pretrained(str(converted), path_initial_model_for_weight_conversion=self.initial)
        assert json.loads((converted / "adapter_config.json").read_text())["r"] == 2 * R
        self.reference = merged_reference(converted, base)  # on the ORIGINAL base


@pytest.fixture(scope="module")
def moved(tmp_path_factory, minilm_dir):
    models, made = {}, {}

    def make(init: str, dtype: torch.dtype) -> Moved:
        if init not in models:
            models[init] = _moved_init_model(minilm_dir, init)
        if (init, dtype) not in made:
            root = tmp_path_factory.mktemp(f"{init}-{dtype_id(dtype)}")
            made[init, dtype] = Moved(root, minilm_dir, *models[init], dtype)
        return made[init, dtype]

    return make


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_pissa_with_initial_matches_peft_conversion(moved, dtype):
    case = moved("pissa", dtype)
    checkpoint = spectra.load(case.tuned, initial=case.initial)
    first = read_deltas(checkpoint, modules="k,v")
    assert len(first) == len(case.reference) == 12
    for read in first:
        key = (read.delta.layer, read.delta.role)
        assert read.delta.update.rank == 2 * R  # one factored update [B, −B₀] @ [A; A₀]
        assert relative_error(read.dense, case.reference[key]) < 1e-6, key
    assert_same_reads(first, read_deltas(checkpoint, modules="k,v"))
    assert "minus its initial adapter" in checkpoint.variant
    info = checkpoint.describe()
    assert {m.rank for m in info.modules} == {2 * R}
    assert info.details["initial"] == str(case.initial)
    assert any("B₀@A₀" in w for w in info.warnings)
    assert not any("changes W0" in w for w in info.warnings)
    files = checkpoint.source_files()
    assert case.initial / "adapter_model.safetensors" in files


def test_olora_with_initial_matches_peft_conversion(moved):
    case = moved("olora", torch.float32)
    checkpoint = spectra.load(case.tuned, initial=case.initial)
    for read in read_deltas(checkpoint, modules="k,v"):
        key = (read.delta.layer, read.delta.role)
        assert relative_error(read.dense, case.reference[key]) < 1e-6, key


def test_without_initial_the_warning_names_the_flag(moved):
    case = moved("pissa", torch.float32)
    checkpoint = spectra.load(case.tuned)
    warnings = checkpoint.warnings()
    assert any("changes W0" in w and "initial=DIR" in w for w in warnings)
    # and the update it rebuilds is s·B@A, not the original weights' update
    read = read_deltas(checkpoint, modules="k", layers=[0])[0]
    assert relative_error(read.dense, case.reference[(0, "k")]) > 1e-3


def test_nothing_dropped_with_initial(moved):
    from safetensors import safe_open

    case = moved("pissa", torch.float32)
    checkpoint = spectra.load(case.tuned, initial=case.initial)
    info = checkpoint.describe()
    analysed = {m.name for m in info.modules}
    with safe_open(str(case.tuned / "adapter_model.safetensors"), "pt") as file:
        tensors = list(file.keys())
    left_out = dict(info.not_analysed)
    for name in tensors:
        module = canonical_name(name).rsplit(".lora_", 1)[0]
        assert (module in analysed) != (name in left_out), name


def test_cli_analyze_and_inspect_take_initial(moved, tmp_path):
    case = moved("pissa", torch.bfloat16)
    runner = CliRunner()
    result = runner.invoke(
        cli, ["analyze", str(case.tuned), "--initial", str(case.initial), "--json", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    start = result.output.index("{")
    rows = json.JSONDecoder().raw_decode(result.output[start:])[0]["rows"]  # warnings follow
    assert {row["adapter_rank"] for row in rows} == {2 * R}
    result = runner.invoke(cli, ["inspect", str(case.tuned), "--initial", str(case.initial)])
    assert result.exit_code == 0, result.output
    assert "initial adapter" in result.output
    help_text = runner.invoke(cli, ["analyze", "--help"]).output
    assert "--initial" in help_text


def test_initial_of_another_rank_is_refused(moved, tmp_path, minilm_dir):
    case = moved("pissa", torch.float32)
    other = make_peft_adapter(tmp_path / "r4", minilm_dir, r=4, lora_alpha=8)
    with pytest.raises(FormatError) as caught:
        spectra.load(case.tuned, initial=other.path)
    message = str(caught.value)
    assert str(other.path / "adapter_model.safetensors") in message
    assert "should have lora_A (8, 384)" in message and "found (4, 384)" in message
    assert "initial=" in message  # the CLI says --initial (below)
    result = CliRunner().invoke(cli, ["inspect", str(case.tuned), "--initial", str(other.path)])
    assert result.exit_code == 1 and "--initial" in result.output


def test_initial_missing_a_module_is_refused(moved, tmp_path, minilm_dir):
    case = moved("pissa", torch.float32)
    other = make_peft_adapter(tmp_path / "k-only", minilm_dir, target_modules=["key"])
    with pytest.raises(FormatError, match=r"expected the initial lora_A and lora_B of .*value"):
        spectra.load(case.tuned, initial=other.path)


def test_initial_on_dora_is_refused(tmp_path, minilm_dir, moved):
    dora = make_peft_adapter(tmp_path / "dora", minilm_dir, use_dora=True)
    with pytest.raises(
        FormatError, match=r"initial= applies to LoRA and rsLoRA adapters.*drop initial="
    ):
        spectra.load(dora.path, base=minilm_dir, initial=moved("pissa", torch.float32).initial)


def test_initial_is_a_peft_option_only(tmp_path):
    from safetensors.torch import save_file

    save_file({"encoder.layer.0.attention.self.key.weight": torch.zeros(4, 4)}, tmp_path / "m.st")
    (tmp_path / "m.st").rename(tmp_path / "model.safetensors")
    with pytest.raises(FormatError, match=r"initial= does not apply to a full checkpoint"):
        spectra.load(tmp_path, initial=tmp_path)


def test_reference_differs_from_plain_lora(moved):
    case = moved("pissa", torch.float32)
    assert all(np.linalg.norm(ref) > 0 for ref in case.reference.values())
