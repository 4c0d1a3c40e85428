"""The architecture map: which tensor is the key (value, …) projection of layer i.

Module names are matched by *role* (``q``, ``k``, ``v``, ``o``, ``up``,
``down``, ``gate``), so a user asks for ``k,v`` whatever the architecture
calls them (``docs/formats.md``, "Architectures").
Names are first put in canonical form by stripping wrapper prefixes
(``base_model.model.`` from PEFT, ``module.`` from DDP, ``_orig_mod.`` from
``torch.compile``) and, wherever they sit, the ``_fsdp_wrapped_module.`` and
``_checkpoint_wrapped_module.`` of FSDP and activation checkpointing;
``model.`` is part of Hugging Face names and is kept.

A fused projection maps to one ``ModuleRef`` per role, whose ``rows()``
picks that role's output rows:

- ``thirds`` (GPT-2 ``c_attn``, Conv1D layout): q, k, v are equal blocks;
  ``halves`` (Phi-3 ``gate_up_proj``): gate, then up;
- ``neox`` (GPT-NeoX / Pythia ``query_key_value``): interleaved per head, the
  output viewed as ``(heads, 3, head_dim)``; needs the number of heads;
- ``phi3`` (Phi-3 ``qkv_proj``): q has ``d_in`` rows (the hidden size), then
  k and v have ``(d_out − d_in) / 2`` rows each;
- ``falcon`` (Falcon ``self_attention.query_key_value``): the output viewed as
  ``(kv_heads, heads/kv_heads + 2, head_dim)``, q the first ``heads/kv_heads``
  slots of each group, then k, then v (transformers' ``FalconAttention._split_heads``).
  Its three layouts are this one view: ``new_decoder_architecture`` (any
  ``num_kv_heads``), ``multi_query`` (``kv_heads = 1``: q rows, then one k and
  one v head) and the original one (``kv_heads = heads``: interleaved per head
  as GPT-NeoX). ``head_dim = d_in / heads`` and ``kv_heads`` follows from
  ``d_out = (heads + 2·kv_heads)·head_dim``, so the number of attention heads
  (from the model's ``config.json``) is all it needs.

Families and their names (per block ``i``; roles q, k, v / o / gate, up, down):

- LLaMA, Mistral, Qwen2, …: ``self_attn.{q,k,v}_proj`` / ``self_attn.o_proj`` /
  ``mlp.{gate,up,down}_proj``;
- BERT, RoBERTa, MiniLM: ``attention.self.{query,key,value}`` /
  ``attention.output.dense`` / up ``intermediate.dense``, down ``output.dense``;
- GPT-2: ``attn.c_attn`` (thirds, Conv1D) / ``attn.c_proj`` / up ``mlp.c_fc``,
  down ``mlp.c_proj``;
- GPT-NeoX: ``attention.query_key_value`` (neox) / ``attention.dense`` /
  up ``mlp.dense_h_to_4h``, down ``mlp.dense_4h_to_h``;
- Phi-3: ``self_attn.qkv_proj`` (phi3) / ``self_attn.o_proj`` /
  ``mlp.gate_up_proj`` (halves), ``mlp.down_proj``;
- Falcon: ``self_attention.query_key_value`` (falcon) / ``self_attention.dense``
  / up ``mlp.dense_h_to_4h``, down ``mlp.dense_4h_to_h``;
- MPT: ``attn.Wqkv`` (thirds) / ``attn.out_proj`` / up ``ffn.up_proj``, down
  ``ffn.down_proj``;
- OPT: ``self_attn.{q,k,v}_proj`` / ``self_attn.out_proj`` / up ``fc1``, down ``fc2``;
- T5: ``SelfAttention.{q,k,v}`` / ``SelfAttention.o`` / ``DenseReluDense``: up
  ``wi`` (gated: gate ``wi_0``, up ``wi_1``), down ``wo``.

Encoder-decoder (T5): both stacks number their blocks from 0, so the decoder's
blocks are numbered after the encoder's: decoder block ``i`` is layer
``encoder_layers + i``, where ``encoder_layers`` is the encoder's depth (one
more than the highest ``encoder.block.N`` index of the full model's tensors;
an adapter takes it from its base model). Without that depth a decoder module
is left out with the reason. Cross-attention (``EncDecAttention``) has no role:
its k and v read the encoder's output, not the decoder's stream, so it is left
out with that reason rather than mixed with self-attention.

Mixture-of-experts blocks (Mixtral ``block_sparse_moe.experts.N.w1/w3/w2`` =
gate/up/down; Qwen-MoE, OLMoE, DeepSeek ``mlp.experts.N.{gate,up,down}_proj``):
each routed expert's weight keeps its role, and the experts of one (layer,
role) become one ref with a ref per expert (``ModuleRef.experts``), read by
the loaders that ask for them (``experts=True``: full fine-tunes and PEFT
adapters; a row per expert, the ``expert`` column). The router
(``block_sparse_moe.gate``, ``mlp.gate``) scores experts per token and is no
projection, shared experts (``mlp.shared_expert``) have no expert index, and
experts fused into one 3-D parameter are not read yet: each is left out with
its reason. Attention is mapped as in the dense model.

Every module path that gets no (layer, role) gets a reason instead
(``map_with_reasons``), so loaders can list what they do not analyse.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ...arguments import BASE
from ...errors import FormatError
from ...selection import ROLES

__all__ = [
    "ROLES",
    "ModuleRef",
    "canonical_name",
    "encoder_depth",
    "layer_index",
    "map_modules",
    "map_with_reasons",
]

_WRAPPER_PREFIXES = ("base_model.model.", "module.", "_orig_mod.")
# Wrappers that FSDP and activation checkpointing insert inside a name (training layouts).
_WRAPPER_INFIXES = re.compile(r"(?:^|(?<=\.))(?:_fsdp_wrapped_module|_checkpoint_wrapped_module)\.")
_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")
_ENCODER_BLOCK = re.compile(r"(?:^|\.)encoder\.block\.(\d+)\.")
_DECODER_BLOCK = re.compile(r"(?:^|\.)decoder\.block\.(\d+)\.")
_EXPERT = re.compile(r"\.experts\.(\d+)\.")  # the expert index of a mixture-of-experts weight
_MOE = ("mixtral", "moe")  # the rule families of per-expert weights


@dataclass(frozen=True)
class ModuleRef:
    """Where one role of one layer lives in a checkpoint.

    ``module`` is the canonical module path (tensor name without ``.weight``);
    ``conv1d`` says the weight is stored ``(d_in, d_out)`` (GPT-2 ``Conv1D``);
    ``fused`` names the layout of a fused projection (``thirds``, ``halves``,
    ``neox``, ``phi3``, ``falcon``) and ``index`` the role's place in it.
    A mixture-of-experts role is one ref whose ``experts`` hold a ref per
    expert (``expert`` set, ``module`` that expert's path); its own ``module``
    names them all (``…experts.*.w1``) and is no tensor: read its ``experts``.
    """

    layer: int
    role: str
    module: str
    family: str
    conv1d: bool = False
    fused: str | None = None
    index: int = 0
    expert: int | None = None
    experts: tuple[ModuleRef, ...] = ()

    @property
    def members(self) -> tuple[ModuleRef, ...]:
        """The refs to read: one per expert of a mixture-of-experts role, else this one."""
        return self.experts or (self,)

    @property
    def needs_heads(self) -> bool:
        return self.fused in ("neox", "falcon")

    def rows(self, d_out: int, d_in: int, heads: int | None = None) -> slice | torch.Tensor:
        """This role's output rows in a module weight of shape ``(d_out, d_in)``."""
        if self.fused is None:
            return slice(0, d_out)
        if self.fused in ("thirds", "halves"):
            count = 3 if self.fused == "thirds" else 2
            return slice(*self._block(d_out, [d_out // count] * count))
        if self.fused == "phi3":
            return slice(*self._block(d_out, [d_in, (d_out - d_in) // 2, (d_out - d_in) // 2]))
        if self.fused == "falcon":
            return self._falcon_rows(d_out, d_in, heads)
        if heads is None or heads <= 0 or d_out % (3 * heads):
            raise FormatError(
                f"{self.module}: an interleaved query_key_value of {d_out} rows needs the number "
                f"of attention heads (from the model's config.json; got {heads}): pass {BASE}"
            )
        head_dim = d_out // (3 * heads)
        index = torch.arange(d_out).view(heads, 3, head_dim)  # (heads, q/k/v, head_dim)
        return index[:, self.index].reshape(-1)  # (heads·head_dim,)

    def _falcon_rows(self, d_out: int, d_in: int, heads: int | None) -> torch.Tensor:
        """Falcon's fused rows viewed as ``(kv_heads, heads/kv_heads + 2, head_dim)``."""
        head_dim = d_in // heads if heads and heads > 0 and d_in % heads == 0 else 0
        slots = d_out // head_dim if head_dim and d_out % head_dim == 0 else 0
        kv_heads = (slots - heads) // 2 if slots > heads and (slots - heads) % 2 == 0 else 0
        if not kv_heads or heads % kv_heads:
            raise FormatError(
                f"{self.module}: a Falcon query_key_value of shape ({d_out}, {d_in}) should have "
                f"(heads + 2·kv_heads)·head_dim rows with head_dim = {d_in}/heads; the model's "
                f"config.json gives heads = {heads}, which does not fit: pass the right {BASE}"
            )
        group = heads // kv_heads + 2  # q slots of one kv group, then k, then v
        index = torch.arange(d_out).view(kv_heads, group, head_dim)  # (kv, q…qkv, head_dim)
        picked = (
            index[:, : group - 2] if self.index == 0 else index[:, group - 3 + self.index]
        )  # q: (kv, heads/kv, head_dim); k, v: (kv, head_dim)
        return picked.reshape(-1)

    def _block(self, d_out: int, sizes: list[int]) -> tuple[int, int]:
        if sum(sizes) != d_out or min(sizes) <= 0:
            raise FormatError(
                f"{self.module}: a fused {self.fused} projection with {d_out} output rows cannot "
                f"be split into {len(sizes)} blocks of sizes {sizes}"
            )
        start = sum(sizes[: self.index])
        return start, start + sizes[self.index]


@dataclass(frozen=True)
class _Rule:
    pattern: re.Pattern[str]
    roles: tuple[str, ...]  # one role, or the roles of a fused projection in row order
    family: str
    conv1d: bool = False
    fused: str | None = None


def _rule(
    suffix: str, roles: str, family: str, conv1d: bool = False, fused: str | None = None
) -> _Rule:
    return _Rule(re.compile(rf"(?:^|\.){suffix}$"), tuple(roles.split(",")), family, conv1d, fused)


# Exact architecture rules first; the generic suffix fallback comes last.
_RULES = (
    # LLaMA, Mistral, Qwen2, Gemma, Phi-3-small, …
    _rule(r"self_attn\.q_proj", "q", "llama"),
    _rule(r"self_attn\.k_proj", "k", "llama"),
    _rule(r"self_attn\.v_proj", "v", "llama"),
    _rule(r"self_attn\.o_proj", "o", "llama"),
    _rule(r"mlp\.gate_proj", "gate", "llama"),
    _rule(r"mlp\.up_proj", "up", "llama"),
    _rule(r"mlp\.down_proj", "down", "llama"),
    # BERT, RoBERTa, MiniLM
    _rule(r"attention\.self\.query", "q", "bert"),
    _rule(r"attention\.self\.key", "k", "bert"),
    _rule(r"attention\.self\.value", "v", "bert"),
    _rule(r"attention\.output\.dense", "o", "bert"),
    _rule(r"layer\.\d+\.intermediate\.dense", "up", "bert"),
    _rule(r"layer\.\d+\.output\.dense", "down", "bert"),
    # GPT-2: Conv1D weights stored (d_in, d_out); c_attn fuses q, k, v in thirds
    _rule(r"attn\.c_attn", "q,k,v", "gpt2", conv1d=True, fused="thirds"),
    _rule(r"attn\.c_proj", "o", "gpt2", conv1d=True),
    _rule(r"mlp\.c_fc", "up", "gpt2", conv1d=True),
    _rule(r"mlp\.c_proj", "down", "gpt2", conv1d=True),
    # GPT-NeoX / Pythia: q, k, v interleaved per head
    _rule(r"layers\.\d+\.attention\.query_key_value", "q,k,v", "gpt_neox", fused="neox"),
    _rule(r"layers\.\d+\.attention\.dense", "o", "gpt_neox"),
    _rule(r"mlp\.dense_h_to_4h", "up", "gpt_neox"),
    _rule(r"mlp\.dense_4h_to_h", "down", "gpt_neox"),
    # Phi-3: rows q, then k, then v; gate then up in halves
    _rule(r"self_attn\.qkv_proj", "q,k,v", "phi3", fused="phi3"),
    _rule(r"mlp\.gate_up_proj", "gate,up", "phi3", fused="halves"),
    # Falcon: grouped q…q k v per kv head (see the module docstring)
    _rule(r"h\.\d+\.self_attention\.query_key_value", "q,k,v", "falcon", fused="falcon"),
    _rule(r"h\.\d+\.self_attention\.dense", "o", "falcon"),
    # MPT: Wqkv in thirds (chunk(3))
    _rule(r"blocks\.\d+\.attn\.Wqkv", "q,k,v", "mpt", fused="thirds"),
    _rule(r"blocks\.\d+\.attn\.out_proj", "o", "mpt"),
    _rule(r"ffn\.up_proj", "up", "mpt"),
    _rule(r"ffn\.down_proj", "down", "mpt"),
    # OPT (q, k, v_proj as LLaMA)
    _rule(r"self_attn\.out_proj", "o", "opt"),
    _rule(r"layers\.\d+\.fc1", "up", "opt"),
    _rule(r"layers\.\d+\.fc2", "down", "opt"),
    # T5: self-attention and the feed-forward of encoder and decoder blocks
    _rule(r"block\.\d+\.layer\.\d+\.SelfAttention\.q", "q", "t5"),
    _rule(r"block\.\d+\.layer\.\d+\.SelfAttention\.k", "k", "t5"),
    _rule(r"block\.\d+\.layer\.\d+\.SelfAttention\.v", "v", "t5"),
    _rule(r"block\.\d+\.layer\.\d+\.SelfAttention\.o", "o", "t5"),
    _rule(r"block\.\d+\.layer\.\d+\.DenseReluDense\.wi", "up", "t5"),
    _rule(r"block\.\d+\.layer\.\d+\.DenseReluDense\.wi_0", "gate", "t5"),
    _rule(r"block\.\d+\.layer\.\d+\.DenseReluDense\.wi_1", "up", "t5"),
    _rule(r"block\.\d+\.layer\.\d+\.DenseReluDense\.wo", "down", "t5"),
    # Mixture-of-experts: one weight per expert, read as one role with an expert index
    _rule(r"block_sparse_moe\.experts\.\d+\.w1", "gate", "mixtral"),
    _rule(r"block_sparse_moe\.experts\.\d+\.w3", "up", "mixtral"),
    _rule(r"block_sparse_moe\.experts\.\d+\.w2", "down", "mixtral"),
    _rule(r"(?:mlp|block_sparse_moe)\.experts\.\d+\.gate_proj", "gate", "moe"),
    _rule(r"(?:mlp|block_sparse_moe)\.experts\.\d+\.up_proj", "up", "moe"),
    _rule(r"(?:mlp|block_sparse_moe)\.experts\.\d+\.down_proj", "down", "moe"),
    # Unknown architectures: the usual suffix names
    _rule(r"(?:q_proj|query)", "q", "generic"),
    _rule(r"(?:k_proj|key)", "k", "generic"),
    _rule(r"(?:v_proj|value)", "v", "generic"),
    _rule(r"o_proj", "o", "generic"),
)


# Modules with a layer index that no rule maps, and why (checked before the rules).
_LEFT_OUT = (
    (
        re.compile(r"(?:^|\.)EncDecAttention\.[qkvo]$"),
        "cross-attention (T5 EncDecAttention): its k and v read the encoder's output, not the "
        "block's own stream; no role in the architecture map",
    ),
    (
        re.compile(r"(?:^|\.)(?:block_sparse_moe|mlp)\.(?:gate|router)$"),
        "router of a mixture-of-experts block: scores the experts for each token "
        "(num_experts × hidden), a choice of experts, not a projection; not analysed",
    ),
    (
        re.compile(r"(?:^|\.)mlp\.(?:shared_experts?\.\w+|shared_expert_gate)$"),
        "shared expert of a mixture-of-experts block (always active beside the routed "
        "experts) or its gate: no expert index in the map; not analysed",
    ),
    (
        re.compile(r"(?:^|\.)experts(?:\.(?:gate_up_proj|down_proj))?$"),
        "experts fused into one 3-D parameter (transformers ≥ 5 in memory; peft "
        "target_parameters): not read yet; save_pretrained writes one weight per expert, "
        "which spectra reads",
    ),
)
EXPERTS_NOT_READ = (
    "expert of a mixture-of-experts block: this format's reader does not read experts"
)
NO_LAYER = "outside the transformer blocks (embeddings, pooler, head, …): no layer in the map"
NO_ROLE = "no role (q, k, v, o, gate, up, down) in the architecture map for this module"
NO_DEPTH = (
    "decoder block of an encoder-decoder model: it is numbered after the encoder's blocks, "
    "whose count comes from the base model's config.json"
)
# The reasons that can explain why a role is missing from a checkpoint (for selection errors).
ROLE_REASONS = (NO_ROLE, NO_DEPTH, *(reason for _, reason in _LEFT_OUT))


def left_out_reason(module: str) -> str | None:
    """Why a module path is left out by name alone (routers, shared or fused experts), or None."""
    return next((why for pattern, why in _LEFT_OUT if pattern.search(module)), None)


def canonical_name(name: str) -> str:
    """Strip wrapper prefixes (repeatedly): ``base_model.model.``, ``module.``, ``_orig_mod.``.

    ``_fsdp_wrapped_module.`` and ``_checkpoint_wrapped_module.`` are dropped wherever they sit.
    """
    name = _WRAPPER_INFIXES.sub("", name)
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
                changed = True
    return name


def layer_index(module: str) -> int | None:
    """The transformer block index in a module path, or ``None`` outside the blocks."""
    match = _LAYER.search(module)
    return int(match.group(1)) if match else None


def encoder_depth(names: Iterable[str]) -> int | None:
    """The encoder's block count of an encoder-decoder (T5) from its tensor names, or None."""
    indices = [int(m.group(1)) for name in names if (m := _ENCODER_BLOCK.search(name))]
    return max(indices) + 1 if indices else None


def map_modules(
    modules: Iterable[str], encoder_layers: int | None = None, experts: bool = False
) -> dict[tuple[int, str], ModuleRef]:
    """Map canonical module paths to ``(layer, role) → ModuleRef`` (see ``map_with_reasons``)."""
    return map_with_reasons(modules, encoder_layers, experts)[0]


def map_with_reasons(
    modules: Iterable[str], encoder_layers: int | None = None, experts: bool = False
) -> tuple[dict[tuple[int, str], ModuleRef], dict[str, str]]:
    """Map canonical module paths to ``(layer, role) → ModuleRef``, and say why others are not.

    Returns the map and ``{module: reason}`` for every path left out: outside
    the transformer blocks, of no known role, cross-attention, or a T5 decoder
    block when ``encoder_layers`` (the encoder's depth) is not known. Two paths
    claiming the same (layer, role), as in an encoder-decoder other than T5,
    raise ``FormatError``: guessing would analyse the wrong matrix.

    The experts of a mixture-of-experts block (``…experts.N.w1``) become one
    ref per (layer, role) holding a ref per expert (``ModuleRef.experts``) when
    the caller reads experts (``experts=True``); otherwise they are left out
    with ``EXPERTS_NOT_READ``, never read as one matrix.
    """
    found: dict[tuple[int, str], ModuleRef] = {}
    left_out: dict[str, str] = {}
    grouped: dict[tuple[int, str], list[ModuleRef]] = {}  # mixture-of-experts roles
    for module in modules:
        layer = layer_index(module)
        reason = next((why for pattern, why in _LEFT_OUT if pattern.search(module)), None)
        rule = next((rule for rule in _RULES if rule.pattern.search(module)), None)
        decoder = _DECODER_BLOCK.search(module) if rule is not None else None
        if decoder is not None and rule.family == "t5":
            layer = None if encoder_layers is None else encoder_layers + int(decoder.group(1))
            reason = reason or (NO_DEPTH if layer is None else None)
        if reason is None and layer is None:
            reason = NO_LAYER
        if reason is None and rule is None:
            reason = NO_ROLE
        expert = _EXPERT.search(module) if reason is None and rule.family in _MOE else None
        if expert is not None and not experts:
            reason = EXPERTS_NOT_READ
        if reason is not None:
            left_out[module] = reason
            continue
        if expert is not None:
            ref = ModuleRef(layer, rule.roles[0], module, rule.family, expert=int(expert[1]))
            grouped.setdefault((layer, ref.role), []).append(ref)
            continue
        for index, role in enumerate(rule.roles):
            ref = ModuleRef(layer, role, module, rule.family, rule.conv1d, rule.fused, index)
            previous = found.get((layer, role))
            if previous is not None:
                raise FormatError(
                    f"two modules claim layer {layer} role {role!r}: {previous.module} and "
                    f"{module}; this architecture is not supported yet (encoder-decoder models "
                    "other than T5 need their own map)"
                )
            found[(layer, role)] = ref
    for (layer, role), members in grouped.items():
        members.sort(key=lambda ref: ref.expert)
        if (layer, role) in found:
            raise FormatError(
                f"two modules claim layer {layer} role {role!r}: {found[layer, role].module} and "
                f"the experts {members[0].module} …; this architecture is not supported yet"
            )
        pattern = _EXPERT.sub(".experts.*.", members[0].module)
        found[(layer, role)] = ModuleRef(
            layer, role, pattern, members[0].family, experts=tuple(members)
        )
    return found, left_out
