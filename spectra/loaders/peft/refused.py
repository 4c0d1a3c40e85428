"""The peft_types with no single static ΔW, refused with the reason, and the LoRA configs refused.

A refused ``peft_type`` is read far enough to say why it is not analysed: the
checkpoint raises a ``FormatError`` naming the config and the reason as soon
as it sees the type (``Variant.refused``). Three kinds:

- routers over several adapters, whose mixture depends on each input: X-LoRA,
  Poly, Lily (and LoRA configs with ``arrow_config``, refused by ``lora_refusal``);
- updates of another kind than a weight: ShadowPEFT's parallel network, and
  every prompt or prefix method (their tensors are inputs or a KV cache);
- AdaMSS, whose ΔW is static but whose rows peft does not save (see its reason).

``lora_refusal`` is the LORA variant's check (``lora.py`` calls it): Arrow
routes over expert LoRAs, aLoRA applies its update only after the invocation
tokens, and the sub-folders peft writes for an X-LoRA adapter's experts are
incomplete.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ...arguments import ADAPTER
from .variant import Variant, register_variant

if TYPE_CHECKING:
    from .checkpoint import PeftCheckpoint

__all__ = ["REFUSED", "Refused", "lora_refusal"]

_NO_WEIGHT = "no weight of the model changes, so there is no ΔW to analyse"

# peft_type → why it is refused (docs/formats.md and docs/refusals.md show these).
REFUSED = {
    "XLORA": (
        "X-LoRA mixes LoRA experts with weights a learned classifier computes from each input's "
        "hidden states, so no single ΔW runs. Each expert is a LoRA adapter of its own: analyse "
        "the folders the config's adapters field names, one by one (the sub-folders 0, 1, … that "
        "peft 0.21 writes hold incomplete experts and are refused)"
    ),
    "POLY": (
        "Poly mixes a bank of LoRA skills with weights a router picks for each input's task id, so "
        "the update depends on the task given with the input: no single static ΔW"
    ),
    "LILY": (
        "Lily mixes its shared B adapters with weights a router computes from each input's hidden "
        "states, and peft cannot merge it: no single static ΔW"
    ),
    "SHADOW": (
        "ShadowPEFT runs a small parallel network whose state is injected into each wrapped "
        "block's input: an input-dependent correction, not a weight update, and peft cannot "
        "merge it"
    ),
    "CARTRIDGE": (
        f"Cartridges train a KV-cache prefix (past_key_values) read by attention; {_NO_WEIGHT}"
    ),
    "PROMPT_TUNING": (
        f"prompt tuning learns soft-prompt embeddings put before the input; {_NO_WEIGHT}"
    ),
    "MULTITASK_PROMPT_TUNING": (
        "multitask prompt tuning learns a soft prompt per task (a shared prompt times task "
        f"factors) put before the input; {_NO_WEIGHT}"
    ),
    "P_TUNING": (
        "P-tuning learns virtual-token embeddings, made by a prompt encoder, put before the input; "
        f"{_NO_WEIGHT}"
    ),
    "PREFIX_TUNING": (
        f"prefix tuning learns key/value prefixes (past_key_values) for every attention layer; "
        f"{_NO_WEIGHT}"
    ),
    "ADAPTION_PROMPT": (
        "adaption prompts (LLaMA-Adapter) learn prompts gated into the top attention layers' "
        f"outputs; {_NO_WEIGHT}"
    ),
    "CPT": (
        "context-aware prompt tuning learns the embeddings of context tokens put before the input; "
        f"{_NO_WEIGHT}"
    ),
    "ADAMSS": (
        "AdaMSS writes each subspace's update into rows of ΔW that the adapter does not save: peft "
        "finds them again at load by k-means clustering (scikit-learn) of a randomized SVD of the "
        "base weight and bias, which is not reproducible exactly across scikit-learn versions and "
        "machines (peft's own loader allows for that), so ΔW's rows cannot be placed with certainty"
    ),
}


class Refused(Variant):
    """A ``peft_type`` with no single static ΔW: read only to say why it is refused."""

    def __init__(self, peft_type: str, reason: str):
        self.peft_type = peft_type
        self.refused = reason
        self.recognised_by = "adapter_config.json's peft_type"

    def name(self, ckpt: PeftCheckpoint) -> str:
        return self.peft_type


# -- LoRA configs that are not one static ΔW -------------------------------------------------

_ARROW = (
    "Arrow (a LoRA config with arrow_config) routes each token over expert LoRA adapters by its "
    "similarity to their prototypes: no single static ΔW. Each expert is a LoRA adapter of its "
    "own: analyse it with {adapter} ({experts})"
)
_ALORA = (
    "aLoRA (alora_invocation_tokens) applies s·B@A only to the tokens after its invocation "
    "sequence, and peft refuses to merge it: a merged ΔW is not what runs"
)
_XLORA_EXPERT = (
    "a sub-folder of the X-LoRA adapter {parent}: peft 0.21 names X-LoRA's experts 0, 1, … and its "
    "filter for the other experts' names (.1., .2., …) also drops every tensor of those layer "
    "numbers, so this expert is incomplete; analyse the expert LoRA folders the X-LoRA config "
    "names instead: {experts}"
)


def lora_refusal(ckpt: PeftCheckpoint) -> str:
    """Why a LORA adapter is refused ("" = it is read): Arrow, aLoRA, an X-LoRA sub-folder."""
    config = ckpt.config
    arrow = config.get("arrow_config")
    if arrow:
        arrow = arrow if isinstance(arrow, dict) else {}
        names = [*(arrow.get("task_adapter_names") or []), *(arrow.get("gks_adapter_names") or [])]
        return _ARROW.format(adapter=ADAPTER("NAME"), experts=", ".join(names) or "none named")
    if config.get("alora_invocation_tokens"):
        return _ALORA
    parent = Path(ckpt.path).parent
    if getattr(ckpt, "from_sub_folder", False) and (parent / "adapter_config.json").is_file():
        from .checkpoint import read_adapter_config  # the checkpoint imports this module

        parent_config = read_adapter_config(parent)
        if str(parent_config.get("peft_type", "")).upper() == "XLORA":
            experts = parent_config.get("adapters") or {}
            listing = ", ".join(f"{name} → {where}" for name, where in experts.items())
            return _XLORA_EXPERT.format(parent=parent, experts=listing or "none listed")
    return ""


for _peft_type, _reason in REFUSED.items():
    register_variant(Refused(_peft_type, _reason))
