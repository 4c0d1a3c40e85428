"""Multiplicative PEFT methods: ΔW scales, rotates or masks W0 itself, so it needs the base.

| method | ΔW |
|---|---|
| (IA)³ | ``(l − 1) ⊙ W0``, l ``(d_out, 1)`` scaling rows or ``(1, d_in)`` columns (dense) |
| HRA | ``W0 (H₁⋯H_r − I)``, r Householder reflections (factored, rank ≤ r) |
| RoAd | ``(R − I) W0``, R rotating pairs of output rows (dense) |
| GLoRA | ``W0 ⊙ A + B``, A and B each a LoRA, a column or a constant (dense) |
| HiRA | ``W0 ⊙ (B @ A)`` (dense) |

``OnBase`` is what they share (and the rotations of ``oft.py`` too): the
base is needed for every ΔW, and the dimension the saved tensors do not give
(d_in of an (IA)³ output scaling, d_out of an HRA chain, …) is the base
module's. The formulas are ``methods``' (one module per method).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...arguments import BASE
from ...errors import FormatError, MissingBaseError
from ..methods import glora, hira, hra, ia3, road
from ..methods.lora import pattern_value
from .base_shapes import base_shape, no_base
from .variant import Adapted, Variant, register_variant

if TYPE_CHECKING:
    import torch

    from ..adapter import Rows, Update
    from .checkpoint import PeftCheckpoint

__all__ = ["HRA", "IA3", "GLoRA", "HiRA", "OnBase", "RoAd"]


def _shown(shape: tuple[int | None, int | None]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


class OnBase(Variant):
    """A method whose ΔW multiplies or rotates W0: dense unless it says, and nothing without W0."""

    def name(self, ckpt: PeftCheckpoint) -> str:
        return self.peft_type

    def kind(self, ckpt: PeftCheckpoint) -> str:
        return "dense"

    def needs_base(self, ckpt: PeftCheckpoint) -> bool:
        return True

    def saved_shape(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int | None, int | None]:
        """(d_out, d_in) as far as the saved tensors give it; ``None`` where only W0 does."""
        raise NotImplementedError

    def module_shape(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int, int]:
        saved = self.saved_shape(ckpt, adapted)
        if None not in saved:
            return saved
        found = base_shape(ckpt, adapted)
        if found is None:
            raise MissingBaseError(
                f"{ckpt.store.path}: {self.name(ckpt)} module {adapted.module} is "
                f"{_shown(saved)} by its tensors; the rest of its shape comes from the base model "
                f"({no_base(ckpt)}): pass {BASE('DIR')}"
            )
        if any(
            mine is not None and mine != theirs for mine, theirs in zip(saved, found, strict=True)
        ):
            raise FormatError(
                f"{ckpt.store.path}: {self.name(ckpt)} module {adapted.module} is "
                f"{_shown(saved)} by its tensors, but {tuple(found)} in the base {ckpt.base}; "
                f"is {BASE} the model this adapter was trained on?"
            )
        return tuple(found)

    def shape_before_base(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int, int | None]:
        return self.saved_shape(ckpt, adapted)

    def base_of(self, ckpt: PeftCheckpoint, adapted: Adapted, base: torch.Tensor | None):
        """The module's W0 ``(d_out, d_in)``, or MissingBaseError naming the base argument."""
        if base is None:
            raise MissingBaseError(
                f"{ckpt.store.path}: {adapted.module}: {self.why_base} Pass {BASE('DIR')}"
            )
        return base


class IA3(OnBase):
    """(IA)³: ΔW = (l − 1) ⊙ W0, l scaling rows (attention) or columns (feedforward)."""

    peft_type = "IA3"
    recognised_by = "ia3_l: (d_out, 1) on attention modules, (1, d_in) on feedforward_modules"
    key_parts = ("ia3_l",)
    parts = ("ia3_l",)
    config_fields = ("feedforward_modules", "fan_in_fan_out", "init_ia3_weights")
    formula = (
        "(l − 1)⊙W0: l (d_out, 1) scales rows, (1, d_in) of feedforward_modules columns (dense)"
    )
    follows = "tuners/ia3/layer.py: Linear.merge"
    why_base = "(IA)³ scales the rows or columns of W0 (ΔW = (l − 1) ⊙ W0): it needs W0."

    def resolve_scale(self, ckpt: PeftCheckpoint, adapted: Adapted) -> None:
        shape = tuple(ckpt.shape_of(adapted, "ia3_l"))
        if len(shape) != 2 or 1 not in shape:
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module} should have ia3_l (d_out, 1) or (1, d_in); "
                f"found {shape}"
            )
        self.no_scale(adapted, None, "(IA)³: the vector ia3_l carries the scale")

    def saved_shape(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int | None, int | None]:
        rows, columns = ckpt.shape_of(adapted, "ia3_l")
        return (None if rows == 1 else rows, None if columns == 1 else columns)

    def updates(
        self, ckpt: PeftCheckpoint, adapted: Adapted, rows: Rows, base: torch.Tensor | None
    ) -> list[tuple[int | None, Update]]:
        W0 = self.base_of(ckpt, adapted, base)  # (d_out, d_in)
        (vector,) = ckpt.need(adapted, "ia3_l")
        return [(None, ia3.delta(W0, vector, rows))]


class HRA(OnBase):
    """HRA: ΔW = W0 (H₁⋯H_r − I), a chain of r Householder reflections (factored)."""

    peft_type = "HRA"
    recognised_by = "hra_u (d_in, r): the reflection vectors; apply_GS"
    key_parts = ("hra_u",)
    parts = ("hra_u",)
    config_fields = ("r", "apply_GS")
    formula = "W0·(Π_i (I − 2 u_i u_iᵀ) − I), u_i the unit columns of hra_u (factored, rank ≤ r)"
    follows = "tuners/hra/layer.py: HRALinear.get_delta_weight, merge"
    why_base = "HRA reflects W0's input space (ΔW = W0 (H − I)): it needs W0."

    def kind(self, ckpt: PeftCheckpoint) -> str:
        return "factored"

    def resolve_scale(self, ckpt: PeftCheckpoint, adapted: Adapted) -> None:
        shape = tuple(ckpt.shape_of(adapted, "hra_u"))
        rank = ckpt.config.get("r")
        if len(shape) != 2 or (isinstance(rank, int) and shape[1] != rank):
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module} should have hra_u (d_in, {rank}) for the "
                f"config's r = {rank}; found {shape}"
            )
        self.no_scale(adapted, shape[1], "HRA: reflections, no scale")

    def saved_shape(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int | None, int | None]:
        return (None, ckpt.shape_of(adapted, "hra_u")[0])

    def updates(
        self, ckpt: PeftCheckpoint, adapted: Adapted, rows: Rows, base: torch.Tensor | None
    ) -> list[tuple[int | None, Update]]:
        W0 = self.base_of(ckpt, adapted, base)  # (d_out, d_in)
        (vectors,) = ckpt.need(adapted, "hra_u")  # (d_in, r)
        apply_gs = bool(ckpt.config.get("apply_GS", False))
        return [(None, hra.delta(W0, vectors, apply_gs, rows))]


class RoAd(OnBase):
    """RoAd: ΔW = (R − I) W0, R rotating and scaling pairs of output rows."""

    peft_type = "ROAD"
    recognised_by = "road_theta, road_alpha: per-pair angles and scales; variant, group_size"
    key_parts = ("road_theta", "road_alpha")
    parts = key_parts
    config_fields = ("variant", "group_size")
    formula = "(R − I)·W0, R: 2×2 blocks α[cos θ, −sin θ; sin θ, cos θ] on row pairs (dense)"
    follows = "tuners/road/layer.py: _get_delta_weight, Linear.merge"
    why_base = "RoAd rotates W0's output rows (ΔW = (R − I) W0): it needs W0."

    def name(self, ckpt: PeftCheckpoint) -> str:
        return "RoAd"

    def _layout(self, ckpt: PeftCheckpoint) -> tuple[str, int]:
        variant, group = ckpt.config.get("variant", "road_1"), ckpt.config.get("group_size", 64)
        if variant not in road.VARIANT_LENGTH or not isinstance(group, int) or group % 2:
            raise FormatError(
                f"{ckpt.config_path}: expected variant road_1, road_2 or road_4 and an even "
                f"group_size; found variant={variant!r}, group_size={group!r}"
            )
        return variant, group

    def resolve_scale(self, ckpt: PeftCheckpoint, adapted: Adapted) -> None:
        variant, group = self._layout(ckpt)
        theta, alpha = (tuple(ckpt.shape_of(adapted, p)) for p in ("road_theta", "road_alpha"))
        d_out = int(theta[0] / road.VARIANT_LENGTH[variant]) if len(theta) == 1 else 0
        if theta != alpha or len(theta) != 1 or d_out % group or d_out == 0:
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module} should have road_theta and road_alpha of "
                f"one length, {road.VARIANT_LENGTH[variant]} per output row for {variant} in "
                f"groups of {group}; found {theta} and {alpha}"
            )
        self.no_scale(adapted, None, "RoAd: the scales α carry the scale")

    def saved_shape(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int | None, int | None]:
        variant, _ = self._layout(ckpt)
        length = ckpt.shape_of(adapted, "road_theta")[0]
        return (int(length / road.VARIANT_LENGTH[variant]), None)

    def updates(
        self, ckpt: PeftCheckpoint, adapted: Adapted, rows: Rows, base: torch.Tensor | None
    ) -> list[tuple[int | None, Update]]:
        W0 = self.base_of(ckpt, adapted, base)  # (d_out, d_in)
        variant, group = self._layout(ckpt)
        theta, alpha = ckpt.need(adapted, "road_theta", "road_alpha")
        return [(None, road.delta(W0, theta, alpha, variant, group, rows))]


_GLORA_PATHS = {"lora": ("Xd", "Xu"), "vector": ("X",), "constant": ("X",), "none": ()}
_GLORA_BIAS = "GLoRA's bias path (b + b⊙D + E + W0@C): it changes the bias, not W"


class GLoRA(OnBase):
    """GLoRA: ΔW = W0 ⊙ A + B, A and B each a LoRA, a column, a constant or nothing."""

    peft_type = "GLORA"
    recognised_by = "glora_A/B.Xd, .Xu (lora) or .X (vector, constant); config_A_B"
    key_parts = (r"glora_[A-E]\.X[du]?",)
    parts = tuple(f"glora_{p}.{x}" for p in "AB" for x in ("Xd", "Xu", "X"))
    config_fields = ("r", "config_A_B", "config_C", "config_D_E")
    formula = "W0⊙A + B, A and B each Xd@Xu, a column (d_out, 1) or a scalar (dense)"
    follows = "tuners/glora/layer.py: GloraLayer.merge"
    why_base = "GLoRA multiplies W0 entry by entry (ΔW = W0 ⊙ A + B): it needs W0."

    def name(self, ckpt: PeftCheckpoint) -> str:
        return "GLoRA"

    def unused_reason(self, ckpt: PeftCheckpoint, part: str) -> str:
        if part.startswith(("glora_C.", "glora_D.", "glora_E.")):
            return _GLORA_BIAS
        return super().unused_reason(ckpt, part)

    def _kind(self, ckpt: PeftCheckpoint) -> str:
        kind = ckpt.config.get("config_A_B", "lora")
        if kind not in _GLORA_PATHS:
            raise FormatError(
                f"{ckpt.config_path}: expected config_A_B lora, vector, constant or none; "
                f"found {kind!r}"
            )
        return kind

    def resolve_scale(self, ckpt: PeftCheckpoint, adapted: Adapted) -> None:
        kind = self._kind(ckpt)
        shapes = {
            f"{p}.{x}": tuple(ckpt.shape_of(adapted, f"glora_{p}.{x}"))
            for p in "AB"
            for x in _GLORA_PATHS[kind]
        }
        rank = None
        if kind == "lora":
            rank = shapes["A.Xd"][1]
            alike = shapes["A.Xd"] == shapes["B.Xd"] and shapes["A.Xu"] == shapes["B.Xu"]
            if not alike or len(shapes["A.Xu"]) != 2 or shapes["A.Xu"][0] != rank:
                raise FormatError(
                    f"{ckpt.store.path}: {adapted.module} should have glora_A and glora_B Xd "
                    f"(d_out, r) and Xu (r, d_in) alike; found {shapes}"
                )
        elif kind == "vector" and {len(s) for s in shapes.values()} != {2}:
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module} should have glora_A.X, glora_B.X "
                f"(d_out, 1); found {shapes}"
            )
        self.no_scale(adapted, rank, "GLoRA: the paths carry the scale")

    def saved_shape(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int | None, int | None]:
        kind = self._kind(ckpt)
        if kind == "lora":
            xd, xu = (ckpt.shape_of(adapted, f"glora_A.{x}") for x in ("Xd", "Xu"))
            return (xd[0], xu[1])
        if kind == "vector":
            return (ckpt.shape_of(adapted, "glora_A.X")[0], None)
        return (None, None)

    def updates(
        self, ckpt: PeftCheckpoint, adapted: Adapted, rows: Rows, base: torch.Tensor | None
    ) -> list[tuple[int | None, Update]]:
        W0 = self.base_of(ckpt, adapted, base)  # (d_out, d_in)
        kind = self._kind(ckpt)
        values = []
        for path in "AB":
            names = _GLORA_PATHS[kind]
            tensors = ckpt.need(adapted, *(f"glora_{path}.{x}" for x in names))
            values.append(
                glora.path_value(kind, W0.shape[0], dict(zip(names, tensors, strict=True)), rows)
            )
        return [(None, glora.delta(W0, *values, rows))]


class HiRA(OnBase):
    """HiRA: ΔW = W0 ⊙ (B @ A), a Hadamard product with a rank-r matrix."""

    peft_type = "HIRA"
    recognised_by = "hira_A (r, d_in), hira_B (d_out, r); r, rank_pattern"
    key_parts = ("hira_A", "hira_B")
    parts = key_parts
    config_fields = ("r", "rank_pattern", "hira_dropout", "fan_in_fan_out")
    formula = "W0⊙(B@A) (dense)"
    follows = "tuners/hira/layer.py: Linear.get_delta_weight, HiraLayer._merge"
    why_base = "HiRA multiplies W0 entry by entry (ΔW = W0 ⊙ (B @ A)): it needs W0."

    def name(self, ckpt: PeftCheckpoint) -> str:
        return "HiRA"

    def resolve_scale(self, ckpt: PeftCheckpoint, adapted: Adapted) -> None:
        rank, source = ckpt.config.get("r"), "r"
        found = pattern_value(ckpt.config.get("rank_pattern"), adapted.module)
        if found:
            rank, source = found[1], f"rank_pattern[{found[0]!r}]"
        A, B = ckpt.shape_of(adapted, "hira_A"), ckpt.shape_of(adapted, "hira_B")
        if len(A) != 2 or len(B) != 2 or A[0] != B[1] or A[0] != rank:
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module} should have hira_A ({rank}, d_in) and "
                f"hira_B (d_out, {rank}) for r = {rank} ({source}); found {A} and {B}"
            )
        self.no_scale(adapted, rank, "HiRA: no scale")

    def saved_shape(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int | None, int | None]:
        return (ckpt.shape_of(adapted, "hira_B")[0], ckpt.shape_of(adapted, "hira_A")[1])

    def updates(
        self, ckpt: PeftCheckpoint, adapted: Adapted, rows: Rows, base: torch.Tensor | None
    ) -> list[tuple[int | None, Update]]:
        W0 = self.base_of(ckpt, adapted, base)  # (d_out, d_in)
        A, B = ckpt.need(adapted, "hira_A", "hira_B")  # (r, d_in), (d_out, r)
        return [(None, hira.delta(W0, A, B, rows))]


register_variant(IA3())
register_variant(HRA())
register_variant(RoAd())
register_variant(GLoRA())
register_variant(HiRA())
