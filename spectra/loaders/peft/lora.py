"""LoRA, rsLoRA and DoRA (``peft_type`` LORA), and the LORA adapters that carry heads.

| method | ΔW |
|---|---|
| LoRA | ``s · B @ A``, ``s = α/r`` (factored) |
| rsLoRA (``use_rslora``) | ``s · B @ A``, ``s = α/√r`` (factored) |
| DoRA (``use_dora``) | ``diag(m / ‖V‖_row) · V − W0``, ``V = W0 + s·B@A`` (dense; needs W0) |
| DoRA, ``--directional-only`` | ``s · B @ A`` alone, the magnitude vector ignored (factored) |

``A`` is ``lora_A`` ``(r, d_in)``, ``B`` is ``lora_B`` ``(d_out, r)``, ``m``
is ``lora_magnitude_vector`` ``(d_out,)``; r and α come from the config and
its ``rank_pattern`` / ``alpha_pattern``. A config with ``lora_nums`` is a
multi-head LoRA (HydraLoRA): the same variant reads it, with the head-specific
parts in ``multihead.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ...arguments import DIRECTIONAL_ONLY, INITIAL
from ...errors import FormatError
from ..methods import dora, lora
from . import multihead
from .refused import lora_refusal
from .variant import Adapted, Variant, register_variant

if TYPE_CHECKING:
    from ..adapter import Rows, Update
    from .checkpoint import PeftCheckpoint

__all__ = ["Lora"]


class Lora(Variant):
    """LoRA, rsLoRA, DoRA and multi-head LoRA (HydraLoRA / R-LoRA: ``lora_B{j}``)."""

    peft_type = "LORA"
    recognised_by = "lora_A, lora_B (lora_B0… multi-head), lora_magnitude_vector (DoRA)"
    key_parts = (r"lora_A", r"lora_B\d*", r"lora_magnitude_vector", r"lora_route")
    formula = "s·B@A, s = α/r or α/√r (factored); DoRA: diag(m/‖V‖_row)·V − W0, V = W0 + s·B@A"
    follows = "tuners/lora/layer.py: Linear.get_delta_weight; DoRA in tuners/lora/dora.py"

    why_base = "DoRA's ΔW = diag(m/‖W0 + s·B@A‖_row)(W0 + s·B@A) − W0 needs the base weight W0."

    @property
    def base_hint(self) -> str:
        return f" (or {DIRECTIONAL_ONLY} for DoRA's s·B@A alone)"

    config_fields = (
        "r",
        "lora_alpha",
        "use_rslora",
        "use_dora",
        "lora_nums",
        "fan_in_fan_out",
        "rank_pattern",
        "alpha_pattern",
        "init_lora_weights",
    )

    def name(self, ckpt: PeftCheckpoint) -> str:
        if self._heads(ckpt):
            return multihead.name(ckpt.per_head)
        base = "rsLoRA" if ckpt.config.get("use_rslora") else "LoRA"
        if ckpt.config.get("use_dora"):
            return f"DoRA ({base}{', directional part only' if ckpt.directional_only else ''})"
        if getattr(ckpt, "initial", None) is not None:
            return f"{base} minus its initial adapter ({INITIAL})"
        return base

    def _heads(self, ckpt: PeftCheckpoint) -> int | None:
        return multihead.heads(ckpt.config)

    def kind(self, ckpt: PeftCheckpoint) -> str:
        dora = ckpt.config.get("use_dora") and not ckpt.directional_only
        return "dense" if dora else "factored"

    def needs_base(self, ckpt: PeftCheckpoint) -> bool:
        return bool(ckpt.config.get("use_dora")) and not ckpt.directional_only

    def check_file(self, ckpt: PeftCheckpoint) -> None:
        refusal = lora_refusal(ckpt)  # Arrow, aLoRA, an X-LoRA expert's sub-folder
        if refusal:
            raise FormatError(f"{ckpt.config_path}: {refusal}")

    def warnings(self, ckpt: PeftCheckpoint) -> list[str]:
        notes = []
        if ckpt.config.get("use_dora") and ckpt.directional_only:
            notes.append(
                f"DoRA analysed as its directional part s·B@A only ({DIRECTIONAL_ONLY}): the "
                "magnitude vector is ignored, so this is not the update DoRA applies"
            )
        if self._heads(ckpt):
            notes.append(multihead.warning(ckpt.per_head))
        return notes

    def _b_parts(self, ckpt: PeftCheckpoint, adapted: Adapted) -> list[str]:
        heads = self._heads(ckpt)
        if heads:
            return multihead.head_parts(heads)
        return ["lora_B"]

    def parts_used(self, ckpt: PeftCheckpoint, adapted: Adapted) -> set[str]:
        used = {"lora_A", *self._b_parts(ckpt, adapted)}
        if ckpt.config.get("use_dora") and not ckpt.directional_only:
            used.add("lora_magnitude_vector")
        return used

    def unused_reason(self, ckpt: PeftCheckpoint, part: str) -> str:
        if part == "lora_route":
            return multihead.ROUTER
        if part == "lora_magnitude_vector" and ckpt.directional_only:
            return f"DoRA's magnitude vector, ignored with {DIRECTIONAL_ONLY}"
        return super().unused_reason(ckpt, part)

    def resolve_scale(self, ckpt: PeftCheckpoint, adapted: Adapted) -> None:
        multihead.check_heads(ckpt, adapted)
        rank, alpha, rank_source, alpha_source = ckpt.rank_and_alpha(adapted.module, "lora_alpha")
        a_shape = ckpt.shape_of(adapted, "lora_A")
        b_shapes = [ckpt.shape_of(adapted, part) for part in self._b_parts(ckpt, adapted)]
        if (
            len(a_shape) != 2
            or a_shape[0] != rank
            or any(len(b) != 2 or b[1] != rank for b in b_shapes)
        ):
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module} should have lora_A ({rank}, d_in) and "
                f"lora_B (d_out, {rank}) for r={rank} from {ckpt.config_path.name} "
                f"({rank_source}); found lora_A {a_shape} and lora_B {b_shapes[0]}"
            )
        rslora = bool(ckpt.config.get("use_rslora"))  # rsLoRA: α/√r
        adapted.scale_by(rank, alpha, rank_source, alpha_source, root=rslora)
        adapted.heads = self._heads(ckpt)

    def module_shape(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int, int]:
        return (
            ckpt.shape_of(adapted, self._b_parts(ckpt, adapted)[0])[0],
            ckpt.shape_of(adapted, "lora_A")[1],
        )

    def updates(
        self, ckpt: PeftCheckpoint, adapted: Adapted, rows: Rows, base: torch.Tensor | None
    ) -> list[tuple[int | None, Update]]:
        (A,) = ckpt.need(adapted, "lora_A")  # (r, d_in)
        Bs = ckpt.need(adapted, *self._b_parts(ckpt, adapted))  # each (d_out_all, r)
        s = adapted.scale
        if self._heads(ckpt):
            return multihead.updates(A, Bs, rows, s, ckpt.per_head)
        (B,) = Bs  # (d_out_all, r)
        if ckpt.initial is not None:  # W₀ moved at init (DoRA refused there): s·(B@A − B₀@A₀)
            B0, A0 = ckpt.initial.factors(adapted.module)
            return [(None, lora.minus_initial(B, A, B0, A0, s, rows))]
        if not ckpt.config.get("use_dora") or ckpt.directional_only:
            return [(None, lora.factored(B, A, s, rows))]
        (magnitude,) = ckpt.need(adapted, "lora_magnitude_vector")  # (d_out_all,)
        return [(None, dora.delta(base, B, A, s, magnitude, rows))]


register_variant(Lora())
