"""Lazy, read-only access to the named tensors of a checkpoint on disk.

A ``TensorStore`` answers ``names()``, ``info(name)`` (shape and dtype, read
from headers where the format has them) and ``load(name)`` without reading
any other tensor. It covers a bare ``.safetensors`` file (its header checked
against the file size, each tensor read by offset, a large one mapped
copy-on-write from the page cache), a sharded folder with
``*.safetensors.index.json`` (a shard is opened only when one of its tensors
is asked for), and pickled ``.bin`` / ``.pt`` files, which are loaded with
``weights_only=True`` (never running code from the file) and memory-mapped
where the file allows it.
"""

from __future__ import annotations

import functools
import json
import math
import mmap
import pickle
import pickletools
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ...errors import FormatError

__all__ = ["TensorInfo", "TensorStore", "open_store", "tensor_names"]

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")  # what torch says the pickle asked for

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
    """One ``.safetensors`` file: its header parsed once, each tensor read with ``pread``.

    Reading by offset instead of memory-mapping keeps the memory of a tensor
    to the tensor itself: pages of a mapped file stay in the process's
    resident set, which would then grow with the size of the model read.
    The layout (an 8-byte little-endian header length, a JSON header of
    ``dtype``, ``shape`` and ``data_offsets`` per tensor, then the data) is
    checked against the file size before anything is read.
    """

    _MAX_HEADER = 100 * 2**20

    def __init__(self, path: Path):
        self.path = path
        self._header: dict[str, dict] | None = None
        self._data_start = 0

    def _read_header(self) -> dict[str, dict]:
        if self._header is not None:
            return self._header
        if not self.path.is_file():
            raise FormatError(f"{self.path}: shard file is missing (expected a .safetensors file)")
        size = self.path.stat().st_size
        with open(self.path, "rb") as handle:
            prefix = handle.read(8)
            length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
            if not 2 <= length <= min(self._MAX_HEADER, size - 8):
                raise FormatError(
                    f"{self.path}: not a readable safetensors file (header length {length} in a "
                    f"file of {size} bytes); re-download or re-save the checkpoint"
                )
            raw = handle.read(length)
        try:
            header = json.loads(raw)
            if not isinstance(header, dict):
                raise ValueError("the header is not a JSON object")
        except ValueError as exc:
            raise FormatError(
                f"{self.path}: not a readable safetensors file (corrupted header: {exc}); "
                "re-download or re-save the checkpoint"
            ) from exc
        header.pop("__metadata__", None)
        self._data_start = 8 + length
        for name, entry in header.items():
            self._check_entry(name, entry, size - self._data_start)
        self._header = header
        return header

    def _check_entry(self, name: str, entry: object, data_size: int) -> None:
        try:
            dtype = _SAFETENSORS_DTYPES[entry["dtype"]]
            shape = [int(d) for d in entry["shape"]]
            begin, end = (int(o) for o in entry["data_offsets"])
            count = math.prod(shape)
            valid = min(shape, default=0) >= 0 and 0 <= begin <= end <= data_size
            valid = valid and end - begin == count * torch.empty(0, dtype=dtype).element_size()
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(
                f"{self.path}: tensor {name} has a malformed header entry ({exc}); the file is "
                "corrupted or not safetensors"
            ) from exc
        if not valid:
            raise FormatError(
                f"{self.path}: tensor {name} claims bytes {entry['data_offsets']} for shape "
                f"{entry['shape']} in a data section of {data_size} bytes; the file is truncated "
                "or corrupted: re-download it"
            )

    def keys(self) -> list[str]:
        return list(self._read_header())

    def info(self, name: str) -> TensorInfo:
        entry = self._read_header()[name]
        return TensorInfo(tuple(entry["shape"]), _SAFETENSORS_DTYPES[entry["dtype"]], self.path)

    def load(self, name: str) -> torch.Tensor:
        entry = self._read_header()[name]
        begin, end = entry["data_offsets"]
        dtype = _SAFETENSORS_DTYPES[entry["dtype"]]
        offset = self._data_start + begin
        if end - begin >= _MAP_AT_LEAST and offset % dtype.itemsize == 0:
            mapped = _map_private(self.path, offset, end - begin, dtype)
            if mapped is not None:
                return mapped.reshape(entry["shape"])
        buffer = bytearray(end - begin)
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self._data_start + begin)
                read = handle.readinto(buffer)
        except OSError as exc:
            raise FormatError(f"{self.path}: cannot read tensor {name} ({exc})") from exc
        if read != len(buffer):
            raise FormatError(f"{self.path}: tensor {name} is cut short; the file is truncated")
        if not buffer:
            return torch.empty(entry["shape"], dtype=dtype)
        return torch.frombuffer(buffer, dtype=dtype).reshape(entry["shape"])


_MAP_AT_LEAST = 1 << 20  # bytes: a tensor this large is mapped, a smaller one read


def _map_private(path: Path, offset: int, size: int, dtype: torch.dtype) -> torch.Tensor | None:
    """``size`` bytes of ``path`` at ``offset`` as a flat tensor, mapped copy-on-write.

    The pages come from the page cache and no copy is made: a large tensor
    costs no new memory until it is converted. The mapping is private, so a
    write into the tensor changes this process's copy, never the file (and
    spectra writes into none). None where the file cannot be mapped (some
    network and FUSE file systems): the caller reads it instead.
    """
    try:
        with open(path, "rb") as handle:
            mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
    except (OSError, ValueError):
        return None
    if len(mapping) < offset + size:  # the file shrank since its header was read
        raise FormatError(f"{path}: a tensor is cut short; the file is truncated")
    # the tensor holds the mapping open (the buffer protocol) for as long as it lives
    return torch.frombuffer(mapping, dtype=dtype, offset=offset, count=size // dtype.itemsize)


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
        with warnings.catch_warnings():  # torch warns about legacy (non-zip) pickles: said below
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        if not mmap and not _starts_like_a_pickle(path):
            raise FormatError(
                f"{path}: not a PyTorch checkpoint: neither a zip archive (torch.save) nor a "
                "pickle (legacy torch.save); expected a pickled state dict (.bin / .pt)"
            ) from None
        found = _GLOBAL.search(str(exc))
        what = f"code ({found.group(1)})" if found else "more than tensors and plain containers"
        raise FormatError(
            f"{path}: refused to unpickle: it asks for {what}, and spectra never runs pickled "
            "code (weights_only=True). Re-save it as safetensors from code you trust"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise FormatError(f"{path}: not a readable PyTorch checkpoint ({exc})") from exc


def _starts_like_a_pickle(path: Path) -> bool:
    """Whether ``path`` opens with one well-formed pickle, as every legacy torch.save does."""
    with open(path, "rb") as file:
        try:
            for _ in pickletools.genops(file):  # stops at the first pickle's STOP opcode
                pass
        except (ValueError, EOFError):
            return False
    return True


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

    def files(self) -> list[Path]:
        """Every file the store reads: the index (if any) and each tensor file once."""
        found = dict.fromkeys(reader.path for reader in self._files.values())
        return list(dict.fromkeys([self.path, *found]))

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


def tensor_names(path: str | Path) -> tuple[str, ...]:
    """The tensor names of one file, read once however many formats ask.

    Detection asks every registered format whether it claims a path, and
    several look at the names: a pickle is unpickled to list them, so the
    list is kept per file version (path, size, modification time).
    """
    path = Path(path).resolve()
    try:
        status = path.stat()
    except OSError:  # nothing to keep: the reader says what is wrong with the path
        return tuple(open_store(path).names())
    return _names_of(path, status.st_size, status.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _names_of(path: Path, size: int, modified_ns: int) -> tuple[str, ...]:
    return tuple(open_store(path).names())


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
