"""Checkpoints by name: paths and Hub ids are resolved here, then opened by the loaders.

The loaders see local paths only. ``load`` resolves a checkpoint and its base
(``io.hub.locate``: an existing path, an ``org/name`` in the local Hugging
Face cache, or an ``hf://`` id to download) and gives the loaders
``cached_base`` to find a PEFT adapter's ``base_model_name_or_path`` when a
base is needed and not given: a local model folder or a cached snapshot,
never a download.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..arguments import BASE
from ..io.hub import locate, resolve_cached
from ..loaders import Checkpoint, find_model_file
from ..loaders import load as load_local

__all__ = ["cached_base", "load"]


def cached_base(name: object) -> Path | None:
    """A local model folder for ``base_model_name_or_path``: the path, or its cached snapshot."""
    if not isinstance(name, str) or not name:
        return None
    path = Path(name).expanduser()
    if not path.is_dir():
        path = resolve_cached(name)
    if path is not None and path.is_dir() and find_model_file(path) is not None:
        return path
    return None


def load(
    path: str | os.PathLike,
    base: str | os.PathLike | None = None,
    format: str = "auto",
    **options: object,
) -> Checkpoint:
    """Open a checkpoint lazily; nothing but headers and configs is read here.

    ``path`` and ``base`` are local paths, Hub ids or ``spectra.io.hub.Source``
    objects: ``hf://org/name[@revision]`` downloads (with ``huggingface_hub``),
    a bare ``org/name[@revision]`` that is no path is looked up in the local
    Hugging Face cache only; each is resolved once, here. ``base`` is the
    model the checkpoint was tuned from: required to analyse a full fine-tune
    or a DoRA adapter, optional otherwise (it adds ``relative_norm``).
    Every registered format is read (``spectra.formats()`` lists them, with
    what each recognises and the options it takes; docs/formats.md describes
    them): ``format`` is ``"auto"`` (detect) or a registered format's name;
    ``options`` are the options the formats declare (``adapter``,
    ``per_head``, ``directional_only``, ``lora_alpha``, …).

    Args:
        path: the checkpoint: a local path, a Hub id (``org/name[@revision]``
            in the local cache, ``hf://org/name[@revision]`` to download) or a
            ``spectra.io.hub.Source``.
        base: the model the checkpoint was tuned from, in the same forms;
            ``None`` (the default): none, or the PEFT config's
            ``base_model_name_or_path`` when it is a local folder or cached.
        format: ``"auto"`` (the default: detect) or a registered format's name.
        **options: the detected format's options (``spectra.formats()``);
            any other is refused by name.

    Returns:
        The format's ``Checkpoint``: ``describe()`` says what is there,
        ``deltas()`` yields one ``LayerDelta`` per module, read lazily.

    Raises:
        FormatError: no such path or Hub id, no format claims it, a ``format``
            that is unknown or not the one detected, or an option the format
            does not take.

    Example::

        checkpoint = spectra.load("adapter/")
        info = checkpoint.describe()  # format, variant, modules, not_analysed
        print(info.format, info.variant, len(info.modules))
        tuned = spectra.load("hf://org/model@main", base="org/base-model")
    """
    source = locate(path, "CKPT")
    base_source = locate(base, BASE) if base is not None else None
    return load_local(source, base_source, format, base_lookup=cached_base, **options)
