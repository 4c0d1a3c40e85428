"""Checkpoint loading: detect the format of a local path and map its modules.

The loaders see local paths only and write nothing; names and Hub ids are
resolved before them (``spectra.load``, in ``spectra.analysis.sources``).
``load(path, base=None, format="auto", **options)`` returns a ``Checkpoint``
whose ``describe()`` says what is there and whose ``deltas()`` yields one
``LayerDelta`` per module, reading lazily. Detection:

- a folder with ``adapter_config.json`` whose ``peft_type`` is
  ``SPECTRA_MULTILORA`` → spectra's MultiLoRA layout (``"multilora"``);
- a folder with ``adapter_config.json`` (or adapters in sub-folders), or the
  ``adapter_model.*`` file inside one → a PEFT adapter (``"peft"``); a bare
  file of adapter tensors with no config beside it is refused (its scale is
  in the config);
- a ``.pt`` / ``.bin`` / ``.safetensors`` file holding ``lora_scaling``
  tensors → a MultiLoRA checkpoint in the reference layout (``"multilora"``);
- a model folder (``model.safetensors``, ``model.safetensors.index.json``,
  ``pytorch_model.bin`` or its index) or any other tensor file → a full
  fine-tune (``"full"``), which needs ``base``;
- before all of these, each format registered in ``registry.py`` (kohya,
  MLX-LM, GGUF, …) is asked, in order, whether it claims the path.

Options, each for the formats it applies to (others raise ``FormatError``):
``adapter`` (peft: a sub-folder adapter, or one of several in one file),
``per_head`` (peft multi-head, multilora: one row per head),
``directional_only`` (peft DoRA: analyse
s·B@A alone), ``lora_alpha`` (multilora: α, which the reference layout does
not save), ``initial`` (peft LoRA: the adapter folder saved before training,
for inits that move W₀ such as PiSSA: ΔW = s·(B@A − B₀@A₀)).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import FormatError
from . import (
    diffusers_lora,  # noqa: F401
    gguf_lora,  # noqa: F401
    kohya,  # noqa: F401
    mlx,  # noqa: F401
    torchtune_lora,  # noqa: F401
)
from .base import DEFAULT_MODULES, Checkpoint, CheckpointInfo, ModuleInfo, Selection
from .full import MODEL_FILES, FullCheckpoint, find_model_file
from .multilora import MULTILORA_TYPE, MultiLoraCheckpoint, is_multilora_file
from .names import ROLES
from .peft import (
    ADAPTER_CONFIG,
    ADAPTER_FILES,
    PEFT_TYPES,
    BaseLookup,
    PeftCheckpoint,
    read_adapter_config,
    sub_adapters,
)
from .registry import REGISTERED, Format, claiming
from .tensors import PICKLE_SUFFIXES, SAFETENSORS_SUFFIXES, open_store

# Formats beyond the core three register themselves on import (registry.py), in the order
# they are asked; one import line per format module below, e.g. ``from . import kohya``.

__all__ = [
    "CORE_FORMATS",
    "DEFAULT_MODULES",
    "PEFT_TYPES",
    "ROLES",
    "Checkpoint",
    "CheckpointInfo",
    "Format",
    "ModuleInfo",
    "MultiLoraCheckpoint",
    "Selection",
    "detect_format",
    "formats",
    "load",
    "option_names",
    "options_for",
]

CORE_FORMATS = ("full", "peft", "multilora")
# Tensor names of LoRA-family adapters (a bare adapter file is not a full model).
_ADAPTER_KEY = re.compile(r"\.(?:lora_[AB]|lora_down|lora_up|hada_w[12]_a|lokr_w[12])(?:\.|$)")
_CORE_OPTIONS = {
    "full": (),
    "peft": ("adapter", "per_head", "directional_only", "initial"),
    "multilora": ("lora_alpha", "per_head"),
}
_FLAGS = {
    "adapter": "--adapter",
    "per_head": "--per-head",
    "directional_only": "--directional-only",
    "lora_alpha": "--lora-alpha",
    "initial": "--initial",
}


def formats() -> tuple[str, ...]:
    """Every value ``format=`` takes: ``"auto"``, the core formats, then the registered ones."""
    return ("auto", *CORE_FORMATS, *(fmt.name for fmt in REGISTERED))


def option_names(format: str) -> tuple[str, ...]:
    """The ``load`` options that apply to checkpoints of ``format``."""
    if format in _CORE_OPTIONS:
        return _CORE_OPTIONS[format]
    return next(fmt.options for fmt in REGISTERED if fmt.name == format)


def options_for(path: str | Path, options: dict[str, object]) -> dict[str, object]:
    """The ``options`` that apply to ``path``'s format and are set (not None or False).

    For commands over several sources (compare, sweep), where an option such
    as ``lora_alpha`` is meant for the sources that use it.
    """
    usable = option_names(detect_format(path))
    return {k: v for k, v in options.items() if k in usable and v not in (None, False)}


def detect_format(path: str | Path) -> str:
    """The format of a local path (see ``formats()``); ``FormatError`` if none.

    Registered formats are asked first (``registry.claiming``), then the core ones.
    """
    path = Path(path)
    if not path.exists():
        raise FormatError(f"{path}: no such file or folder (expected a checkpoint folder or file)")
    registered = claiming(path)
    if registered is not None:
        return registered.name
    if path.is_dir():
        if (path / ADAPTER_CONFIG).is_file():
            peft_type = read_adapter_config(path).get("peft_type")
            return "multilora" if peft_type == MULTILORA_TYPE else "peft"
        if sub_adapters(path):
            return "peft"
        if find_model_file(path) is not None:
            return "full"
        found = sorted(p.name for p in path.iterdir())
        listing = ", ".join(found[:12]) + (" …" if len(found) > 12 else "") if found else "nothing"
        raise FormatError(
            f"{path}: no checkpoint recognised; expected {ADAPTER_CONFIG} (an adapter) or one of "
            f"{', '.join(MODEL_FILES)} (a model); found {listing}"
        )
    if path.name in ADAPTER_FILES and (path.parent / ADAPTER_CONFIG).is_file():
        return "peft"  # the weights file of an adapter folder: read as that folder
    if path.suffix in SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES:
        store = open_store(path)
        if is_multilora_file(store):
            return "multilora"
        if any(_ADAPTER_KEY.search(name) for name in store.names()):
            raise FormatError(
                f"{path}: holds LoRA-family adapter tensors (lora_A, lora_B, …) but no "
                f"{ADAPTER_CONFIG} lies beside it, and the scale α/r is in that config: pass "
                "the adapter folder that holds both"
            )
        return "full"
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

    ``path`` and ``base`` are local paths (or ``spectra.io.hub.Source``
    objects): names and Hub ids are resolved before the loaders, by
    ``spectra.load``. ``base_lookup`` turns a PEFT config's
    ``base_model_name_or_path`` into a local model folder when a base is
    needed and not given (``spectra.load`` looks in the local Hub cache).
    ``base`` is the model the checkpoint was tuned from: required to analyse a
    full fine-tune or a DoRA adapter, optional otherwise (it adds
    ``relative_norm``). ``format`` is ``"auto"`` (detect) or one of
    ``"full"``, ``"peft"``, ``"multilora"``. ``options`` are listed in the
    module docstring.
    """
    path = Path(path)
    base_path = Path(base) if base is not None else None
    if format not in formats():
        raise FormatError(
            f"unknown format {format!r}: expected one of {', '.join(formats())} (format=)"
        )
    detected = detect_format(path)
    if format != "auto" and format != detected:
        raise FormatError(f"{path}: looks like a {detected} checkpoint, not {format} (format=)")
    if base_path is not None and not base_path.exists():
        raise FormatError(f"{base_path}: no such file or folder (--base)")
    given = {key: value for key, value in options.items() if value not in (None, False)}
    unknown = [key for key in given if key not in option_names(detected)]
    if unknown:
        raise FormatError(
            f"{path}: {', '.join(_FLAGS.get(k, k) for k in unknown)} does not apply to a "
            f"{detected} checkpoint"
        )
    for fmt in REGISTERED:
        if fmt.name == detected:
            return fmt.open(path, base_path, base_lookup=base_lookup, **given)
    if detected == "peft":
        folder = path.parent if path.is_file() else path  # adapter_model.* → its folder
        return PeftCheckpoint(folder, base_path, base_lookup=base_lookup, **given)
    if detected == "multilora":
        return MultiLoraCheckpoint(path, base_path, **given)
    return FullCheckpoint(path, base_path)
