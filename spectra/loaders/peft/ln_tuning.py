"""PEFT methods training layer copies, biases or embedding rows: LN tuning, BEFT, trainable tokens.

| method | ``peft_type`` | what it trains | analysed |
|---|---|---|---|
| LN tuning | LN_TUNING | a copy of each targeted layer | a projection: W_tuned − W₀ (dense) |
| BEFT | BEFT | a bias vector per module, added to its output | nothing (all listed) |
| trainable tokens | TRAINABLE_TOKENS | embedding rows of ``token_indices`` | nothing (all listed) |

LN tuning deep-copies each targeted layer and trains the copy; peft's merge
swaps the copy in (``tuners/ln_tuning/layer.py``: ``LNTuningLayer.merge``).
Its usual targets are LayerNorms (a scale and a shift of the activations,
no projection), but a targeted linear layer is a projection updated in
full. Whatever is not a projection's weight is listed by ``not_analysed()``
with what it is (``tensor_reason``); a file with nothing else is refused
saying so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...errors import FormatError
from ..base import summarise_not_analysed
from ..methods import ln_tuning
from .variant import Adapted, Variant, register_variant

if TYPE_CHECKING:
    import torch

    from ..adapter import Rows, Update
    from .checkpoint import PeftCheckpoint

__all__ = ["Beft", "LnTuning", "NoWeightUpdate", "TrainableTokens"]

_NORM = "a norm layer's {what} (LN tuning): scales and shifts activations, not a projection's ΔW"
_COPY_BIAS = "bias of the tuned copy of the layer (LN tuning): adds a constant, not part of ΔW"
_BEFT = "BEFT bias vector: added to the module's output, a constant shift, not a projection's ΔW"
_TOKENS = (
    "embedding rows of the tokens in token_indices (trainable tokens): an input embedding, "
    "not a projection's ΔW"
)


def _module_ref(ckpt: PeftCheckpoint, adapted: Adapted):
    """The mapped ref of an adapted module (its role, and whether it is a Conv1D)."""
    return next(ref for ref in ckpt.modules.values() if ref.module == adapted.module)


class LnTuning(Variant):
    """LN tuning: a trained copy of each targeted layer; a projection's ΔW = W_tuned − W₀."""

    peft_type = "LN_TUNING"
    recognised_by = "ln_tuning_layers weight and bias: a trained copy of each targeted layer"
    key_parts = (r"ln_tuning_layers",)
    parts = ("ln_tuning_layers",)
    config_fields = ("target_modules",)
    formula = "W_tuned − W0 for a targeted projection (dense); LayerNorms are listed, not analysed"
    follows = "tuners/ln_tuning/layer.py: LNTuningLayer.merge (swaps the tuned copy in)"
    why_base = (
        "LN tuning saves a trained copy of the whole layer: ΔW = W_tuned − W0 needs the base "
        "weight W0."
    )

    def name(self, ckpt: PeftCheckpoint) -> str:
        return "LN tuning"

    def kind(self, ckpt: PeftCheckpoint) -> str:
        return "dense"

    def needs_base(self, ckpt: PeftCheckpoint) -> bool:
        return True

    def tensor_reason(self, ckpt: PeftCheckpoint, name: str) -> str:
        stem = name.removesuffix(".weight").removesuffix(".bias")
        if not stem.endswith("ln_tuning_layers"):
            return ""
        weight = f"{stem}.weight"
        norm = weight in ckpt.store and len(ckpt.store.info(weight).shape) == 1
        if norm:
            return _NORM.format(what="bias" if name.endswith(".bias") else "weight")
        return _COPY_BIAS if name.endswith(".bias") else ""

    def resolve_scale(self, ckpt: PeftCheckpoint, adapted: Adapted) -> None:
        shape = ckpt.shape_of(adapted, "ln_tuning_layers")
        if len(shape) != 2:
            raise FormatError(
                f"{ckpt.store.path}: {adapted.module} should hold a trained copy of a 2-D "
                f"projection weight (ln_tuning_layers); found shape {shape}"
            )
        self.no_scale(adapted, None, "LN tuning: the trained copy of the whole weight")

    def module_shape(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int, int]:
        rows, columns = ckpt.shape_of(adapted, "ln_tuning_layers")
        return (columns, rows) if _module_ref(ckpt, adapted).conv1d else (rows, columns)

    def updates(
        self, ckpt: PeftCheckpoint, adapted: Adapted, rows: Rows, base: torch.Tensor | None
    ) -> list[tuple[int | None, Update]]:
        (tuned,) = ckpt.need(adapted, "ln_tuning_layers")  # (d_out, d_in); Conv1D (d_in, d_out)
        if _module_ref(ckpt, adapted).conv1d:
            tuned = tuned.T  # (d_out, d_in)
        return [(None, ln_tuning.delta(tuned, base, rows))]


class NoWeightUpdate(Variant):
    """A method that changes no projection's weight: its tensor listed, reading it refused."""

    part = ""  # the tensor it trains per module
    what = ""  # what that tensor is: its not-analysed reason
    trains = ""  # what the method trains, as the refusal says it

    def unused_reason(self, ckpt: PeftCheckpoint, part: str) -> str:
        return self.what if part == self.part else super().unused_reason(ckpt, part)

    def tensor_reason(self, ckpt: PeftCheckpoint, name: str) -> str:
        return self.what if name.removesuffix(".weight").endswith(self.part) else ""

    def resolve_scale(self, ckpt: PeftCheckpoint, adapted: Adapted) -> None:
        raise FormatError(
            f"{ckpt.config_path}: {self.trains}; no projection weight changes, so there is no ΔW "
            f"to analyse. {summarise_not_analysed(ckpt.not_analysed())}"
        )


class Beft(NoWeightUpdate):
    """BEFT: a bias vector per module, added to its output: no projection weight changes."""

    peft_type = "BEFT"
    recognised_by = "beft_bias: a bias vector per module; nothing to analyse"
    key_parts = (r"beft_bias",)
    config_fields = ("target_modules",)
    formula = "none: a bias added to the output, no weight update (every tensor listed)"
    follows = "tuners/beft/layer.py: Linear.merge (adds beft_bias to the base bias)"
    part, what = "beft_bias", _BEFT
    trains = "BEFT trains only a bias vector per module, added to its output"

    def name(self, ckpt: PeftCheckpoint) -> str:
        return "BEFT"


class TrainableTokens(NoWeightUpdate):
    """Trainable tokens: new embedding rows for ``token_indices``; no projection weight changes."""

    peft_type = "TRAINABLE_TOKENS"
    recognised_by = "trainable_tokens_delta: embedding rows; nothing to analyse"
    key_parts = (r"trainable_tokens_delta",)
    config_fields = ("token_indices", "target_modules")
    formula = "none: embedding rows of token_indices, no projection's update (every tensor listed)"
    follows = "tuners/trainable_tokens/layer.py: TrainableTokensLayer.merge"
    part, what = "trainable_tokens_delta", _TOKENS
    trains = "trainable tokens train embedding rows only"

    def name(self, ckpt: PeftCheckpoint) -> str:
        return "trainable tokens"


register_variant(LnTuning())
register_variant(Beft())
register_variant(TrainableTokens())
