"""What users write to choose modules and layers, read the same way everywhere.

``modules`` and ``layers`` are written as on the command line or as Python
values, in every function that takes them (``spectra.analyze``, ``compare``,
``sweep``, ``load(...).plan``, the plots)::

    modules="k,v"   modules=["k", "v"]   modules="all"   modules=None  (k and v)
    layers="0-3,7"  layers=[0, 1, 2, 3, 7]  layers=5      layers=None   (every layer)

This module imports nothing heavy (no torch), so that the command line can
check its arguments and print ``--help`` without loading the library.
"""

from __future__ import annotations

from collections.abc import Iterable

from .arguments import LAYERS, MODULES, Argument
from .errors import SelectionError

__all__ = ["DEFAULT_MODULES", "ROLES", "layer_ranges", "parse_layers", "parse_modules"]

ROLES = ("q", "k", "v", "o", "gate", "up", "down")  # every module role, in display order
DEFAULT_MODULES = ("k", "v")  # what an analysis takes when no modules are named


def parse_modules(
    modules: str | Iterable[str] | None, flag: Argument | str = MODULES
) -> str | tuple[str, ...] | None:
    """``"k,v"`` or ``["k", "v"]`` → ``("k", "v")``; ``"all"`` → ``"all"``; None → None.

    Unknown roles raise ``SelectionError`` listing the valid ones; ``flag``
    names the argument in the message (``--modules`` on the command line, ``modules=``
    in Python: an ``Argument`` renders itself for where the message is made).
    """
    if modules is None:
        return None
    parts = modules.split(",") if isinstance(modules, str) else list(modules)
    roles = [str(part).strip() for part in parts if str(part).strip()]
    if roles == ["all"]:
        return "all"
    unknown = [role for role in roles if role not in ROLES]
    if unknown or not roles:
        shown = ", ".join(map(repr, unknown)) if unknown else repr(modules)
        raise SelectionError(
            f"unknown module role(s) {shown}: expected some of {', '.join(ROLES)} "
            f"(comma-separated), or all ({flag})"
        )
    return tuple(dict.fromkeys(roles))


def parse_layers(
    layers: str | int | Iterable[int | str] | None, flag: Argument | str = LAYERS
) -> tuple[int, ...] | None:
    """``"0-3,7"``, ``[0, 1, 2, 3, 7]`` or ``7`` → sorted layer numbers; None → None (all).

    Ranges are ``low-high``, inclusive; anything else raises ``SelectionError``.
    """
    if layers is None:
        return None
    if isinstance(layers, bool):
        raise SelectionError(f"{layers!r} is not a layer list like 0-3,7 ({flag})")
    if isinstance(layers, int) or hasattr(layers, "__index__"):  # numpy integers too
        parts: list[object] = [layers]
    elif isinstance(layers, str):
        parts = [part.strip() for part in layers.split(",")]
    else:
        parts = list(layers)
    chosen: set[int] = set()
    for part in parts:
        chosen.update(_layer_part(part, layers, flag))
    if not chosen:
        raise SelectionError(f"{layers!r}: no layers given ({flag})")
    return tuple(sorted(chosen))


def _layer_part(part: object, whole: object, flag: Argument | str) -> range:
    """One item of a layer list: ``3``, ``"3"`` or ``"0-3"``."""
    bad = SelectionError(
        f"{whole!r} is not a layer list like 0-3,7 (non-negative numbers, ranges low-high) ({flag})"
    )
    if isinstance(part, bool):
        raise bad
    if isinstance(part, int) or (hasattr(part, "__index__") and not isinstance(part, str)):
        value = int(part)  # numpy integers too
        if value < 0:
            raise bad
        return range(value, value + 1)
    text = str(part).strip()
    low, dash, high = text.partition("-")
    try:
        start = int(low)
        stop = int(high) if dash else start
    except ValueError:
        raise bad from None
    if start < 0 or stop < start:
        raise bad
    return range(start, stop + 1)


def layer_ranges(layers: Iterable[int]) -> str:
    """``[0, 1, 2, 5]`` → ``"0-2,5"``."""
    parts: list[list[int]] = []
    for layer in sorted(set(layers)):
        if parts and layer == parts[-1][1] + 1:
            parts[-1][1] = layer
        else:
            parts.append([layer, layer])
    return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in parts) or "none"
