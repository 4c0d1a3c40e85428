"""Full fine-tunes: ΔW = W_tuned − W_base from two Hugging Face model checkpoints.

Either side may be a model folder (``model.safetensors``, sharded
``model.safetensors.index.json``, legacy ``pytorch_model.bin`` with or
without its index) or a bare ``.safetensors`` / ``.bin`` / ``.pt`` file.
Modules are matched by (layer, role), so a tuned ``BertForSequenceClassification``
(``bert.encoder…``) pairs with a base ``BertModel`` (``encoder…``). The
difference is taken in float64, never in the checkpoint dtype.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path

import torch

from ..arguments import BASE
from ..delta import Dense, LayerDelta
from ..errors import BaseMismatchError, FormatError, MissingBaseError
from .base import Checkpoint, ModuleInfo, Selection
from .methods.full import coarser_dtype, difference
from .naming.architectures import ModuleRef
from .registry import Format, register
from .storage.model import MODEL_FILES, ModelWeights, find_model_file
from .storage.tensors import PICKLE_SUFFIXES, SAFETENSORS_SUFFIXES, tensor_names

__all__ = ["FullCheckpoint"]



class FullCheckpoint(Checkpoint):
    """A full fine-tune; ``deltas()`` needs the base model."""

    format = "full"

    def __init__(self, path: Path, base: Path | None):
        super().__init__(path, base)
        self.tuned = ModelWeights(path, "CKPT")
        if not self.tuned.modules:
            sample = ", ".join(self.tuned.other_modules()[:10]) or "no 2-D weights"
            raise FormatError(
                f"{self.tuned.store.path}: no attention or MLP projections recognised; "
                f"module names found: {sample}. This architecture is not mapped yet"
            )
        self.base_weights = ModelWeights(base, BASE) if base is not None else None
        self._grid_notes: list[str] = []  # set by check(): how the selection is subtracted

    @property
    def variant(self) -> str:
        return "full fine-tune"

    def available(self):
        return self.tuned.modules.keys()

    def check(self, selection: Selection) -> None:
        if self.base_weights is None:
            raise MissingBaseError(
                f"{self.path} is a full model checkpoint: ΔW = W_tuned − W_base needs the "
                f"base model it was fine-tuned from; pass {BASE('DIR')}"
            )
        for side in (self.tuned, self.base_weights):
            side.check_one_dtype(
                [
                    m
                    for key in selection.keys
                    if key in side.modules
                    for m in side.modules[key].members
                ]
            )
        for key in selection.keys:
            for ref, base_ref in self._pairs(key, check=True):
                self._check_pair(key, ref, base_ref)
        self._grid_notes = self._grid_note(selection.keys[0]) if selection.keys else []

    def _pairs(self, key: tuple[int, str], check: bool = False):
        """(tuned, base) refs of a (layer, role): one pair, or one per expert."""
        assert self.base_weights is not None
        base_group = self.base_weights.modules.get(key)
        base = self.base_weights.expert_refs(base_group) if base_group is not None else {}
        tuned = self.tuned.modules[key]
        for ref in tuned.members:
            base_ref = base.get(ref.expert)
            if check and base_group is not None and len(base) != len(tuned.members):
                raise BaseMismatchError(
                    f"{self.base_weights.store.path}: layer {key[0]} {key[1]!r} has "
                    f"{len(base)} expert(s) ({base_group.module}); {self.tuned.store.path} has "
                    f"{len(tuned.members)} ({tuned.module}); is {BASE} the model this checkpoint "
                    "was fine-tuned from?"
                )
            yield ref, base_ref

    def _check_pair(self, key: tuple[int, str], ref: ModuleRef, base_ref: ModuleRef | None) -> None:
        """A tuned module (or expert) and its base counterpart must have one shape."""
        assert self.base_weights is not None
        if base_ref is None:
            raise BaseMismatchError(
                f"{self.base_weights.store.path}: the base has no layer {key[0]} "
                f"{key[1]!r} module{_of_expert(ref)}, which {self.tuned.store.path} has as "
                f"{ref.module}; is {BASE} the model this checkpoint was fine-tuned from?"
            )
        tuned_shape, base_shape = self.tuned.shape(ref), self.base_weights.shape(base_ref)
        if tuned_shape != base_shape:
            raise BaseMismatchError(
                f"{self.base_weights.store.path}: {base_ref.module} has shape {base_shape}, "
                f"but {self.tuned.store.path} has {tuned_shape} for {ref.module}; "
                f"is {BASE} the model this checkpoint was fine-tuned from?"
            )

    def _grid_note(self, key: tuple[int, str]) -> list[str]:
        """Say so when the base is rounded to the tuned grid (one dtype per side: checked)."""
        assert self.base_weights is not None
        tuned = self.tuned.dtype(self.tuned.modules[key].members[0])
        base = self.base_weights.dtype(self.base_weights.modules[key].members[0])
        if tuned == base or coarser_dtype(tuned, base) != tuned:
            return []
        tuned_name, base_name = (str(d).removeprefix("torch.") for d in (tuned, base))
        return [
            f"the tuned weights are {tuned_name} and the base {base_name}: the base is rounded "
            f"to {tuned_name} before subtracting, so weights the fine-tune left alone give "
            "ΔW = 0, not their rounding error"
        ]

    def module_info(self, key: tuple[int, str]) -> ModuleInfo:
        group = self.tuned.modules[key]
        ref = group.members[0]  # experts share shape and dtype (check() compares each)
        return ModuleInfo(
            layer=ref.layer,
            role=ref.role,
            name=f"{group.module}.weight" if group.experts else self.tuned.tensor_name(ref),
            shape=self.tuned.shape(ref),
            dtype=str(self.tuned.dtype(ref)).removeprefix("torch."),
            kind="dense",
            experts=len(group.experts) or None,
        )

    def warnings(self) -> list[str]:
        if self.base_weights is None:
            return [f"no {BASE} given: ΔW cannot be computed yet"]
        return list(self._grid_notes)

    def base_weight(self, key: tuple[int, str]) -> torch.Tensor | None:
        if self.base_weights is None or self.base_weights.modules[key].experts:
            return None  # experts: one W0 each
        return self.base_weights.weight(self.base_weights.modules[key])  # (d_out, d_in) float64

    def not_analysed(self) -> list[tuple[str, str]]:
        return self.tuned.not_mapped()

    def source_files(self) -> list[Path]:
        base = self.base_weights.files() if self.base_weights is not None else []
        return [*self.tuned.files(), *base]

    def details(self) -> dict[str, object]:
        details = {"weights": str(self.tuned.store.path)}
        if self.base_weights:
            details["base_weights"] = str(self.base_weights.store.path)
        return details

    def _delta(self, key: tuple[int, str]) -> Iterator[LayerDelta]:
        assert self.base_weights is not None  # enforced by check()
        for ref, base_ref in self._pairs(key):  # one pair, or one per expert
            yield self._member_delta(ref, base_ref)

    def _member_delta(self, ref: ModuleRef, base_ref: ModuleRef) -> LayerDelta:
        tuned = self.tuned.weight(ref, dtype=None)  # (d_out, d_in), as stored
        base = self.base_weights.weight(base_ref, dtype=None)  # (d_out, d_in), as stored
        delta, tuned_norm, base_norm = difference(tuned, base)
        # The coarser of the two dtypes sets the rounding floor of the difference.
        dtype = coarser_dtype(tuned.dtype, base.dtype)
        return LayerDelta(
            layer=ref.layer,
            role=ref.role,
            name=self.tuned.tensor_name(ref),
            update=Dense(delta),  # (d_out, d_in) float64
            source_dtype=dtype,
            weight_rms=max(base_norm, tuned_norm) / math.sqrt(base.numel()),
            base_norm=base_norm,
            expert=ref.expert,
        )


def _of_expert(ref: ModuleRef) -> str:
    return "" if ref.expert is None else f" of expert {ref.expert}"


# Tensor names of LoRA-family adapters: a bare file of them is no full model.
_ADAPTER_KEY = re.compile(r"\.(?:lora_[AB]|lora_down|lora_up|hada_w[12]_a|lokr_w[12])(?:\.|$)")


def claims(path: Path) -> bool:
    """A model folder (``MODEL_FILES`` or a training layout), or any tensor file.

    Asked last: a tensor file no other format claimed is a full model, except
    a file of adapter tensors with no config beside it, which is refused (its
    scale α/r is in the config it lacks).
    """
    if path.is_dir():
        return find_model_file(path) is not None
    if path.suffix not in SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES:
        return False
    if any(_ADAPTER_KEY.search(name) for name in tensor_names(path)):
        raise FormatError(
            f"{path}: holds LoRA-family adapter tensors (lora_A, lora_B, …) but no "
            "adapter_config.json lies beside it, and the scale α/r is in that config: pass "
            "the adapter folder that holds both"
        )
    return True


def open_full(path: Path, base: Path | None, *, base_lookup=None) -> FullCheckpoint:
    """The full fine-tune reader (ΔW = W_tuned − W_base; ``base`` is needed for ΔW)."""
    return FullCheckpoint(path, base)


FORMAT = register(
    Format(
        name="full",
        claims=claims,
        open=open_full,
        priority=0,  # the last resort: any model folder or tensor file
        recognised_by=(
            f"a model folder ({', '.join(MODEL_FILES)}, an FSDP / DCP or DeepSpeed ZeRO "
            "folder) or a .safetensors / .bin / .pt file of weights; ΔW needs the base model"
        ),
    )
)
