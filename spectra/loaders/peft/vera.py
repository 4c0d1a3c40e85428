"""VeRA (``peft_type`` VERA): frozen random ``vera_A`` / ``vera_B`` shared by all modules.

ΔW = ``diag(λ_b) B[:d_out] diag(λ_d) A[:, :d_in]`` (factored, scale 1: the
vectors carry it), with per module ``vera_lambda_b`` ``(d_out,)`` and
``vera_lambda_d`` ``(r,)``, and the shared ``vera_A`` ``(r, max d_in)`` and
``vera_B`` ``(max d_out, r)`` sliced to the module. d_in is saved nowhere in
the adapter, so it comes from the base model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...arguments import BASE
from ...errors import FormatError
from ..methods import vera
from .base_shapes import module_base_shape
from .variant import Adapted, Variant, register_variant

if TYPE_CHECKING:
    import torch

    from ..adapter import Rows, Update
    from .checkpoint import PeftCheckpoint

__all__ = ["Vera"]


class Vera(Variant):
    """VeRA: ΔW = diag(λ_b) B[:d_out] diag(λ_d) A[:, :d_in], A and B shared by all modules.

    peft makes the shared ``vera_A`` ``(r, max d_in)`` and ``vera_B``
    ``(max d_out, r)`` over the adapted modules and slices them per module
    (``vera_A[:, :in_features]``, ``vera_B[:out_features, :]``). d_out is the
    length of ``vera_lambda_b``; d_in is saved nowhere in the adapter, so it
    comes from the base model (found from ``base_model_name_or_path`` as for
    DoRA, or ``--base``), and without it the analysis is refused.
    """

    peft_type = "VERA"
    recognised_by = "vera_lambda_b, vera_lambda_d, and the shared vera_A, vera_B"

    config_fields = ("r", "save_projection", "projection_prng_key", "d_initial")
    parts = ("vera_lambda_b", "vera_lambda_d")
    key_parts = parts
    shared_parts = ("vera_A", "vera_B")
    formula = "diag(λ_b)·B[:d_out]·diag(λ_d)·A[:, :d_in] (factored)"
    follows = "tuners/vera/layer.py: Linear.get_delta_weight"
    why_base = (
        "VeRA slices the shared vera_A to each module's own d_in (vera_A[:, :d_in]), which is "
        "saved nowhere in the adapter: it comes from the base model's weights."
    )

    def name(self, ckpt: PeftCheckpoint) -> str:
        return "VeRA"

    def needs_base(self, ckpt: PeftCheckpoint) -> bool:
        return True

    def warnings(self, ckpt: PeftCheckpoint) -> list[str]:
        if ckpt.base_weights is None:
            width = ckpt.store.info(ckpt.shared["vera_A"]).shape[1]
            return [
                f"VeRA: each module's d_in comes from the base model (the shared vera_A is "
                f"{width} wide, the widest module's); shapes show d_in as unknown and analysing "
                f"needs {BASE('DIR')}"
            ]
        return []

    def resolve_scale(self, ckpt: PeftCheckpoint, adapted: Adapted) -> None:
        missing = [name for name in ("vera_A", "vera_B") if name not in ckpt.shared]
        if missing:
            hint = (
                " (save_projection is false: peft regenerates them from projection_prng_key)"
                if ckpt.config.get("save_projection") is False
                else ""
            )
            raise FormatError(
                f"{ckpt.store.path}: VeRA's shared {' and '.join(missing)} are not in the file"
                f"{hint}; re-save the adapter with save_projection=True"
            )
        rank = ckpt.store.info(ckpt.shared["vera_A"]).shape[0]
        lambda_d = ckpt.shape_of(adapted, "vera_lambda_d")
        if tuple(lambda_d) != (rank,):
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module} should have vera_lambda_d ({rank},) to "
                f"match vera_A; found {lambda_d}"
            )
        self.no_scale(adapted, rank, "VeRA: the scaling vectors λ_b, λ_d carry the scale")

    def module_shape(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int, int]:
        d_out = ckpt.shape_of(adapted, "vera_lambda_b")[0]
        d_in = module_base_shape(ckpt, adapted, "VeRA", "its d_in")[1]
        a_shape = ckpt.store.info(ckpt.shared["vera_A"]).shape  # (r, widest d_in)
        b_shape = ckpt.store.info(ckpt.shared["vera_B"]).shape  # (widest d_out, r)
        if d_in > a_shape[1] or d_out > b_shape[0]:
            raise FormatError(
                f"{ckpt.store.path}: VeRA module {adapted.module} is ({d_out}, {d_in}) in the base "
                f"{ckpt.base}, but the shared vera_A {tuple(a_shape)} and vera_B "
                f"{tuple(b_shape)} are cut from the widest module, so they cannot be narrower; "
                f"is {BASE} the model this adapter was trained on?"
            )
        return (d_out, d_in)

    def shape_before_base(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int, int | None]:
        return (ckpt.shape_of(adapted, "vera_lambda_b")[0], None)

    def updates(
        self, ckpt: PeftCheckpoint, adapted: Adapted, rows: Rows, base: torch.Tensor | None
    ) -> list[tuple[int | None, Update]]:
        d_in = self.module_shape(ckpt, adapted)[1]
        vera_A, vera_B = (ckpt.store.load(ckpt.shared[name]) for name in ("vera_A", "vera_B"))
        lambda_b, lambda_d = ckpt.need(adapted, "vera_lambda_b", "vera_lambda_d")  # (d_out,), (r,)
        return [(None, vera.delta(vera_A, vera_B, lambda_b, lambda_d, d_in, rows))]


register_variant(Vera())
