"""RandLoRA (``peft_type`` RANDLORA): full-rank updates from frozen random bases, scaled per module.

ΔW = ``(randlora_alpha/r) · B̂ @ Â`` (factored, inner dimension n·r ≥
min(d_out, d_in)); the formula, and how peft pairs its bases, is
``methods.randlora``. Per module the file holds ``randlora_lambda``
``(r, n)`` and ``randlora_gamma`` ``(n, min(d_out, d_in))``; the frozen bases
``randlora_A`` ``(r, 1, widest min)`` and ``randlora_B``
``(widest max, N, r)`` are shared by every module. With ``save_projection``
they are saved, once at the top (``base_model.randlora_A``) and once more
under every module (the same buffer, so the copies must be equal: they are
checked); without it peft draws them again from ``projection_prng_key``
at the size of the largest adapted module, and so does spectra
(``methods.randlora.bases``: dense bases in bfloat16, as peft draws them on
any machine with bfloat16; sparse ones from a float32 uniform draw).

Which of d_out and d_in is the smaller, and the larger one, are saved
nowhere (γ is as wide as the smaller): each module's shape comes from the
base model, so RandLoRA needs it.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import torch

from ...arguments import BASE
from ...errors import FormatError
from ..methods import randlora
from .base_shapes import module_base_shape
from .shared_bases import bases_saved, largest_shape, projection_seed
from .variant import Adapted, Variant, register_variant

if TYPE_CHECKING:
    from ..adapter import Rows, Update
    from .checkpoint import PeftCheckpoint

__all__ = ["RandLora"]

_BASES = ("randlora_A", "randlora_B")


@functools.lru_cache(maxsize=2)
def _drawn_bases(
    seed: int, rank: int, largest: tuple[int, int], sparsity: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen bases peft draws from ``seed`` (cached: every module slices the same pair)."""
    return randlora.bases(seed, rank, largest, sparsity)


class RandLora(Variant):
    """RandLoRA: ΔW = (α/r) · B̂ @ Â from frozen random bases, λ and γ trained per module."""

    peft_type = "RANDLORA"
    recognised_by = (
        "randlora_lambda, randlora_gamma, and the shared randlora_A, randlora_B (saved, or drawn "
        "from projection_prng_key)"
    )
    # A module's copy of the shared bases; the top-level one (base_model.randlora_A) is shared.
    key_parts = (r"randlora_(?:lambda|gamma)", r"(?<!^base_model\.)randlora_[AB]")
    shared_parts = (r"randlora_[AB]",)
    parts = ("randlora_lambda", "randlora_gamma", *_BASES)
    config_fields = (
        "r",
        "randlora_alpha",
        "save_projection",
        "projection_prng_key",
        "sparse",
        "very_sparse",
    )
    formula = (
        "(α/r)·B̂@Â, Â = λ⊙A⊙γ and B̂ = B[:max(d)] over ⌈min(d)/r⌉ frozen random bases (factored)"
    )
    follows = (
        "tuners/randlora/layer.py: Linear.get_scaled_bases, get_delta_weight; bases: "
        "model.py _init_randlora_A_randlora_B"
    )
    why_base = (
        "RandLoRA saves neither each module's larger dimension nor which side is the smaller "
        "(randlora_gamma is as wide as the smaller): each module's (d_out, d_in) comes from the "
        "base model's weights."
    )

    def name(self, ckpt: PeftCheckpoint) -> str:
        return "RandLoRA"

    def needs_base(self, ckpt: PeftCheckpoint) -> bool:
        return True

    def _saved(self, ckpt: PeftCheckpoint) -> bool:
        """Whether the file holds the frozen bases (else they are drawn from the seed)."""
        return bases_saved(ckpt, "RandLoRA", _BASES)

    def warnings(self, ckpt: PeftCheckpoint) -> list[str]:
        notes = []
        if ckpt.base_weights is None:
            notes.append(
                f"RandLoRA: each module's (d_out, d_in) comes from the base model; shapes show "
                f"as unknown and analysing needs {BASE('DIR')}"
            )
        if ckpt.config.get("very_sparse") or ckpt.config.get("sparse") or self._saved(ckpt):
            return notes
        key = ckpt.config.get("projection_prng_key")
        return [
            *notes,
            f"RandLoRA: the frozen bases are not in the file (save_projection is false); spectra "
            f"draws them from projection_prng_key={key} as peft does, in bfloat16. peft draws "
            "them in float16 on machines without bfloat16 (GPUs before Ampere): an adapter "
            "trained on one has other bases, which its file does not record",
        ]

    def resolve_scale(self, ckpt: PeftCheckpoint, adapted: Adapted) -> None:
        rank = ckpt.config.get("r")
        alpha = ckpt.config.get("randlora_alpha")
        if not isinstance(rank, int) or rank <= 0 or not isinstance(alpha, int | float):
            raise FormatError(
                f"{ckpt.config_path}: RandLoRA needs a positive whole number in r and a number in "
                f"randlora_alpha; found r={rank!r}, randlora_alpha={alpha!r}"
            )
        lambda_ = tuple(ckpt.shape_of(adapted, "randlora_lambda"))  # (r, n)
        gamma = tuple(ckpt.shape_of(adapted, "randlora_gamma"))  # (n, m)
        count = randlora.basis_count(gamma[-1], rank) if len(gamma) == 2 else None
        if lambda_ != (rank, count) or gamma != (count, gamma[-1]):
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module} should have randlora_lambda (r, n) and "
                f"randlora_gamma (n, m) with r={rank} (r) and n = ⌈m/r⌉; found {lambda_} and "
                f"{gamma}"
            )
        if self._saved(ckpt):
            self._check_saved(ckpt, adapted, rank, count, gamma[-1])
        adapted.scale_by(rank, float(alpha), "r", "randlora_alpha")

    def _check_saved(
        self, ckpt: PeftCheckpoint, adapted: Adapted, rank: int, count: int, small: int
    ) -> None:
        """The saved bases hold this module's slices, and its copies match them in shape."""
        a_shape, b_shape = (tuple(ckpt.store.info(ckpt.shared[n]).shape) for n in _BASES)
        fits_A = len(a_shape) == 3 and a_shape[0] == rank and a_shape[2] >= small
        fits_B = len(b_shape) == 3 and b_shape[1] >= count and b_shape[2] == rank
        if not (fits_A and fits_B):
            raise FormatError(
                f"{ckpt.store.path}: RandLoRA's shared randlora_A {a_shape} and randlora_B "
                f"{b_shape} should be (r, 1, ≥{small}) and (max d, ≥{count}, r) for r={rank} and "
                f"{adapted.module}'s n={count}"
            )
        for name in _BASES:
            if name in adapted.parts and tuple(ckpt.shape_of(adapted, name)) != (
                a_shape if name == "randlora_A" else b_shape
            ):
                raise FormatError(
                    f"{ckpt.store.path}: {adapted.module}'s copy of {name} should be the shared "
                    f"{name}; its shape is {tuple(ckpt.shape_of(adapted, name))}"
                )

    def module_shape(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int, int]:
        shape = module_base_shape(ckpt, adapted, "RandLoRA")
        small = ckpt.shape_of(adapted, "randlora_gamma")[-1]
        widest = ckpt.store.info(ckpt.shared["randlora_B"]).shape[0] if self._saved(ckpt) else None
        if min(shape) != small or (widest is not None and max(shape) > widest):
            raise FormatError(
                f"{ckpt.store.path}: RandLoRA module {adapted.module} is {shape} in the base "
                f"{ckpt.base}, but its randlora_gamma is {small} wide (the smaller dimension)"
                f"{'' if widest is None else f' and the shared randlora_B {widest} long'}; is "
                f"{BASE} the model this adapter was trained on?"
            )
        return shape

    def shape_before_base(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int, int | None]:
        return (None, None)  # neither side is known: γ gives only the smaller one

    def _bases(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen bases ``(r, 1, m), (M, N, r)``: saved (copies checked equal) or drawn."""
        if not self._saved(ckpt):
            return self._drawn(ckpt)
        shared = [ckpt.store.load(ckpt.shared[name]) for name in _BASES]
        for name, tensor in zip(_BASES, shared, strict=True):
            if name in adapted.parts and not torch.equal(ckpt.need(adapted, name)[0], tensor):
                raise FormatError(
                    f"{ckpt.store.path}: {adapted.module}'s copy of {name} differs from the shared "
                    f"{name}; peft saves one buffer under both names, so the file was altered"
                )
        return shared[0], shared[1]

    def _drawn(self, ckpt: PeftCheckpoint) -> tuple[torch.Tensor, torch.Tensor]:
        seed = projection_seed(ckpt, "RandLoRA")
        largest = largest_shape(ckpt, "RandLoRA", "save_projection")
        sparsity = None
        if ckpt.config.get("very_sparse"):
            sparsity = math.sqrt(min(largest))
        elif ckpt.config.get("sparse"):
            sparsity = 3.0
        return _drawn_bases(seed, ckpt.config["r"], largest, sparsity)

    def updates(
        self, ckpt: PeftCheckpoint, adapted: Adapted, rows: Rows, base: torch.Tensor | None
    ) -> list[tuple[int | None, Update]]:
        shape = self.module_shape(ckpt, adapted)
        randlora_A, randlora_B = self._bases(ckpt, adapted)
        lambda_, gamma = ckpt.need(adapted, "randlora_lambda", "randlora_gamma")
        update = randlora.delta(randlora_A, randlora_B, lambda_, gamma, shape, adapted.scale, rows)
        return [(None, update)]


register_variant(RandLora())
