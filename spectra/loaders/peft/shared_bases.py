"""PEFT methods whose factors come from shared banks or frozen random bases.

| method | ``peft_type`` | ΔW | module |
|---|---|---|---|
| VB-LoRA | VBLORA | ``B @ A``, every sub-vector a top-k softmax mixture of a shared bank | here |
| UniLoRA | UNILORA | ``B @ A``, every entry a scaled entry of a shared vector θ_d | here |
| DeLoRA | DELORA | ``(λ/r) · B diag(1/(‖Aᵢ‖‖Bⁱ‖)) A diag(‖W₀ columns‖)`` | here |
| RandLoRA | RANDLORA | ``s · B̂ @ Â``, frozen random bases scaled by λ and γ | ``randlora.py`` |
| PVeRA | PVERA | VeRA on the means: ``diag(λ_b) B diag(λ_d[:r]) A[:r]`` | ``pvera.py`` |
| TinyLoRA | TINYLORA | ``B @ (Σᵢ vᵢ Pᵢ) @ A`` | ``tinylora.py`` |

All are factored; the formulas are the ``methods`` module of each. None of
these needs W₀ itself: DeLoRA's column norms of W₀ are saved in the file
(``delora_w_norm``). RandLoRA and PVeRA need the base model for each module's
shape (saved nowhere) and, where the file does not hold their frozen bases,
for the size peft drew them at (``largest_shape``, peft's ``_find_dim``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...arguments import BASE
from ...errors import FormatError, MissingBaseError
from ..methods import delora, lora, unilora, vblora
from .base_shapes import base_shape
from .variant import Adapted, Variant, register_variant

if TYPE_CHECKING:
    import torch

    from ..adapter import Rows, Update
    from .checkpoint import PeftCheckpoint

__all__ = [
    "DeLora",
    "UniLora",
    "VBLora",
    "bases_saved",
    "largest_shape",
    "projection_seed",
]


def bases_saved(ckpt: PeftCheckpoint, method: str, names: tuple[str, str]) -> bool:
    """Whether the file holds both frozen bases ``names`` (else peft draws them from the seed).

    One of the two, or both with ``save_projection`` not false, is a FormatError.
    """
    held = [name for name in names if name in ckpt.shared]
    if len(held) == 2:
        return True
    if ckpt.config.get("save_projection") is False and not held:
        return False
    raise FormatError(
        f"{ckpt.store.path}: {method}'s shared {names[0]} and {names[1]} should both be in the "
        f"file (save_projection is {ckpt.config.get('save_projection')!r}); found "
        f"{', '.join(held) or 'neither'}: the adapter file is incomplete"
    )


def projection_seed(ckpt: PeftCheckpoint, method: str) -> int:
    """The config's projection_prng_key, that peft draws unsaved bases from, or a FormatError."""
    seed = ckpt.config.get("projection_prng_key")
    if not isinstance(seed, int):
        raise FormatError(
            f"{ckpt.config_path}: {method}'s bases are not saved, and projection_prng_key, which "
            f"peft draws them from, is {seed!r}, not a whole number"
        )
    return seed


def largest_shape(ckpt: PeftCheckpoint, method: str, saved: str) -> tuple[int, int]:
    """(d_out, d_in), each the largest over every adapted module: the size peft drew bases at.

    peft's ``_find_dim`` takes it over the model's target modules, which are
    the adapted modules of the file; each module's shape comes from the base.
    ``saved`` names the config field that would have saved the bases instead.
    """
    largest = (0, 0)
    for adapted in ckpt.adapted.values():
        shape = base_shape(ckpt, adapted)
        if shape is None and ckpt.base_weights is None:
            raise MissingBaseError(
                f"{ckpt.store.path}: {method}'s frozen bases are not in the file ({saved} is "
                "false); peft draws them from the seed at the size of the largest adapted "
                f"module, which only the base model gives: pass {BASE('DIR')}"
            )
        if shape is None:
            raise FormatError(
                f"{ckpt.store.path}: {method}'s frozen bases are not in the file ({saved} is "
                f"false) and peft draws them at the size of the largest adapted module, but the "
                f"size of {adapted.module} is unknown (not a module spectra maps, or not in the "
                f"base {ckpt.base}); re-save the adapter with {saved}=True"
            )
        largest = (max(largest[0], shape[0]), max(largest[1], shape[1]))
    return largest


def _shared(ckpt: PeftCheckpoint, name: str, method: str) -> str:
    """The file's name of a shared tensor, or a FormatError saying it is missing."""
    if name not in ckpt.shared:
        raise FormatError(
            f"{ckpt.store.path}: {method} needs the shared {name}, which is not in the file; "
            "the adapter file is incomplete"
        )
    return ckpt.shared[name]


def _config_int(ckpt: PeftCheckpoint, field: str, method: str) -> int:
    value = ckpt.config.get(field)
    if not isinstance(value, int) or isinstance(value, bool):
        raise FormatError(
            f"{ckpt.config_path}: {method} needs a whole number in {field}; found {value!r}"
        )
    return value


class VBLora(Variant):
    """VB-LoRA: ΔW = B @ A, each sub-vector of A and B a top-k mixture of a shared vector bank."""

    peft_type = "VBLORA"
    recognised_by = (
        "vblora_logits_A/B (or their _topk_indices, _topk_weights) and the shared "
        "vblora_vector_bank"
    )
    key_parts = (r"vblora_logits_[AB](?:_topk_(?:indices|weights))?",)
    shared_parts = ("vblora_vector_bank",)
    parts = tuple(
        f"vblora_logits_{side}{kept}"
        for side in "AB"
        for kept in ("", "_topk_indices", "_topk_weights")
    )
    config_fields = ("r", "num_vectors", "vector_length", "topk", "save_only_topk_weights")
    formula = "B@A, each length-L piece Σ softmax(top-k logits)·bank[index] (factored)"
    follows = "tuners/vblora/layer.py: Linear._get_lora_matrices, get_delta_weight"

    def name(self, ckpt: PeftCheckpoint) -> str:
        return "VB-LoRA"

    @staticmethod
    def _top_k_only(adapted: Adapted) -> bool:
        return "vblora_logits_A_topk_indices" in adapted.parts

    def _logit_shapes(self, ckpt: PeftCheckpoint, adapted: Adapted):
        """``(r, d_in/L, ·)`` of A's and ``(d_out/L, r, ·)`` of B's logits (or top-k indices)."""
        kept = "_topk_indices" if self._top_k_only(adapted) else ""
        return tuple(ckpt.shape_of(adapted, f"vblora_logits_{side}{kept}") for side in "AB")

    def resolve_scale(self, ckpt: PeftCheckpoint, adapted: Adapted) -> None:
        bank = ckpt.store.info(_shared(ckpt, "vblora_vector_bank", "VB-LoRA")).shape  # (n, L)
        shape_A, shape_B = self._logit_shapes(ckpt, adapted)
        rank = _config_int(ckpt, "r", "VB-LoRA")
        if self._top_k_only(adapted):
            k = shape_A[-1]
            for side, shape in zip("AB", (shape_A, shape_B), strict=True):
                weights = ckpt.shape_of(adapted, f"vblora_logits_{side}_topk_weights")
                if tuple(weights) != (*shape[:-1], k - 1):
                    raise FormatError(
                        f"{ckpt.store.path}: {adapted.module} should have "
                        f"vblora_logits_{side}_topk_weights {(*shape[:-1], k - 1)} beside its "
                        f"top-{k} indices {tuple(shape)}; found {tuple(weights)}"
                    )
            expected = (rank, shape_A[1], k), (shape_B[0], rank, k)
        else:
            k = _config_int(ckpt, "topk", "VB-LoRA")
            expected = (rank, shape_A[1], bank[0]), (shape_B[0], rank, bank[0])
        if (tuple(shape_A), tuple(shape_B)) != expected or len(bank) != 2 or k > bank[0]:
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module} should have VB-LoRA logits (r, d_in/L, n) "
                f"and (d_out/L, r, n) for r={rank} (r) over the bank {tuple(bank)} with top-{k}; "
                f"found {tuple(shape_A)} and {tuple(shape_B)}"
            )
        self.no_scale(
            adapted, rank, "VB-LoRA: the top-k mixtures of the vector bank carry the scale"
        )

    def module_shape(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int, int]:
        length = ckpt.store.info(_shared(ckpt, "vblora_vector_bank", "VB-LoRA")).shape[1]
        shape_A, shape_B = self._logit_shapes(ckpt, adapted)
        return (shape_B[0] * length, shape_A[1] * length)

    def updates(
        self, ckpt: PeftCheckpoint, adapted: Adapted, rows: Rows, base: torch.Tensor | None
    ) -> list[tuple[int | None, Update]]:
        bank = ckpt.store.load(_shared(ckpt, "vblora_vector_bank", "VB-LoRA"))  # (n, L)
        if self._top_k_only(adapted):
            parts = [f"vblora_logits_{s}_topk_{t}" for s in "AB" for t in ("indices", "weights")]
            indices_A, weights_A, indices_B, weights_B = ckpt.need(adapted, *parts)
            if max(int(indices_A.max()), int(indices_B.max())) >= bank.shape[0]:
                raise FormatError(
                    f"{ckpt.store.path}: {adapted.module}'s top-k indices go past the "
                    f"{bank.shape[0]} vectors of vblora_vector_bank"
                )
            update = vblora.delta_from_topk(bank, indices_A, weights_A, indices_B, weights_B, rows)
        else:
            logits_A, logits_B = ckpt.need(adapted, "vblora_logits_A", "vblora_logits_B")
            k = _config_int(ckpt, "topk", "VB-LoRA")
            update = vblora.delta(bank, logits_A, logits_B, k, rows)
        return [(None, update)]


class UniLora(Variant):
    """UniLoRA: ΔW = B @ A, every entry of A and B one scaled entry of the shared θ_d."""

    peft_type = "UNILORA"
    recognised_by = "unilora_indices_A/B, unilora_scales_A/B and the shared unilora_theta_d"
    key_parts = (r"unilora_(?:indices|scales)_[AB]",)
    shared_parts = ("unilora_theta_d",)
    parts = ("unilora_indices_A", "unilora_indices_B", "unilora_scales_A", "unilora_scales_B")
    config_fields = ("r", "theta_d_length", "proj_seed", "save_indices")
    formula = "B@A, A = θ_d[indices_A]⊙scales_A, B = θ_d[indices_B]⊙scales_B (factored)"
    follows = "tuners/unilora/layer.py: Linear._get_lora_matrices, get_delta_weight"

    def name(self, ckpt: PeftCheckpoint) -> str:
        return "UniLoRA"

    def check_file(self, ckpt: PeftCheckpoint) -> None:
        if not ckpt.adapted and ckpt.config.get("save_indices") is not True:
            raise FormatError(
                f"{ckpt.store.path}: UniLoRA saved without its indices (save_indices is "
                f"{ckpt.config.get('save_indices')!r}, peft's default): the file holds θ_d alone. "
                "peft regenerates each module's indices by cutting one shuffled sequence from "
                "proj_seed in the order of the model's modules (named_modules), which neither the "
                "adapter nor the base's weights record; re-save the adapter with save_indices=True"
            )

    def resolve_scale(self, ckpt: PeftCheckpoint, adapted: Adapted) -> None:
        theta = ckpt.store.info(_shared(ckpt, "unilora_theta_d", "UniLoRA")).shape  # (D,)
        rank = _config_int(ckpt, "r", "UniLoRA")
        shapes = {part: tuple(ckpt.shape_of(adapted, part)) for part in self.parts}
        d_out, d_in = shapes["unilora_indices_B"][0], shapes["unilora_indices_A"][-1]
        expected = {"A": (rank, d_in), "B": (d_out, rank)}
        wrong = {p: s for p, s in shapes.items() if s != expected[p[-1]]}
        if wrong or len(theta) != 1:
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module} should have UniLoRA indices and scales "
                f"(r, d_in) for A and (d_out, r) for B with r={rank} (r), and a 1-D "
                f"unilora_theta_d; found {shapes} and θ_d {tuple(theta)}"
            )
        self.no_scale(adapted, rank, "UniLoRA: θ_d and the saved scales carry the scale")

    def module_shape(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int, int]:
        return (
            ckpt.shape_of(adapted, "unilora_indices_B")[0],
            ckpt.shape_of(adapted, "unilora_indices_A")[1],
        )

    def updates(
        self, ckpt: PeftCheckpoint, adapted: Adapted, rows: Rows, base: torch.Tensor | None
    ) -> list[tuple[int | None, Update]]:
        theta = ckpt.store.load(_shared(ckpt, "unilora_theta_d", "UniLoRA"))  # (D,)
        indices_A, indices_B, scales_A, scales_B = ckpt.need(adapted, *self.parts)
        for name, indices in (("unilora_indices_A", indices_A), ("unilora_indices_B", indices_B)):
            inside = int(indices.min()) >= 0 and int(indices.max()) < len(theta)
            if indices.is_floating_point() or not inside:
                raise FormatError(
                    f"{ckpt.store.path}: {adapted.module}'s {name} should hold whole numbers in "
                    f"[0, {len(theta)}) (the length of unilora_theta_d); found {indices.dtype} "
                    f"values in [{indices.min().item()}, {indices.max().item()}]"
                )
        return [(None, unilora.delta(theta, indices_A, indices_B, scales_A, scales_B, rows))]


class DeLora(Variant):
    """DeLoRA: ΔW = (λ/r) · B diag(1/(‖Aᵢ‖‖Bⁱ‖)) A diag(w_norm), w_norm saved with the adapter."""

    peft_type = "DELORA"
    recognised_by = "delora_A, delora_B, delora_lambda and delora_w_norm (W₀'s column norms)"
    key_parts = (r"delora_(?:A|B|lambda|w_norm)",)
    parts = ("delora_A", "delora_B", "delora_lambda", "delora_w_norm")
    config_fields = ("r", "delora_lambda", "rank_pattern", "lambda_pattern")
    formula = "(λ/r)·B·diag(1/(‖Aᵢ‖‖Bⁱ‖))·A·diag(w_norm), norms clamped ≥ 1e-4 (factored)"
    follows = "tuners/delora/layer.py: DeloraLayer._compute_delta, get_delta_weight"

    def name(self, ckpt: PeftCheckpoint) -> str:
        return "DeLoRA"

    def resolve_scale(self, ckpt: PeftCheckpoint, adapted: Adapted) -> None:
        rank, rank_source = ckpt.config.get("r"), "r"
        found = lora.pattern_value(ckpt.config.get("rank_pattern"), adapted.module)
        if found:
            rank, rank_source = found[1], f"rank_pattern[{found[0]!r}]"
        if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
            raise FormatError(
                f"{ckpt.config_path}: DeLoRA needs a positive whole number in {rank_source}; "
                f"found {rank!r}"
            )
        shapes = {part: tuple(ckpt.shape_of(adapted, part)) for part in self.parts}
        d_out, d_in = shapes["delora_B"][0], shapes["delora_A"][-1]
        expected = {
            "delora_A": (rank, d_in),
            "delora_B": (d_out, rank),
            "delora_lambda": (1,),
            "delora_w_norm": (d_in,),
        }
        if shapes != expected:
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module} should have DeLoRA parts {expected} for "
                f"r={rank} ({rank_source}); found {shapes}"
            )
        strength = float(ckpt.need(adapted, "delora_lambda")[0].double())
        adapted.rank = rank
        adapted.scale = strength / rank  # λ/r
        adapted.scale_source = f"delora_lambda/{rank_source} = {strength:g}/{rank} (λ is trained)"

    def module_shape(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int, int]:
        return (ckpt.shape_of(adapted, "delora_B")[0], ckpt.shape_of(adapted, "delora_A")[1])

    def updates(
        self, ckpt: PeftCheckpoint, adapted: Adapted, rows: Rows, base: torch.Tensor | None
    ) -> list[tuple[int | None, Update]]:
        A, B, w_norm = ckpt.need(adapted, "delora_A", "delora_B", "delora_w_norm")
        return [(None, delora.delta(A, B, w_norm, adapted.scale, rows))]


register_variant(VBLora())
register_variant(UniLora())
register_variant(DeLora())

# The family's other modules, one method each, register theirs (they use the helpers above).
from . import pvera, randlora, tinylora  # noqa: E402, F401
