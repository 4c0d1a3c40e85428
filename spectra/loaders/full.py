"""Full fine-tunes: ΔW = W_tuned − W_base from two Hugging Face model checkpoints.

Either side may be a model folder (``model.safetensors``, sharded
``model.safetensors.index.json``, legacy ``pytorch_model.bin`` with or
without its index) or a bare ``.safetensors`` / ``.bin`` / ``.pt`` file.
Modules are matched by (layer, role), so a tuned ``BertForSequenceClassification``
(``bert.encoder…``) pairs with a base ``BertModel`` (``encoder…``). The
difference is taken in float64, never in the checkpoint dtype.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

import torch

from ..arguments import BASE, LAYERS, MODULES, Argument
from ..delta import Dense, LayerDelta
from ..errors import BaseMismatchError, FormatError, MissingBaseError
from .base import Checkpoint, ModuleInfo, Selection
from .names import ModuleRef, canonical_name, encoder_depth, left_out_reason, map_with_reasons
from .registry import Format, register
from .tensors import PICKLE_SUFFIXES, SAFETENSORS_SUFFIXES, TensorStore, open_store
from .training import find_layout, open_layout

__all__ = ["FullCheckpoint", "ModelWeights", "find_model_file"]

# In order of preference inside a model folder.
MODEL_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def find_model_file(folder: Path) -> Path | None:
    """The weights file (or shard index) of a Hugging Face model folder, if any.

    A folder without those files may hold a training layout (FSDP / DCP,
    DeepSpeed ZeRO: ``training.find_layout``), returned as its folder.
    """
    for name in MODEL_FILES:
        if (folder / name).is_file():
            return folder / name
    return find_layout(folder)


def _open_model(path: Path, flag: Argument | str) -> TensorStore:
    if path.is_dir():
        weights = find_model_file(path)
        if weights is None:
            found = ", ".join(sorted(p.name for p in path.iterdir())[:12]) or "nothing"
            raise FormatError(
                f"{path}: expected a model folder with one of {', '.join(MODEL_FILES)}; "
                f"found {found} ({flag})"
            )
        return open_layout(weights) if weights.is_dir() else open_store(weights)
    if not path.exists():
        raise FormatError(f"{path}: no such file or folder ({flag})")
    return open_store(path)


class ModelWeights:
    """One model checkpoint (tuned or base): its tensors, module map and head count."""

    def __init__(self, path: Path, flag: Argument | str):
        self.path = path
        self.store = _open_model(path, flag)
        names = {}
        for name in self.store.names():
            if name.endswith(".weight"):
                names[canonical_name(name)[: -len(".weight")]] = name
        self._tensor_names = names  # canonical module path -> raw tensor name
        # T5: decoder blocks are numbered after the encoder's (names.py)
        self.encoder_layers = encoder_depth(names)
        self.modules, self._left_out = map_with_reasons(names, self.encoder_layers, experts=True)
        self.heads = read_heads(path if path.is_dir() else path.parent)

    def tensor_name(self, ref: ModuleRef) -> str:
        if ref.experts:  # a mixture-of-experts role: one tensor per expert
            raise FormatError(f"{ref.module}: read each of its experts (ModuleRef.members)")
        return self._tensor_names[ref.module]

    def expert_refs(self, ref: ModuleRef) -> dict[int | None, ModuleRef]:
        """The refs of a role by expert index (``{None: ref}`` for a role without experts)."""
        return {member.expert: member for member in ref.members}

    def files(self) -> list[Path]:
        """The tensor files and the config.json (head count) this model is read from."""
        config = (self.path if self.path.is_dir() else self.path.parent) / "config.json"
        return [*self.store.files(), *([config] if config.is_file() else [])]

    def module_shape(self, ref: ModuleRef) -> tuple[int, int]:
        """(d_out, d_in) of the whole module weight (all roles of a fused one)."""
        info = self.store.info(self.tensor_name(ref))
        if len(info.shape) != 2:
            raise FormatError(
                f"{info.path}: {self.tensor_name(ref)} should be a 2-D weight; "
                f"has shape {info.shape}"
            )
        if not info.dtype.is_floating_point:
            raise FormatError(
                f"{info.path}: {self.tensor_name(ref)} has dtype {info.dtype}; spectra reads "
                "floating-point weights only (dequantise the checkpoint first)"
            )
        return (info.shape[1], info.shape[0]) if ref.conv1d else tuple(info.shape)

    def shape(self, ref: ModuleRef) -> tuple[int, int]:
        """(d_out, d_in) of the role's weight, from the header only."""
        d_out, d_in = self.module_shape(ref)
        return (len(torch.arange(d_out)[ref.rows(d_out, d_in, self.heads)]), d_in)

    def dtype(self, ref: ModuleRef) -> torch.dtype:
        return self.store.info(self.tensor_name(ref)).dtype

    def module_weight(
        self, ref: ModuleRef, dtype: torch.dtype | None = torch.float64
    ) -> torch.Tensor:
        """The whole module weight ``(d_out, d_in)`` (Conv1D transposed), in ``dtype``.

        ``dtype=None`` keeps the checkpoint's dtype (no copy beyond the read).
        """
        tensor = self.store.load(self.tensor_name(ref))
        if ref.conv1d:
            tensor = tensor.T  # Conv1D stores (d_in, d_out)
        return tensor if dtype is None else tensor.to(dtype)  # (d_out, d_in)

    def weight(self, ref: ModuleRef, dtype: torch.dtype | None = torch.float64) -> torch.Tensor:
        """The role's weight ``(d_out, d_in)``, in ``dtype`` (``None``: as stored)."""
        tensor = self.module_weight(ref, dtype=None)
        role = tensor[ref.rows(*tensor.shape, self.heads)]
        return role if dtype is None else role.to(dtype)

    def check_one_dtype(self, refs: list[ModuleRef]) -> None:
        """Refuse selected weights saved in different dtypes: a sign of a patched checkpoint."""
        dtypes: dict[torch.dtype, str] = {}
        for ref in refs:
            dtypes.setdefault(self.dtype(ref), self.tensor_name(ref))
        if len(dtypes) > 1:
            found = ", ".join(
                f"{str(d).removeprefix('torch.')} ({name})" for d, name in dtypes.items()
            )
            raise FormatError(
                f"{self.store.path}: expected one dtype for the weights analysed, found {found}; "
                "the rounding floor of ΔW depends on it. Re-save the checkpoint in one dtype, or "
                f"select modules of one dtype with {LAYERS}/{MODULES}"
            )

    def other_modules(self) -> list[str]:
        return sorted(self._tensor_names)

    def not_mapped(self) -> list[tuple[str, str]]:
        """``(tensor name, reason)`` for every tensor that is no mapped projection's weight."""
        mapped = {member.module for ref in self.modules.values() for member in ref.members}
        left_out = []
        for name in self.store.names():
            module = canonical_name(name).removesuffix(".weight")
            if name.endswith(".weight") and module in mapped:
                continue
            left_out.append((name, self._reason(name, module)))
        return left_out

    def _reason(self, name: str, module: str) -> str:
        """Why a tensor is not analysed, from its name alone (no shard is opened for it)."""
        if name.endswith(".bias"):
            return "bias vector: spectra analyses weight matrices"
        if left_out_reason(module) is not None:  # routers, shared and fused experts
            return left_out_reason(module)
        if not name.endswith(".weight"):
            return "not a weight (a buffer or other tensor)"
        if _NORM.search(module):
            return "a norm's scale vector, not a matrix"
        return self._left_out.get(module, "not in the architecture map")


def read_heads(folder: Path) -> int | None:
    """``num_attention_heads`` from a model folder's ``config.json``, if there is one."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    heads = config.get("num_attention_heads") if isinstance(config, dict) else None
    return heads if isinstance(heads, int) else None


_NORM = re.compile(r"(?i)(?:^|\.)(?:\w*norm\w*|ln_\w+|ln\d*)$")  # LayerNorm, norm_1, ln_f, …
_STRIP_ROWS = 512  # rows converted to float64 at a time: no whole-matrix temporaries


def coarser_dtype(first: torch.dtype, second: torch.dtype) -> torch.dtype:
    """The dtype of the two with the wider rounding grid (the larger machine ε)."""
    return max((first, second), key=lambda dtype: torch.finfo(dtype).eps)


def difference(tuned: torch.Tensor, base: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """``tuned − base`` in float64, on the tuned checkpoint's grid, with both Frobenius norms.

    When the tuned weights were saved on a coarser grid than the base (a
    float32 release fine-tuned and saved in bf16, the common case), the base
    is first rounded to the tuned dtype, as the tuned weights were: a weight
    the fine-tune left alone then gives exactly 0 instead of its rounding
    error, and what remains is the update (and the rounding of the updated
    weights). ``base_norm`` is ‖W_base‖_F as stored.

    Neither input is written into: the result is a new float64 tensor (a
    pickle reader hands out the same cached tensor on every read). The only
    full-size allocation is that result; the base is converted a strip of
    rows at a time into one reused buffer.
    """
    delta = tuned.to(torch.float64, copy=True)  # (d_out, d_in), never an alias of ``tuned``
    tuned_norm = float(torch.linalg.vector_norm(delta))
    rounding = coarser_dtype(tuned.dtype, base.dtype) == tuned.dtype != base.dtype
    strip = torch.empty(min(_STRIP_ROWS, base.shape[0]), base.shape[1], dtype=torch.float64)
    base_squares = 0.0
    for start in range(0, base.shape[0], _STRIP_ROWS):
        end = min(start + _STRIP_ROWS, base.shape[0])
        base_rows = strip[: end - start]  # (rows, d_in)
        base_rows.copy_(base[start:end])
        base_squares += float(torch.linalg.vector_norm(base_rows)) ** 2
        if rounding:  # round to the tuned grid: (rows, d_in) in tuned.dtype, back to float64
            base_rows.copy_(base[start:end].to(tuned.dtype))
        delta[start:end] -= base_rows
    return delta, tuned_norm, math.sqrt(base_squares)


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
    if any(_ADAPTER_KEY.search(name) for name in open_store(path).names()):
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
