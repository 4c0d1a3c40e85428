"""A Hugging Face model's weights: the folder or file, its module map and head count.

Read by every checkpoint that needs a model: the tuned and base sides of a
full fine-tune, and the base ``W0`` an adapter is measured against
(``relative_norm``, DoRA, fused bases). Either may be a model folder
(``model.safetensors``, sharded ``model.safetensors.index.json``, legacy
``pytorch_model.bin`` with or without its index), a training layout (FSDP /
DCP, DeepSpeed ZeRO: ``training.py``) or a bare ``.safetensors`` / ``.bin`` /
``.pt`` file. Tensors are read lazily, one module at a time.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ...arguments import LAYERS, MODULES, Argument
from ...errors import FormatError
from ..naming.architectures import (
    ModuleRef,
    canonical_name,
    encoder_depth,
    left_out_reason,
    map_with_reasons,
)
from .tensors import TensorStore, open_store
from .training import find_layout, open_layout

__all__ = ["MODEL_FILES", "ModelWeights", "find_model_file", "read_heads"]

_NORM = re.compile(r"(?i)(?:^|\.)(?:\w*norm\w*|ln_\w+|ln\d*)$")  # LayerNorm, norm_1, ln_f, …

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
        # T5: decoder blocks are numbered after the encoder's (naming/architectures.py)
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
