"""MLX-LM adapters written by mlx-lm itself, rebuilt by spectra and checked against mlx's fuse.

Each adapter is made as ``mlx_lm.lora`` makes one: the base loaded with
``mlx_lm.utils.load_model``, its layers turned into LoRA / DoRA layers by
``linear_to_lora_layers``, the trainable parameters saved with
``mx.save_safetensors`` (as the trainer does) and the config with
``save_config``. The reference ΔW is mlx-lm's own: the file loaded back with
``load_adapters``, every parameter widened to float64, each layer's
``fuse()`` minus its base weight.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

mx = pytest.importorskip("mlx.core")
pytest.importorskip("mlx_lm")

from mlx.utils import tree_flatten, tree_unflatten  # noqa: E402
from mlx_lm.tuner.dora import DoRALinear  # noqa: E402
from mlx_lm.tuner.lora import LoRALinear  # noqa: E402
from mlx_lm.tuner.utils import linear_to_lora_layers, load_adapters  # noqa: E402
from mlx_lm.utils import load_model, save_config  # noqa: E402
from spectra_cli.main import cli  # noqa: E402

import spectra  # noqa: E402
from spectra.analysis.sweeps import find_checkpoints  # noqa: E402
from spectra.errors import FormatError, MissingBaseError  # noqa: E402
from spectra.loaders import detect_format, load  # noqa: E402
from tests.helpers.checks import assert_same_reads, read_deltas, relative_error  # noqa: E402
from tests.helpers.models import HF_MODULES, LAYERS, hf_weight, random_factor, save_tiny_llama  # noqa: E402

DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}
RANK, SCALE = 4, 20.0


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("llama"))


def _lora_model(base: Path, config: dict):
    model, _ = load_model(base)
    model.freeze()
    kind = config["fine_tune_type"]
    if kind == "full":
        for layer in model.layers[-config["num_layers"] :]:
            layer.unfreeze()
    else:
        linear_to_lora_layers(
            model, config["num_layers"], config["lora_parameters"], use_dora=kind == "dora"
        )
    return model


def write_adapter(
    folder: Path,
    base: Path,
    kind: str = "lora",
    dtype: str = "float32",
    seed: int = 0,
    keys: list[str] | None = None,
    files: tuple[str, ...] = ("adapters.safetensors",),
) -> Path:
    """An MLX-LM adapter folder with random trained values, saved as mlx-lm's trainer saves."""
    folder.mkdir(parents=True, exist_ok=True)
    params = {"rank": RANK, "scale": SCALE, "dropout": 0.0}
    if keys is not None:
        params["keys"] = keys
    config = {
        "fine_tune_type": kind,
        "lora_parameters": None if kind == "full" else params,
        "num_layers": LAYERS,
        "model": str(base),
    }
    model = _lora_model(base, config)
    for index, file in enumerate(files):
        trained = []
        for i, (name, value) in enumerate(tree_flatten(model.trainable_parameters())):
            noise = random_factor(value.shape, 1000 * seed + 100 * index + i)
            if name.endswith(".m") or kind == "full":  # stay near the trained magnitudes, weights
                trained.append((name, value * (1 + mx.array(noise))))
            else:
                trained.append((name, mx.array(noise)))
        model.update(tree_unflatten(trained))
        weights = {
            k: v.astype(DTYPES[dtype]) for k, v in tree_flatten(model.trainable_parameters())
        }
        mx.save_safetensors(str(folder / file), weights)
    save_config(config, folder / "adapter_config.json")
    return folder


def mlx_reference(folder: Path, base: Path) -> dict[tuple[int, str], np.ndarray]:
    """mlx-lm's own load of the adapter and fuse of every layer, in float64, minus the base."""
    config = json.loads((folder / "adapter_config.json").read_text())
    model, _ = load_model(base)
    model = load_adapters(model, str(folder))
    model.set_dtype(mx.float64)
    reference = {}
    roles = {module: role for role, module in HF_MODULES.items()}
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear | DoRALinear):
            layer, path = name.removeprefix("model.layers.").split(".", 1)
            fused = module.fuse(dequantize=True)
            delta = np.array(fused.weight) - np.array(module.linear.weight)
            reference[(int(layer), roles[path])] = delta
    assert reference and config["fine_tune_type"] in ("lora", "dora")
    return reference


@pytest.mark.parametrize("dtype", DTYPES)
def test_lora_matches_mlx_fuse_and_reads_twice(tmp_path, llama, dtype):
    folder = write_adapter(tmp_path / "adapters", llama, dtype=dtype)
    reference = mlx_reference(folder, llama)
    checkpoint = load(folder)
    assert checkpoint.format == "mlx" and checkpoint.variant == "LoRA (MLX-LM)"
    first = read_deltas(checkpoint, modules="all")
    assert_same_reads(first, read_deltas(checkpoint, modules="all"))
    assert {(r.delta.layer, r.delta.role) for r in first} == set(reference)
    for read in first:
        assert read.delta.update.scale == SCALE
        assert str(read.delta.source_dtype) == f"torch.{dtype}"
        key = (read.delta.layer, read.delta.role)
        assert relative_error(read.dense, reference[key]) < 1e-6, key


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_dora_matches_mlx_fuse(tmp_path, llama, dtype):
    folder = write_adapter(tmp_path / "dora", llama, kind="dora", dtype=dtype)
    reference = mlx_reference(folder, llama)
    checkpoint = load(folder, base=llama)
    assert checkpoint.variant == "DoRA (LoRA (MLX-LM))"
    for read in read_deltas(checkpoint, modules="all"):
        key = (read.delta.layer, read.delta.role)
        assert relative_error(read.dense, reference[key]) < 1e-6, key
    # without --base the config's model (a local folder here) is found by spectra.load
    found = spectra.load(folder)
    assert found.base == llama and any("config's model" in w for w in found.describe().warnings)
    with pytest.raises(MissingBaseError, match="needs the base weight W0"):
        load(folder).plan()
    directional = load(folder, directional_only=True)
    assert [m.kind for m in directional.describe().modules] == ["factored"] * 14
    assert all("ignored with directional_only=True" in r for _, r in directional.not_analysed())


def test_full_fine_tune_is_tuned_minus_base(tmp_path, llama):
    folder = write_adapter(tmp_path / "full", llama, kind="full")
    checkpoint = load(folder, base=llama)
    assert checkpoint.format == "mlx" and checkpoint.variant == "full fine-tune (MLX-LM)"
    from safetensors.numpy import load_file

    tuned = load_file(str(folder / "adapters.safetensors"))
    for read in read_deltas(checkpoint, modules="all"):
        layer, role = read.delta.layer, read.delta.role
        name = f"model.layers.{layer}.{HF_MODULES[role]}.weight"
        expected = tuned[name].astype(np.float64) - hf_weight(llama, layer, role)
        assert relative_error(read.dense, expected) < 1e-12
    with pytest.raises(MissingBaseError):
        load(folder).plan()


def test_training_checkpoints_are_a_sweep(tmp_path, llama):
    files = ("0000100_adapters.safetensors", "0000200_adapters.safetensors")
    folder = write_adapter(tmp_path / "run", llama, files=files)
    shutil.copy(folder / files[1], folder / "adapters.safetensors")  # the trainer's final save
    found = find_checkpoints(folder, "*_adapters.safetensors")
    assert [(c.step, c.path.name) for c in found] == [(100, files[0]), (200, files[1])]
    for checkpoint in found:
        assert detect_format(checkpoint.path) == "mlx"
        assert load(checkpoint.path).store.path == checkpoint.path
    assert load(folder).store.path == folder / "adapters.safetensors"
    step_200 = read_deltas(load(found[1].path))
    final = read_deltas(load(folder))
    assert_same_reads(step_200, final)  # the final file is the last step's weights
    found = spectra.sweep(folder, pattern="*_adapters.safetensors", cache=False, modules=["v"])
    table = found.to_pandas()
    assert sorted(set(table["step"])) == [100, 200]


def test_nothing_dropped(tmp_path, llama):
    keys = ["self_attn.k_proj", "self_attn.v_proj", "mlp.down_proj", "model.embed_tokens"]
    folder = write_adapter(tmp_path / "some", llama, keys=keys)
    checkpoint = load(folder)
    names = set(checkpoint.store.names())
    analysed = {
        m.name + part for m in checkpoint.describe().modules for part in (".lora_a", ".lora_b")
    }
    left_out = dict(checkpoint.not_analysed())
    assert analysed | set(left_out) == names and not analysed & set(left_out)
    assert set(left_out) == {"model.embed_tokens.lora_a", "model.embed_tokens.lora_b"}
    assert all("outside the transformer blocks" in reason for reason in left_out.values())


def test_inspect_says_where_the_scale_came_from(tmp_path, llama):
    folder = write_adapter(tmp_path / "adapters", llama)
    result = CliRunner().invoke(cli, ["inspect", str(folder)])
    assert result.exit_code == 0, result.output
    assert "mlx format" in result.output
    assert "config: lora_parameters.scale = 20 (absolute, no α/r)" in result.output


def test_inspect_and_the_report_show_the_trainers_settings(tmp_path, llama):
    """mlx_lm.lora saves its arguments in adapter_config.json: they are the training summary."""
    from mlx_lm.lora import CONFIG_DEFAULTS

    folder = write_adapter(tmp_path / "adapters", llama)
    written = json.loads((folder / "adapter_config.json").read_text())
    trainer = CONFIG_DEFAULTS | {"iters": 600, "learning_rate": 2e-5, "seed": 7} | written
    save_config(trainer, folder / "adapter_config.json")
    result = CliRunner().invoke(cli, ["inspect", str(folder)])
    assert result.exit_code == 0, result.output
    section = result.output.split("training (as MLX-LM")[1]
    for line in ("steps:", "600", "learning_rate:", "2e-05", "optimizer:", "adam", "seed:"):
        assert line in section, section
    summary = spectra.analyze(folder, base=llama, layers=[0]).meta["training"]["fields"]
    assert summary["steps"] == 600 and summary["learning_rate"] == 2e-5
    assert summary["rank"] == RANK and summary["scale"] == SCALE
    assert summary["batch_size"] == CONFIG_DEFAULTS["batch_size"]


def test_a_peft_folder_is_not_taken_for_mlx(lora_adapter):
    assert detect_format(lora_adapter.path) == "peft"


def _edit_config(folder: Path, change) -> None:
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


def test_missing_scale_is_refused(tmp_path, llama):
    folder = write_adapter(tmp_path / "adapters", llama)
    _edit_config(folder, lambda c: c["lora_parameters"].update(scale=None, alpha=16))
    with pytest.raises(FormatError) as error:
        load(folder)
    message = str(error.value)
    assert "adapter_config.json" in message and "lora_parameters.scale" in message
    assert "found None" in message and "not α" in message


def test_mismatched_rank_is_refused(tmp_path, llama):
    folder = write_adapter(tmp_path / "adapters", llama)
    _edit_config(folder, lambda c: c["lora_parameters"].update(rank=8))
    with pytest.raises(FormatError) as error:
        load(folder)
    message = str(error.value)
    assert "adapters.safetensors" in message and "lora_a (d_in, 8)" in message
    assert "found lora_a (96, 4) and lora_b (4, 64)" in message
