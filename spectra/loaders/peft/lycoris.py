"""The LyCORIS family in peft: LoHa and LoKr (``peft_type`` LOHA, LOKR), both rebuilt dense.

| method | ΔW |
|---|---|
| LoHa | ``(w1a @ w1b) ⊙ (w2a @ w2b) · α/r`` (dense) |
| LoKr | ``kron(w1, w2) · α/r``, each factor whole or ``_a @ _b`` (dense) |

LoHa's ``hada_w1_a`` / ``hada_w2_a`` are ``(d_out, r)`` and ``hada_w1_b`` /
``hada_w2_b`` ``(r, d_in)``; LoKr's ``lokr_w1`` ``(p, q)`` and ``lokr_w2``
``(d_out/p, d_in/q)`` are stored whole or as products ``lokr_w{1,2}_a @
lokr_w{1,2}_b``. r and α come from the config (``r``, ``alpha``) and its
patterns; the formulas are ``methods.lycoris``'s. The CP decompositions for
convolutions (``hada_t1/t2``, ``lokr_t2``) are refused: spectra reads linear
layers only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...errors import FormatError
from ..methods import lycoris
from .variant import Adapted, Variant, register_variant

if TYPE_CHECKING:
    import torch

    from ..adapter import Rows, Update
    from .checkpoint import PeftCheckpoint

__all__ = ["LoHa", "LoKr"]


class LoHa(Variant):
    """LoHa: ΔW = (w1a @ w1b) ⊙ (w2a @ w2b) · α/r, a dense Hadamard product."""

    peft_type = "LOHA"
    recognised_by = "hada_w1_a/b, hada_w2_a/b, and hada_t1/t2 cores"
    key_parts = (r"hada_w[12]_[ab]", r"hada_t[12]")
    formula = "(w1a@w1b)⊙(w2a@w2b)·α/r (dense)"
    follows = "tuners/loha/layer.py: Linear.get_delta_weight"

    parts = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")

    def name(self, ckpt: PeftCheckpoint) -> str:
        return "LoHa"

    def kind(self, ckpt: PeftCheckpoint) -> str:
        return "dense"

    def resolve_scale(self, ckpt: PeftCheckpoint, adapted: Adapted) -> None:
        if "hada_t1" in adapted.parts or "hada_t2" in adapted.parts:
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module} uses LoHa's CP decomposition (hada_t1/t2, "
                "for convolutions); spectra reads LoHa on linear layers only"
            )
        rank, alpha, rank_source, alpha_source = ckpt.rank_and_alpha(adapted.module, "alpha")
        w1a, w1b = ckpt.shape_of(adapted, "hada_w1_a"), ckpt.shape_of(adapted, "hada_w1_b")
        if w1a[1] != rank or w1b[0] != rank:
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module} should have hada_w1_a (d_out, {rank}) for "
                f"r={rank} ({rank_source}); found {w1a} and {w1b}"
            )
        adapted.scale_by(rank, alpha, rank_source, alpha_source)

    def module_shape(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int, int]:
        return (ckpt.shape_of(adapted, "hada_w1_a")[0], ckpt.shape_of(adapted, "hada_w1_b")[1])

    def updates(
        self, ckpt: PeftCheckpoint, adapted: Adapted, rows: Rows, base: torch.Tensor | None
    ) -> list[tuple[int | None, Update]]:
        w1a, w1b, w2a, w2b = ckpt.need(adapted, "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
        return [(None, lycoris.loha(w1a, w1b, w2a, w2b, adapted.scale, rows=rows))]


class LoKr(Variant):
    """LoKr: ΔW = kron(w1, w2) · α/r, each factor stored whole or as ``_a @ _b``."""

    peft_type = "LOKR"
    recognised_by = "lokr_w1[_a/_b], lokr_w2[_a/_b], and the lokr_t2 core"
    key_parts = (r"lokr_w[12](?:_[ab])?", r"lokr_t2")
    formula = "kron(w1, w2)·α/r, each factor whole or _a@_b (dense)"
    follows = "tuners/lokr/layer.py: Linear.get_delta_weight"

    parts = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")

    def name(self, ckpt: PeftCheckpoint) -> str:
        return "LoKr"

    def kind(self, ckpt: PeftCheckpoint) -> str:
        return "dense"

    def resolve_scale(self, ckpt: PeftCheckpoint, adapted: Adapted) -> None:
        if "lokr_t2" in adapted.parts:
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module} uses LoKr's CP decomposition (lokr_t2, for "
                "convolutions); spectra reads LoKr on linear layers only"
            )
        rank, alpha, rank_source, alpha_source = ckpt.rank_and_alpha(adapted.module, "alpha")
        adapted.scale_by(rank, alpha, rank_source, alpha_source)

    def _factor_shape(self, ckpt: PeftCheckpoint, adapted: Adapted, which: str) -> tuple[int, int]:
        if which in adapted.parts:
            return tuple(ckpt.shape_of(adapted, which))
        a, b = ckpt.shape_of(adapted, f"{which}_a"), ckpt.shape_of(adapted, f"{which}_b")
        return (a[0], b[1])

    def _factor(self, ckpt: PeftCheckpoint, adapted: Adapted, which: str) -> torch.Tensor:
        """LoKr's w1 or w2 in float64: stored whole, or as ``_a @ _b``."""
        if which in adapted.parts:
            return lycoris.lokr_factor(whole=ckpt.need(adapted, which)[0])
        a, b = ckpt.need(adapted, f"{which}_a", f"{which}_b")
        return lycoris.lokr_factor(a=a, b=b)

    def module_shape(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int, int]:
        w1 = self._factor_shape(ckpt, adapted, "lokr_w1")
        w2 = self._factor_shape(ckpt, adapted, "lokr_w2")
        return (w1[0] * w2[0], w1[1] * w2[1])

    def updates(
        self, ckpt: PeftCheckpoint, adapted: Adapted, rows: Rows, base: torch.Tensor | None
    ) -> list[tuple[int | None, Update]]:
        w1 = self._factor(ckpt, adapted, "lokr_w1")
        w2 = self._factor(ckpt, adapted, "lokr_w2")
        ranks = tuple(self._split_rank(ckpt, adapted, w) for w in ("lokr_w1", "lokr_w2"))
        return [(None, lycoris.lokr(w1, w2, adapted.scale, rows, ranks))]  # (d_out, d_in)

    def _split_rank(self, ckpt: PeftCheckpoint, adapted: Adapted, which: str) -> int | None:
        """The inner rank of a factor stored as ``_a @ _b``; None when stored whole."""
        return None if which in adapted.parts else ckpt.shape_of(adapted, f"{which}_b")[0]


register_variant(LoHa())
register_variant(LoKr())
