"""kohya / LyCORIS / diffusers LoRA files of image models, written by LyCORIS and diffusers.

The models are tiny and built from configs (random init, nothing downloaded):
a diffusers ``UNet2DConditionModel`` (two blocks of 32 and 64 channels, with
cross-attention) and a transformers ``CLIPTextModel`` (two layers, hidden 32).

- LyCORIS's kohya wrapper (``lycoris.kohya.create_network``) writes files in
  kohya's key layout (``lora_unet_…``, ``lora_te_…``): ``algo="lora"`` is kohya's
  own ``lora_down`` / ``lora_up`` / ``alpha`` (LoCon on the convolutions), then
  LoHa, LoKr, LoKr with whole factors, rsLoRA and DoRA. The reference ΔW of
  each module is LyCORIS's own forward pass in float64: ``(module(I) − W0·I)ᵀ``.
- diffusers' ``StableDiffusionPipeline.save_lora_weights`` writes a
  ``pytorch_lora_weights.safetensors`` of peft adapters, with the LoraConfig in
  the ``lora_adapter_metadata`` or without it; the reference is peft's own
  ``get_delta_weight`` in float64.

Adapter parameters are rounded to the file's dtype before saving, so the
in-memory modules the reference comes from hold exactly what the file holds.
Hand-written files in the documented layouts cover what the libraries do not
write here: an old kohya file without alpha, Flux in Black Forest Labs' names,
diffusers' older attention-processor keys, and bad input.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import save_file
from spectra_cli.main import cli

import spectra
from spectra.errors import FormatError, MissingBaseError
from tests.helpers.checks import DTYPES, assert_same_reads, dtype_id, read_deltas, relative_error

pytest.importorskip("diffusers")
pytest.importorskip("lycoris")
logging.getLogger("LyCORIS").setLevel(logging.ERROR)

RANK, ALPHA = 4, 8
# LyCORIS preset: attention and MLP blocks, resnets (LoCon convs), a down-sampler; no duplicates.
PRESET = """
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D", "Downsample2D"]
unet_target_name = []
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]
text_encoder_target_name = []
"""


def _unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def _clip():
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=100,
        max_position_embeddings=16,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextModel(config)


@dataclass
class Written:
    """A file written by its library and the reference ΔW of each module, by module name."""

    path: Path
    reference: dict[str, np.ndarray]


def _randomise(parameters, dtype: torch.dtype, seed: int) -> None:
    """Random adapter values, rounded to ``dtype`` so that the file holds them exactly."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in parameters:
            noise = 0.1 * torch.randn(parameter.shape, generator=generator)
            parameter.copy_(noise.to(dtype).to(parameter.dtype))


def write_lycoris(
    folder: Path, algo: str, dtype: torch.dtype, metadata: dict | None = None, **kwargs
) -> Written:
    """A kohya-layout file written by LyCORIS, and ΔW of each linear module by its forward."""
    from lycoris.kohya import create_network

    torch.manual_seed(0)
    unet, text_encoder = _unet(), _clip()
    preset = folder / "preset.toml"
    preset.write_text(PRESET)
    network = create_network(
        1.0, RANK, ALPHA, None, text_encoder, unet, algo=algo, preset=str(preset), **kwargs
    )
    network.apply_to(text_encoder, unet, True, True)
    _randomise(network.parameters(), dtype, seed=1)
    path = folder / f"{algo}-{dtype_id(dtype)}.safetensors"
    written = {"ss_network_dim": str(RANK), "ss_network_alpha": "8"} | (metadata or {})
    network.save_weights(str(path), dtype, written)
    network.to(torch.float64)
    unet.double()
    text_encoder.double()
    reference = {}
    with torch.no_grad():
        for lora in network.loras:
            original = lora.org_module[0]
            if isinstance(original, torch.nn.Linear):
                x = torch.eye(original.in_features, dtype=torch.float64)  # (in, in)
                reference[lora.lora_name] = (lora(x) - lora.org_forward(x)).T.numpy()
    return Written(path, reference)


def write_diffusers(folder: Path, dtype: torch.dtype, metadata: bool = True) -> Written:
    """A pytorch_lora_weights.safetensors written by diffusers, and peft's ΔW per module."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(0)
    unet, text_encoder = _unet(), _clip()
    unet_config = LoraConfig(
        r=RANK,
        lora_alpha=ALPHA,
        target_modules=["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "conv1"],
        rank_pattern={"attn2.to_v": 2},
        alpha_pattern={"attn2.to_v": 6},
    )
    te_config = LoraConfig(
        r=2, lora_alpha=4, use_rslora=True, target_modules=["k_proj", "v_proj", "fc1"]
    )
    unet.add_adapter(unet_config)
    text_encoder = inject_adapter_in_model(te_config, text_encoder)
    for model, seed in ((unet, 2), (text_encoder, 3)):
        _randomise([p for n, p in model.named_parameters() if "lora_" in n], dtype, seed)
    folder = folder / f"diffusers-{dtype_id(dtype)}{'' if metadata else '-bare'}"
    layers = {
        "unet_lora_layers": {k: v.to(dtype) for k, v in get_peft_model_state_dict(unet).items()},
        "text_encoder_lora_layers": {
            k: v.to(dtype) for k, v in get_peft_model_state_dict(text_encoder).items()
        },
    }
    if metadata:
        layers["unet_lora_adapter_metadata"] = unet_config.to_dict()
        layers["text_encoder_lora_adapter_metadata"] = te_config.to_dict()
    StableDiffusionPipeline.save_lora_weights(str(folder), **layers)
    reference = {}
    for prefix, model in (("unet", unet), ("text_encoder", text_encoder)):
        model.double()
        for name, module in model.named_modules():
            if isinstance(module, LoraLayer) and isinstance(module.base_layer, torch.nn.Linear):
                if not metadata:  # the scale diffusers loads such a file with: lora_alpha = r
                    module.scaling["default"] = 1.0
                delta = module.get_delta_weight("default")
                reference[f"{prefix}.{name}"] = delta.detach().numpy()
    return Written(folder, reference)


def expected(written: Written, delta) -> np.ndarray:
    """The reference rows of a delta's role (GEGLU's ff.net.0.proj: up, then gate)."""
    full = written.reference[delta.name]
    if delta.name.replace("_", ".").endswith("ff.net.0.proj"):
        half = full.shape[0] // 2
        return full[:half] if delta.role == "up" else full[half:]
    return full


def check_against_reference(written: Written, checkpoint) -> list:
    """Every module read twice, bit-identical, and each equal to the reference in float64."""
    first = read_deltas(checkpoint, modules="all")
    assert_same_reads(first, read_deltas(checkpoint, modules="all"))
    assert first
    for read in first:
        reference = expected(written, read.delta)
        assert read.dense.shape == reference.shape, read.delta.key
        assert relative_error(read.dense, reference) < 1e-10, (read.delta.key, read.delta.name)
    return first


def assert_nothing_dropped(path: Path, checkpoint) -> None:
    """Each tensor of the file is in an analysed module or listed with a reason."""
    with safe_open(str(path), "pt") as handle:
        names = set(handle.keys())
    info = checkpoint.describe()
    analysed = {module.name for module in info.modules}
    listed = {name: reason for name, reason in info.not_analysed}
    assert all(reason for reason in listed.values())
    for name in names:
        in_analysed = any(name.startswith(f"{module}.") for module in analysed)
        assert (name in listed) != in_analysed, name
    assert set(listed) <= names


LYCORIS_ALGOS = {
    "lora": ({}, "LoRA", "alpha tensor: 8/r = 8/4", 2.0),
    "loha": ({}, "LoHa", "alpha tensor: 8/r = 8/4", 2.0),
    "lokr": ({"factor": 4}, "LoKr", "LoKr with whole w1 and w2", 1.0),
}


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("algo", list(LYCORIS_ALGOS))
def test_lycoris_kohya_file_matches_lycoris_forward(tmp_path, algo, dtype):
    kwargs, variant, source, scale = LYCORIS_ALGOS[algo]
    written = write_lycoris(tmp_path, algo, dtype, **kwargs)
    checkpoint = spectra.load(written.path)
    assert checkpoint.format == "kohya" and checkpoint.variant.startswith(variant)
    reads = check_against_reference(written, checkpoint)
    assert {r.delta.role for r in reads} == {"q", "k", "v", "o", "up", "gate", "down"}
    assert {r.delta.source_dtype for r in reads} == {dtype}
    info = checkpoint.describe()
    k_proj = next(m for m in info.modules if m.name == "lora_te_encoder_layers_0_self_attn_k_proj")
    assert source in k_proj.scale_source and k_proj.scale == scale
    assert_nothing_dropped(written.path, checkpoint)
    # the default selection stays k and v
    assert {delta.role for delta in checkpoint.deltas()} == {"k", "v"}


def test_lokr_factorised_side_sets_the_rank_and_whole_factors_scale_one(tmp_path):
    written = write_lycoris(tmp_path, "lokr", torch.float32, factor=4)
    info = spectra.load(written.path).describe()
    factorised = [m for m in info.modules if m.rank is not None]
    whole = [m for m in info.modules if m.rank is None]
    assert factorised and whole  # the 64-wide modules split w2, the 32-wide keep it whole
    assert all(m.scale == ALPHA / RANK and m.rank == RANK for m in factorised)
    assert all(m.scale == 1.0 for m in whole)


def test_lokr_full_matrix_has_scale_one_and_rslora_alpha_is_folded(tmp_path):
    written = write_lycoris(tmp_path, "lokr", torch.float32, factor=4, full_matrix=True)
    checkpoint = spectra.load(written.path)
    check_against_reference(written, checkpoint)
    assert {m.scale for m in checkpoint.describe().modules} == {1.0}
    written = write_lycoris(tmp_path, "lora", torch.float32, rs_lora=True)
    checkpoint = spectra.load(written.path)
    check_against_reference(written, checkpoint)
    # LyCORIS stores alpha·r/√r = 16, so alpha/r is its α/√r = 8/2
    assert {m.scale for m in checkpoint.describe().modules} == {ALPHA / RANK**0.5}


def test_lycoris_get_diff_weight_applies_the_lokr_scale_twice(tmp_path):
    """Why spectra follows LyCORIS's forward: its merge path squares the scale (LyCORIS 4.1.3)."""
    from lycoris.modules.lokr import LokrModule

    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 64).double()
    lokr = LokrModule("m", layer, lora_dim=4, alpha=8, factor=4).double()
    _randomise(lokr.parameters(), torch.float64, seed=4)
    lokr.apply_to()
    with torch.no_grad():
        x = torch.eye(64, dtype=torch.float64)
        forward = (lokr(x) - lokr.org_forward(x)).T
        w2 = lokr.lokr_w2_a @ lokr.lokr_w2_b
        assert torch.allclose(forward, 2.0 * torch.kron(lokr.lokr_w1, w2))  # s = 8/4, once
        merged = lokr.get_diff_weight()[0]
        assert torch.allclose(merged, 4.0 * torch.kron(lokr.lokr_w1, w2))  # s² in the merge path


def test_lycoris_dora_without_a_base_is_refused_when_analysed(tmp_path):
    """DoRA needs W0 (tests/formats/test_image_base.py reads it with a base)."""
    written = write_lycoris(tmp_path, "lora", torch.float32, dora_wd=True)
    checkpoint = spectra.load(written.path)
    info = checkpoint.describe()  # inspect still works
    assert info.modules and checkpoint.variant == "DoRA"
    with pytest.raises(MissingBaseError, match=r"dora_scale.*base weight W0"):
        list(checkpoint.deltas())
    with pytest.raises(FormatError, match="expected the base of an image-model adapter"):
        spectra.load(written.path, base=written.path)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_diffusers_file_matches_peft(tmp_path, dtype):
    written = write_diffusers(tmp_path, dtype)
    for path in (written.path, written.path / "pytorch_lora_weights.safetensors"):
        checkpoint = spectra.load(path)
        assert checkpoint.format == "diffusers" and checkpoint.variant == "LoRA"
        check_against_reference(written, checkpoint)
    assert_nothing_dropped(written.path / "pytorch_lora_weights.safetensors", checkpoint)
    info = checkpoint.describe()
    by_name = {m.name: m for m in info.modules}
    attn2_v = by_name["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v"]
    assert attn2_v.rank == 2 and attn2_v.scale == 3.0
    assert "alpha_pattern['attn2.to_v']/rank_pattern['attn2.to_v'] = 6/2" in attn2_v.scale_source
    k_proj = by_name["text_encoder.encoder.layers.0.self_attn.k_proj"]
    assert k_proj.scale == pytest.approx(4 / 2**0.5) and "√" in k_proj.scale_source
    layers = info.details["layers"]
    blocks = list(layers.values())
    assert blocks[0].startswith("text_encoder.") and blocks[-1].startswith("unet.up_blocks.1")
    assert [b for b in blocks if "down_blocks" in b] < [b for b in blocks if "up_blocks" in b]


def test_diffusers_file_without_metadata_has_scale_one_and_says_so(tmp_path):
    written = write_diffusers(tmp_path, torch.float32, metadata=False)
    checkpoint = spectra.load(written.path)
    check_against_reference(written, checkpoint)
    assert {m.scale for m in checkpoint.describe().modules} == {1.0}
    assert "lora_adapter_metadata" in checkpoint.warnings()[0]


def test_diffusers_old_processor_layout(tmp_path):
    generator = torch.Generator().manual_seed(5)
    tensors, reference = {}, {}
    block = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    for proj, module in (("to_k", "to_k"), ("to_out", "to_out.0")):
        down = torch.randn(4, 32, generator=generator)
        up = torch.randn(32, 4, generator=generator)
        tensors[f"{block}.processor.{proj}_lora.down.weight"] = down
        tensors[f"{block}.processor.{proj}_lora.up.weight"] = up
        reference[f"{block}.{module}"] = (up.double() @ down.double()).numpy()
    save_file(tensors, str(tmp_path / "pytorch_lora_weights.safetensors"))
    checkpoint = spectra.load(tmp_path)
    assert checkpoint.format == "diffusers"
    reads = check_against_reference(Written(tmp_path, reference), checkpoint)
    assert sorted(r.delta.role for r in reads) == ["k", "o"]


def _lora_pair(generator, d_out, d_in, rank=4):
    down = torch.randn(rank, d_in, generator=generator)  # (r, in)
    return down, torch.randn(d_out, rank, generator=generator)  # (out, r)


def test_kohya_flux_names_and_missing_alpha(tmp_path):
    """Flux in BFL names, written in kohya's layout; one module without alpha has scale 1."""
    generator = torch.Generator().manual_seed(6)
    hidden, mlp = 16, 64
    tensors, reference = {}, {}
    shapes = {
        "lora_unet_double_blocks_0_img_attn_qkv": (3 * hidden, hidden),
        "lora_unet_double_blocks_0_txt_attn_proj": (hidden, hidden),
        "lora_unet_single_blocks_0_linear1": (3 * hidden + mlp, hidden),
        "lora_unet_single_blocks_0_linear2": (hidden, hidden + mlp),
        "lora_te1_text_model_encoder_layers_0_self_attn_v_proj": (hidden, hidden),
    }
    for module, (d_out, d_in) in shapes.items():
        down, up = _lora_pair(generator, d_out, d_in)
        tensors |= {f"{module}.lora_down.weight": down, f"{module}.lora_up.weight": up}
        scale = 1.0
        if "te1" not in module:
            tensors[f"{module}.alpha"] = torch.tensor(2.0)
            scale = 0.5
        reference[module] = scale * (up.double() @ down.double()).numpy()
    path = tmp_path / "flux_lora.safetensors"
    save_file(tensors, str(path))
    checkpoint = spectra.load(path)
    reads = {(r.delta.name, r.delta.role): r.dense for r in read_deltas(checkpoint, modules="all")}
    qkv = reference["lora_unet_double_blocks_0_img_attn_qkv"]
    for index, role in enumerate("qkv"):
        rows = slice(index * hidden, (index + 1) * hidden)
        got = reads[("lora_unet_double_blocks_0_img_attn_qkv", role)]
        assert relative_error(got, qkv[rows]) < 1e-12
        got = reads[("lora_unet_single_blocks_0_linear1", role)]
        assert relative_error(got, reference["lora_unet_single_blocks_0_linear1"][rows]) < 1e-12
    mlp_rows = reference["lora_unet_single_blocks_0_linear1"][3 * hidden :]
    assert relative_error(reads[("lora_unet_single_blocks_0_linear1", "up")], mlp_rows) < 1e-12
    info = checkpoint.describe()
    v_proj = next(m for m in info.modules if m.name.startswith("lora_te1"))
    assert v_proj.scale == 1.0 and v_proj.scale_source == "no alpha tensor: alpha = r, scale 1"
    reasons = dict(info.not_analysed)
    assert "fused along the input" in reasons["lora_unet_single_blocks_0_linear2.lora_down.weight"]
    assert_nothing_dropped(path, checkpoint)


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        (
            {"lora_up.weight": torch.zeros(32, 3), "alpha": torch.tensor(4.0)},
            r"expected lora_up \(d_out, r\) and lora_down \(r, d_in\) with the same r = 4.*found "
            r"lora_up \(32, 3\) and lora_down \(4, 32\)",
        ),
        (
            {"lora_up.weight": torch.zeros(32, 4), "alpha": torch.ones(4)},
            r"alpha should be a scalar.*found a tensor of shape \(4,\)",
        ),
    ],
    ids=["rank-mismatch", "non-scalar-alpha"],
)
def test_bad_kohya_file_is_a_clear_error(tmp_path, tensors, message):
    module = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_k"
    tensors = {f"{module}.{part}": t for part, t in tensors.items()}
    tensors[f"{module}.lora_down.weight"] = torch.zeros(4, 32)
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(FormatError, match=message) as error:
        spectra.load(path)
    assert str(path) in str(error.value)


def test_inspect_shows_scale_source_and_block_map(tmp_path):
    runner = CliRunner()
    written = write_lycoris(tmp_path, "lora", torch.bfloat16)
    result = runner.invoke(cli, ["inspect", str(written.path)])
    assert result.exit_code == 0, result.output
    assert "LoRA, kohya format" in result.stdout
    assert "alpha tensor: 8/r = 8/4" in result.stdout
    assert "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2" in result.stdout  # layers
    assert "ss_network_dim" in result.stdout and "resnet block" in result.stdout
    written = write_diffusers(tmp_path, torch.float32)
    result = runner.invoke(cli, ["inspect", str(written.path), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["format"] == "diffusers"
    sources = {m["scale_source"] for m in payload["modules"]}
    assert "lora_adapter_metadata unet.lora_alpha/r = 8/4" in sources


# What sd-scripts' train_network.py puts in the file's metadata (every value a string).
KOHYA_TRAINING = {
    "ss_network_module": "networks.lora",
    "ss_learning_rate": "0.0001",
    "ss_unet_lr": "0.0001",
    "ss_text_encoder_lr": "5e-05",
    "ss_optimizer": "bitsandbytes.optim.adamw.AdamW8bit",
    "ss_lr_scheduler": "cosine_with_restarts",
    "ss_max_train_steps": "1600",
    "ss_steps": "1600",
    "ss_epoch": "10",
    "ss_num_epochs": "10",
    "ss_batch_size_per_device": "2",
    "ss_num_train_images": "320",
    "ss_mixed_precision": "fp16",
    "ss_seed": "42",
    "ss_sd_model_name": "v1-5-pruned-emaonly.safetensors",
    "ss_resolution": "(512, 512)",
    "ss_network_args": '{"conv_dim": "4", "conv_alpha": "1"}',
    "ss_dataset_dirs": '{"10_cat": {"n_repeats": 10, "img_count": 32}}',
    "ss_tag_frequency": '{"10_cat": {"cat": 32, " sitting": 12, "outdoors": 7}, '
    '"5_dog": {"dog": 5, "outdoors": 3}}',
}


def test_inspect_and_the_report_show_kohya_training_metadata(tmp_path):
    written = write_lycoris(tmp_path, "lora", torch.float16, metadata=KOHYA_TRAINING)
    result = CliRunner().invoke(cli, ["inspect", str(written.path)])
    assert result.exit_code == 0, result.output
    section = result.output.split("training (as kohya-ss sd-scripts")[1]
    for shown in ("optimizer:", "AdamW8bit", "steps:", "1600", "learning_rate:", "0.0001"):
        assert shown in section, section
    assert "cat (32), sitting (12), outdoors (10), dog (5)" in section
    training = spectra.analyze(written.path, layers=[0]).meta["training"]
    fields = training["fields"]
    assert fields["rank"] == RANK and fields["alpha"] == 8
    assert fields["steps"] == 1600 and fields["epochs"] == 10 and fields["seed"] == 42
    assert fields["text_encoder_lr"] == 5e-05 and fields["resolution"] == "(512, 512)"
    assert fields["network_args"] == {"conv_dim": "4", "conv_alpha": "1"}
    assert training["datasets"] == {"10_cat": {"n_repeats": 10, "img_count": 32}}
    assert training["tags"] == {"cat": 32, "sitting": 12, "outdoors": 10, "dog": 5}


def test_inspect_shows_a_diffusers_files_lora_config_as_its_training(tmp_path):
    written = write_diffusers(tmp_path, torch.float32)
    payload = json.loads(CliRunner().invoke(cli, ["inspect", str(written.path), "--json"]).output)
    training = payload["training"]
    assert training["written_by"].startswith("diffusers")
    assert training["fields"]["unet.rank"] == 4 and training["fields"]["unet.alpha"] == 8
