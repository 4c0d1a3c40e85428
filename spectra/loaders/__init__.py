"""Checkpoint loading: detect the format of a path and map its modules.

``load(path, base=None, format="auto")`` returns a ``Checkpoint`` whose
``describe()`` says what is there and whose ``deltas()`` yields one
``LayerDelta`` per module, reading lazily. Detection:

- a folder with ``adapter_config.json`` → a PEFT adapter (``format="peft"``);
- a folder with ``model.safetensors``, ``model.safetensors.index.json``,
  ``pytorch_model.bin`` or its index, or a bare ``.safetensors`` / ``.bin`` /
  ``.pt`` file → a full fine-tune (``format="full"``), which needs ``base``.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import FormatError
from .base import DEFAULT_MODULES, Checkpoint, CheckpointInfo, ModuleInfo, Selection
from .full import MODEL_FILES, FullCheckpoint, find_model_file
from .names import ROLES
from .peft import ADAPTER_CONFIG, LoraCheckpoint, read_adapter_config
from .tensors import PICKLE_SUFFIXES, SAFETENSORS_SUFFIXES

__all__ = [
    "DEFAULT_MODULES",
    "FORMATS",
    "ROLES",
    "Checkpoint",
    "CheckpointInfo",
    "ModuleInfo",
    "Selection",
    "detect_format",
    "load",
]

FORMATS = ("auto", "full", "peft")


def detect_format(path: str | Path) -> str:
    """``"peft"`` or ``"full"`` for a checkpoint path; ``FormatError`` if neither."""
    path = Path(path)
    if not path.exists():
        raise FormatError(f"{path}: no such file or folder (expected a checkpoint folder or file)")
    if path.is_dir():
        if (path / ADAPTER_CONFIG).is_file():
            return "peft"
        if find_model_file(path) is not None:
            return "full"
        found = sorted(p.name for p in path.iterdir())
        listing = ", ".join(found[:12]) + (" …" if len(found) > 12 else "") if found else "nothing"
        raise FormatError(
            f"{path}: no checkpoint recognised; expected {ADAPTER_CONFIG} (a PEFT adapter) or "
            f"one of {', '.join(MODEL_FILES)} (a model); found {listing}"
        )
    if path.suffix in SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES:
        return "full"
    raise FormatError(
        f"{path}: not a checkpoint file; expected a folder, or a .safetensors, .bin or .pt file"
    )


def load(path: str | Path, base: str | Path | None = None, format: str = "auto") -> Checkpoint:
    """Open a checkpoint lazily; nothing but headers and configs is read here.

    ``base`` is the model the checkpoint was tuned from: required to analyse a
    full fine-tune, optional for a LoRA adapter (it adds ``relative_norm``).
    ``format`` is ``"auto"`` (detect), ``"full"`` or ``"peft"``.
    """
    path = Path(path)
    base_path = Path(base) if base is not None else None
    if format not in FORMATS:
        raise FormatError(
            f"unknown format {format!r}: expected one of {', '.join(FORMATS)} (--format)"
        )
    detected = detect_format(path)
    if format != "auto" and format != detected:
        raise FormatError(f"{path}: looks like a {detected} checkpoint, not {format} (--format)")
    if base_path is not None and not base_path.exists():
        raise FormatError(f"{base_path}: no such file or folder (--base)")
    if detected == "peft":
        return LoraCheckpoint(path, base_path, read_adapter_config(path))
    return FullCheckpoint(path, base_path)
