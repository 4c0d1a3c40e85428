"""Tiny image models (diffusers UNet, CLIP text encoders, Flux) and their checkpoints on disk.

Built from configs with random weights (nothing downloaded), and written the
ways a base model is published: a diffusers pipeline folder (``save_pretrained``
of each component, the UNet sharded), or one file in the original names —
LDM / SGM for Stable Diffusion 1.x and SDXL (``model.diffusion_model.…``,
``cond_stage_model.transformer.…``, ``conditioner.embedders.0/1.…``, OpenCLIP's
fused ``in_proj_weight``), Black Forest Labs' for Flux (``double_blocks.N.…``,
fused ``qkv`` and ``linear1``). The renaming here is the tests' own, written
from the tables of diffusers' single-file conversion; the tests check each file
by converting it back with diffusers' own converter (``single_file_utils``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

LAYERS_PER_BLOCK = 2


def tiny_unet():
    """A UNet2DConditionModel: a plain down block, then a cross-attention one (as SDXL's are)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=LAYERS_PER_BLOCK,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=24,  # attn2's to_k / to_v are (32, 24): not square
        attention_head_dim=8,
        norm_num_groups=8,
    )


def tiny_clip(hidden: int = 24, projection: bool = False):
    """A CLIPTextModel (or CLIPTextModelWithProjection, SDXL's second encoder): two layers."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=100,
        max_position_embeddings=16,
        projection_dim=16,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def tiny_flux():
    """A FluxTransformer2DModel: one double-stream and one single-stream block, width 16."""
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=12,
        pooled_projection_dim=12,
        axes_dims_rope=(2, 2, 4),
    )


def save_pipeline(folder: Path, **components) -> Path:
    """A diffusers pipeline folder: each component saved by its own ``save_pretrained``.

    The UNet is sharded (``diffusion_pytorch_model.safetensors.index.json``).
    """
    for name, model in components.items():
        shard = {"max_shard_size": "1MB"} if name == "unet" else {}
        model.save_pretrained(folder / name, **shard)
    index = {name: ["diffusers", type(model).__name__] for name, model in components.items()}
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def _clean(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


# -- Stable Diffusion in LDM / SGM names -------------------------------------------------------

_RESNET = (  # diffusers → LDM, inside a resnet
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
)
_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def ldm_unet_names(state: dict[str, torch.Tensor], n: int = LAYERS_PER_BLOCK) -> dict:
    """A diffusers UNet's state dict in LDM names (what ``convert_ldm_unet_checkpoint`` reads)."""
    with_attention = {
        int(m[1]) for k in state if (m := re.match(r"up_blocks\.(\d+)\.attentions", k))
    }
    out = {}
    for key, tensor in state.items():
        module, _, leaf = key.rpartition(".")
        new = _TOP.get(module)
        if new is None:
            new = _ldm_block(module, n, with_attention)
        out[f"{new}.{leaf}"] = tensor
    return out


def _ldm_block(module: str, n: int, with_attention: set[int]) -> str:
    parts = module.split(".")
    if parts[0] == "mid_block":
        index = {"resnets.0": 0, "attentions.0": 1, "resnets.1": 2}[".".join(parts[1:3])]
        return _resnet_names(f"middle_block.{index}." + ".".join(parts[3:]), parts[1])
    kind, block, inner = parts[0], int(parts[1]), parts[2]
    layer = int(parts[3])
    rest = ".".join(parts[4:])
    if kind == "down_blocks":
        if inner == "downsamplers":
            return f"input_blocks.{1 + block * (n + 1) + n}.0.op"
        slot = "0" if inner == "resnets" else "1"
        return _resnet_names(f"input_blocks.{1 + block * (n + 1) + layer}.{slot}.{rest}", inner)
    if inner == "upsamplers":
        return f"output_blocks.{block * (n + 1) + n}.{2 if block in with_attention else 1}.{rest}"
    slot = "0" if inner == "resnets" else "1"
    return _resnet_names(f"output_blocks.{block * (n + 1) + layer}.{slot}.{rest}", inner)


def _resnet_names(name: str, inner: str) -> str:
    if inner != "resnets":
        return name.rstrip(".")
    for old, new in _RESNET:
        name = re.sub(rf"\.{old}$", f".{new}", name)
    return name.rstrip(".")


def open_clip_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A CLIPTextModelWithProjection's state dict in OpenCLIP's names (SDXL's second encoder)."""
    out = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        name = key.removeprefix("text_model.")
        if name == "text_projection.weight":
            out["text_projection"] = tensor.T.contiguous()
        elif name == "embeddings.token_embedding.weight":
            out["token_embedding.weight"] = tensor
        elif name == "embeddings.position_embedding.weight":
            out["positional_embedding"] = tensor
        elif name.startswith("final_layer_norm."):
            out[name.replace("final_layer_norm.", "ln_final.")] = tensor
        elif name.startswith("encoder.layers."):
            match = re.match(
                r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", name
            )
            if match:
                fused.setdefault(f"{match[1]}.{match[3]}", {})[match[2]] = tensor
                continue
            new = name.replace("encoder.layers.", "transformer.resblocks.")
            for old, ldm in (
                ("self_attn.out_proj", "attn.out_proj"),
                ("layer_norm1", "ln_1"),
                ("layer_norm2", "ln_2"),
                ("mlp.fc1", "mlp.c_fc"),
                ("mlp.fc2", "mlp.c_proj"),
            ):
                new = new.replace(old, ldm)
            out[new] = tensor
    for where, qkv in fused.items():
        layer, leaf = where.split(".")
        stacked = torch.cat([qkv["q"], qkv["k"], qkv["v"]])
        out[f"transformer.resblocks.{layer}.attn.in_proj_{leaf}"] = stacked
    return out


def save_sd_single_file(path: Path, unet, text_encoder, text_encoder_2=None) -> Path:
    """SD 1.x (one CLIP) or SDXL (CLIP and OpenCLIP) as one file in LDM / SGM names."""
    tensors = {
        f"model.diffusion_model.{k}": v for k, v in ldm_unet_names(unet.state_dict()).items()
    }
    clip = {
        f"text_model.{k.removeprefix('text_model.')}": v
        for k, v in text_encoder.state_dict().items()
    }
    if text_encoder_2 is None:
        tensors |= {f"cond_stage_model.transformer.{k}": v for k, v in clip.items()}
    else:
        tensors |= {f"conditioner.embedders.0.transformer.{k}": v for k, v in clip.items()}
        second = open_clip_names(text_encoder_2.state_dict())
        tensors |= {f"conditioner.embedders.1.model.{k}": v for k, v in second.items()}
    save_file(_clean(tensors), str(path))
    return path


# -- Flux in Black Forest Labs' names --------------------------------------------------------

_FLUX_TOP = {
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "context_embedder": "txt_in",
    "x_embedder": "img_in",
    "proj_out": "final_layer.linear",
}
_FLUX_DOUBLE = {
    "norm1.linear": "img_mod.lin",
    "norm1_context.linear": "txt_mod.lin",
    "attn.to_out.0": "img_attn.proj",
    "attn.to_add_out": "txt_attn.proj",
    "ff.net.0.proj": "img_mlp.0",
    "ff.net.2": "img_mlp.2",
    "ff_context.net.0.proj": "txt_mlp.0",
    "ff_context.net.2": "txt_mlp.2",
    "attn.norm_q": "img_attn.norm.query_norm",
    "attn.norm_k": "img_attn.norm.key_norm",
    "attn.norm_added_q": "txt_attn.norm.query_norm",
    "attn.norm_added_k": "txt_attn.norm.key_norm",
}
_FLUX_SINGLE = {
    "norm.linear": "modulation.lin",
    "proj_out": "linear2",
    "attn.norm_q": "norm.query_norm",
    "attn.norm_k": "norm.key_norm",
}
_FUSED = {  # fused BFL tensor → its diffusers parts, in row order
    "double_blocks.{i}.img_attn.qkv": tuple(f"transformer_blocks.{{i}}.attn.to_{r}" for r in "qkv"),
    "double_blocks.{i}.txt_attn.qkv": tuple(
        f"transformer_blocks.{{i}}.attn.add_{r}_proj" for r in "qkv"
    ),
    "single_blocks.{i}.linear1": (
        *(f"single_transformer_blocks.{{i}}.attn.to_{r}" for r in "qkv"),
        "single_transformer_blocks.{i}.proj_mlp",
    ),
}


def bfl_flux_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A FluxTransformer2DModel's state dict in Black Forest Labs' names (flux1-dev's layout)."""
    used, out = set(), {}
    blocks = {(m[1], int(m[2])) for k in state if (m := re.match(r"(\w+blocks)\.(\d+)\.", k))}
    for _, i in blocks:
        for target, sources in _FUSED.items():
            for leaf in ("weight", "bias"):
                names = [f"{s.format(i=i)}.{leaf}" for s in sources]
                if all(n in state for n in names):
                    out[f"{target.format(i=i)}.{leaf}"] = torch.cat([state[n] for n in names])
                    used.update(names)
    for key, tensor in state.items():
        if key in used:
            continue
        module, _, leaf = key.rpartition(".")
        if module == "norm_out.linear":  # diffusers keeps (scale, shift), BFL (shift, scale)
            scale, shift = tensor.chunk(2)
            out[f"final_layer.adaLN_modulation.1.{leaf}"] = torch.cat([shift, scale])
            continue
        match = re.match(r"(single_transformer_blocks|transformer_blocks)\.(\d+)\.(.+)$", module)
        if match is None:
            out[f"{_FLUX_TOP[module]}.{leaf}"] = tensor
            continue
        single = match[1] == "single_transformer_blocks"
        table, prefix = (
            (_FLUX_SINGLE, "single_blocks") if single else (_FLUX_DOUBLE, "double_blocks")
        )
        new = table[match[3]]
        leaf = "scale" if new.endswith("_norm") else leaf
        out[f"{prefix}.{match[2]}.{new}.{leaf}"] = tensor
    return out


def save_flux_single_file(path: Path, transformer, prefix: str = "") -> Path:
    """Flux as one file in BFL names (``prefix`` ``model.diffusion_model.`` as ComfyUI saves it)."""
    tensors = {f"{prefix}{k}": v for k, v in bfl_flux_names(transformer.state_dict()).items()}
    save_file(_clean(tensors), str(path))
    return path
