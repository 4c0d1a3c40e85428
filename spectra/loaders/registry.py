"""Every checkpoint format, registered the same way: the one door to the loaders.

A format is a ``Format``: its name (what ``format=`` takes and
``Checkpoint.format`` says), a cheap ``claims(path)`` test (file names,
configs and headers, never weights), the ``open(path, base, *, base_lookup,
**options)`` that returns its ``Checkpoint``, an explicit ``priority`` (formats
are asked from the highest down, so that one which shares a file name with
another — MLX-LM's ``adapter_config.json``, torchtune's folder beside its PEFT
export — is told apart before the more general reader sees it), the options it
takes (``Argument``s declared in ``spectra.arguments``: their Python name, flag, type
and help) and one line saying what it recognises. The full fine-tune, PEFT and
MultiLoRA readers register here like the newest format: nothing is detected
anywhere else. ``spectra.formats()`` lists them; the command line's loader
flags, ``load``'s check of its options and the format table of the docs are
all made from this registry.

A format module registers itself when ``loaders/__init__.py`` imports it;
the import order does not matter, the priority does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..arguments import Argument
from .base import Checkpoint

__all__ = ["FORMATS", "Format", "claiming", "format_named", "register"]


@dataclass(frozen=True)
class Format:
    """One checkpoint format: how it is recognised, opened and configured."""

    name: str  # what ``format=`` takes, and ``Checkpoint.format``
    claims: Callable[[Path], bool]  # cheap: file names, configs, headers
    open: Callable[..., Checkpoint]  # (path, base, *, base_lookup, **options)
    priority: int  # asked from the highest down; no two formats share one
    options: tuple[Argument, ...] = ()  # the ``load`` options it takes
    recognised_by: str = ""  # one line: what it recognises

    @property
    def option_names(self) -> tuple[str, ...]:
        """The Python names of its options (``load``'s keyword arguments)."""
        return tuple(option.name for option in self.options)


FORMATS: list[Format] = []  # highest priority first


def register(fmt: Format) -> Format:
    """Add ``fmt`` to the formats ``detect_format`` asks, in order of priority."""
    for existing in FORMATS:
        if existing.name == fmt.name:
            raise ValueError(f"format {fmt.name!r} registered twice")
        if existing.priority == fmt.priority:
            raise ValueError(
                f"formats {existing.name!r} and {fmt.name!r} share priority {fmt.priority}: "
                "give each its own, so that the order they are asked in is stated"
            )
    FORMATS.append(fmt)
    FORMATS.sort(key=lambda registered: -registered.priority)
    return fmt


def claiming(path: Path) -> Format | None:
    """The format of highest priority that claims ``path``, or None."""
    return next((fmt for fmt in FORMATS if fmt.claims(path)), None)


def format_named(name: str) -> Format:
    """The registered format called ``name`` (``KeyError`` if there is none)."""
    for fmt in FORMATS:
        if fmt.name == name:
            return fmt
    raise KeyError(name)
