"""PEFT methods with structured dense or sparse updates: C3A, SHiRA, GraLoRA, and what they share.

| method | ΔW |
|---|---|
| C3A | block-circulant of ``c3a_kernel`` ``(d_out/b, d_in/b, b)``, divided by d_in (dense) |
| SHiRA | ``shira_weight`` at ``shira_indices``, saved beside it (dense, sparse) |
| GraLoRA | a k×k grid of rank-r/k LoRAs, plus a rank-h LoRA, times α/(r + h) (factored) |

FourierFT and WaveFT (``fourierft.py``) and MiSS / Bone (``miss.py``) are the
family's other modules; they share ``ShapeFromBase`` (``base_shapes.py``):
methods whose saved tensors do not give the module's shape (FourierFT's
spectrum, SHiRA's values, MiSS's block), so that d_out and d_in come from the
base model, as VeRA's d_in does. Without a base, analysing them is refused (``MissingBaseError``
naming ``--base``) and ``describe()`` shows the dimensions as unknown.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...arguments import BASE
from ...errors import FormatError
from ..methods import c3a, gralora, lora, shira
from .base_shapes import ShapeFromBase
from .variant import Adapted, Variant, register_variant

if TYPE_CHECKING:
    import torch

    from ..adapter import Rows, Update
    from .checkpoint import PeftCheckpoint

__all__ = ["C3A", "GraLoRA", "SHiRA"]


def config_number(ckpt: PeftCheckpoint, field: str, kind: type = float) -> float | int:
    """A number the method needs from the config, or a FormatError naming the field."""
    value = ckpt.config.get(field)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (kind is int and value != int(value))
    ):
        raise FormatError(
            f"{ckpt.config_path}: {ckpt.peft_type} needs {field} as a number in the config; "
            f"found {value!r}"
        )
    return kind(value)


class C3A(Variant):
    """C3A: ΔW = block-circulant(c3a_kernel) / d_in, b×b circulant blocks."""

    peft_type = "C3A"
    recognised_by = "c3a_kernel (d_out/b, d_in/b, b), and block_size"
    key_parts = ("c3a_kernel",)
    parts = key_parts
    config_fields = ("block_size", "block_size_pattern", "init_weights")
    formula = (
        "block (p, q) = circulant(c3a_kernel[p, q]): C[k, j] = w[(j−k) mod b]; all / d_in (dense)"
    )
    follows = (
        "tuners/c3a/layer.py: C3ALayer.get_delta_weight; tuners/c3a/utils.py: get_circulant_fast"
    )

    def name(self, ckpt: PeftCheckpoint) -> str:
        return "C3A"

    def kind(self, ckpt: PeftCheckpoint) -> str:
        return "dense"

    def resolve_scale(self, ckpt: PeftCheckpoint, adapted: Adapted) -> None:
        shape = tuple(ckpt.shape_of(adapted, "c3a_kernel"))
        found = lora.pattern_value(ckpt.config.get("block_size_pattern"), adapted.module)
        block_size, source = (
            (found[1], f"block_size_pattern[{found[0]!r}]")
            if found
            else (
                config_number(ckpt, "block_size", int),
                "block_size",
            )
        )
        if len(shape) != 3 or shape[2] != block_size:
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module} should have c3a_kernel (d_out/b, d_in/b, "
                f"{block_size}) for {source} = {block_size}; found {shape}"
            )
        d_in = shape[1] * shape[2]
        adapted.scale = 1.0 / d_in
        adapted.scale_source = f"C3A: 1/d_in = 1/{d_in}"

    def module_shape(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int, int]:
        blocks_out, blocks_in, size = ckpt.shape_of(adapted, "c3a_kernel")
        return (blocks_out * size, blocks_in * size)

    def updates(
        self, ckpt: PeftCheckpoint, adapted: Adapted, rows: Rows, base: torch.Tensor | None
    ) -> list[tuple[int | None, Update]]:
        (kernel,) = ckpt.need(adapted, "c3a_kernel")  # (d_out/b, d_in/b, b)
        return [(None, c3a.delta(kernel, rows))]


class SHiRA(ShapeFromBase):
    """SHiRA: ΔW = shira_weight at shira_indices, a sparse matrix of the base's shape."""

    peft_type = "SHIRA"
    recognised_by = "shira_weight (n,) and shira_indices (2, n)"
    key_parts = ("shira_weight", "shira_indices")
    parts = key_parts
    config_fields = ("r", "mask_type", "random_seed")
    formula = "shira_weight at (shira_indices[0], shira_indices[1]) in a zero (d_out, d_in) (dense)"
    follows = "tuners/shira/layer.py: Linear.get_delta_weight"
    why_base = (
        "SHiRA saves its values and their (row, column) but not the module's shape (d_out, d_in): "
        "it comes from the base model's weights."
    )

    def name(self, ckpt: PeftCheckpoint) -> str:
        return "SHiRA"

    def kind(self, ckpt: PeftCheckpoint) -> str:
        return "dense"

    def resolve_scale(self, ckpt: PeftCheckpoint, adapted: Adapted) -> None:
        values = tuple(ckpt.shape_of(adapted, "shira_weight"))
        indices = tuple(ckpt.shape_of(adapted, "shira_indices"))
        if len(values) != 1 or indices != (2, values[0]):
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module} should have shira_weight (n,) and "
                f"shira_indices (2, n); found {values} and {indices}"
            )
        adapted.scale = 1.0
        adapted.scale_source = "SHiRA: 1 (peft's default; a scale set at inference is not saved)"

    def updates(
        self, ckpt: PeftCheckpoint, adapted: Adapted, rows: Rows, base: torch.Tensor | None
    ) -> list[tuple[int | None, Update]]:
        d_out, d_in = self.module_shape(ckpt, adapted)
        values, indices = ckpt.need(adapted, "shira_weight", "shira_indices")  # (n,), (2, n)
        whole = indices.double()  # (2, n): float32 when saved on Windows
        if not bool((whole == whole.round()).all()) or (
            indices.numel()
            and (whole.min() < 0 or whole[0].max() >= d_out or whole[1].max() >= d_in)
        ):
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module}'s shira_indices should be whole numbers "
                f"within the module's shape ({d_out}, {d_in}) from the base {ckpt.base}; is "
                f"{BASE} the model this adapter was trained on?"
            )
        return [(None, shira.delta(values, indices, (d_out, d_in), adapted.scale, rows))]


class GraLoRA(Variant):
    """GraLoRA: a k×k grid of rank-r/k LoRAs plus a hybrid LoRA, scaled α/(r + h), factored."""

    peft_type = "GRALORA"
    recognised_by = "gralora_A (k, d_in/k, r), gralora_B (k, r, d_out/k), gralora_A/B_general"
    key_parts = ("gralora_A_general", "gralora_B_general", "gralora_A", "gralora_B")
    parts = key_parts
    config_fields = ("r", "alpha", "gralora_k", "hybrid_r")
    formula = (
        "block (j, n) = B[j, n·s:(n+1)·s]ᵀ·A[n, :, j·s:(j+1)·s]ᵀ (s = r/k), + B_general·A_general; "
        "all ·α/(r+h) (factored)"
    )
    follows = "tuners/gralora/layer.py: Linear.get_delta_weight"

    def name(self, ckpt: PeftCheckpoint) -> str:
        return "GraLoRA"

    def resolve_scale(self, ckpt: PeftCheckpoint, adapted: Adapted) -> None:
        rank = config_number(ckpt, "r", int)
        alpha = config_number(ckpt, "alpha")
        k = config_number(ckpt, "gralora_k", int)
        hybrid = config_number(ckpt, "hybrid_r", int) if "hybrid_r" in ckpt.config else 0
        A, B = ckpt.shape_of(adapted, "gralora_A"), ckpt.shape_of(adapted, "gralora_B")
        d_in, d_out = A[1] * k if len(A) == 3 else 0, B[2] * k if len(B) == 3 else 0
        if len(A) != 3 or len(B) != 3 or A[0] != k or B[0] != k or A[2] != rank or B[1] != rank:
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module} should have gralora_A "
                f"({k}, d_in/{k}, {rank}) and gralora_B ({k}, {rank}, d_out/{k}) for "
                f"gralora_k = {k}, r = {rank}; found {tuple(A)} and {tuple(B)}"
            )
        if rank % k:
            raise FormatError(
                f"{ckpt.config_path}: GraLoRA's r = {rank} must be a multiple of gralora_k = {k} "
                "(each sub-block has rank r/k); peft cannot merge this adapter either"
            )
        general = [p for p in ("gralora_A_general", "gralora_B_general") if p in adapted.parts]
        expected = {"gralora_A_general": (hybrid, d_in), "gralora_B_general": (d_out, hybrid)}
        found = {p: tuple(ckpt.shape_of(adapted, p)) for p in general}
        if (hybrid and found != expected) or (not hybrid and general):
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module} should have "
                + (
                    f"gralora_A_general {expected['gralora_A_general']} and gralora_B_general "
                    f"{expected['gralora_B_general']} for hybrid_r = {hybrid}"
                    if hybrid
                    else "no gralora_A/B_general for hybrid_r = 0"
                )
                + f"; found {found or 'none'}"
            )
        adapted.rank = k * rank + hybrid
        adapted.scale = alpha / (rank + hybrid)
        adapted.scale_source = f"config: alpha/(r + hybrid_r) = {alpha:g}/({rank} + {hybrid})"

    def module_shape(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int, int]:
        k, block_in, _ = ckpt.shape_of(adapted, "gralora_A")
        return (k * ckpt.shape_of(adapted, "gralora_B")[2], k * block_in)

    def updates(
        self, ckpt: PeftCheckpoint, adapted: Adapted, rows: Rows, base: torch.Tensor | None
    ) -> list[tuple[int | None, Update]]:
        A, B = ckpt.need(adapted, "gralora_A", "gralora_B")  # (k, d_in/k, r), (k, r, d_out/k)
        general = {}
        if "gralora_A_general" in adapted.parts:
            A_general, B_general = ckpt.need(adapted, "gralora_A_general", "gralora_B_general")
            general = {"A_general": A_general, "B_general": B_general}  # (h, d_in), (d_out, h)
        return [(None, gralora.delta(A, B, adapted.scale, rows=rows, **general))]


register_variant(C3A())
register_variant(SHiRA())
register_variant(GraLoRA())
