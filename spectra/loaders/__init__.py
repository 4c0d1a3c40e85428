"""Checkpoint loading: detect the format of a local path and map its modules.

The loaders see local paths only and write nothing; names and Hub ids are
resolved before them (``spectra.load``, in ``spectra.analysis.sources``).
``load(path, base=None, format="auto", **options)`` returns a ``Checkpoint``
whose ``describe()`` says what is there and whose ``deltas()`` yields one
``LayerDelta`` per module, reading lazily.

Every format — full fine-tunes, PEFT adapters, MultiLoRA, kohya / LyCORIS,
diffusers, MLX-LM, torchtune, GGUF — is a ``registry.Format``, registered by
its own module when this package imports it, and asked in order of its
priority whether it claims the path (``registry.claiming``); ``formats()``
lists them with their options and what each recognises. The options
(``spectra.arguments.LOADER_OPTIONS``: ``adapter``, ``per_head``,
``directional_only``, ``lora_alpha``, ``initial``) apply to the formats that
declare them; any other is refused by name.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..arguments import BASE, LOADER_OPTIONS
from ..errors import FormatError
from . import full, multilora, peft  # noqa: F401  each registers its format on import
from .base import DEFAULT_MODULES, Checkpoint, CheckpointInfo, ModuleInfo, Selection
from .image import diffusers, kohya  # noqa: F401  (the priority, not this order, says
from .lowrank import gguf, mlx, torchtune  # noqa: F401  which format is asked first)
from .multilora import MULTILORA_TYPE, MultiLoraCheckpoint
from .naming.architectures import ROLES
from .peft import ADAPTER_CONFIG, PEFT_TYPES, BaseLookup
from .registry import FORMATS, Format, claiming, format_named
from .storage.model import MODEL_FILES, find_model_file

__all__ = [
    "DEFAULT_MODULES",
    "MULTILORA_TYPE",
    "PEFT_TYPES",
    "ROLES",
    "Checkpoint",
    "CheckpointInfo",
    "Format",
    "ModuleInfo",
    "MultiLoraCheckpoint",
    "Selection",
    "detect_format",
    "find_model_file",
    "format_names",
    "formats",
    "load",
    "option_names",
    "options_for",
]


def formats() -> tuple[Format, ...]:
    """Every registered format, in the order they are asked (highest priority first).

    Each has a ``name`` (what ``format=`` takes), its ``options`` (``Argument``s:
    Python name, flag, help) and ``recognised_by`` (what it claims).

    Returns:
        A tuple of ``registry.Format``, highest priority first.

    Example:
        >>> [fmt.name for fmt in formats()][-3:]
        ['multilora', 'peft', 'full']
    """
    return tuple(FORMATS)


def format_names() -> tuple[str, ...]:
    """Every value ``format=`` takes: ``"auto"``, then each registered format's name."""
    return ("auto", *(fmt.name for fmt in FORMATS))


def option_names(format: str) -> tuple[str, ...]:
    """The ``load`` options that apply to checkpoints of ``format``."""
    return format_named(format).option_names


def options_for(path: str | Path, options: dict[str, object]) -> dict[str, object]:
    """The ``options`` that apply to ``path``'s format and are set (not None or False).

    For commands over several sources (compare, sweep), where an option such
    as ``lora_alpha`` is meant for the sources that use it.
    """
    usable = option_names(detect_format(path))
    return {k: v for k, v in options.items() if k in usable and v not in (None, False)}


def detect_format(path: str | Path) -> str:
    """The name of the format that claims a local path; ``FormatError`` if none does."""
    path = Path(path)
    if not path.exists():
        raise FormatError(f"{path}: no such file or folder (expected a checkpoint folder or file)")
    claimed = claiming(path)
    if claimed is not None:
        return claimed.name
    if path.is_dir():
        found = sorted(p.name for p in path.iterdir())
        listing = ", ".join(found[:12]) + (" …" if len(found) > 12 else "") if found else "nothing"
        raise FormatError(
            f"{path}: no checkpoint recognised; expected {ADAPTER_CONFIG} (an adapter) or one of "
            f"{', '.join(MODEL_FILES)} (a model); found {listing}"
        )
    raise FormatError(
        f"{path}: not a checkpoint file; expected a folder, or a .safetensors, .bin or .pt file"
    )


def load(
    path: str | os.PathLike,
    base: str | os.PathLike | None = None,
    format: str = "auto",
    *,
    base_lookup: BaseLookup | None = None,
    **options: object,
) -> Checkpoint:
    """Open a checkpoint at a local path lazily; nothing but headers and configs is read here.

    Args:
        path: the checkpoint, a local path (names and Hub ids are resolved
            before the loaders, by ``spectra.load``).
        base: the model the checkpoint was tuned from: required to analyse a
            full fine-tune or a DoRA adapter, optional otherwise (it adds
            ``relative_norm``).
        format: ``"auto"`` (detect) or a registered format's name
            (``format_names()``): then the path must be of that format.
        base_lookup: turns a PEFT config's ``base_model_name_or_path`` into a
            local model folder when a base is needed and not given
            (``spectra.load`` looks in the local Hub cache).
        **options: the detected format's options (``formats()``); any other is
            refused by name.

    Returns:
        The format's ``Checkpoint``.

    Raises:
        FormatError: no such path, no format claims it, ``format`` is unknown
            or not the one detected, ``base`` does not exist, or an option does
            not apply to the detected format.

    Example::

        checkpoint = load("adapter/")  # a local PEFT adapter folder
        print(checkpoint.describe().variant)
        for delta in checkpoint.deltas(modules="v", layers=[0]):
            print(delta.key, delta.shape)
    """
    path = Path(path)
    base_path = Path(base) if base is not None else None
    if format not in format_names():
        raise FormatError(
            f"unknown format {format!r}: expected one of {', '.join(format_names())} (format=)"
        )
    detected = format_named(detect_format(path))
    if format != "auto" and format != detected.name:
        raise FormatError(
            f"{path}: looks like a {detected.name} checkpoint, not {format} (format=)"
        )
    if base_path is not None and not base_path.exists():
        raise FormatError(f"{base_path}: no such file or folder ({BASE})")
    given = {key: value for key, value in options.items() if value not in (None, False)}
    unknown = [key for key in given if key not in detected.option_names]
    if unknown:
        named = {option.name: option for option in LOADER_OPTIONS}
        raise FormatError(
            f"{path}: {', '.join(str(named.get(key, key)) for key in unknown)} does not apply "
            f"to a {detected.name} checkpoint"
        )
    return detected.open(path, base_path, base_lookup=base_lookup, **given)
