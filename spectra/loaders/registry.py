"""The formats beyond the core three, each registered once with how it is recognised.

The core formats (``full``, ``peft``, ``multilora``) are detected in
``loaders/__init__.py``. Every other format — kohya / LyCORIS / diffusers
LoRA files, MLX-LM and torchtune adapters, GGUF adapters, … — is a
``Format`` in ``REGISTERED``: a name (what ``format=`` and ``--format``
take), a cheap ``claims(path)`` test (names, configs and headers only, never
weights), the ``open(path, base, base_lookup=…, **options)`` that returns
its ``Checkpoint``, the ``load`` options it takes, and one line saying how it
is recognised (README's "What it reads", ``inspect``).

Registered formats are asked first, in order, so that a format which shares
a file name with PEFT (MLX's ``adapter_config.json``) is told apart before
the PEFT reader sees it. A format module imports only ``delta``, ``errors``
and the other loader modules, like every loader.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .base import Checkpoint

__all__ = ["REGISTERED", "Format", "claiming", "register"]


@dataclass(frozen=True)
class Format:
    """One checkpoint format beyond the core three."""

    name: str  # what ``format=`` / ``--format`` take, and ``Checkpoint.format``
    claims: Callable[[Path], bool]  # cheap: file names, configs, headers
    open: Callable[..., Checkpoint]  # (path, base, *, base_lookup, **options)
    options: tuple[str, ...] = ()  # the ``load`` options it takes
    recognised_by: str = ""  # one line: how it is recognised


REGISTERED: list[Format] = []


def register(fmt: Format) -> Format:
    """Add ``fmt`` to the formats ``detect_format`` asks (once; in import order)."""
    if any(existing.name == fmt.name for existing in REGISTERED):
        raise ValueError(f"format {fmt.name!r} registered twice")
    REGISTERED.append(fmt)
    return fmt


def claiming(path: Path) -> Format | None:
    """The first registered format that claims ``path``, or None."""
    for fmt in REGISTERED:
        if fmt.claims(path):
            return fmt
    return None
