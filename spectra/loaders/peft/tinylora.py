"""TinyLoRA (``peft_type`` TINYLORA): a vector of u numbers through fixed random r×r projections.

ΔW = ``B @ (Σᵢ vᵢ Pᵢ) @ A`` (factored, scale 1; ``methods.tinylora``), with
per module the frozen ``tinylora_A`` ``(r, d_in)`` and ``tinylora_B``
``(d_out, r)`` (cut from W₀'s SVD when the adapter was made, and saved) and
the projection ``tinylora_P`` ``(u, r, r)``; the trained vectors
``tinylora_v.<g>`` ``(u,)`` are shared by groups of modules.

peft numbers the N adapted modules in the model's module order
(``named_modules``) and puts module i in group ``min(i // size, groups − 1)``,
``groups = max(1, round(N · (1 − weight_tying)))``, ``size = max(1, N //
groups)`` (``TinyLoraModel._create_and_replace``); it draws module i's P from
``projection_seed + i``. The order is saved nowhere (safetensors sorts its
names), so spectra finds i from the saved P: the one seed among
``projection_seed + 0 … N−1`` that draws exactly this P. With one group
(``weight_tying`` 1) every module uses ``tinylora_v.0``. Without the P
(``save_projection`` false) neither the P nor the groups can be rebuilt: refused.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING

import torch

from ...errors import FormatError
from ..methods import tinylora
from .variant import Adapted, Variant, register_variant

if TYPE_CHECKING:
    from ..adapter import Rows, Update
    from .checkpoint import PeftCheckpoint

__all__ = ["TinyLora"]

_VECTOR = re.compile(r"^tinylora_v\.(\d+)$")


@functools.lru_cache(maxsize=8)
def _positions_by_draw(
    seed: int, count: int, u: int, rank: int, dtype: torch.dtype
) -> dict[bytes, int]:
    """Module position i ↦ the bytes of the P peft draws from ``seed + i``, stored in ``dtype``."""
    table = {}
    for position in range(count):
        drawn = tinylora.projection(seed + position, u, rank).to(dtype)  # (u, r, r)
        table[drawn.contiguous().view(torch.uint8).numpy().tobytes()] = position
    return table


class TinyLora(Variant):
    """TinyLoRA: ΔW = B @ (Σᵢ vᵢ Pᵢ) @ A, A and B frozen from W₀'s SVD, v shared by groups."""

    peft_type = "TINYLORA"
    recognised_by = "tinylora_A, tinylora_B, tinylora_P per module; the shared tinylora_v.<group>"
    key_parts = (r"tinylora_[ABP]",)
    shared_parts = (r"tinylora_v\.\d+",)
    parts = ("tinylora_A", "tinylora_B", "tinylora_P")
    config_fields = ("r", "u", "weight_tying", "projection_seed", "save_projection")
    formula = "B@(Σᵢ vᵢ·Pᵢ)@A, A and B frozen from W₀'s SVD, v shared by module groups (factored)"
    follows = (
        "tuners/tinylora/layer.py: TinyLoraLayer._compute_R, Linear.get_delta_weight; groups: "
        "model.py _create_and_replace"
    )

    def name(self, ckpt: PeftCheckpoint) -> str:
        return "TinyLoRA"

    def _groups(self, ckpt: PeftCheckpoint) -> tuple[int, int]:
        """(groups, modules per group) as peft splits the file's N adapted modules."""
        tying = ckpt.config.get("weight_tying", 0.0)
        if not isinstance(tying, int | float) or not 0 <= tying <= 1:
            raise FormatError(
                f"{ckpt.config_path}: TinyLoRA needs weight_tying in [0, 1]; found {tying!r}"
            )
        count = len(ckpt.adapted)
        groups = max(1, round(count * (1.0 - tying)))
        vectors = sorted(int(m[1]) for name in ckpt.shared if (m := _VECTOR.match(name)))
        if vectors != list(range(groups)):
            raise FormatError(
                f"{ckpt.store.path}: TinyLoRA with {count} adapted modules and weight_tying="
                f"{tying} should have tinylora_v.0 … tinylora_v.{groups - 1}; found "
                f"{', '.join(f'tinylora_v.{i}' for i in vectors) or 'none'}"
            )
        return groups, max(1, count // groups)

    def _vector(self, ckpt: PeftCheckpoint, adapted: Adapted) -> str:
        """The shared ``tinylora_v.<g>`` this module's ΔW uses."""
        groups, size = self._groups(ckpt)
        if groups == 1:
            return "tinylora_v.0"
        return f"tinylora_v.{min(self._position(ckpt, adapted) // size, groups - 1)}"

    def _position(self, ckpt: PeftCheckpoint, adapted: Adapted) -> int:
        """The module's index in peft's order, found from the seed that draws its saved P."""
        seed = ckpt.config.get("projection_seed")
        (P,) = ckpt.need(adapted, "tinylora_P")  # (u, r, r)
        if not isinstance(seed, int):
            raise FormatError(
                f"{ckpt.config_path}: TinyLoRA needs a whole number in projection_seed; found "
                f"{seed!r}"
            )
        count = len(ckpt.adapted)
        table = _positions_by_draw(seed, count, P.shape[0], P.shape[1], P.dtype)
        position = table.get(P.contiguous().view(torch.uint8).numpy().tobytes())
        if position is None:
            raise FormatError(
                f"{ckpt.store.path}: cannot tell which tinylora_v {adapted.module} uses: peft "
                f"groups modules by their position in the model's module order, which the file "
                f"does not save, and none of the positions 0 … {count - 1} draws this module's "
                f"tinylora_P from projection_seed={seed}"
            )
        return position

    def resolve_scale(self, ckpt: PeftCheckpoint, adapted: Adapted) -> None:
        if "tinylora_P" not in adapted.parts and ckpt.config.get("save_projection") is False:
            raise FormatError(
                f"{ckpt.store.path}: TinyLoRA saved without its projections (save_projection is "
                "false): peft draws each module's tinylora_P again from projection_seed plus the "
                "module's position in the model's module order (named_modules), which neither "
                "the adapter nor the base's weights record; re-save the adapter with "
                "save_projection=True"
            )
        a, b, p = (tuple(ckpt.shape_of(adapted, part)) for part in self.parts)
        rank, u = a[0], ckpt.config.get("u")
        vector = self._vector(ckpt, adapted)
        v = tuple(ckpt.store.info(ckpt.shared[vector]).shape)
        if len(a) != 2 or b[1:] != (rank,) or len(b) != 2 or p != (u, rank, rank) or v != (u,):
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module} should have tinylora_A (r, d_in), "
                f"tinylora_B (d_out, r), tinylora_P (u, r, r) and {vector} (u,) with u={u} (u); "
                f"found {a}, {b}, {p} and {v}"
            )
        self.no_scale(adapted, rank, f"TinyLoRA: the trained {vector} carries the scale")

    def module_shape(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int, int]:
        return (ckpt.shape_of(adapted, "tinylora_B")[0], ckpt.shape_of(adapted, "tinylora_A")[1])

    def updates(
        self, ckpt: PeftCheckpoint, adapted: Adapted, rows: Rows, base: torch.Tensor | None
    ) -> list[tuple[int | None, Update]]:
        A, B, P = ckpt.need(adapted, *self.parts)  # (r, d_in), (d_out, r), (u, r, r)
        v = ckpt.store.load(ckpt.shared[self._vector(ckpt, adapted)])  # (u,)
        return [(None, tinylora.delta(A, B, P, v, rows))]


register_variant(TinyLora())
