"""PVeRA (``peft_type`` PVERA): VeRA with a probabilistic middle, merged at its means.

ΔW = ``diag(λ_b) B[:d_out] diag(λ_d[:r]) A[:r, :d_in]`` (factored, scale 1),
VeRA's formula (``methods.vera.mean_delta``) on the mean halves: the shared
``pvera_A`` ``(2r, widest d_in)`` and the per-module ``pvera_lambda_d``
``(2r,)`` hold means and log-variances, and peft's merge keeps the means;
``pvera_B`` ``(widest d_out, r)`` is shared, ``pvera_lambda_b`` ``(d_out,)``
per module. With ``save_projection`` false the shared bases are drawn again
from ``projection_prng_key`` at the size of the largest adapted module, as
peft's ``PveraModel`` draws them (``methods.vera.pvera_projections``). d_in
is saved nowhere in the adapter, so it comes from the base model, as for VeRA.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import torch

from ...arguments import BASE
from ...errors import FormatError
from ..methods import vera
from .base_shapes import module_base_shape
from .shared_bases import bases_saved, largest_shape, projection_seed
from .variant import Adapted, Variant, register_variant

if TYPE_CHECKING:
    from ..adapter import Rows, Update
    from .checkpoint import PeftCheckpoint

__all__ = ["Pvera"]

_BASES = ("pvera_A", "pvera_B")


@functools.lru_cache(maxsize=2)
def _drawn_bases(seed: int, rank: int, largest: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """The frozen bases peft draws from ``seed`` (cached: every module slices the same pair)."""
    return vera.pvera_projections(seed, rank, largest)


class Pvera(Variant):
    """PVeRA: ΔW = diag(λ_b) B[:d_out] diag(λ_d[:r]) A[:r, :d_in], the means of its sampling."""

    peft_type = "PVERA"
    recognised_by = (
        "pvera_lambda_b, pvera_lambda_d, and the shared pvera_A, pvera_B (saved, or drawn from "
        "projection_prng_key)"
    )
    key_parts = (r"pvera_lambda_[bd]",)
    shared_parts = (r"pvera_[AB]",)
    parts = ("pvera_lambda_b", "pvera_lambda_d")
    config_fields = ("r", "save_projection", "projection_prng_key", "sample_at_inference")
    formula = "diag(λ_b)·B[:d_out]·diag(λ_d[:r])·A[:r, :d_in], the means (factored)"
    follows = (
        "tuners/pvera/layer.py: Linear.get_delta_weight; bases: model.py _init_pvera_A_pvera_B"
    )
    why_base = (
        "PVeRA slices the shared pvera_A to each module's own d_in (pvera_A[:, :d_in]), which is "
        "saved nowhere in the adapter: it comes from the base model's weights."
    )

    def name(self, ckpt: PeftCheckpoint) -> str:
        return "PVeRA"

    def needs_base(self, ckpt: PeftCheckpoint) -> bool:
        return True

    def _saved(self, ckpt: PeftCheckpoint) -> bool:
        """Whether the file holds the frozen bases (else they are drawn from the seed)."""
        return bases_saved(ckpt, "PVeRA", _BASES)

    def warnings(self, ckpt: PeftCheckpoint) -> list[str]:
        notes = []
        if ckpt.config.get("sample_at_inference"):
            notes.append(
                "PVeRA samples its middle at inference too (sample_at_inference): the layer's "
                "update is random; the ΔW analysed is peft's merge, at the means"
            )
        if ckpt.base_weights is None:
            notes.append(
                f"PVeRA: each module's d_in comes from the base model; shapes show d_in as "
                f"unknown and analysing needs {BASE('DIR')}"
            )
        return notes

    def resolve_scale(self, ckpt: PeftCheckpoint, adapted: Adapted) -> None:
        rank = ckpt.config.get("r")
        if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
            raise FormatError(
                f"{ckpt.config_path}: PVeRA needs a positive whole number in r; found {rank!r}"
            )
        lambda_d = tuple(ckpt.shape_of(adapted, "pvera_lambda_d"))
        if lambda_d != (2 * rank,):
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module} should have pvera_lambda_d ({2 * rank},) "
                f"(means and log-variances for r={rank}, r); found {lambda_d}"
            )
        if self._saved(ckpt):
            a_shape, b_shape = (tuple(ckpt.store.info(ckpt.shared[n]).shape) for n in _BASES)
            if (
                len(a_shape) != 2
                or len(b_shape) != 2
                or (a_shape[0], b_shape[1])
                != (
                    2 * rank,
                    rank,
                )
            ):
                raise FormatError(
                    f"{ckpt.store.path}: PVeRA's shared pvera_A {a_shape} and pvera_B {b_shape} "
                    f"should be ({2 * rank}, widest d_in) and (widest d_out, {rank}) for r={rank}"
                )
        self.no_scale(adapted, rank, "PVeRA: the scaling vectors λ_b, λ_d carry the scale")

    def module_shape(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int, int]:
        d_out = ckpt.shape_of(adapted, "pvera_lambda_b")[0]
        shape = module_base_shape(ckpt, adapted, "PVeRA")
        widest = None
        if self._saved(ckpt):  # (widest d_out, widest d_in) of the saved bases
            a_shape, b_shape = (ckpt.store.info(ckpt.shared[n]).shape for n in _BASES)
            widest = (b_shape[0], a_shape[1])
        too_wide = widest is not None and (shape[0] > widest[0] or shape[1] > widest[1])
        if shape[0] != d_out or too_wide:
            raise FormatError(
                f"{ckpt.store.path}: PVeRA module {adapted.module} is {shape} in the base "
                f"{ckpt.base}, but its pvera_lambda_b is {d_out} long"
                f"{'' if widest is None else f' and the shared bases are cut from {widest}'}; "
                f"is {BASE} the model this adapter was trained on?"
            )
        return shape

    def shape_before_base(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int, int | None]:
        return (ckpt.shape_of(adapted, "pvera_lambda_b")[0], None)

    def _bases(self, ckpt: PeftCheckpoint) -> tuple[torch.Tensor, torch.Tensor]:
        """``pvera_A (2r, widest d_in)`` and ``pvera_B (widest d_out, r)``: saved or drawn."""
        if self._saved(ckpt):
            return tuple(ckpt.store.load(ckpt.shared[name]) for name in _BASES)
        seed = projection_seed(ckpt, "PVeRA")
        largest = largest_shape(ckpt, "PVeRA", "save_projection")
        return _drawn_bases(seed, ckpt.config["r"], largest)

    def updates(
        self, ckpt: PeftCheckpoint, adapted: Adapted, rows: Rows, base: torch.Tensor | None
    ) -> list[tuple[int | None, Update]]:
        d_in = self.module_shape(ckpt, adapted)[1]
        pvera_A, pvera_B = self._bases(ckpt)
        lambda_b, lambda_d = ckpt.need(adapted, *self.parts)  # (d_out,), (2r,)
        return [(None, vera.mean_delta(pvera_A, pvera_B, lambda_b, lambda_d, d_in, rows))]


register_variant(Pvera())
