"""MiSS (``peft_type`` MISS) and Bone (BONE, its older name): one block shared over W0's columns.

| mode (``init_weights``) | ``miss_block`` | ΔW |
|---|---|---|
| ``true``, ``false`` | ``(r, d_out)`` | ``blockᵀ`` added to each r columns of W0 (factored) |
| ``"mini"`` | ``(r, mini_r)`` | the block tiled to ``(r, d_out)``, then as above (factored) |
| ``"bat"`` | ``(d_out/r, r, r)`` | r×r block (p, q) of W0 becomes ``W0_pq·M_p + M_p`` (dense) |

The adapter saves d_in nowhere (and ``mini`` not d_out either), so every
mode takes the module's shape from the base model (``ShapeFromBase``), and
``bat`` also multiplies W0 itself. Bone, which peft 0.21 no longer reads,
saved ``bone_block`` with the same default and ``bat`` formulas (older
peft's ``tuners/bone/layer.py``); it is read the same way. The formulas are
``methods.miss``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...errors import FormatError, MissingBaseError
from ..methods import miss
from .base_shapes import ShapeFromBase
from .structured import config_number
from .variant import Adapted, register_variant

if TYPE_CHECKING:
    import torch

    from ..adapter import Rows, Update
    from .checkpoint import PeftCheckpoint

__all__ = ["Bone", "MiSS"]


class MiSS(ShapeFromBase):
    """MiSS: ``miss_block`` spread over W0's column blocks, in the mode init_weights names."""

    peft_type = "MISS"
    block = "miss_block"
    modes = ("default", "mini", "bat")
    recognised_by = "miss_block, and r, init_weights (true, mini, bat), mini_r"
    key_parts = ("miss_block",)
    parts = key_parts
    config_fields = ("r", "init_weights", "mini_r")
    formula = (
        "ΔW[o, c] = block[c mod r, o] (factored, rank ≤ r; mini: block tiled over d_out first); "
        "bat: block (p, q) = W0_pq·M_p + M_p (dense)"
    )
    follows = "tuners/miss/layer.py: MissLinear.get_delta_weight_miss, get_delta_weight (bat)"
    why_base = (
        "MiSS spreads its block over the module's d_in columns (and mini over its d_out rows), "
        "which the adapter does not save, and its bat mode multiplies W0 itself: the base "
        "model's weights give both."
    )

    def name(self, ckpt: PeftCheckpoint) -> str:
        return "MiSS" + ("" if self.mode(ckpt) == "default" else f" ({self.mode(ckpt)})")

    def mode(self, ckpt: PeftCheckpoint) -> str:
        """``default``, ``mini`` or ``bat``, from init_weights, as peft's merge chooses."""
        init = ckpt.config.get("init_weights", True)
        return init if init in self.modes[1:] else "default"

    def kind(self, ckpt: PeftCheckpoint) -> str:
        return "dense" if self.mode(ckpt) == "bat" else "factored"

    def resolve_scale(self, ckpt: PeftCheckpoint, adapted: Adapted) -> None:
        shape = tuple(ckpt.shape_of(adapted, self.block))
        rank, mode = config_number(ckpt, "r", int), self.mode(ckpt)
        if mode == "mini":
            mini_r = config_number(ckpt, "mini_r", int)
            expected, ok = (
                f"({rank}, {mini_r}) for r = {rank}, mini_r = {mini_r}",
                shape
                == (
                    rank,
                    mini_r,
                ),
            )
        elif mode == "bat":
            expected = f"(d_out/{rank}, {rank}, {rank}) for r = {rank}"
            ok = len(shape) == 3 and shape[1:] == (rank, rank)
        else:
            expected, ok = f"({rank}, d_out) for r = {rank}", len(shape) == 2 and shape[0] == rank
        if not ok:
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module} should have {self.block} {expected} "
                f"(init_weights = {ckpt.config.get('init_weights', True)!r}); found {shape}"
            )
        self.no_scale(
            adapted,
            None if mode == "bat" else rank,
            f"{self.name(ckpt)}: no scale (the block is added as it is)",
        )

    def shape_before_base(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int, int | None]:
        shape = ckpt.shape_of(adapted, self.block)
        mode = self.mode(ckpt)
        d_out = None if mode == "mini" else shape[0] * shape[1] if mode == "bat" else shape[1]
        return (d_out, None)

    def checked_shape(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int, int]:
        """The base's (d_out, d_in), checked against the block."""
        d_out, d_in = self.module_shape(ckpt, adapted)
        shape, mode = tuple(ckpt.shape_of(adapted, self.block)), self.mode(ckpt)
        rank = shape[-1] if mode == "bat" else shape[0]
        if mode == "mini":
            fits = d_out % shape[1] == 0
        else:
            fits = self.shape_before_base(ckpt, adapted)[0] == d_out
        if mode == "bat":
            fits = fits and d_in % rank == 0
        if not fits or rank > d_in:
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module}'s {self.block} {shape} does not fit the "
                f"module's ({d_out}, {d_in}) in the base {ckpt.base} (init_weights = "
                f"{ckpt.config.get('init_weights', True)!r}); is the base the model this adapter "
                "was trained on?"
            )
        return (d_out, d_in)

    def updates(
        self, ckpt: PeftCheckpoint, adapted: Adapted, rows: Rows, base: torch.Tensor | None
    ) -> list[tuple[int | None, Update]]:
        d_out, d_in = self.checked_shape(ckpt, adapted)
        (block,) = ckpt.need(adapted, self.block)
        mode = self.mode(ckpt)
        if mode == "bat":
            if base is None:
                raise MissingBaseError(f"{ckpt.config_path}: {self.why_base}")
            return [(None, miss.bat(block, base, rows))]  # (d_out/r, r, r), W0 (d_out, d_in)
        if mode == "mini":
            return [(None, miss.tiled(block, d_out, d_in, rows))]  # (r, mini_r)
        return [(None, miss.shared(block, d_in, rows))]  # (r, d_out)


class Bone(MiSS):
    """Bone, MiSS's older name: ``bone_block``, the default and ``bat`` modes."""

    peft_type = "BONE"
    block = "bone_block"
    modes = ("default", "bat")
    recognised_by = "bone_block, and r, init_weights (true, bat)"
    key_parts = ("bone_block",)
    parts = key_parts
    config_fields = ("r", "init_weights")
    formula = (
        "ΔW[o, c] = block[c mod r, o] (factored, rank ≤ r); bat: block (p, q) = W0_pq·M_p + M_p "
        "(dense)"
    )
    follows = "tuners/bone/layer.py (older peft): get_delta_weight_bone, get_delta_weight"
    why_base = (
        "Bone spreads its block over the module's d_in columns, which the adapter does not save, "
        "and its bat mode multiplies W0 itself: the base model's weights give both."
    )

    def name(self, ckpt: PeftCheckpoint) -> str:
        return "Bone" + ("" if self.mode(ckpt) == "default" else f" ({self.mode(ckpt)})")


register_variant(MiSS())
register_variant(Bone())
