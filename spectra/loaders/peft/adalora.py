"""AdaLoRA (``peft_type`` ADALORA): an SVD-shaped LoRA whose ranks are pruned while it trains.

ΔW = ``B @ (A ⊙ E) · scaling / (init_r + 1e-5)`` (factored), with ``lora_A``
``(k, d_in)``, ``lora_E`` ``(k, 1)`` (the singular-value-like scales) and
``lora_B`` ``(d_out, k)``; the formula is ``methods.adalora``.

The scale follows peft's reload (``tuners/adalora/model.py``
``resize_modules_by_rank_pattern``): a module named in ``rank_pattern`` (key
= its path plus ``.lora_E``, the value a keep-mask of ``init_r`` booleans) is
rebuilt by ``update_layer`` at its kept rank k = the mask's count of true,
which sets ``scaling = lora_alpha``, or ``float(k)`` when ``lora_alpha ≤ 0``;
``ranknum`` (not saved) is then copied back from the module made at
``init_r``. A module not in ``rank_pattern`` stays at ``init_r``: scaling
``lora_alpha`` or ``float(init_r)``. The file must hold k rows (peft's save
truncates them): a file whose rows disagree with the pattern is refused, as
peft cannot load it either. A module pruned to k = 0 has ΔW = 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...errors import FormatError
from ..methods import adalora
from ..naming.architectures import canonical_name
from .variant import Adapted, Variant, register_variant

if TYPE_CHECKING:
    import torch

    from ..adapter import Rows, Update
    from .checkpoint import PeftCheckpoint

__all__ = ["AdaLora"]


class AdaLora(Variant):
    """AdaLoRA: ΔW = B @ (A ⊙ E) · scaling / (init_r + 1e-5), scaling as peft reloads it."""

    peft_type = "ADALORA"
    recognised_by = "lora_A, lora_E and lora_B per module; init_r and the rank_pattern masks"

    config_fields = ("init_r", "target_r", "lora_alpha", "rank_pattern")
    parts = ("lora_A", "lora_B", "lora_E")
    key_parts = parts
    formula = "B@(A⊙E)·α/(init_r + 1e-5) (factored)"
    follows = "tuners/adalora/layer.py: SVDLinear.get_delta_weight"

    def name(self, ckpt: PeftCheckpoint) -> str:
        return "AdaLoRA"

    def resolve_scale(self, ckpt: PeftCheckpoint, adapted: Adapted) -> None:
        init_r = ckpt.config.get("init_r")
        alpha = ckpt.config.get("lora_alpha")
        if not isinstance(init_r, int) or not isinstance(alpha, int | float):
            raise FormatError(
                f"{ckpt.config_path}: AdaLoRA needs numbers in init_r and lora_alpha; found "
                f"init_r={init_r!r}, lora_alpha={alpha!r}"
            )
        a, b, e = (ckpt.shape_of(adapted, part) for part in ("lora_A", "lora_B", "lora_E"))
        kept = a[0]
        if b[1] != kept or tuple(e) != (kept, 1) or kept > init_r:
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module} should have lora_A (k, d_in), lora_E "
                f"(k, 1) and lora_B (d_out, k) with k ≤ init_r={init_r}; found {a}, {e}, {b}"
            )
        found = _kept_rank(ckpt, adapted.module)
        rank, rank_source = found if found else (init_r, "init_r (not in rank_pattern)")
        if kept != rank:
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module} holds {kept} ranks, but its config "
                f"{ckpt.config_path} keeps {rank} ({rank_source}), the rank peft rebuilds it "
                "at on load; the file and config are not one save (peft cannot load them either)"
            )
        ranknum = init_r if kept > 0 else 0  # peft copies ranknum back only when k > 0
        if alpha > 0:
            scaling, scaling_source = float(alpha), "lora_alpha"
        else:  # peft: scaling = float(r) at the rank update_layer is called with
            scaling, scaling_source = float(kept), f"k (lora_alpha={alpha:g} ≤ 0; k: {rank_source})"
        adapted.rank = kept
        adapted.scale = scaling / (ranknum + 1e-5)
        ranknum_source = "init_r" if kept > 0 else "0"
        adapted.scale_source = (
            f"config: {scaling_source}/({ranknum_source} + 1e-5) = {scaling:g}/({ranknum} + 1e-5)"
        )

    def module_shape(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int, int]:
        return (ckpt.shape_of(adapted, "lora_B")[0], ckpt.shape_of(adapted, "lora_A")[1])

    def updates(
        self, ckpt: PeftCheckpoint, adapted: Adapted, rows: Rows, base: torch.Tensor | None
    ) -> list[tuple[int | None, Update]]:
        A, B, E = ckpt.need(adapted, "lora_A", "lora_B", "lora_E")  # (k, d_in), (d_out, k), (k, 1)
        return [(None, adalora.delta(A, B, E, adapted.scale, rows))]


def _kept_rank(ckpt: PeftCheckpoint, module: str) -> tuple[int, str] | None:
    """k of a module named in ``rank_pattern`` and the key that names it; None if not named.

    peft's ``resize_modules_by_rank_pattern`` takes the module path from a key
    by dropping its last part (``lora_E``), or its last two when the adapter
    name is in the key (``lora_E.default``), and finds that exact module.
    """
    pattern = ckpt.config.get("rank_pattern")
    if not pattern:
        return None
    if not isinstance(pattern, dict):
        raise FormatError(
            f"{ckpt.config_path}: expected rank_pattern to be an object of keep-masks, "
            f"found {type(pattern).__name__}"
        )
    adapter = ckpt.adapter_name or "default"
    for key, keep in pattern.items():
        parts = key.split(".")
        path = ".".join(parts[:-2] if adapter in key else parts[:-1])
        if canonical_name(path) != module:
            continue
        if not isinstance(keep, list) or not all(isinstance(flag, bool) for flag in keep):
            raise FormatError(
                f"{ckpt.config_path}: expected rank_pattern[{key!r}] to be a list of true/false "
                f"(AdaLoRA's keep-mask), found {keep!r}"
            )
        return sum(keep), f"rank_pattern[{key!r}]"
    return None


register_variant(AdaLora())
