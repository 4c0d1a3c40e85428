"""Full fine-tunes still in their training layout: FSDP distributed checkpoints and DeepSpeed ZeRO.

Both are read as a ``TensorStore`` (``tensors.py``), so a full fine-tune in
either layout goes through ``full.FullCheckpoint`` like any model folder
(ΔW = W_tuned − W_base, with ``--base``); ``model.find_model_file`` asks
``find_layout`` after the Hugging Face file names.

FSDP / ``torch.distributed.checkpoint`` (DCP)
    A folder with ``.metadata`` and ``__{rank}_{n}.distcp`` files, e.g. the
    ``pytorch_model_fsdp_0/`` that accelerate writes (it saves
    ``{"model": state_dict}``, so every name starts with ``model.``: the
    inner name is taken from the metadata's ``planner_data``). Read in one
    process with PyTorch's own ``torch.distributed.checkpoint.load(...,
    no_dist=True)``, one tensor at a time: names, shapes and dtypes come
    from the metadata, and each tensor is loaded into a fresh buffer of its
    full shape, PyTorch gathering its chunks from every rank's file.
    PyTorch reads ``.metadata`` with an unrestricted ``pickle.load``; spectra
    reads it itself, allowing only the classes DCP writes there (its
    metadata dataclasses, ``torch.Size``, dtypes, paths), and refuses any
    other global. The ``.distcp`` files are loaded by PyTorch with
    ``weights_only=True``. Accelerate's ``FULL_STATE_DICT`` file
    ``pytorch_model_fsdp.bin`` is a plain pickled state dict.

DeepSpeed ZeRO
    A folder with ``latest`` (naming the tag) and ``global_stepN/`` holding
    ``*_model_states.pt`` and ``*_optim_states.pt`` (as
    ``engine.save_checkpoint`` and the Hugging Face Trainer write it, with
    ``zero_to_fp32.py`` beside them), or the ``global_stepN/`` folder itself.
    The fp32 master weights are rebuilt by DeepSpeed's own consolidation,
    ``deepspeed.utils.zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint``
    (ZeRO 1, 2 and 3, any world size), in its ``lazy_mode`` (a ZeRO-3 tensor is
    gathered from the partitions when it is read). That function calls
    ``torch.load(weights_only=False)``, which would run code from the files;
    spectra runs it with every ``torch.load`` of that module forced to
    ``weights_only=True``, allowing only the four DeepSpeed classes its
    optimizer shards hold (``ZeroStageEnum``, ``LossScaler``,
    ``DynamicLossScaler``, ``fragment_address``); any other global is refused.
    Without ``deepspeed`` installed the folder is refused in one line naming
    its ``zero_to_fp32.py`` and ``pip install deepspeed``.

Wrapper names inside keys (``_fsdp_wrapped_module.``,
``_checkpoint_wrapped_module.``) are stripped with the other prefixes by
``names.canonical_name``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import pickle
import re
import threading
import warnings
from pathlib import Path

import torch

from ...errors import FormatError
from .tensors import TensorInfo, TensorStore, open_store

__all__ = ["DCP_METADATA", "FSDP_FULL_FILE", "find_layout", "open_layout"]

DCP_METADATA = ".metadata"
FSDP_FULL_FILE = "pytorch_model_fsdp.bin"  # accelerate's FULL_STATE_DICT
_FSDP_FOLDER = re.compile(r"^pytorch_model_fsdp_\d+$")
_STEP_FOLDER = re.compile(r"^global_step\d+$")
_ZERO_STATES = "*_model_states.pt"


# -- finding a layout ------------------------------------------------------


def find_layout(folder: Path) -> Path | None:
    """The training-layout checkpoint in ``folder`` (a DCP or ZeRO folder, or a file), or None.

    ``folder`` may be the layout itself (``pytorch_model_fsdp_0/``,
    ``global_stepN/``, a folder with ``latest``) or a training checkpoint
    folder holding one (accelerate's ``checkpoint-N/``).
    """
    if not folder.is_dir():
        return None
    if (folder / DCP_METADATA).is_file() or _is_zero(folder):
        return folder
    if (folder / FSDP_FULL_FILE).is_file():
        return folder / FSDP_FULL_FILE
    models = sorted(p for p in folder.iterdir() if _FSDP_FOLDER.match(p.name))
    models = [p for p in models if (p / DCP_METADATA).is_file()]
    if len(models) > 1:
        raise FormatError(
            f"{folder}: holds {len(models)} FSDP model checkpoints "
            f"({', '.join(p.name for p in models)}); expected one: pass the folder of the "
            "model to analyse"
        )
    return models[0] if models else None


def _is_zero(folder: Path) -> bool:
    if _STEP_FOLDER.match(folder.name) and any(folder.glob(_ZERO_STATES)):
        return True
    return (folder / "latest").is_file() and any(
        p.is_dir() and _STEP_FOLDER.match(p.name) for p in folder.iterdir()
    )


def open_layout(path: Path) -> TensorStore:
    """A lazy ``TensorStore`` over a layout ``find_layout`` returned."""
    if path.is_file():
        return open_store(path)
    if (path / DCP_METADATA).is_file():
        return _DcpStore(path)
    return _ZeroStore(path)


class _LayoutStore(TensorStore):
    """A store whose tensors come from one reader of a whole folder."""

    def __init__(self, reader: _DcpReader | _ZeroReader, description: Path):
        super().__init__(dict.fromkeys(reader.keys(), reader), description)
        self._reader = reader

    def files(self) -> list[Path]:
        return self._reader.files()


# -- FSDP: torch.distributed.checkpoint ------------------------------------

# What DCP pickles into .metadata (torch 2.1 – 2.13); anything else is refused.
_DCP_CLASSES = {
    "torch.distributed.checkpoint.metadata": (
        "Metadata",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "TensorProperties",
        "MetadataIndex",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    ),
    "torch.distributed.checkpoint.filesystem": ("_StorageInfo",),
    "torch.serialization": ("_get_layout",),
    "torch": ("Size",),
    "pathlib": ("PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath", "Path"),
    "collections": ("OrderedDict",),
}


class _MetadataUnpickler(pickle.Unpickler):
    """``pickle`` restricted to the classes of DCP metadata (and torch dtypes)."""

    def find_class(self, module: str, name: str) -> object:
        if name in _DCP_CLASSES.get(module, ()):
            return getattr(importlib.import_module(module), name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"GLOBAL {module}.{name}")


def read_dcp_metadata(folder: Path) -> object:
    """The ``Metadata`` of a DCP folder, unpickled with only DCP's own classes allowed."""
    path = folder / DCP_METADATA
    try:
        with open(path, "rb") as handle:
            return _MetadataUnpickler(handle).load()
    except pickle.UnpicklingError as exc:
        raise FormatError(
            f"{path}: refused to unpickle: it asks for {exc}, which is not part of "
            "torch.distributed.checkpoint's metadata, and spectra never runs pickled code"
        ) from None
    except (OSError, EOFError, ValueError, TypeError, AttributeError, ImportError) as exc:
        raise FormatError(
            f"{path}: not readable torch.distributed.checkpoint metadata ({exc}); expected the "
            "folder written by torch.distributed.checkpoint.save (FSDP, accelerate)"
        ) from exc


class _DcpReader:
    """A DCP folder: names, shapes and dtypes from ``.metadata``; one tensor per ``load``."""

    def __init__(self, folder: Path):
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        self.path = folder
        self._dcp = dcp
        self.metadata = read_dcp_metadata(folder)
        entries = getattr(self.metadata, "state_dict_metadata", None)
        if not isinstance(entries, dict):
            raise FormatError(
                f"{folder / DCP_METADATA}: expected torch.distributed.checkpoint metadata with a "
                f"state_dict_metadata mapping, found {type(self.metadata).__name__}"
            )
        paths = getattr(self.metadata, "planner_data", None) or {}
        self._keys: dict[str, str] = {}  # state-dict name → DCP key
        self._meta: dict[str, TensorStorageMetadata] = {}
        for key, entry in entries.items():
            if not isinstance(entry, TensorStorageMetadata):
                continue  # bytes (step counters, …): not tensors
            name = _inner_name(key, paths.get(key))
            self._keys[name] = key
            self._meta[name] = entry

    def keys(self) -> list[str]:
        return list(self._keys)

    def files(self) -> list[Path]:
        return [self.path / DCP_METADATA, *sorted(self.path.glob("*.distcp"))]

    def info(self, name: str) -> TensorInfo:
        entry = self._meta[name]
        return TensorInfo(tuple(entry.size), entry.properties.dtype, self.path)

    def load(self, name: str) -> torch.Tensor:
        from torch.distributed.checkpoint.api import CheckpointException

        entry, key = self._meta[name], self._keys[name]
        tensor = torch.empty(tuple(entry.size), dtype=entry.properties.dtype)  # a fresh buffer
        reader = _safe_reader_class()(self.path, self.metadata)
        try:
            with warnings.catch_warnings():  # no_dist / deprecation notices: not for the user
                warnings.simplefilter("ignore")
                self._dcp.load({key: tensor}, storage_reader=reader, no_dist=True)
        except (Exception, CheckpointException) as exc:
            failures = getattr(exc, "failures", None) or {}
            cause = next(iter(failures.values()), exc)
            cause = getattr(cause, "exc", cause)  # DCP wraps each rank's exception
            raise FormatError(
                f"{self.path}: cannot read tensor {name} with torch.distributed.checkpoint "
                f"({type(cause).__name__}: {str(cause).strip()[:300]}); expected every "
                "__N_M.distcp file the .metadata names, whole"
            ) from None
        return tensor


def _inner_name(key: str, path: object) -> str:
    """The model's own name of a DCP key: ``("model", name)`` in planner_data → ``name``."""
    if isinstance(path, tuple) and len(path) == 2 and path[0] == "model":
        return str(path[1])
    if path is None and key.startswith("model.model."):
        return key[len("model.") :]
    return key


@functools.cache
def _safe_reader_class() -> type:
    from torch.distributed.checkpoint import FileSystemReader

    class SafeReader(FileSystemReader):
        """PyTorch's reader, handed the metadata spectra unpickled itself."""

        def __init__(self, folder: Path, metadata: object):
            super().__init__(str(folder))
            self._safe_metadata = metadata

        def read_metadata(self, *args: object, **kwargs: object) -> object:
            return self._safe_metadata

    return SafeReader


class _DcpStore(_LayoutStore):
    def __init__(self, folder: Path):
        super().__init__(_DcpReader(folder), folder / DCP_METADATA)


# -- DeepSpeed ZeRO ----------------------------------------------------------

# The only globals DeepSpeed's optimizer shards need beyond tensors and containers.
_DEEPSPEED_CLASSES = (
    ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
    ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
    ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
    ("deepspeed.utils.tensor_fragment", "fragment_address"),
)
_PATCH_LOCK = threading.Lock()


class _WeightsOnlyTorch:
    """``torch`` as DeepSpeed's consolidation module sees it: ``load`` is weights-only."""

    def __init__(self, allowed: list[object]):
        self._allowed = allowed

    def __getattr__(self, name: str) -> object:
        return getattr(torch, name)

    def load(self, *args: object, **kwargs: object) -> object:
        kwargs["weights_only"] = True
        with torch.serialization.safe_globals(self._allowed):
            return torch.load(*args, **kwargs)


class _ZeroReader:
    """A DeepSpeed ZeRO checkpoint, consolidated by DeepSpeed (lazily where it allows)."""

    def __init__(self, folder: Path):
        if _STEP_FOLDER.match(folder.name) and any(folder.glob(_ZERO_STATES)):
            self.root, self.tag = folder.parent, folder.name
        else:
            self.root, self.tag = folder, _read_tag(folder)
        self.path = self.root / self.tag
        if not self.path.is_dir():
            raise FormatError(
                f"{self.root / 'latest'}: names {self.tag!r}, but there is no folder "
                f"{self.path.name} beside it; pass the global_stepN folder to read"
            )
        self._tensors = self._consolidate()

    def _consolidate(self) -> dict[str, object]:
        try:
            zero = importlib.import_module("deepspeed.utils.zero_to_fp32")
        except ImportError:
            script = next(
                (
                    p
                    for p in (self.root / "zero_to_fp32.py", self.path / "zero_to_fp32.py")
                    if p.is_file()
                ),
                None,
            )
            how = (
                f"or convert it once with `python {script} {self.root} OUT --safe_serialization`"
                " and pass OUT"
                if script is not None
                else "or convert it once with DeepSpeed's zero_to_fp32.py and pass the result"
            )
            raise FormatError(
                f"{self.path}: a DeepSpeed ZeRO checkpoint; its weights are partitioned across "
                f"optimizer shards, which only DeepSpeed's consolidation reads: pip install "
                f"deepspeed, {how}"
            ) from None
        allowed = [getattr(importlib.import_module(m), n) for m, n in _DEEPSPEED_CLASSES]
        with _PATCH_LOCK, _quiet():
            original = zero.torch
            zero.torch = _WeightsOnlyTorch(allowed)
            try:
                tensors = zero.get_fp32_state_dict_from_zero_checkpoint(
                    str(self.root), tag=self.tag, lazy_mode=True
                )
            except pickle.UnpicklingError as exc:
                found = re.search(r"GLOBAL ([\w.]+)", str(exc))
                what = found.group(1) if found else "more than tensors and DeepSpeed's records"
                raise FormatError(
                    f"{self.path}: refused to unpickle: a file asks for {what}, and spectra never "
                    "runs pickled code (weights_only=True, DeepSpeed's own record classes only)"
                ) from None
            except (ValueError, FileNotFoundError, KeyError, RuntimeError, OSError) as exc:
                raise FormatError(
                    f"{self.path}: DeepSpeed could not consolidate this ZeRO checkpoint "
                    f"({type(exc).__name__}: {exc}); expected *_model_states.pt and one "
                    "*_optim_states.pt per rank, as deepspeed's save_checkpoint writes them"
                ) from None
            finally:
                zero.torch = original
        return dict(tensors)

    def keys(self) -> list[str]:
        return list(self._tensors)

    def files(self) -> list[Path]:
        latest = [self.root / "latest"] if (self.root / "latest").is_file() else []
        return [
            *latest,
            *sorted(self.path.glob("*_model_states.pt")),
            *sorted(self.path.glob("*_optim_states.pt")),
        ]

    def info(self, name: str) -> TensorInfo:
        tensor = self._tensors[name]
        return TensorInfo(tuple(tensor.shape), tensor.dtype, self.path)

    def load(self, name: str) -> torch.Tensor:
        tensor = self._tensors[name]
        if not torch.is_tensor(tensor):
            tensor = tensor.contiguous()  # DeepSpeed's GatheredTensor: gathered into a new tensor
        return tensor.detach()  # master weights may still carry requires_grad


def _read_tag(folder: Path) -> str:
    latest = folder / "latest"
    if latest.is_file():
        return latest.read_text().strip()
    steps = sorted(p.name for p in folder.iterdir() if _STEP_FOLDER.match(p.name))
    raise FormatError(
        f"{folder}: a DeepSpeed folder without a 'latest' file; expected one naming the tag, "
        f"found {', '.join(steps) or 'no global_stepN folder'}: pass the global_stepN folder"
    )


@contextlib.contextmanager
def _quiet():
    """DeepSpeed prints progress and bars: keep them off the user's terminal."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


class _ZeroStore(_LayoutStore):
    def __init__(self, folder: Path):
        reader = _ZeroReader(folder)
        super().__init__(reader, reader.path)
