"""AdaLoRA (``peft_type`` ADALORA): an SVD-shaped LoRA whose ranks are pruned while it trains.

ΔW = ``B @ (A ⊙ E) · α / (init_r + 1e-5)`` (factored), with ``lora_A``
``(k, d_in)``, ``lora_E`` ``(k, 1)`` (the singular-value-like scales) and
``lora_B`` ``(d_out, k)``, k ≤ ``init_r``. peft scales by ``ranknum``, which
is ``init_r`` and is not saved; ranks pruned by the budget are zero rows of
E. An α of 0 or less stands for ``init_r``, as in peft.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...delta import Factored
from ...errors import FormatError
from .variant import Adapted, Variant

if TYPE_CHECKING:
    import torch

    from ..adapter import Rows, Update
    from .checkpoint import PeftCheckpoint

__all__ = ["AdaLora"]


class AdaLora(Variant):
    """AdaLoRA: ΔW = B @ (A ⊙ E) · α / (init_r + 1e-5); ranknum is init_r, not saved."""

    config_fields = ("init_r", "target_r", "lora_alpha")
    parts = ("lora_A", "lora_B", "lora_E")

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
        alpha = alpha if alpha > 0 else float(init_r)
        adapted.rank = kept
        adapted.scale = alpha / (init_r + 1e-5)
        adapted.scale_source = f"config: lora_alpha/(init_r + 1e-5) = {alpha:g}/({init_r} + 1e-5)"

    def module_shape(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int, int]:
        return (ckpt.shape_of(adapted, "lora_B")[0], ckpt.shape_of(adapted, "lora_A")[1])

    def updates(
        self, ckpt: PeftCheckpoint, adapted: Adapted, rows: Rows, base: torch.Tensor | None
    ) -> list[tuple[int | None, Update]]:
        A, B, E = (  # (k, d_in), (d_out, k), (k, 1): widened before any arithmetic
            t.double() for t in ckpt.need(adapted, "lora_A", "lora_B", "lora_E")
        )
        return [(None, Factored(B[rows], A * E, adapted.scale))]  # A ⊙ E: (k, d_in) float64
