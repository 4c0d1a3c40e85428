"""Orthogonal fine-tuning in peft: OFT and BOFT (``peft_type`` OFT, BOFT), both rebuilt dense.

| method | ΔW |
|---|---|
| OFT | ``W0 Rᵀ − W0``, R block-diagonal of Cayley(–Neumann) rotations (dense) |
| BOFT | ``diag(s) W0 Rᵀ − W0``, R a product of butterfly-permuted block rotations (dense) |

Both save the generators of their rotations, not the rotations: OFT each
block's skew-symmetric Q as its upper triangle ``oft_R`` ``(n_blocks, b(b−1)/2)``,
BOFT full b×b matrices ``boft_R`` ``(m, n_blocks, b, b)`` of which the
skew-symmetric part is used, with the row scales ``boft_s`` ``(d_out, 1)``. The
rotations are built as peft builds them (``methods.oft``, ``methods.boft``),
and d_out (and OFT's d_in with ``block_share``) comes from the base.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

from ...errors import FormatError
from ..methods import boft, oft
from .multiplicative import OnBase
from .variant import Adapted, register_variant

if TYPE_CHECKING:
    import torch

    from ..adapter import Rows, Update
    from .checkpoint import PeftCheckpoint

__all__ = ["BOFT", "OFT"]

_NEUMANN_CHANGED = (0, 18)  # peft 0.18 changed the Cayley–Neumann series


def _saved_by_old_peft(config: dict) -> bool:
    """Whether ``peft_version`` is missing (older than 0.18, where it was added) or below 0.18."""
    found = re.match(r"(\d+)\.(\d+)", str(config.get("peft_version") or ""))
    return found is None or (int(found[1]), int(found[2])) < _NEUMANN_CHANGED


class OFT(OnBase):
    """OFT: ΔW = W0 Rᵀ − W0, R block-diagonal of the Cayley rotations of the saved generators."""

    peft_type = "OFT"
    recognised_by = "oft_R (n_blocks, b(b−1)/2): each block's skew-symmetric generator"
    key_parts = ("oft_R",)
    parts = ("oft_R",)
    config_fields = (
        "r",
        "oft_block_size",
        "block_share",
        "coft",
        "eps",
        "use_cayley_neumann",
        "num_cayley_neumann_terms",
    )
    formula = (
        "W0·Rᵀ − W0, R = blockdiag(I + 2Q + 2Q² + … + Q^{t−1}) (Cayley–Neumann) or "
        "blockdiag((I − Q)(I + Q)⁻¹), Q skew from oft_R (dense)"
    )
    follows = "tuners/oft/layer.py: OFTRotationModule.get_weight, Linear.merge"
    why_base = "OFT rotates W0's input space (ΔW = W0 Rᵀ − W0): it needs W0."

    def neumann_terms(self, ckpt: PeftCheckpoint) -> int | None:
        """t of the Cayley–Neumann series, or ``None`` for the exact Cayley transform."""
        if not ckpt.config.get("use_cayley_neumann", True):
            return None
        if _saved_by_old_peft(ckpt.config):
            raise FormatError(
                f"{ckpt.config_path}: this OFT adapter uses the Cayley–Neumann series and was "
                f"saved by peft {ckpt.config.get('peft_version') or 'older than 0.18'}; peft 0.18 "
                "changed that series (peft warns the same), so its ΔW as trained is not the one "
                "peft 0.21 builds. Re-train or re-save it with peft ≥ 0.18"
            )
        return int(ckpt.config.get("num_cayley_neumann_terms", 5))

    def block_size(self, ckpt: PeftCheckpoint, adapted: Adapted) -> int:
        """b, from the length b(b−1)/2 of each saved generator."""
        shape = tuple(ckpt.shape_of(adapted, "oft_R"))
        size = (1 + math.isqrt(1 + 8 * shape[-1])) // 2 if len(shape) == 2 else 0
        if size < 2 or size * (size - 1) // 2 != shape[-1]:
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module} should have oft_R (n_blocks, b(b−1)/2), "
                f"the upper triangles of b×b generators; found {shape}"
            )
        return size

    def resolve_scale(self, ckpt: PeftCheckpoint, adapted: Adapted) -> None:
        if "oft_block_size" not in ckpt.config:
            raise FormatError(
                f"{ckpt.config_path}: an OFT adapter without oft_block_size was saved by peft "
                "before 0.14, whose OFT layout peft 0.21 no longer reads; re-train it with a "
                "newer peft"
            )
        self.neumann_terms(ckpt)
        self.block_size(ckpt, adapted)
        blocks = ckpt.shape_of(adapted, "oft_R")[0]
        if ckpt.config.get("block_share") and blocks != 1:
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module} has {blocks} OFT blocks, but the config "
                "shares one block (block_share)"
            )
        self.no_scale(adapted, None, "OFT: a rotation, no scale")

    def saved_shape(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int | None, int | None]:
        if ckpt.config.get("block_share"):
            return (None, None)
        return (None, ckpt.shape_of(adapted, "oft_R")[0] * self.block_size(ckpt, adapted))

    def updates(
        self, ckpt: PeftCheckpoint, adapted: Adapted, rows: Rows, base: torch.Tensor | None
    ) -> list[tuple[int | None, Update]]:
        W0 = self.base_of(ckpt, adapted, base)  # (d_out, d_in)
        size = self.block_size(ckpt, adapted)
        if W0.shape[1] % size:
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module}'s shared OFT block is {size} wide, which "
                f"does not divide the base's d_in = {W0.shape[1]}; is it this adapter's base?"
            )
        (generators,) = ckpt.need(adapted, "oft_R")  # (n_blocks, b(b−1)/2)
        coft = float(ckpt.config.get("eps", 6e-5)) if ckpt.config.get("coft") else None
        terms = self.neumann_terms(ckpt)
        return [
            (None, oft.delta(W0, generators, size, neumann_terms=terms, coft_eps=coft, rows=rows))
        ]


class BOFT(OnBase):
    """BOFT: ΔW = diag(s) W0 Rᵀ − W0, R a product of butterfly-permuted block rotations."""

    peft_type = "BOFT"
    recognised_by = "boft_R (m, n_blocks, b, b): butterfly factors' blocks; boft_s (d_out, 1)"
    key_parts = ("boft_R", "boft_s")
    parts = key_parts
    config_fields = (
        "boft_block_size",
        "boft_block_num",
        "boft_n_butterfly_factor",
        "fan_in_fan_out",
    )
    formula = (
        "diag(s)·W0·Rᵀ − W0, R = Π_i P_i·blockdiag((I − S)(I + S)⁻¹)·P_iᵀ, "
        "S = (A − Aᵀ)/2 of each saved block (dense)"
    )
    follows = "tuners/boft/layer.py: Linear.get_delta_weight, Linear.merge"
    why_base = (
        "BOFT rotates W0's input space and scales its rows (ΔW = diag(s) W0 Rᵀ − W0): it needs W0."
    )

    def resolve_scale(self, ckpt: PeftCheckpoint, adapted: Adapted) -> None:
        blocks = tuple(ckpt.shape_of(adapted, "boft_R"))
        scales = tuple(ckpt.shape_of(adapted, "boft_s"))
        ok = len(blocks) == 4 and blocks[2] == blocks[3] and len(scales) == 2 and scales[1] == 1
        if ok and blocks[0] > 1:  # a butterfly: halves of blocks, blocks halved per factor
            ok = blocks[2] % 2 == 0 and blocks[1] % 2 ** (blocks[0] - 1) == 0
        if not ok:
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module} should have boft_R (m, n_blocks, b, b) "
                f"(b even and n_blocks a multiple of 2^(m−1) when m > 1) and boft_s (d_out, 1); "
                f"found {blocks} and {scales}"
            )
        self.no_scale(adapted, None, "BOFT: boft_s scales the rows")

    def warnings(self, ckpt: PeftCheckpoint) -> list[str]:
        asked = ckpt.config.get("boft_n_butterfly_factor", 1)
        saved = {
            ckpt.shape_of(adapted, "boft_R")[0]
            for adapted in ckpt.adapted.values()
            if adapted.module in ckpt.mapped and "boft_R" in adapted.parts
        }
        if saved and saved != {asked}:
            return [
                f"BOFT: the config asks for {asked} butterfly factors, the file holds "
                f"{', '.join(map(str, sorted(saved)))} (peft builds one where its CUDA extension "
                "does not compile); ΔW is rebuilt from the factors saved"
            ]
        return []

    def saved_shape(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int | None, int | None]:
        _, blocks, size, _ = ckpt.shape_of(adapted, "boft_R")
        return (ckpt.shape_of(adapted, "boft_s")[0], blocks * size)

    def updates(
        self, ckpt: PeftCheckpoint, adapted: Adapted, rows: Rows, base: torch.Tensor | None
    ) -> list[tuple[int | None, Update]]:
        W0 = self.base_of(ckpt, adapted, base)  # (d_out, d_in)
        blocks, scales = ckpt.need(adapted, "boft_R", "boft_s")  # (m, n, b, b), (d_out, 1)
        return [(None, boft.delta(W0, blocks, scales, rows))]


register_variant(OFT())
register_variant(BOFT())
