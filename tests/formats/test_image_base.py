"""kohya / LyCORIS / diffusers files of image models against their base (``base=``).

Tiny models built from configs (``tests/helpers/image_models.py``: a UNet with
a plain and a cross-attention down block, two CLIP text encoders, a Flux
transformer), written as a diffusers pipeline folder (the UNet sharded) and
as single files in the original names (SD 1.x, SDXL with OpenCLIP's fused
``in_proj_weight``, Flux in Black Forest Labs' names); each single file is
checked first by diffusers' own single-file converters, which must give the
models' own weights back.

The adapters are written by their libraries: LyCORIS's kohya wrapper (LoRA,
DoRA over input columns, ``wd_on_output=False``, and over output rows,
LyCORIS's default), diffusers' ``save_lora_weights`` of peft adapters (LoRA
and DoRA, ``lora_magnitude_vector`` (d_out,)), and for Flux peft on the
transformer; kohya's Flux LoRA in BFL names and kohya's SDXL names
(``lora_unet_input_blocks_4_1_…``) are written by renaming, checked against
diffusers' own kohya conversion. The references: each library's own forward
or merge in float64 (ΔW), and numpy's ``‖ΔW‖ / ‖W0‖`` with W0 read from the
base files by diffusers / safetensors (``relative_norm``).
"""

from __future__ import annotations

import copy
import inspect
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from spectra_cli.main import cli

import spectra
from spectra.errors import BaseMismatchError, FormatError, MissingBaseError
from tests.helpers.checks import DTYPES, assert_same_reads, dtype_id, read_deltas, relative_error
from tests.helpers.image_models import (
    LAYERS_PER_BLOCK,
    bfl_flux_names,
    ldm_unet_names,
    open_clip_names,
    save_flux_single_file,
    save_pipeline,
    save_sd_single_file,
    tiny_clip,
    tiny_flux,
    tiny_unet,
)

pytest.importorskip("diffusers")
pytest.importorskip("lycoris")
pytestmark = pytest.mark.slow
logging.getLogger("LyCORIS").setLevel(logging.ERROR)

RANK, ALPHA = 4, 8
PARTS = ("alpha", "lora_up.weight", "lora_down.weight", "dora_scale")
PRESET = """
unet_target_module = ["Transformer2DModel"]
unet_target_name = []
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]
text_encoder_target_name = []
"""


class Models:
    """The tiny models, their base checkpoints on disk, and W0 as each base file holds it."""

    def __init__(self, folder: Path):
        torch.manual_seed(0)
        self.unet, self.te, self.te2, self.flux = (
            tiny_unet(),
            tiny_clip(24),
            tiny_clip(32, projection=True),
            tiny_flux(),
        )
        self.sd_pipe = save_pipeline(folder / "sd", unet=self.unet, text_encoder=self.te)
        self.sd_file = save_sd_single_file(folder / "sd.safetensors", self.unet, self.te)
        self.sdxl_pipe = save_pipeline(
            folder / "sdxl", unet=self.unet, text_encoder=self.te, text_encoder_2=self.te2
        )
        self.sdxl_file = save_sd_single_file(
            folder / "sdxl.safetensors", self.unet, self.te, self.te2
        )
        self.flux_pipe = save_pipeline(folder / "flux", transformer=self.flux)
        self.flux_file = save_flux_single_file(
            folder / "flux1.safetensors", self.flux, prefix="model.diffusion_model."
        )

    def weights(self, base: Path) -> dict[tuple[str, str], np.ndarray]:
        """W0 by (component, module with "_"), read from ``base`` by safetensors and diffusers."""
        from diffusers.loaders import single_file_utils as files

        found: dict[str, dict[str, torch.Tensor]] = {}
        if base.is_dir():
            for component in ("unet", "transformer", "text_encoder", "text_encoder_2"):
                for shard in sorted((base / component).glob("*.safetensors")):
                    found.setdefault(component, {}).update(load_file(shard))
        elif base == self.flux_file:
            found["transformer"] = _diffusers_flux(load_file(base), 16)
        else:
            state = load_file(base)
            found["unet"] = files.convert_ldm_unet_checkpoint(dict(state), dict(self.unet.config))
            found["text_encoder"] = files.convert_ldm_clip_checkpoint(state)
            if base == self.sdxl_file:
                prefix = "conditioner.embedders.1.model."
                found["text_encoder_2"] = files.convert_open_clip_checkpoint(
                    self.te2, state, prefix
                )
        return {
            (component, _module_key(name)): tensor.double().reshape(tensor.shape[0], -1).numpy()
            for component, state in found.items()
            for name, tensor in state.items()
            if name.endswith(".weight")
        }


def _module_key(name: str) -> str:
    return name.removesuffix(".weight").replace(".", "_").removeprefix("text_model_")


def _diffusers_flux(state: dict, inner_dim: int) -> dict:
    """diffusers' Flux single-file converter, its hard-coded inner_dim (3072) set to ours."""
    from diffusers.loaders import single_file_utils as files

    source = inspect.getsource(files.convert_flux_transformer_checkpoint_to_diffusers)
    assert "inner_dim = 3072" in source
    scope = dict(vars(files))
    exec(source.replace("inner_dim = 3072", f"inner_dim = {inner_dim}"), scope)
    return scope["convert_flux_transformer_checkpoint_to_diffusers"](dict(state))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Models:
    return Models(tmp_path_factory.mktemp("image-bases"))


def _randomise(parameters, dtype: torch.dtype, seed: int) -> None:
    """Random adapter values rounded to ``dtype``, so that the file holds them exactly."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in parameters:
            noise = 0.1 * torch.randn(parameter.shape, generator=generator)
            if parameter.shape[0] == 1 or parameter.dim() == 1 or parameter.shape[-1] == 1:
                noise = parameter.detach() * (1 + noise)  # a DoRA magnitude: near W0's norms
            parameter.copy_(noise.to(dtype).to(parameter.dtype))


def write_lycoris(models: Models, folder: Path, dtype, sdxl=False, **kwargs):
    """A kohya-layout file by LyCORIS, and ΔW of each module by LyCORIS in float64.

    For LoRA / DoRA modules the reference is ``get_merged_weight`` (W0 + ΔW,
    the weight decomposition applied), which agrees with LyCORIS's forward to
    1e-16 and is ten times faster; LoHa's and LoKr's merge square the scale
    (test_kohya.py), so theirs is the forward pass ``(module(I) − W0·I)ᵀ``.
    """
    from lycoris.kohya import create_network

    unet, te = copy.deepcopy(models.unet), copy.deepcopy(models.te)
    encoders = [te, copy.deepcopy(models.te2)] if sdxl else te
    (folder / "preset.toml").write_text(PRESET)
    network = create_network(
        1.0, RANK, ALPHA, None, encoders, unet, preset=str(folder / "preset.toml"), **kwargs
    )
    network.apply_to(encoders, unet, True, True)
    _randomise(network.parameters(), dtype, seed=1)
    path = folder / f"lycoris-{dtype_id(dtype)}.safetensors"
    network.save_weights(str(path), dtype, {})
    network.to(torch.float64)
    reference = {}
    with torch.no_grad():
        for lora in network.loras:
            original = lora.org_module[0].double()
            if not isinstance(original, torch.nn.Linear):  # proj_in / proj_out convs: listed
                continue
            if kwargs.get("algo", "lora") == "lora":
                merged = lora.get_merged_weight()[0]  # (out, in)
                reference[lora.lora_name] = (merged - original.weight).numpy()
            else:
                x = torch.eye(original.in_features, dtype=torch.float64)  # (in, in)
                reference[lora.lora_name] = (lora(x) - lora.org_forward(x)).T.numpy()
    return path, reference


def write_diffusers(models: Models, folder: Path, dtype, dora: bool):
    """A pytorch_lora_weights.safetensors by diffusers (peft on UNet and CLIP), and peft's merge.

    With ``dora`` the UNet's adapters are DoRA, the text encoder's LoRA.
    """
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer
    from peft.utils import get_peft_model_state_dict

    unet, te = copy.deepcopy(models.unet), copy.deepcopy(models.te)
    targets = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]
    unet_config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=targets, use_dora=dora)
    te_config = LoraConfig(r=2, lora_alpha=4, target_modules=["k_proj", "fc1"])
    unet.add_adapter(unet_config)
    te = inject_adapter_in_model(te_config, te)
    for model, seed in ((unet, 2), (te, 3)):
        _randomise([p for n, p in model.named_parameters() if "lora_" in n], dtype, seed)
    folder = folder / f"diffusers-{dtype_id(dtype)}{'-dora' if dora else ''}"
    StableDiffusionPipeline.save_lora_weights(
        str(folder),
        unet_lora_layers={k: v.to(dtype) for k, v in get_peft_model_state_dict(unet).items()},
        text_encoder_lora_layers={k: v.to(dtype) for k, v in get_peft_model_state_dict(te).items()},
        unet_lora_adapter_metadata=unet_config.to_dict(),
        text_encoder_lora_adapter_metadata=te_config.to_dict(),
    )
    return folder / "pytorch_lora_weights.safetensors", _peft_merged(
        {"unet": unet, "text_encoder": te}, LoraLayer
    )


def _peft_merged(models: dict, layer_type) -> dict[str, np.ndarray]:
    """peft's own merge of each adapted Linear in float64, minus its weight before."""
    reference = {}
    for prefix, model in models.items():
        model.double()
        for name, module in model.named_modules():
            if isinstance(module, layer_type) and isinstance(module.base_layer, torch.nn.Linear):
                before = module.base_layer.weight.detach().clone()
                module.merge(adapter_names=["default"])
                reference[f"{prefix}.{name}"] = (module.base_layer.weight.detach() - before).numpy()
    return reference


def _rows(name: str, role: str, full: np.ndarray, d_in: int) -> np.ndarray:
    """The rows of a role in its module: GEGLU halves, Flux qkv thirds, Flux linear1."""
    flat = name.replace(".", "_")
    if flat.endswith("ff_net_0_proj") and "unet" in flat:
        half = full.shape[0] // 2
        return full[:half] if role == "up" else full[half:]
    if flat.endswith("attn_qkv"):
        third = full.shape[0] // 3
        return full["qkv".index(role) * third : ("qkv".index(role) + 1) * third]
    if flat.endswith("linear1"):
        index = "qkv".index(role) if role in "qkv" else 3
        return full[index * d_in : (index + 1) * d_in] if index < 3 else full[3 * d_in :]
    return full


def _base_key(name: str) -> tuple[str, str]:
    """(component, module with "_") of an adapter's module name, kohya's or diffusers'."""
    for prefix, component in (
        ("lora_unet_", "unet"),
        ("lora_te1_", "text_encoder"),
        ("lora_te2_", "text_encoder_2"),
        ("lora_te_", "text_encoder"),
        ("unet.", "unet"),
        ("transformer.", "transformer"),
        ("text_encoder.", "text_encoder"),
    ):
        if name.startswith(prefix):
            return component, _module_key(name[len(prefix) :])
    raise AssertionError(name)


def check_with_base(
    path: Path, base: Path, reference: dict, W0: dict, rename=None, report=False
) -> list:
    """Read twice; every module's ΔW against its library, base_weight and base_norm against
    numpy (with ``report``, ``relative_norm`` too); every tensor of the file analysed or listed."""
    checkpoint = spectra.load(path, base=base)
    first = read_deltas(checkpoint, modules="all")
    assert_same_reads(first, read_deltas(checkpoint, modules="all"))
    relative = {}
    if report:  # three blocks: the first (a text encoder's), the middle one and the last
        layers = sorted({r.delta.layer for r in first})
        some = [layers[0], layers[len(layers) // 2], layers[-1]]
        rows = spectra.analyze(path, base=base, modules="all", layers=some).rows
        relative = {(row["layer"], row["role"]): row["relative_norm"] for row in rows}
        assert len(relative) >= 3
    for read in first:
        delta = read.delta
        d_in = read.dense.shape[1]
        ref_name = rename(delta.name) if rename else delta.name
        expected = _rows(delta.name, delta.role, reference[ref_name], d_in)
        assert relative_error(read.dense, expected) < 1e-10, (delta.name, delta.role)
        W = _rows(delta.name, delta.role, W0[_base_key(ref_name)], d_in)
        np.testing.assert_array_equal(checkpoint.base_weight((delta.layer, delta.role)).numpy(), W)
        assert delta.base_norm == pytest.approx(np.linalg.norm(W), rel=1e-12)
        ratio = np.linalg.norm(expected) / np.linalg.norm(W)
        if (delta.layer, delta.role) in relative:
            assert relative[(delta.layer, delta.role)] == pytest.approx(ratio, rel=1e-9)
    assert_nothing_dropped(path, checkpoint)
    assert str(base) in checkpoint.describe().details["base_weights"]
    return first


def assert_nothing_dropped(path: Path, checkpoint) -> None:
    with safe_open(str(path), "pt") as handle:
        names = set(handle.keys())
    info = checkpoint.describe()
    analysed = {module.name for module in info.modules}
    listed = dict(info.not_analysed)
    for name in names:
        in_analysed = any(name.startswith(f"{module}.") for module in analysed)
        assert (name in listed) != in_analysed, name
    assert set(listed) <= names and all(listed.values())


# -- the base files themselves ---------------------------------------------------------------


def test_single_files_convert_back_with_diffusers(models):
    """Each single file, converted back by diffusers' own converter, is the model's weights."""
    W0 = models.weights(models.sdxl_file)
    for component, model in (
        ("unet", models.unet),
        ("text_encoder", models.te),
        ("text_encoder_2", models.te2),
    ):
        for name, tensor in model.state_dict().items():
            if name.endswith(".weight") and tensor.dim() >= 2:
                key = (component, _module_key(name))
                np.testing.assert_array_equal(W0[key], tensor.reshape(tensor.shape[0], -1))
    flux = models.weights(models.flux_file)
    for name, tensor in models.flux.state_dict().items():
        if name.endswith(".weight") and tensor.dim() == 2:
            np.testing.assert_array_equal(flux[("transformer", _module_key(name))], tensor)
    assert len(ldm_unet_names(models.unet.state_dict())) == len(models.unet.state_dict())
    assert "transformer.resblocks.0.attn.in_proj_weight" in open_clip_names(models.te2.state_dict())
    assert "double_blocks.0.img_attn.qkv.weight" in bfl_flux_names(models.flux.state_dict())


# -- LyCORIS / kohya ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_lycoris_lora_with_a_pipeline_folder_and_a_single_file(models, tmp_path, dtype):
    path, reference = write_lycoris(models, tmp_path, dtype, algo="lora")
    for base in (models.sd_pipe, models.sd_file):
        reads = check_with_base(
            path, base, reference, models.weights(base), report=base == models.sd_file
        )
        assert {r.delta.role for r in reads} == {"q", "k", "v", "o", "up", "gate", "down"}
        assert {r.delta.source_dtype for r in reads} == {dtype}


DORA_CASES = {  # algo, axis, dtype
    "lora-in-float32": ("lora", "in", torch.float32, {}),
    "lora-out-bfloat16": ("lora", "out", torch.bfloat16, {}),
    "lora-in-float16": ("lora", "in", torch.float16, {}),
    "loha-out-float32": ("loha", "out", torch.float32, {}),
    "lokr-in-float32": ("lokr", "in", torch.float32, {"factor": 4}),
}


@pytest.mark.parametrize("case", list(DORA_CASES))
def test_lycoris_dora_over_either_axis(models, tmp_path, case):
    """dora_scale (1, d_in) (wd_on_output=False) or (d_out, 1) (LyCORIS's default)."""
    algo, axis, dtype, options = DORA_CASES[case]
    wd = {"in": "False", "out": "True"}[axis]
    path, reference = write_lycoris(
        models, tmp_path, dtype, algo=algo, dora_wd="True", wd_on_output=wd, **options
    )
    reads = check_with_base(path, models.sd_pipe, reference, models.weights(models.sd_pipe))
    checkpoint = spectra.load(path, base=models.sd_pipe)
    assert checkpoint.variant == {"lora": "DoRA", "loha": "LoHa with DoRA"}.get(
        algo, "LoKr with DoRA"
    )
    (how,) = checkpoint.describe().details["DoRA magnitude"]
    assert how.startswith(f"over {'input columns' if axis == 'in' else 'output rows'}")
    shapes = {r.dense.shape for r in reads}
    assert (32, 32) in shapes and (32, 24) in shapes  # square attn1, non-square attn2 k / v
    if algo != "lora":
        return
    # On a square layer the other axis gives another weight: the test can tell them apart.
    read = next(r for r in reads if r.delta.name.endswith("attn1_to_q"))
    with safe_open(str(path), "pt") as file:
        part = {p: file.get_tensor(f"{read.delta.name}.{p}").double().numpy() for p in PARTS}
    W0 = checkpoint.base_weight((read.delta.layer, read.delta.role)).numpy()
    V = W0 + part["alpha"] / RANK * part["lora_up.weight"] @ part["lora_down.weight"]
    m = part["dora_scale"].reshape(-1)
    other = (
        V * (m / np.linalg.norm(V, axis=1))[:, None]
        if axis == "in"
        else V * (m / np.linalg.norm(V, axis=0))
    )
    assert relative_error(other - W0, read.dense) > 1e-2


def test_flat_dora_scale_on_a_square_layer_is_read_by_its_writer(models, tmp_path):
    """Flattened (1, d_in) vectors: a square layer's axis is the writer's (kohya: columns)."""
    path, reference = write_lycoris(
        models, tmp_path, torch.float32, algo="lora", dora_wd="True", wd_on_output="False"
    )
    tensors = load_file(path)
    flat = {k: v.reshape(-1) if k.endswith("dora_scale") else v for k, v in tensors.items()}
    save_file(flat, str(tmp_path / "flat.safetensors"))
    check_with_base(
        tmp_path / "flat.safetensors", models.sd_pipe, reference, models.weights(models.sd_pipe)
    )
    checkpoint = spectra.load(tmp_path / "flat.safetensors", base=models.sd_pipe)
    details = checkpoint.describe().details["DoRA magnitude"]
    assert any("flat dora_scale on a square layer" in how for how in details)
    assert any("flat dora_scale of length d_in" in how for how in details)  # non-square: by size
    assert any("square layer, whose shape cannot say its axis" in w for w in checkpoint.warnings())


def test_sdxl_kohya_names_with_an_sdxl_folder_and_single_file(models, tmp_path):
    """kohya's SDXL names (lora_unet_input_blocks_4_1_…, lora_te1_, lora_te2_), both SDXL bases."""
    from diffusers.loaders.lora_conversion_utils import _maybe_map_sgm_blocks_to_diffusers

    path, reference = write_lycoris(models, tmp_path, torch.float16, sdxl=True, algo="lora")
    tensors = load_file(path)
    renamed = {_kohya_ldm(k): v for k, v in tensors.items()}
    assert len(renamed) == len(tensors)
    assert any(k.startswith("lora_unet_input_blocks_4_1_") for k in renamed)
    back = _maybe_map_sgm_blocks_to_diffusers(dict(renamed), models.unet.config)
    words = (("input_blocks", "down_blocks"), ("middle_block", "mid_block"), ("output", "up"))
    for old, new in words:  # diffusers renames the block words afterwards
        back = {k.replace(old, new): v for k, v in back.items()}
    assert set(back) == set(tensors)  # diffusers maps kohya's SDXL names back to ours
    save_file(renamed, str(tmp_path / "sdxl.safetensors"))
    undo = {_kohya_ldm(k.split(".")[0]): k.split(".")[0] for k in tensors}
    for base in (models.sdxl_pipe, models.sdxl_file):
        reads = check_with_base(
            tmp_path / "sdxl.safetensors", base, reference, models.weights(base), undo.get
        )
        assert {r.delta.name.split("_")[1] for r in reads} == {"unet", "te1", "te2"}


def _kohya_ldm(key: str) -> str:
    """A kohya key with diffusers' UNet names in kohya's SDXL (LDM) names (the tests' own map:
    input block 1 + B·(n+1) + L, output block B·(n+1) + L, the middle block's attention 1)."""
    slots = LAYERS_PER_BLOCK + 1
    match = re.match(r"lora_unet_(down|up)_blocks_(\d+)_attentions_(\d+)_(.*)$", key)
    if match:
        block, layer = int(match[2]), int(match[3])
        if match[1] == "down":
            return f"lora_unet_input_blocks_{1 + block * slots + layer}_1_{match[4]}"
        return f"lora_unet_output_blocks_{block * slots + layer}_1_{match[4]}"
    return re.sub(r"^lora_unet_mid_block_attentions_0_", "lora_unet_middle_block_1_", key)


# -- diffusers / peft --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_diffusers_lora_and_dora_with_both_bases(models, tmp_path, dtype):
    """peft's DoRA (lora_magnitude_vector (d_out,)) on square and non-square layers, and LoRA."""
    path, reference = write_diffusers(models, tmp_path, dtype, dora=True)
    for base in (models.sd_file, models.sd_pipe):
        reads = check_with_base(
            path, base, reference, models.weights(base), report=base == models.sd_pipe
        )
        assert {r.delta.role for r in reads} == {"q", "k", "v", "o", "up", "gate", "down"}
    checkpoint = spectra.load(path, base=models.sd_file)
    assert checkpoint.variant == "LoRA + DoRA"
    assert {m.kind for m in checkpoint.describe().modules if m.name.startswith("unet.")} == {
        "dense"
    }
    details = checkpoint.describe().details["DoRA magnitude"]
    assert set(details) == {
        "over output rows (flat lora_magnitude_vector on a square layer: its writer's "
        "(peft / diffusers) axis)",
        "over output rows (flat lora_magnitude_vector of length d_out)",
    }


# -- Flux --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_flux_diffusers_lora_with_a_bfl_single_file(models, tmp_path, dtype):
    """to_q … proj_mlp of a diffusers LoRA take their rows of BFL's fused qkv and linear1."""
    from diffusers import FluxPipeline
    from peft import LoraConfig
    from peft.tuners.lora import LoraLayer
    from peft.utils import get_peft_model_state_dict

    flux = copy.deepcopy(models.flux)
    targets = ["to_q", "to_k", "to_v", "add_q_proj", "add_v_proj", "to_out.0", "proj_mlp"]
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=targets)
    flux.add_adapter(config)
    _randomise([p for n, p in flux.named_parameters() if "lora_" in n], dtype, seed=5)
    layers = {k: v.to(dtype) for k, v in get_peft_model_state_dict(flux).items()}
    FluxPipeline.save_lora_weights(
        str(tmp_path),
        transformer_lora_layers=layers,
        transformer_lora_adapter_metadata=config.to_dict(),
    )
    reference = _peft_merged({"transformer": flux}, LoraLayer)
    path = tmp_path / "pytorch_lora_weights.safetensors"
    for base in (models.flux_file, models.flux_pipe):
        reads = check_with_base(
            path, base, reference, models.weights(base), report=base == models.flux_file
        )
        assert any(r.delta.name.endswith("single_transformer_blocks.0.proj_mlp") for r in reads)


def test_kohya_flux_bfl_names_with_a_diffusers_folder(models, tmp_path):
    """kohya's fused img_attn_qkv and linear1 over a diffusers base: to_q, to_k, to_v stacked."""
    generator = torch.Generator().manual_seed(6)
    state = bfl_flux_names(models.flux.state_dict())
    tensors, reference = {}, {}
    for bfl in (
        "double_blocks.0.img_attn.qkv",
        "double_blocks.0.txt_attn.proj",
        "single_blocks.0.linear1",
    ):
        d_out, d_in = state[f"{bfl}.weight"].shape
        module = "lora_unet_" + bfl.replace(".", "_")
        down = torch.randn(RANK, d_in, generator=generator)  # (r, in)
        up = torch.randn(d_out, RANK, generator=generator)  # (out, r)
        tensors |= {f"{module}.lora_down.weight": down, f"{module}.lora_up.weight": up}
        tensors[f"{module}.alpha"] = torch.tensor(float(ALPHA))
        reference[module] = (ALPHA / RANK) * (up.double() @ down.double()).numpy()
    path = tmp_path / "flux_kohya.safetensors"
    save_file(tensors, str(path))
    for base in (models.flux_pipe, models.flux_file):
        checkpoint = spectra.load(path, base=base)
        W0 = {
            ("unet", "lora_unet_" + k.removesuffix(".weight").replace(".", "_")): (
                v.double().numpy()
            )
            for k, v in state.items()
            if k.endswith(".weight")
        }
        reads = read_deltas(checkpoint, modules="all")
        assert len(reads) == 3 + 1 + 4
        for read in reads:
            delta = read.delta
            d_in = read.dense.shape[1]
            expected = _rows(delta.name, delta.role, reference[delta.name], d_in)
            assert relative_error(read.dense, expected) < 1e-12
            W = _rows(delta.name, delta.role, W0[("unet", delta.name)], d_in)
            np.testing.assert_array_equal(
                checkpoint.base_weight((delta.layer, delta.role)).numpy(), W
            )
            assert delta.base_norm == pytest.approx(np.linalg.norm(W), rel=1e-12)
        assert_same_reads(reads, read_deltas(checkpoint, modules="all"))
        assert_nothing_dropped(path, checkpoint)


def test_intruder_dimensions_of_an_image_adapter(models, tmp_path):
    """compare's intruders: the top left singular vectors of W0 + ΔW against W0's, by numpy."""
    path, _ = write_lycoris(models, tmp_path, torch.float32, algo="lora", dora_wd="True")
    comparison = spectra.compare(
        [path, path],
        labels=["first", "second"],
        base=models.sd_pipe,
        subspace=True,
        modules="k",
        layers=[0],
        intruder_eps=0.9,
    )
    checkpoint = spectra.load(path, base=models.sd_pipe)
    (delta,) = checkpoint.deltas(modules="k", layers=[0])
    W0 = checkpoint.base_weight((0, "k")).numpy()
    tuned = W0 + delta.update.to_dense().numpy()
    U0 = np.linalg.svd(W0)[0]
    U = np.linalg.svd(tuned)[0][:, :10]
    expected = int((np.abs(U.T @ U0).max(axis=1) < 0.9).sum())
    rows = [r for r in comparison.subspace.modules if r["label"] == comparison.labels[0]]
    assert rows[0]["intruder_dimensions"] == expected


# -- refusals ---------------------------------------------------------------------------------


def test_a_base_of_another_model_is_refused(models, tmp_path):
    path, _ = write_lycoris(models, tmp_path, torch.float32, algo="lora")
    from diffusers import UNet2DConditionModel

    wide = UNet2DConditionModel.from_config({**models.unet.config, "cross_attention_dim": 20})
    save_pipeline(tmp_path / "other", unet=wide, text_encoder=models.te)
    with pytest.raises(BaseMismatchError) as error:
        spectra.load(path, base=tmp_path / "other").plan("all")
    message = str(error.value)
    assert "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k" in message
    assert "(32, 24) in the adapter" in message and "is (32, 20)" in message
    assert "base=" in message and str(tmp_path / "other") in message
    result = CliRunner().invoke(cli, ["analyze", str(path), "--base", str(tmp_path / "other")])
    assert result.exit_code == 1 and "--base" in result.output and "(32, 20)" in result.output
    with pytest.raises(BaseMismatchError, match=r"expected a weight for lora_unet_.*found none"):
        spectra.load(path, base=models.flux_file).plan("all")
    with pytest.raises(FormatError, match=r"expected the base of an image-model adapter.*base"):
        spectra.load(path, base=path)


def test_dora_without_its_base_weight_is_refused(models, tmp_path):
    path, _ = write_lycoris(
        models, tmp_path, torch.float32, algo="lora", dora_wd="True", wd_on_output="False"
    )
    assert spectra.load(path).describe().modules  # inspect works without a base
    with pytest.raises(MissingBaseError, match=r"dora_scale.*needs the base weight W0.*base=DIR"):
        list(spectra.load(path).deltas())
    unet_only = spectra.load(path, base=models.sd_pipe / "unet")  # a component folder alone
    assert any("holds no text_encoder weights" in w for w in unet_only.warnings())
    layers = {m.layer: m.name for m in unet_only.describe().modules}
    unet_layer = next(layer for layer, name in layers.items() if name.startswith("lora_unet"))
    te_layer = next(layer for layer, name in layers.items() if name.startswith("lora_te"))
    assert list(unet_only.deltas(modules="all", layers=[unet_layer]))  # UNet blocks: analysed
    with pytest.raises(MissingBaseError, match=r"holds no text_encoder weights"):
        list(unet_only.deltas(modules="all", layers=[te_layer]))
