"""VeRA (``peft_type`` VERA): frozen random ``vera_A`` / ``vera_B`` shared by all modules.

ΔW = ``diag(λ_b) B[:d_out] diag(λ_d) A[:, :d_in]`` (factored, scale 1: the
vectors carry it), with per module ``vera_lambda_b`` ``(d_out,)`` and
``vera_lambda_d`` ``(r,)``, and the shared ``vera_A`` ``(r, max d_in)`` and
``vera_B`` ``(max d_out, r)`` sliced to the module. d_in is saved nowhere in
the adapter, so it comes from the base model. Saved with ``save_projection``
false, the shared pair is drawn again from ``projection_prng_key`` as peft
draws it, at the size of the widest adapted module (which the base gives).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from ...arguments import BASE
from ...errors import FormatError
from ..methods import vera
from .base_shapes import module_base_shape
from .shared_bases import bases_saved, largest_shape, projection_seed
from .variant import Adapted, Variant, register_variant

if TYPE_CHECKING:
    import torch

    from ..adapter import Rows, Update
    from .checkpoint import PeftCheckpoint

__all__ = ["Vera"]

_BASES = ("vera_A", "vera_B")


@functools.lru_cache(maxsize=2)
def _drawn_bases(seed: int, rank: int, largest: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """The frozen bases peft draws from ``seed`` (cached: every module slices the same pair)."""
    return vera.vera_projections(seed, rank, largest)


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
        saved = self._saved(ckpt)
        if ckpt.base_weights is None:
            width = (
                f"the shared vera_A is {ckpt.store.info(ckpt.shared['vera_A']).shape[1]} wide, "
                "the widest module's"
                if saved
                else "and the bases peft draws from the seed are as wide as the widest module"
            )
            return [
                f"VeRA: each module's d_in comes from the base model ({width}); shapes show "
                f"d_in as unknown and analysing needs {BASE('DIR')}"
            ]
        if not saved:
            return [
                "VeRA: save_projection is false, so vera_A and vera_B are drawn again from "
                "projection_prng_key as peft draws them, at the size of the widest adapted module"
            ]
        return []

    def _saved(self, ckpt: PeftCheckpoint) -> bool:
        """Whether the file holds vera_A and vera_B (else they are drawn from the seed)."""
        return bases_saved(ckpt, "VeRA", _BASES)

    def _bases(self, ckpt: PeftCheckpoint) -> tuple[torch.Tensor, torch.Tensor]:
        """``vera_A (r, widest d_in)`` and ``vera_B (widest d_out, r)``: saved or drawn."""
        if self._saved(ckpt):
            return tuple(ckpt.store.load(ckpt.shared[name]) for name in _BASES)
        seed = projection_seed(ckpt, "VeRA")
        largest = largest_shape(ckpt, "VeRA", "save_projection")
        return _drawn_bases(seed, ckpt.config["r"], largest)

    def resolve_scale(self, ckpt: PeftCheckpoint, adapted: Adapted) -> None:
        if self._saved(ckpt):
            rank = ckpt.store.info(ckpt.shared["vera_A"]).shape[0]
            source = "vera_A"
        else:
            rank, source = ckpt.config.get("r"), "the config's r"
        lambda_d = ckpt.shape_of(adapted, "vera_lambda_d")
        if tuple(lambda_d) != (rank,):
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module} should have vera_lambda_d ({rank},) to "
                f"match {source}; found {lambda_d}"
            )
        self.no_scale(adapted, rank, "VeRA: the scaling vectors λ_b, λ_d carry the scale")

    def module_shape(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int, int]:
        d_out = ckpt.shape_of(adapted, "vera_lambda_b")[0]
        d_in = module_base_shape(ckpt, adapted, "VeRA", "its d_in")[1]
        if not self._saved(ckpt):  # drawn at the widest module's size: never narrower
            return (d_out, d_in)
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
        vera_A, vera_B = self._bases(ckpt)
        lambda_b, lambda_d = ckpt.need(adapted, "vera_lambda_b", "vera_lambda_d")  # (d_out,), (r,)
        return [(None, vera.delta(vera_A, vera_B, lambda_b, lambda_d, d_in, rows))]


register_variant(Vera())
