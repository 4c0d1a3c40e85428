"""Lazy, read-only access to the named tensors of a checkpoint on disk.

A ``TensorStore`` answers ``names()``, ``info(name)`` (shape and dtype, read
from headers where the format has them) and ``load(name)`` without reading
any other tensor. It covers a bare ``.safetensors`` file, a sharded folder
with ``*.safetensors.index.json`` (a shard is opened only when one of its
tensors is asked for), and pickled ``.bin`` / ``.pt`` files, which are loaded
with ``weights_only=True`` (never running code from the file) and memory-mapped
where the file allows it.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ..errors import FormatError

__all__ = ["TensorInfo", "TensorStore", "open_store"]

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")

_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class TensorInfo:
    """What a header says about one tensor: its shape, dtype and file."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    path: Path


class _SafetensorsFile:
    """One ``.safetensors`` file, opened on first use and kept open."""

    def __init__(self, path: Path):
        self.path = path
        self._handle = None

    def _open(self):
        if self._handle is None:
            if not self.path.is_file():
                raise FormatError(
                    f"{self.path}: shard file is missing (expected a .safetensors file)"
                )
            try:
                self._handle = safe_open(str(self.path), framework="pt")
            except (SafetensorError, OSError, ValueError) as exc:
                raise FormatError(
                    f"{self.path}: not a readable safetensors file ({exc}); "
                    "re-download or re-save the checkpoint"
                ) from exc
        return self._handle

    def keys(self) -> list[str]:
        try:
            return list(self._open().keys())
        except (SafetensorError, OSError, ValueError) as exc:
            raise FormatError(f"{self.path}: not a readable safetensors file ({exc})") from exc

    def info(self, name: str) -> TensorInfo:
        try:
            view = self._open().get_slice(name)
        except (SafetensorError, OSError, ValueError) as exc:
            raise FormatError(
                f"{self.path}: cannot read the header of tensor {name} ({exc})"
            ) from exc
        dtype = _SAFETENSORS_DTYPES.get(view.get_dtype())
        if dtype is None:
            raise FormatError(
                f"{self.path}: tensor {name} has unsupported dtype {view.get_dtype()}"
            )
        return TensorInfo(tuple(view.get_shape()), dtype, self.path)

    def load(self, name: str) -> torch.Tensor:
        try:
            return self._open().get_tensor(name)
        except (SafetensorError, OSError, ValueError) as exc:
            raise FormatError(f"{self.path}: cannot read tensor {name} ({exc})") from exc


class _PickleFile:
    """One pickled state dict (``.bin`` / ``.pt``), loaded with ``weights_only=True``."""

    def __init__(self, path: Path):
        self.path = path
        self._tensors: dict[str, torch.Tensor] | None = None

    def _open(self) -> dict[str, torch.Tensor]:
        if self._tensors is None:
            if not self.path.is_file():
                raise FormatError(
                    f"{self.path}: shard file is missing (expected a pickled state dict)"
                )
            self._tensors = _flat_state_dict(_load_pickle(self.path), self.path)
        return self._tensors

    def keys(self) -> list[str]:
        return list(self._open())

    def info(self, name: str) -> TensorInfo:
        tensor = self._open()[name]
        return TensorInfo(tuple(tensor.shape), tensor.dtype, self.path)

    def load(self, name: str) -> torch.Tensor:
        return self._open()[name]


def _load_pickle(path: Path) -> object:
    """``torch.load(weights_only=True)``, memory-mapped when the file is a zip archive."""
    mmap = zipfile.is_zipfile(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise FormatError(
            f"{path}: refused to unpickle: the file asks for more than tensors and plain "
            f"containers, and spectra loads pickles with weights_only=True only ({exc}). "
            "Re-save it as safetensors from code you trust"
        ) from exc
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise FormatError(f"{path}: not a readable PyTorch checkpoint ({exc})") from exc


def _flat_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a state dict, unwrapping ``{"state_dict": ...}``-style wrappers."""
    if isinstance(obj, dict):
        tensors = {k: v for k, v in obj.items() if isinstance(k, str) and torch.is_tensor(v)}
        if tensors:
            return tensors
        for key in ("state_dict", "model", "module", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                return _flat_state_dict(obj[key], path)
    raise FormatError(
        f"{path}: expected a state dict (a mapping of names to tensors), "
        f"found {type(obj).__name__} with no tensors"
    )


class TensorStore:
    """Named tensors over one or more files; opens a file only when needed."""

    def __init__(self, files: dict[str, _SafetensorsFile | _PickleFile], description: Path):
        self._files = files  # tensor name -> the file that holds it
        self.path = description  # the file or index the store was opened from

    def names(self) -> list[str]:
        return list(self._files)

    def __contains__(self, name: str) -> bool:
        return name in self._files

    def file_of(self, name: str) -> Path:
        return self._files[name].path

    def info(self, name: str) -> TensorInfo:
        return self._files[name].info(name)

    def load(self, name: str) -> torch.Tensor:
        return self._files[name].load(name)


def open_store(path: str | Path) -> TensorStore:
    """Open a tensor file, or a ``*.index.json`` of a sharded checkpoint, lazily."""
    path = Path(path)
    if path.name.endswith(".index.json"):
        return _open_index(path)
    reader = _reader_for(path)
    return TensorStore(dict.fromkeys(reader.keys(), reader), path)


def _reader_for(path: Path) -> _SafetensorsFile | _PickleFile:
    if path.suffix in SAFETENSORS_SUFFIXES:
        return _SafetensorsFile(path)
    if path.suffix in PICKLE_SUFFIXES:
        return _PickleFile(path)
    raise FormatError(
        f"{path}: unknown tensor file type {path.suffix!r}; expected .safetensors, .bin or .pt"
    )


def _open_index(path: Path) -> TensorStore:
    try:
        index = json.loads(path.read_text())
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FormatError(
            f"{path}: expected a shard index with a 'weight_map' object ({exc})"
        ) from exc
    readers: dict[str, _SafetensorsFile | _PickleFile] = {}
    files = {}
    for name, shard in weight_map.items():
        if shard not in readers:
            readers[shard] = _reader_for(path.parent / shard)
        files[name] = readers[shard]
    return TensorStore(files, path)
