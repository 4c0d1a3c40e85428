"""Multi-head LoRA (HydraLoRA / R-LoRA): one ``lora_A``, several heads ``lora_B0 … lora_B{n-1}``.

PEFT saves it as ``peft_type`` LORA with ``lora_nums = n`` in the config, so
the LoRA variant (``lora.py``) reads it and asks this module for what is
particular to heads:

| rebuilt | ΔW |
|---|---|
| per head (``--per-head``) | ``s · B_j @ A`` for each head j (factored) |
| default | the uniform mixture ``s · mean_j(B_j) @ A`` (factored) |

with ``s = α/r`` (``α/√r`` under ``use_rslora``). A router ``lora_route``
weights the heads per input, so the true ΔW depends on the input: it is not
part of a static ΔW and is listed by ``not_analysed()``. The heads in the
file must be exactly those ``lora_nums`` names.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ...arguments import PER_HEAD
from ...errors import FormatError
from ..methods import multihead as formulas

if TYPE_CHECKING:
    import torch

    from ..adapter import Rows, Update
    from .checkpoint import PeftCheckpoint
    from .variant import Adapted

__all__ = ["ROUTER", "check_heads", "head_parts", "heads", "name", "updates", "warning"]

# Why the router of a multi-head LoRA is not analysed (see not_analysed()).
ROUTER = (
    "router of a multi-head LoRA: weights the heads per input, not part of a static "
    "ΔW (each head or their uniform mixture is analysed)"
)


def heads(config: dict) -> int | None:
    """The number of heads the config's ``lora_nums`` names; ``None`` for a plain LoRA."""
    heads = config.get("lora_nums")
    return heads if isinstance(heads, int) and heads > 0 else None


def head_parts(count: int) -> list[str]:
    """The part names of the heads: ``lora_B0 … lora_B{count-1}``."""
    return [f"lora_B{j}" for j in range(count)]


def name(per_head: bool) -> str:
    """The variant's name, saying which ΔW is reported."""
    return "multi-head LoRA (" + ("per head" if per_head else "uniform mixture") + ")"


def warning(per_head: bool) -> str:
    """Why a multi-head LoRA has no single static ΔW, and which one is reported."""
    return (
        "multi-head LoRA: its ΔW depends on the input through the router; "
        + (
            "each head's s·B_j@A is reported"
            if per_head
            else f"the uniform mixture s·mean_j(B_j)@A is reported ({PER_HEAD}: each)"
        )
        + ". The scale follows the config's use_rslora; R-LoRA's α/√r is not recorded "
        "on disk"
    )


def check_heads(ckpt: PeftCheckpoint, adapted: Adapted) -> None:
    """The lora_B heads in the file must be those the config's lora_nums names."""
    found = sorted(int(part[6:]) for part in adapted.parts if re.fullmatch(r"lora_B\d+", part))
    count = heads(ckpt.config)
    if not found and count is None:
        return  # a plain LoRA: a missing lora_B is reported as an incomplete file
    if found == list(range(count or 0)) and (count is None) == ("lora_B" in adapted.parts):
        return
    in_file = ", ".join(f"lora_B{j}" for j in found) or "none"
    plain = " and a plain lora_B" if count is not None and "lora_B" in adapted.parts else ""
    raise FormatError(
        f"{ckpt.store.path}: {adapted.module} has heads {in_file}{plain}, but "
        f"{ckpt.config_path.name} says lora_nums = {ckpt.config.get('lora_nums')!r} "
        f"({'lora_B0 … lora_B' + str(count - 1) if count else 'one lora_B'} expected); "
        "the config and the tensors disagree: fix lora_nums in the config"
    )


def updates(
    A: torch.Tensor, Bs: list[torch.Tensor], rows: Rows, s: float, per_head: bool
) -> list[tuple[int | None, Update]]:
    """Each head's ``s · B_j @ A`` (``per_head``), or the uniform mixture ``s · mean_j(B_j) @ A``.

    ``A`` is ``(r, d_in)``; each ``B_j`` is ``(d_out_all, r)`` for the whole
    module, cut to the role's ``rows``.
    """
    if per_head:
        return list(enumerate(formulas.each_head(A, Bs, s, rows)))
    return [(None, formulas.mixture(A, Bs, s, rows))]
