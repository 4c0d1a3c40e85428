"""FRoD (``peft_type`` FROD): ΔW = U (S + diag(λ)) Vᵀ − W₀, with a basis V shared per role.

FRoD parameterises the adapted weight itself. Per module the file holds
``frod_lambda_l`` ``(d_in,)`` and ``frod_lambda_s_values`` ``(nnz,)``; per
category of modules (one role across layers: ``self_key``,
``attention_output``, …, peft's ``_category_from_key``) it holds the shared
``frod_V.<category>`` ``(d_in, d_in)``, ``frod_s_indices.<category>``
``(2, nnz)`` and ``frod_s_size.<category>`` when ``save_projection`` is true
(peft's default). The frozen U is computed from W₀ and V as peft does at load
(``methods.frod``), so the base is needed; and d_out is saved nowhere else.
Without ``save_projection`` the file is refused: peft would rebuild V from an
eigendecomposition of every targeted layer's weights, whose eigenvector signs
are not fixed across machines, and the trained S would then act in another
basis.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...arguments import BASE
from ...errors import FormatError
from ..methods import frod
from .base_shapes import module_base_shape
from .variant import Adapted, Variant, register_variant

if TYPE_CHECKING:
    import torch

    from ..adapter import Rows, Update
    from .checkpoint import PeftCheckpoint

__all__ = ["Frod", "category"]

_SHARED = ("frod_V", "frod_s_indices", "frod_s_size")


def category(module: str) -> str:
    """The FRoD category of a module path, as peft's ``_category_from_key`` names it."""
    parts = module.split(".")
    if len(parts) == 1:
        return parts[0]
    if parts[-2].isdigit():
        return parts[-1]
    name = f"{parts[-2]}_{parts[-1]}"
    if name == "output_dense" and len(parts) >= 3 and parts[-3] == "attention":
        return "attention_output"
    return name


class Frod(Variant):
    """FRoD: ΔW = U (S + diag(λ)) Vᵀ − W₀, U computed from W₀ and the category's shared V."""

    peft_type = "FROD"
    recognised_by = (
        "frod_lambda_l, frod_lambda_s_values, and per category the shared frod_V, "
        "frod_s_indices, frod_s_size"
    )
    key_parts = (r"frod_lambda_l", r"frod_lambda_s_values")
    shared_parts = (r"frod_V\.\w+", r"frod_s_indices\.\w+", r"frod_s_size\.\w+")
    parts = ("frod_lambda_l", "frod_lambda_s_values")
    config_fields = ("sparse_rate", "save_projection", "projection_prng_key", "fan_in_fan_out")
    formula = (
        "U·(S + diag(λ))·Vᵀ − W0, V shared per role, S sparse, U the unit columns of W0·V⁻ᵀ "
        "rounded to float32 as peft (dense)"
    )
    follows = (
        "tuners/frod/layer.py: Linear.get_delta_weight, FrodLayer._calculate_frod_u_and_lambda"
    )
    why_base = (
        "FRoD rebuilds the whole adapted weight U(S + diag(λ))Vᵀ, with U computed from the base "
        "weight at load: ΔW needs W0."
    )

    def name(self, ckpt: PeftCheckpoint) -> str:
        return "FRoD"

    def kind(self, ckpt: PeftCheckpoint) -> str:
        return "dense"

    def needs_base(self, ckpt: PeftCheckpoint) -> bool:
        return True

    def _shared(self, ckpt: PeftCheckpoint, adapted: Adapted) -> dict[str, str]:
        """The category's shared tensor names by kind, or FormatError when they are not saved."""
        group = category(adapted.module)
        names = {kind: ckpt.shared.get(f"{kind}.{group}") for kind in _SHARED}
        missing = [f"{kind}.{group}" for kind, name in names.items() if name is None]
        if missing:
            hint = (
                " (save_projection is false: peft rebuilds V at load from an eigendecomposition "
                "of every targeted layer's weights, whose eigenvector signs are not fixed across "
                "machines, so the trained S could act in another basis)"
                if ckpt.config.get("save_projection") is False
                else ""
            )
            raise FormatError(
                f"{ckpt.store.path}: FRoD's shared {', '.join(missing)} for {adapted.module} "
                f"are not in the file{hint}; re-save the adapter with save_projection=True"
            )
        return names

    def resolve_scale(self, ckpt: PeftCheckpoint, adapted: Adapted) -> None:
        shared = self._shared(ckpt, adapted)
        v_shape = ckpt.store.info(shared["frod_V"]).shape  # (d_in, d_in)
        index_shape = ckpt.store.info(shared["frod_s_indices"]).shape  # (2, nnz)
        size = tuple(ckpt.store.load(shared["frod_s_size"]).tolist())
        lambdas = ckpt.shape_of(adapted, "frod_lambda_l")
        values = ckpt.shape_of(adapted, "frod_lambda_s_values")
        d_in = v_shape[0]
        if (
            v_shape != (d_in, d_in)
            or size != (d_in, d_in)
            or lambdas != (d_in,)
            or index_shape != (2, values[0])
        ):
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module} should have frod_lambda_l (d_in,), a square "
                f"frod_V (d_in, d_in) of its category, frod_s_size (d_in, d_in) and "
                f"frod_s_indices (2, nnz) for its {values} values; found frod_lambda_l {lambdas}, "
                f"frod_V {v_shape}, frod_s_size {size}, frod_s_indices {index_shape}"
            )
        self.no_scale(
            adapted, None, "FRoD: λ and S carry the scale (the adapted weight is rebuilt)"
        )

    def module_shape(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int, int]:
        d_out, d_in = module_base_shape(
            ckpt, adapted, ckpt.peft_type, "its d_out (U has W0's rows)"
        )
        if d_in != ckpt.shape_of(adapted, "frod_lambda_l")[0]:
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module} has frod_lambda_l for d_in = "
                f"{ckpt.shape_of(adapted, 'frod_lambda_l')[0]}, but the base's weight is "
                f"({d_out}, {d_in}); is {BASE} the model this adapter was trained on?"
            )
        return (d_out, d_in)

    def updates(
        self, ckpt: PeftCheckpoint, adapted: Adapted, rows: Rows, base: torch.Tensor | None
    ) -> list[tuple[int | None, Update]]:
        shared = self._shared(ckpt, adapted)
        V = ckpt.store.load(shared["frod_V"])  # (d_in, d_in)
        indices = ckpt.store.load(shared["frod_s_indices"])  # (2, nnz)
        lambda_l, values = ckpt.need(adapted, "frod_lambda_l", "frod_lambda_s_values")
        return [(None, frod.delta(base, V, indices, values, lambda_l, rows))]


register_variant(Frod())
