"""The newest PEFT methods with a static ΔW: DEFT, OSF, PEANuT and Super-Tuning.

| method | ``peft_type`` | ΔW | needs W₀ |
|---|---|---|---|
| DEFT | DEFT | ``Q_P @ (s·R − rightᵀ W₀)``; PaRa ``−Q_P @ rightᵀ W₀`` (factored) | yes |
| OSF | OSF | ``U diag(S) V − U₀ diag(S₀) V₀``, the initial part from W₀'s SVD (factored) | yes |
| PEANuT | PEANUT | ``s · B @ h(W₀ᵀ Aᵀ)ᵀ``, ``h`` a small network (factored) | yes |
| Super-Tuning | SUPERTUNING | ``values`` at ``indices``, ``+ (α/r)·B@A`` (dense) | for the shape |

The formulas are the ``methods`` module of each (``deft``, ``osf``,
``peanut``, ``supertuning``). FRoD is in ``frod.py``; the peft_types of
peft 0.21 with no single static ΔW (X-LoRA, Poly, Lily, ShadowPEFT, prompt
and prefix methods, AdaMSS) are refused in ``refused.py``, and LN tuning,
BEFT and trainable tokens are in ``ln_tuning.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...arguments import BASE
from ...errors import FormatError, MissingBaseError
from ..methods import deft, osf, peanut, supertuning
from .base_shapes import module_base_shape
from .variant import Adapted, Variant, register_variant

if TYPE_CHECKING:
    import torch

    from ..adapter import Rows, Update
    from .checkpoint import PeftCheckpoint

__all__ = ["Deft", "Osf", "Peanut", "Supertuning"]


class Deft(Variant):
    """DEFT: ΔW = Q_P @ (s·R − rightᵀ W₀), the injection minus the removed subspace of W₀."""

    peft_type = "DEFT"
    recognised_by = "deft_P, deft_R (none with para), decomposition_method, alpha"
    key_parts = (r"deft_P", r"deft_R")
    parts = ("deft_P", "deft_R")
    config_fields = ("r", "alpha", "decomposition_method", "para", "fan_in_fan_out")
    formula = (
        "Q_P@(s·R − rightᵀ@W0), s = α/r or 1; relu: Q_P = P, right = relu(P); "
        "qr: Q_P = right = qr(P).Q (factored)"
    )
    follows = "tuners/deft/layer.py: DeftLinear.get_delta_weight, _project"
    why_base = "DEFT removes a subspace of the base weight: ΔW = Q_P @ (s·R − rightᵀ W0) needs W0."

    def name(self, ckpt: PeftCheckpoint) -> str:
        return "DEFT (PaRa)" if ckpt.config.get("para") else "DEFT"

    def needs_base(self, ckpt: PeftCheckpoint) -> bool:
        return True

    def resolve_scale(self, ckpt: PeftCheckpoint, adapted: Adapted) -> None:
        method = ckpt.config.get("decomposition_method", "relu")
        if method not in deft.METHODS:
            raise FormatError(
                f"{ckpt.config_path}: decomposition_method should be one of {deft.METHODS}; "
                f"found {method!r}"
            )
        p_shape = ckpt.shape_of(adapted, "deft_P")  # (d_out, r)
        rank = p_shape[1]
        expected = min(int(ckpt.config.get("r", rank)), p_shape[0])  # peft caps r at d_out
        para = bool(ckpt.config.get("para"))
        r_shape = None if para else ckpt.shape_of(adapted, "deft_R")  # (r, d_in)
        if rank != expected or (r_shape is not None and r_shape[0] != rank):
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module} should have deft_P (d_out, {expected}) and "
                f"deft_R ({expected}, d_in) for r={ckpt.config.get('r')} in "
                f"{ckpt.config_path.name}; found deft_P {p_shape} and deft_R {r_shape}"
            )
        alpha = ckpt.config.get("alpha")
        adapted.rank = rank
        adapted.scale = alpha / rank if alpha else 1.0
        adapted.scale_source = (
            f"config: alpha/r = {alpha}/{rank} on the injection s·R"
            if alpha
            else "config: no alpha, s = 1"
        )

    def parts_used(self, ckpt: PeftCheckpoint, adapted: Adapted) -> set[str]:
        return {"deft_P"} if ckpt.config.get("para") else {"deft_P", "deft_R"}

    def unused_reason(self, ckpt: PeftCheckpoint, part: str) -> str:
        if part == "deft_R":
            return "deft_R of a PaRa adapter (para: true): PaRa's ΔW has no injection term"
        return super().unused_reason(ckpt, part)

    def module_shape(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int, int]:
        if ckpt.config.get("para"):  # no deft_R: d_in is the base's
            return (
                ckpt.shape_of(adapted, "deft_P")[0],
                module_base_shape(ckpt, adapted, ckpt.peft_type, "its d_in")[1],
            )
        return (ckpt.shape_of(adapted, "deft_P")[0], ckpt.shape_of(adapted, "deft_R")[1])

    def shape_before_base(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int, int | None]:
        if ckpt.config.get("para"):
            return (ckpt.shape_of(adapted, "deft_P")[0], None)
        return self.module_shape(ckpt, adapted)

    def updates(
        self, ckpt: PeftCheckpoint, adapted: Adapted, rows: Rows, base: torch.Tensor | None
    ) -> list[tuple[int | None, Update]]:
        (P,) = ckpt.need(adapted, "deft_P")  # (d_out, r)
        R = None if ckpt.config.get("para") else ckpt.need(adapted, "deft_R")[0]  # (r, d_in)
        method = ckpt.config.get("decomposition_method", "relu")
        return [(None, deft.delta(P, R, base, adapted.scale, method, rows))]


_OSF_PARTS = ("osf_svd_params.U_low", "osf_svd_params.S_low", "osf_svd_params.V_low")


class Osf(Variant):
    """OSF: ΔW = U diag(S) V − U₀ diag(S₀) V₀, the trained low singular part minus W₀'s own."""

    peft_type = "OSF"
    recognised_by = "osf_svd_params.U_low, S_low, V_low; the initial low part from the base's SVD"
    key_parts = (r"osf_svd_params\.[USV]_low",)
    parts = _OSF_PARTS
    config_fields = ("effective_rank", "rank_pattern", "target_modules")
    formula = (
        "U·diag(S)·V − U0·diag(S0)·V0, U0 S0 V0 the last r_low singular triplets of W0 "
        "(float32 SVD, as peft) (factored, rank ≤ 2·r_low)"
    )
    follows = (
        "tuners/osf/layer.py: OSFLayer.get_delta_weight; tuners/osf/utils.py: "
        "decompose_weight_matrix"
    )
    why_base = (
        "OSF's ΔW subtracts the initial low singular part of W0, which peft takes again from the "
        "base weight at load (it is not saved): it needs W0."
    )

    def name(self, ckpt: PeftCheckpoint) -> str:
        return "OSF"

    def warnings(self, ckpt: PeftCheckpoint) -> list[str]:
        return [
            "OSF: the initial low part subtracted from the trained one is not saved; it is taken "
            "again from W0 by a float32 SVD, as peft does at load, whose rounding differs between "
            "machines and thread counts (so does peft's own merge): small σ carry that error"
        ]

    def needs_base(self, ckpt: PeftCheckpoint) -> bool:
        return True

    def resolve_scale(self, ckpt: PeftCheckpoint, adapted: Adapted) -> None:
        U, S, V = (ckpt.shape_of(adapted, part) for part in _OSF_PARTS)
        r_low = S[0] if len(S) == 1 else -1
        if len(U) != 2 or len(V) != 2 or U[1] != r_low or V[0] != r_low or r_low > min(U[0], V[1]):
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module} should have U_low (d_out, r), S_low (r,) and "
                f"V_low (r, d_in) with r ≤ min(d_out, d_in); found {U}, {S} and {V}"
            )
        self.no_scale(
            adapted,
            2 * r_low,  # [U·S, −U₀·S₀] @ [V; V₀]
            f"OSF: the singular values carry the scale; r_low = {r_low} trained directions, "
            "minus their initial values",
        )

    def module_shape(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int, int]:
        U, _, V = (ckpt.shape_of(adapted, part) for part in _OSF_PARTS)
        return (U[0], V[1])

    def updates(
        self, ckpt: PeftCheckpoint, adapted: Adapted, rows: Rows, base: torch.Tensor | None
    ) -> list[tuple[int | None, Update]]:
        U, S, V = ckpt.need(adapted, *_OSF_PARTS)  # (d_out, r), (r,), (r, d_in)
        return [(None, osf.delta(U, S, V, base, rows))]


class Peanut(Variant):
    """PEANuT: ΔW = s · B @ h(W₀ᵀ Aᵀ)ᵀ, a small network of W₀ (weight-aware)."""

    peft_type = "PEANUT"
    recognised_by = "peanut_A, peanut_B, peanut_encoders.N, peanut_decoders.N; act_fn, scaling"
    key_parts = (r"peanut_A", r"peanut_B", r"peanut_encoders\.\d+", r"peanut_decoders\.\d+")
    config_fields = ("r", "depth", "act_fn", "scaling")
    formula = (
        "s·B@hᵀ, h = f(W0ᵀ@Aᵀ) through depth encoders f(h@Eᵀ) and decoders f(h@Dᵀ) + skip "
        "(factored)"
    )
    follows = "tuners/peanut/layer.py: Linear._compute_delta_weight"
    why_base = "PEANuT's ΔW is a network applied to the base weight: it needs W0."

    def name(self, ckpt: PeftCheckpoint) -> str:
        return "PEANuT"

    def needs_base(self, ckpt: PeftCheckpoint) -> bool:
        return True

    def _stack(self, adapted: Adapted, which: str) -> list[str]:
        """The parts ``peanut_encoders.0``, ``.1``, … in order."""
        found = [part for part in adapted.parts if part.startswith(f"{which}.")]
        return sorted(found, key=lambda part: int(part.rsplit(".", 1)[1]))

    def parts_used(self, ckpt: PeftCheckpoint, adapted: Adapted) -> set[str]:
        stacks = self._stack(adapted, "peanut_encoders") + self._stack(adapted, "peanut_decoders")
        return {"peanut_A", "peanut_B", *stacks}

    def resolve_scale(self, ckpt: PeftCheckpoint, adapted: Adapted) -> None:
        act_fn = ckpt.config.get("act_fn", "relu")
        if act_fn not in peanut.ACTIVATIONS:
            raise FormatError(
                f"{ckpt.config_path}: PEANuT's act_fn {act_fn!r} is not one spectra writes out; "
                f"it reads {', '.join(sorted(peanut.ACTIVATIONS))}"
            )
        a_shape, b_shape = ckpt.shape_of(adapted, "peanut_A"), ckpt.shape_of(adapted, "peanut_B")
        rank = a_shape[0]
        depth = int(ckpt.config.get("depth", 0))
        stacks = [self._stack(adapted, w) for w in ("peanut_encoders", "peanut_decoders")]
        squares = [ckpt.shape_of(adapted, part) for stack in stacks for part in stack]
        if (
            b_shape != (a_shape[1], rank)
            or [len(stack) for stack in stacks] != [depth, depth]
            or any(shape != (rank, rank) for shape in squares)
        ):
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module} should have peanut_A (r, d_out), peanut_B "
                f"(d_out, r) and depth={depth} encoders and decoders (r, r); found peanut_A "
                f"{a_shape}, peanut_B {b_shape}, {len(stacks[0])} encoders and {len(stacks[1])} "
                "decoders"
            )
        adapted.rank = rank
        adapted.scale = float(ckpt.config.get("scaling", 1.0))
        adapted.scale_source = f"config: scaling = {adapted.scale:g}"

    def module_shape(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int, int]:
        return (
            ckpt.shape_of(adapted, "peanut_B")[0],
            module_base_shape(ckpt, adapted, ckpt.peft_type, "its d_in")[1],
        )

    def shape_before_base(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int, int | None]:
        return (ckpt.shape_of(adapted, "peanut_B")[0], None)

    def updates(
        self, ckpt: PeftCheckpoint, adapted: Adapted, rows: Rows, base: torch.Tensor | None
    ) -> list[tuple[int | None, Update]]:
        A, B = ckpt.need(adapted, "peanut_A", "peanut_B")  # (r, d_out), (d_out, r)
        encoders = ckpt.need(adapted, *self._stack(adapted, "peanut_encoders"))  # each (r, r)
        decoders = ckpt.need(adapted, *self._stack(adapted, "peanut_decoders"))  # each (r, r)
        act_fn = ckpt.config.get("act_fn", "relu")
        return [(None, peanut.delta(base, A, B, encoders, decoders, act_fn, adapted.scale, rows))]


class Supertuning(Variant):
    """Super-Tuning: sparse values at saved (or re-picked) positions, plus LoRA in Supra mode."""

    peft_type = "SUPERTUNING"
    recognised_by = "supertuning_values, supertuning_indices, supertuning_lora_A/B (Supra)"
    key_parts = (r"supertuning_values", r"supertuning_indices", r"supertuning_lora_[AB]")
    parts = (
        "supertuning_values",
        "supertuning_indices",
        "supertuning_lora_A",
        "supertuning_lora_B",
    )
    config_fields = ("sparsity", "select_top", "r", "lora_alpha", "save_precomputed_indices")
    formula = "scatter(indices, values) + (α/r)·B@A in Supra mode (dense)"
    follows = "tuners/supertuning/layer.py: Linear.get_delta_weight"
    why_base = (
        "Super-Tuning's sparse positions index W0 read row-major (its d_in comes from the base "
        "without Supra's LoRA), and unsaved positions are picked again from |W0|: it needs W0."
    )

    def name(self, ckpt: PeftCheckpoint) -> str:
        return "Super-Tuning (Supra)" if ckpt.config.get("r") else "Super-Tuning"

    def kind(self, ckpt: PeftCheckpoint) -> str:
        return "dense"

    def needs_base(self, ckpt: PeftCheckpoint) -> bool:
        return not ckpt.config.get("r") or not self._saved_indices(ckpt)

    def _saved_indices(self, ckpt: PeftCheckpoint) -> bool:
        return ckpt.config.get("save_precomputed_indices", True) is not False

    def warnings(self, ckpt: PeftCheckpoint) -> list[str]:
        if self._saved_indices(ckpt):
            return []
        return [
            "Super-Tuning: the sparse positions were not saved (save_precomputed_indices is "
            "false); they are picked again as peft does at load, the top-k |W0| of the base in "
            "its stored dtype: another base, or the base in another dtype, picks others"
        ]

    def resolve_scale(self, ckpt: PeftCheckpoint, adapted: Adapted) -> None:
        values = ckpt.shape_of(adapted, "supertuning_values")
        if self._saved_indices(ckpt) and ckpt.shape_of(adapted, "supertuning_indices") != values:
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module} should have as many supertuning_indices as "
                f"values {values}; found {ckpt.shape_of(adapted, 'supertuning_indices')}"
            )
        rank = ckpt.config.get("r")
        if not rank:
            adapted.rank, adapted.scale = None, 1.0
            adapted.scale_source = "Super-Tuning: the sparse values carry the scale"
            return
        a_shape = ckpt.shape_of(adapted, "supertuning_lora_A")
        b_shape = ckpt.shape_of(adapted, "supertuning_lora_B")
        if a_shape[0] != rank or b_shape[1] != rank:
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module} should have supertuning_lora_A "
                f"({rank}, d_in) and supertuning_lora_B (d_out, {rank}) for r={rank}; found "
                f"{a_shape} and {b_shape}"
            )
        alpha = ckpt.config.get("lora_alpha") or 2 * rank  # peft's default: 2r
        adapted.scale_by(rank, alpha, "config: r", "config: lora_alpha")

    def module_shape(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int, int]:
        if ckpt.config.get("r"):
            b_shape = ckpt.shape_of(adapted, "supertuning_lora_B")
            return (b_shape[0], ckpt.shape_of(adapted, "supertuning_lora_A")[1])
        return module_base_shape(
            ckpt, adapted, ckpt.peft_type, "its shape (the sparse positions index W0 row-major)"
        )

    def shape_before_base(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int, int | None]:
        if ckpt.config.get("r"):
            return self.module_shape(ckpt, adapted)
        raise MissingBaseError(
            f"{ckpt.store.path}: Super-Tuning module {adapted.module} saves no shape (its sparse "
            f"positions index W0 row-major): pass {BASE('DIR')}"
        )

    def updates(
        self, ckpt: PeftCheckpoint, adapted: Adapted, rows: Rows, base: torch.Tensor | None
    ) -> list[tuple[int | None, Update]]:
        shape = self.module_shape(ckpt, adapted)
        (values,) = ckpt.need(adapted, "supertuning_values")  # (k,)
        if self._saved_indices(ckpt):
            (indices,) = ckpt.need(adapted, "supertuning_indices")  # (k,) flat positions
        else:
            stored = self._stored_base(ckpt, adapted, base)  # W0 as the base file holds it
            sparsity, largest = ckpt.config["sparsity"], ckpt.config.get("select_top", True)
            indices = supertuning.support(stored, sparsity, largest)
            if indices.shape != values.shape:
                raise FormatError(
                    f"{ckpt.store.path}: {adapted.module} has {values.shape[0]} values; top-k of "
                    f"|W0| at sparsity {sparsity} gives {indices.shape[0]} positions: is "
                    f"{BASE} the model this adapter was trained on?"
                )
        lora = None
        if ckpt.config.get("r"):
            A, B = ckpt.need(adapted, "supertuning_lora_A", "supertuning_lora_B")
            lora = (B, A, adapted.scale)  # (d_out, r), (r, d_in), α/r
        return [(None, supertuning.delta(shape, indices, values, lora, rows))]

    def _stored_base(
        self, ckpt: PeftCheckpoint, adapted: Adapted, base: torch.Tensor
    ) -> torch.Tensor:
        """W0 in the dtype the base file stores it (exact: the float64 base holds those values)."""
        ref = next(r for r in ckpt.modules.values() if r.module == adapted.module)
        return base.to(ckpt.base_weights.dtype(ckpt.base_weights.modules[(ref.layer, ref.role)]))


register_variant(Deft())
register_variant(Osf())
register_variant(Peanut())
register_variant(Supertuning())
