"""The module map of image models: which LoRA module is the key (value, …) projection, and where.

Image-model LoRA files (kohya, LyCORIS, diffusers) name modules of a UNet,
a diffusion transformer or a text encoder, with dots (diffusers:
``unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k``) or with
every dot replaced by ``_`` (kohya: ``lora_unet_down_blocks_0_…_attn1_to_k``);
the rules below accept either separator. These models have no single layer
integer, so a module gets a *block* — the module path without its role's tail
(``…attn1`` for ``…attn1.to_k``, ``…transformer_blocks.0`` for its
``ff.net.0.proj``) — and the checkpoint numbers the blocks in natural order
(``natural_key``: down blocks before the mid block before the up blocks,
numbers compared as numbers) to give each an ordinal ``layer``.

Roles by name (either separator):

- ``to_q``, ``to_k``, ``to_v``, ``to_out.0`` (UNet, SD3, Flux attention) → q, k, v, o;
- ``add_{q,k,v}_proj``, ``to_add_out`` (SD3 / Flux context stream) → q, k, v, o of
  the block ``…attn:context``;
- ``ff.net.0.proj``, ``ff.net.2`` (and ``ff_context``, block ``…:context``) → up,
  down; in a UNet ``ff.net.0.proj`` is GEGLU's fused projection
  (``hidden, gate = proj(x).chunk(2)``): first half up, second half gate;
- ``proj_mlp`` (Flux single-stream, diffusers names) → up;
- CLIP text encoders: ``self_attn.{q,k,v,out}_proj``, ``mlp.fc1``, ``mlp.fc2`` →
  q, k, v, o, up, down;
- T5 text encoders: ``SelfAttention.{q,k,v,o}`` → q, k, v, o;
  ``DenseReluDense.wi`` / ``wi_0`` / ``wi_1`` / ``wo`` → up / gate / up / down;
- Flux in Black Forest Labs' names (kohya's Flux LoRA): ``{img,txt}_attn_qkv`` →
  q, k, v (thirds of the fused projection; block ``…_img`` / ``…_txt``),
  ``{img,txt}_attn_proj`` → o, ``{img,txt}_mlp_0`` → up, ``{img,txt}_mlp_2`` →
  down; ``single_blocks.N.linear1`` → q, k, v, up: rows ``[0, h)``, ``[h, 2h)``,
  ``[2h, 3h)``, ``[3h, …)`` with h = d_in.

In the UNet, ``attn1`` is self-attention and ``attn2`` cross-attention (its
k and v read the text encoder's states); each is its own block, so they are
never mixed. Every other module gets a reason (``reason_for``): resnet
blocks, ``proj_in`` / ``proj_out``, samplers, embeddings, norms and
modulation, Flux's ``linear2`` / single-stream ``proj_out`` (attention output
and MLP down projection fused along the input), or no known role.

The base checkpoints these adapters are measured against (``--base``) name
the same modules in three schemes, which the functions at the end translate
(the facts follow diffusers' single-file conversion,
``loaders/single_file_utils.py``, and kohya-ss sd-scripts'
``library/model_util.py``):

- diffusers (a pipeline folder): ``down_blocks.B.attentions.L.…``,
  ``mid_block.attentions.0.…``, ``up_blocks.B.attentions.L.…``; Flux
  ``transformer_blocks.N.attn.to_q`` …;
- the original LDM / SGM UNet (single-file SD 1.x, 2.x, SDXL; kohya's SDXL
  LoRA names): ``input_blocks.I.1.…`` with ``I = 1 + B·(n+1) + L``,
  ``middle_block.1.…``, ``output_blocks.O.1.…`` with ``O = B·(n+1) + L``, where
  n is the UNet's ``layers_per_block`` (each down block holds n layers and a
  down-sampler slot, each up block n + 1 layers);
- Black Forest Labs' Flux (single-file Flux; kohya's Flux LoRA names):
  ``double_blocks.N.img_attn.qkv`` holds ``to_q``, ``to_k``, ``to_v`` of
  ``transformer_blocks.N`` as thirds of its rows (``txt_attn.qkv`` the
  ``add_{q,k,v}_proj``), ``single_blocks.N.linear1`` holds ``to_q``,
  ``to_k``, ``to_v`` (d_in rows each) then ``proj_mlp`` of
  ``single_transformer_blocks.N`` (``FLUX_DOUBLE``, ``FLUX_SINGLE``);
- OpenCLIP text encoders in LDM files (SD 2.x, SDXL's second):
  ``transformer.resblocks.N.attn.in_proj_weight`` holds ``q_proj``,
  ``k_proj``, ``v_proj`` of ``encoder.layers.N.self_attn`` as thirds,
  ``attn.out_proj`` is ``out_proj``, ``mlp.c_fc`` / ``mlp.c_proj`` are
  ``mlp.fc1`` / ``mlp.fc2`` (``OPEN_CLIP``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "FLUX_DOUBLE",
    "FLUX_SINGLE",
    "OPEN_CLIP",
    "BlockRole",
    "diffusers_unet_to_ldm",
    "ldm_unet_to_diffusers",
    "match_roles",
    "natural_key",
    "reason_for",
]

_S = "[._]"  # kohya replaces every dot by "_"
CONTEXT = ":context"  # the context (text) stream of a joint attention block


@dataclass(frozen=True)
class BlockRole:
    """What one module is: its block, its role(s) in row order, and how the rows are split."""

    block: str
    roles: tuple[str, ...]
    family: str
    fused: str | None = None  # None, "thirds", "halves" (GEGLU: up, gate), "flux_single"


@dataclass(frozen=True)
class _Rule:
    pattern: re.Pattern[str]
    roles: tuple[str, ...]
    family: str
    fused: str | None = None
    context: bool = False  # the block is the context stream of the module's attention
    single: bool = False  # only inside a Flux single-stream block


def _rule(
    tail: str,
    roles: str,
    family: str,
    fused: str | None = None,
    context: bool = False,
    single: bool = False,
) -> _Rule:
    """``tail`` with ``.`` for a separator; ``(?P<stay>…)`` marks a part that stays in the block."""
    pattern = re.compile(rf"(?:^|{_S})(?P<tail>{tail.replace('.', _S)})$")
    return _Rule(pattern, tuple(roles.split(",")), family, fused, context, single)


_UNET = re.compile(
    rf"(?:^|{_S})(?:down_blocks|mid_block|up_blocks|input_blocks|middle_block|output_blocks){_S}"
)

_RULES = (
    # attention of UNets and diffusion transformers (diffusers names, kept by kohya for SD1.5/SDXL)
    _rule(r"to.q", "q", "attention"),
    _rule(r"to.k", "k", "attention"),
    _rule(r"to.v", "v", "attention"),
    _rule(r"to.out.0", "o", "attention"),
    _rule(r"add.q.proj", "q", "attention", context=True),
    _rule(r"add.k.proj", "k", "attention", context=True),
    _rule(r"add.v.proj", "v", "attention", context=True),
    _rule(r"to.add.out", "o", "attention", context=True),
    _rule(r"ff.net.0.proj", "up", "feed-forward"),
    _rule(r"ff.net.2", "down", "feed-forward"),
    _rule(r"ff.context.net.0.proj", "up", "feed-forward", context=True),
    _rule(r"ff.context.net.2", "down", "feed-forward", context=True),
    _rule(r"proj.mlp", "up", "flux", single=True),
    # CLIP text encoders
    _rule(r"self.attn.q.proj", "q", "clip"),
    _rule(r"self.attn.k.proj", "k", "clip"),
    _rule(r"self.attn.v.proj", "v", "clip"),
    _rule(r"self.attn.out.proj", "o", "clip"),
    _rule(r"mlp.fc1", "up", "clip"),
    _rule(r"mlp.fc2", "down", "clip"),
    # T5 text encoders (Flux, SD3)
    _rule(r"layer.\d+.SelfAttention.q", "q", "t5"),
    _rule(r"layer.\d+.SelfAttention.k", "k", "t5"),
    _rule(r"layer.\d+.SelfAttention.v", "v", "t5"),
    _rule(r"layer.\d+.SelfAttention.o", "o", "t5"),
    _rule(r"layer.\d+.DenseReluDense.wi", "up", "t5"),
    _rule(r"layer.\d+.DenseReluDense.wi.0", "gate", "t5"),
    _rule(r"layer.\d+.DenseReluDense.wi.1", "up", "t5"),
    _rule(r"layer.\d+.DenseReluDense.wo", "down", "t5"),
    # Flux in Black Forest Labs' names (kohya's Flux LoRA)
    _rule(r"(?P<stay>img|txt).attn.qkv", "q,k,v", "flux", fused="thirds"),
    _rule(r"(?P<stay>img|txt).attn.proj", "o", "flux"),
    _rule(r"(?P<stay>img|txt).mlp.0", "up", "flux"),
    _rule(r"(?P<stay>img|txt).mlp.2", "down", "flux"),
    _rule(r"linear1", "q,k,v,up", "flux", fused="flux_single", single=True),
)
_SINGLE = re.compile(rf"(?:^|{_S})single{_S}(?:transformer{_S})?blocks{_S}\d+{_S}")

# Why a module of no role is left out: (pattern searched in the module path, where it is).
_WHERE = (
    (
        rf"single{_S}(?:transformer{_S})?blocks{_S}\d+{_S}(?:linear2|proj{_S}out)$",
        "Flux single-stream output (linear2 / proj_out): the attention output and the MLP down "
        "projection fused along the input, no single role",
    ),
    (
        r"resnets|in_layers|out_layers|emb_layers|skip_connection|conv_shortcut|time_emb_proj",
        "resnet block",
    ),
    (rf"proj{_S}in$|proj{_S}out$", "proj_in / proj_out around a transformer block"),
    (r"downsamplers|upsamplers|op$", "down- or up-sampler"),
    (
        r"conv_in|conv_out|time_embed|time_text_embed|add_embedding|label_emb|embedder|embeddings"
        r"|img_in|txt_in|time_in|vector_in|guidance_in|final_layer|norm_out|^(?:lora_unet_)?out_",
        "outside the blocks (embeddings, input and output layers)",
    ),
    (r"norm|mod_lin|modulation|adaLN", "normalisation or modulation (AdaLN)"),
)
_WHERE_RE = tuple((re.compile(pattern), where) for pattern, where in _WHERE)


def match_roles(module: str) -> BlockRole | None:
    """The block and role(s) of a module path (kohya or diffusers names), or None."""
    for rule in _RULES:
        match = rule.pattern.search(module)
        if match is None:
            continue
        if rule.single and not _SINGLE.search(module):
            continue
        stay = match.groupdict().get("stay")
        end = match.end("stay") if stay else match.start("tail")
        block = module[:end].rstrip("._")
        if rule.context:
            block += CONTEXT
        fused = rule.fused
        roles = rule.roles
        if rule.roles == ("up",) and rule.family == "feed-forward" and _UNET.search(module):
            fused, roles = "halves", ("up", "gate")  # GEGLU: hidden, gate = proj(x).chunk(2)
        return BlockRole(block or module, roles, rule.family, fused)
    return None


def reason_for(module: str, text_encoder: bool, conv: bool) -> str:
    """Why a module that ``match_roles`` does not map is left out (for ``not_analysed()``)."""
    where = next((why for pattern, why in _WHERE_RE if pattern.search(module)), None)
    if where is None:
        where = "text encoder module" if text_encoder else "module"
    if "no single role" in where:
        return where + (" (conv layer, LoCon)" if conv else "")
    kind = " (conv layer, LoCon)" if conv else ""
    return f"{where}{kind}: no attention or MLP role in spectra's map of image models"


def natural_key(name: str) -> tuple[object, ...]:
    """Sort key that compares digit runs as numbers: ``blocks_2`` before ``blocks_10``."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


# -- the names of base checkpoints --------------------------------------------

# Flux in BFL names → diffusers names, in row order (the fused ones split by rows).
FLUX_DOUBLE = {  # double_blocks.N.<key> → transformer_blocks.N.<names>
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "img_attn.proj": ("attn.to_out.0",),
    "txt_attn.proj": ("attn.to_add_out",),
    "img_mlp.0": ("ff.net.0.proj",),
    "img_mlp.2": ("ff.net.2",),
    "txt_mlp.0": ("ff_context.net.0.proj",),
    "txt_mlp.2": ("ff_context.net.2",),
}
FLUX_SINGLE = {  # single_blocks.N.<key> → single_transformer_blocks.N.<names>
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),  # d_in rows each, then the MLP
    "linear2": ("proj_out",),
}
# OpenCLIP in LDM files → transformers' CLIP names (resblocks.N → encoder.layers.N).
OPEN_CLIP = {
    "attn.in_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),  # thirds
    "attn.out_proj": ("self_attn.out_proj",),
    "mlp.c_fc": ("mlp.fc1",),
    "mlp.c_proj": ("mlp.fc2",),
}

_LDM = re.compile(
    r"^(?:(input_blocks|output_blocks)\.(\d+)|middle_block)\.1\.(transformer_blocks\..+)$"
)
_DIFFUSERS_UNET = re.compile(
    r"^(?:(down_blocks|up_blocks)\.(\d+)\.attentions\.(\d+)|mid_block\.attentions\.0)"
    r"\.(transformer_blocks\..+)$"
)


def ldm_unet_to_diffusers(name: str, layers_per_block: int) -> str | None:
    """The diffusers name of a module inside an LDM UNet's transformer block, or None.

    ``input_blocks.4.1.transformer_blocks.0.attn1.to_k`` with 2 layers per
    block is ``down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k``.
    """
    match = _LDM.match(name)
    if match is None:
        return None
    kind, rest = match[1], match[3]
    if kind is None:
        return f"mid_block.attentions.0.{rest}"
    index = int(match[2])
    slots = layers_per_block + 1  # a down block's layers and its down-sampler; an up block's layers
    if kind == "input_blocks":
        if index == 0:
            return None
        block, layer = divmod(index - 1, slots)
        return f"down_blocks.{block}.attentions.{layer}.{rest}"
    block, layer = divmod(index, slots)
    return f"up_blocks.{block}.attentions.{layer}.{rest}"


def diffusers_unet_to_ldm(name: str, layers_per_block: int) -> str | None:
    """The LDM name of a module inside a diffusers UNet's transformer block, or None.

    The inverse of ``ldm_unet_to_diffusers``.
    """
    match = _DIFFUSERS_UNET.match(name)
    if match is None:
        return None
    kind, rest = match[1], match[4]
    if kind is None:
        return f"middle_block.1.{rest}"
    block, layer = int(match[2]), int(match[3])
    slots = layers_per_block + 1
    index = 1 + block * slots + layer if kind == "down_blocks" else block * slots + layer
    return f"{'input_blocks' if kind == 'down_blocks' else 'output_blocks'}.{index}.1.{rest}"
