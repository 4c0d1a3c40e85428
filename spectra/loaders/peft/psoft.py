"""PSOFT in peft (``peft_type`` PSOFT): an r×r rotation between W0's top singular vectors.

ΔW = ``(α/r) · B (R − I) A`` (factored, rank ≤ r). Only R's parameters are
saved (``psoft_R.weight`` and the scaling vectors ``psoft_R.vector_a``,
``psoft_R.vector_b``); A and B are W0's top r singular vectors, which peft
recomputes from the base every time it loads the adapter, by a float32 SVD
(``methods.psoft``). They are rebuilt the same way here, so the base is
needed. An SVD's singular vectors are defined up to a sign per pair, and
its float32 result varies in the last bits between machines: ΔW's singular
values do not depend on the signs, its singular vectors do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...errors import FormatError
from ..methods import psoft
from .multiplicative import OnBase
from .variant import Adapted, register_variant

if TYPE_CHECKING:
    import torch

    from ..adapter import Rows, Update
    from .checkpoint import PeftCheckpoint

__all__ = ["PSOFT"]

_VECTORS = {"psoft_R.vector_a": "psoft_mag_a", "psoft_R.vector_b": "psoft_mag_b"}


class PSOFT(OnBase):
    """PSOFT: ΔW = (α/r) · B (R − I) A, A and B from the SVD of W0, R from the saved tensors."""

    peft_type = "PSOFT"
    recognised_by = "psoft_R.weight (R's generator), psoft_R.vector_a/b; A, B from W0's SVD"
    key_parts = (r"psoft_R(?:\.vector_[ab])?",)
    parts = ("psoft_R", *_VECTORS)
    config_fields = (
        "r",
        "psoft_alpha",
        "psoft_orth",
        "psoft_mag_a",
        "psoft_mag_b",
        "use_cayley_neumann",
        "num_cayley_neumann_terms",
        "cayley_neumann_eps",
        "ab_svd_init",
        "psoft_svd",
        "psoft_svd_lowrank_niter",
        "random_seed",
    )
    formula = (
        "(α/r)·B·(diag(v_b)·R₀·diag(v_a) − I)·A, A, B from the float32 SVD of W0, "
        "R₀ = (I + Q)(I − Q)⁻¹ or its Neumann series (factored)"
    )
    follows = "tuners/psoft/layer.py: Linear.get_delta_weight, OrthLayer.get_matrix"
    why_base = (
        "PSOFT's A and B are W0's top singular vectors, which peft does not save but "
        "recomputes from W0 (ΔW = (α/r) B (R − I) A): it needs W0."
    )

    def kind(self, ckpt: PeftCheckpoint) -> str:
        return "factored"

    def options(self, ckpt: PeftCheckpoint) -> psoft.PsoftOptions:
        """The config's PSOFT fields, with peft's defaults."""
        config = ckpt.config
        rank, alpha = config.get("r", 32), config.get("psoft_alpha", 32)
        if not isinstance(rank, int) or not isinstance(alpha, int | float) or rank <= 0:
            raise FormatError(
                f"{ckpt.config_path}: expected a positive integer r and a number psoft_alpha; "
                f"found r={rank!r}, psoft_alpha={alpha!r}"
            )
        neumann = config.get("use_cayley_neumann", False)
        return psoft.PsoftOptions(
            r=rank,
            alpha=float(alpha),
            orth=bool(config.get("psoft_orth", True)),
            neumann_terms=int(config.get("num_cayley_neumann_terms", 5)) if neumann else None,
            neumann_eps=config.get("cayley_neumann_eps"),
            init=config.get("ab_svd_init", "psoft_init"),
            svd=config.get("psoft_svd", "full"),
            niter=int(config.get("psoft_svd_lowrank_niter", 10)),
            seed=int(config.get("random_seed", 0)),
        )

    def warnings(self, ckpt: PeftCheckpoint) -> list[str]:
        return [
            "PSOFT: A and B are not in the file; they are W0's top singular vectors, computed "
            "again by a float32 SVD as peft computes them on load, so ΔW varies with the machine "
            "and the thread count as peft's own loads do (σ by about 1e-6 relative)"
        ]

    def resolve_scale(self, ckpt: PeftCheckpoint, adapted: Adapted) -> None:
        options = self.options(ckpt)
        r = options.r
        expected = {"psoft_R": (r * (r - 1) // 2,) if options.orth else (r, r)}
        expected |= {part: (r,) for part, field in _VECTORS.items() if ckpt.config.get(field, True)}
        found = {part: tuple(ckpt.shape_of(adapted, part)) for part in expected}
        extra = sorted(set(adapted.parts) & set(_VECTORS) - set(expected))
        if found != expected or extra:
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module} should have {expected} for r = {r}, "
                f"psoft_orth, psoft_mag_a and psoft_mag_b of the config; found "
                f"{ {part: tuple(ckpt.shape_of(adapted, part)) for part in adapted.parts} }"
            )
        adapted.scale_by(r, options.alpha, "r", "psoft_alpha")

    def saved_shape(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int | None, int | None]:
        return (None, None)

    def updates(
        self, ckpt: PeftCheckpoint, adapted: Adapted, rows: Rows, base: torch.Tensor | None
    ) -> list[tuple[int | None, Update]]:
        W0 = self.base_of(ckpt, adapted, base)  # (d_out, d_in): the whole module, for its SVD
        options = self.options(ckpt)
        (weight,) = ckpt.need(adapted, "psoft_R")
        vectors = [
            ckpt.need(adapted, part)[0] if part in adapted.parts else None for part in _VECTORS
        ]
        return [(None, psoft.delta(W0, weight, *vectors, options, rows))]


register_variant(PSOFT())
