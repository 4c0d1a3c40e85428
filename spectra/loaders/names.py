"""The architecture map: which tensor is the key (value, …) projection of layer i.

Module names are matched by *role* (``q``, ``k``, ``v``, ``o``, ``up``,
``down``, ``gate``), so a user asks for ``k,v`` whatever the architecture
calls them (see ``shared/FORMATS.md``, "Where the k and v projections live").
Names are first put in canonical form by stripping wrapper prefixes
(``base_model.model.`` from PEFT, ``module.`` from DDP, ``_orig_mod.`` from
``torch.compile``); ``model.`` is part of Hugging Face names and is kept.

A fused projection maps to one ``ModuleRef`` per role, whose ``rows()``
picks that role's output rows:

- ``thirds`` (GPT-2 ``c_attn``, Conv1D layout): q, k, v are equal blocks;
  ``halves`` (Phi-3 ``gate_up_proj``): gate, then up;
- ``neox`` (GPT-NeoX / Pythia ``query_key_value``): interleaved per head, the
  output viewed as ``(heads, 3, head_dim)``; needs the number of heads;
- ``phi3`` (Phi-3 ``qkv_proj``): q has ``d_in`` rows (the hidden size), then
  k and v have ``(d_out − d_in) / 2`` rows each.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ..errors import FormatError

__all__ = ["ROLES", "ModuleRef", "canonical_name", "layer_index", "map_modules"]

ROLES = ("q", "k", "v", "o", "gate", "up", "down")
_WRAPPER_PREFIXES = ("base_model.model.", "module.", "_orig_mod.")
_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")


@dataclass(frozen=True)
class ModuleRef:
    """Where one role of one layer lives in a checkpoint.

    ``module`` is the canonical module path (tensor name without ``.weight``);
    ``conv1d`` says the weight is stored ``(d_in, d_out)`` (GPT-2 ``Conv1D``);
    ``fused`` names the layout of a fused projection (``thirds``, ``neox``,
    ``phi3``) and ``index`` the role's place in it.
    """

    layer: int
    role: str
    module: str
    family: str
    conv1d: bool = False
    fused: str | None = None
    index: int = 0

    @property
    def needs_heads(self) -> bool:
        return self.fused == "neox"

    def rows(self, d_out: int, d_in: int, heads: int | None = None) -> slice | torch.Tensor:
        """This role's output rows in a module weight of shape ``(d_out, d_in)``."""
        if self.fused is None:
            return slice(0, d_out)
        if self.fused in ("thirds", "halves"):
            count = 3 if self.fused == "thirds" else 2
            return slice(*self._block(d_out, [d_out // count] * count))
        if self.fused == "phi3":
            return slice(*self._block(d_out, [d_in, (d_out - d_in) // 2, (d_out - d_in) // 2]))
        if heads is None or heads <= 0 or d_out % (3 * heads):
            raise FormatError(
                f"{self.module}: an interleaved query_key_value of {d_out} rows needs the number "
                f"of attention heads (from the model's config.json; got {heads}): pass --base"
            )
        head_dim = d_out // (3 * heads)
        index = torch.arange(d_out).view(heads, 3, head_dim)  # (heads, q/k/v, head_dim)
        return index[:, self.index].reshape(-1)  # (heads·head_dim,)

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
    # Unknown architectures: the usual suffix names
    _rule(r"(?:q_proj|query)", "q", "generic"),
    _rule(r"(?:k_proj|key)", "k", "generic"),
    _rule(r"(?:v_proj|value)", "v", "generic"),
    _rule(r"o_proj", "o", "generic"),
)


def canonical_name(name: str) -> str:
    """Strip wrapper prefixes (repeatedly): ``base_model.model.``, ``module.``, ``_orig_mod.``."""
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


def map_modules(modules: Iterable[str]) -> dict[tuple[int, str], ModuleRef]:
    """Map canonical module paths to ``(layer, role) → ModuleRef``.

    Paths outside the transformer blocks, or of no known role, are left out
    (callers list them in errors). Two paths claiming the same (layer, role),
    as in an encoder-decoder, raise ``FormatError``: guessing would analyse
    the wrong matrix.
    """
    found: dict[tuple[int, str], ModuleRef] = {}
    for module in modules:
        layer = layer_index(module)
        if layer is None:
            continue
        rule = next((rule for rule in _RULES if rule.pattern.search(module)), None)
        if rule is None:
            continue
        for index, role in enumerate(rule.roles):
            ref = ModuleRef(layer, role, module, rule.family, rule.conv1d, rule.fused, index)
            previous = found.get((layer, role))
            if previous is not None:
                raise FormatError(
                    f"two modules claim layer {layer} role {role!r}: {previous.module} and "
                    f"{module}; this architecture is not supported yet (encoder-decoder models "
                    "need their own map)"
                )
            found[(layer, role)] = ref
    return found
