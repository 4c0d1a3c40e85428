"""LoRA and rsLoRA: ΔW = s · B @ A, with s = α/r (α/√r under rsLoRA), and peft's pattern rule.

Follows peft's ``tuners/lora/layer.py`` (``LoraLayer.update_layer`` sets
``scaling = lora_alpha / r``, or ``lora_alpha / math.sqrt(r)`` with
``use_rslora``; ``Linear.get_delta_weight`` returns ``B @ A · scaling``),
with ``A`` = ``lora_A`` ``(r, d_in)`` and ``B`` = ``lora_B`` ``(d_out, r)``.
The per-module r and α of ``rank_pattern`` / ``alpha_pattern`` follow peft's
``utils/other.py`` ``get_pattern_key``: a key matches a module path when
``(.*\\.)?{key}$`` matches it, first key in the dict wins.
"""

from __future__ import annotations

import math
import re

import torch

from ...delta import Factored
from ...errors import FormatError
from . import ALL_ROWS, Rows

__all__ = ["factored", "minus_initial", "pattern_value", "rank_and_alpha", "scale", "scale_text"]


def scale(rank: int, alpha: float, rslora: bool = False) -> float:
    """The LoRA scale α/r, or α/√r for rsLoRA."""
    return alpha / (math.sqrt(rank) if rslora else rank)


def scale_text(rank: int, alpha: float, rank_source: str, alpha_source: str, rslora: bool) -> str:
    """Where a scale came from: ``lora_alpha/r = 16/8`` (``…/√r = 16/√8`` for rsLoRA)."""
    root = "√" if rslora else ""
    return f"{alpha_source}/{root}{rank_source} = {alpha:g}/{root}{rank}"


def factored(B: torch.Tensor, A: torch.Tensor, s: float, rows: Rows = ALL_ROWS) -> Factored:
    """ΔW = s · B @ A kept factored, B ``(d_out, r)`` and A ``(r, d_in)`` widened to float64."""
    return Factored(B.double()[rows], A.double(), s)  # (d_out of the role, r), (r, d_in)


def minus_initial(
    B: torch.Tensor,
    A: torch.Tensor,
    B0: torch.Tensor,
    A0: torch.Tensor,
    s: float,
    rows: Rows = ALL_ROWS,
) -> Factored:
    """ΔW = s · (B @ A − B0 @ A0), the update of the original W0 when the init moved it.

    Kept factored as ``s · [B, −B0] @ [A; A0]`` (rank ≤ 2r); ``B0``, ``A0`` are
    the factors saved before training (PiSSA, OLoRA, … subtract ``s · B0 @ A0``
    from W0 at init, peft's ``init_lora_weights``).
    """
    B_both = torch.cat([B.double(), -B0.double()], dim=1)  # (d_out, 2r)
    A_both = torch.cat([A.double(), A0.double()], dim=0)  # (2r, d_in)
    return Factored(B_both[rows], A_both, s)


def pattern_value(patterns: object, module: str) -> tuple[str, object] | None:
    """The first ``(key, value)`` of a rank or alpha pattern whose key matches ``module``."""
    for key, value in patterns.items() if isinstance(patterns, dict) else ():
        if re.match(rf"(.*\.)?({key})$", module):
            return key, value
    return None


def rank_and_alpha(
    config: dict, module: str, alpha_field: str, where: str, field_prefix: str = ""
) -> tuple[int, float, str, str]:
    """r and α of ``module`` from a LoRA config and its patterns, with where each came from.

    ``where`` names the file for the error (a config that holds no number
    there); ``field_prefix`` is put before the field names in that error.
    """
    rank, alpha = config.get("r"), config.get(alpha_field)
    rank_source, alpha_source = "r", alpha_field
    found = pattern_value(config.get("rank_pattern"), module)
    if found:
        rank, rank_source = found[1], f"rank_pattern[{found[0]!r}]"
    found = pattern_value(config.get("alpha_pattern"), module)
    if found:
        alpha, alpha_source = found[1], f"alpha_pattern[{found[0]!r}]"
    for value, source in ((rank, rank_source), (alpha, alpha_source)):
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise FormatError(
                f"{where}: expected a number for {field_prefix}{source}, found {value!r}"
            )
    return int(rank), float(alpha), rank_source, alpha_source
