"""What every PEFT variant shares: the ``Variant`` interface and the per-module record.

A ``Variant`` knows how one ``peft_type`` names its tensors and rebuilds ΔW;
one instance per type serves every checkpoint of that type, so it keeps no
state: each method is given the ``PeftCheckpoint`` (its config, tensor store,
base weights and options) and the ``Adapted`` module it works on. The
checkpoint takes the variant its ``peft_type`` names from ``VARIANTS``, the
registry of PEFT methods, as the formats' registry is for formats: each
variant module registers its variants once (``register_variant``), with the
``peft_type`` they read and what they recognise. Variants only use the
checkpoint they are handed and never import its module at import time, so
the dependency runs one way: checkpoint → variant families → here.

``Adapted`` (``adapter.AdaptedModule``, the record every family uses) holds
one adapted module's tensor names by part and, once the variant has checked
the shapes against the config, its rank and scale with where each came from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..adapter import AdaptedModule

if TYPE_CHECKING:
    from ..adapter import Rows, Update
    from .checkpoint import PeftCheckpoint

__all__ = ["VARIANTS", "Adapted", "Variant", "register_variant"]

Adapted = AdaptedModule  # one adapted module of a PEFT adapter: the loaders' one record


class Variant:
    """How one ``peft_type`` names its tensors and rebuilds ΔW."""

    peft_type = ""  # the config's peft_type this variant reads: its name in ``VARIANTS``
    recognised_by = ""  # one line: the tensors and config fields it reads

    # Tensor names, as regular-expression alternatives: a module's parts (``lora_A``,
    # ``lora_B\d*``) and tensors the adapter shares across modules (VeRA's ``vera_A``).
    key_parts: tuple[str, ...] = ()
    shared_parts: tuple[str, ...] = ()
    refused = ""  # why a peft_type with no single static ΔW is refused ("" = it is read)
    formula = ""  # ΔW as docs/formats.md shows it (generated from here)
    follows = ""  # the peft source the rebuild follows: file and function

    why_base = ""
    base_hint = ""  # another way out than --base, if there is one
    parts: tuple[str, ...] = ()  # the module parts ΔW is rebuilt from
    config_fields: tuple[str, ...] = ("r", "alpha", "rank_pattern", "alpha_pattern")

    def name(self, ckpt: PeftCheckpoint) -> str:
        raise NotImplementedError

    def kind(self, ckpt: PeftCheckpoint) -> str:
        return "factored"

    def needs_base(self, ckpt: PeftCheckpoint) -> bool:
        return False

    def warnings(self, ckpt: PeftCheckpoint) -> list[str]:
        return []

    def check_file(self, ckpt: PeftCheckpoint) -> None:
        """Refuse, with the reason, a file this variant cannot read at all (default: none).

        Called once the file's tensors are grouped, before the modules are
        mapped: for a file that holds no module to map (UniLoRA saved with
        its shared vector alone).
        """

    def resolve_scale(self, ckpt: PeftCheckpoint, adapted: Adapted) -> None:
        """Fill in rank and scale (with their source), checking shapes against the config."""
        raise NotImplementedError

    def no_scale(self, adapted: Adapted, rank: int | None, source: str) -> None:
        """Record a method whose tensors carry their own scale: scale 1, and ``source`` says so."""
        adapted.rank = rank
        adapted.scale = 1.0
        adapted.scale_source = source

    def parts_used(self, ckpt: PeftCheckpoint, adapted: Adapted) -> set[str]:
        """The parts of a module that its ΔW is rebuilt from."""
        return set(adapted.parts) & set(self.parts)

    def unused_reason(self, ckpt: PeftCheckpoint, part: str) -> str:
        """Why a part of a module is not used by this variant's ΔW."""
        return f"{part} is not a part of a {ckpt.peft_type} adapter's ΔW"

    def tensor_reason(self, ckpt: PeftCheckpoint, name: str) -> str:
        """Why a tensor the checkpoint lists as not analysed is not, when the variant knows better.

        ``""`` (the default) keeps the checkpoint's reason (module not in the
        architecture map, unknown part). A variant whose tensors are never a
        projection's ΔW (a LayerNorm, a bias, embedding rows) says what they are.
        """
        return ""

    def module_shape(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int, int]:
        """(d_out, d_in) of the whole adapted module."""
        raise NotImplementedError

    def shape_before_base(self, ckpt: PeftCheckpoint, adapted: Adapted) -> tuple[int, int | None]:
        """What ``describe()`` shows when the shape needs the base (``None``: not known)."""
        return self.module_shape(ckpt, adapted)

    def updates(
        self, ckpt: PeftCheckpoint, adapted: Adapted, rows: Rows, base: torch.Tensor | None
    ) -> list[tuple[int | None, Update]]:
        raise NotImplementedError


VARIANTS: dict[str, Variant] = {}  # peft_type → the variant that reads it


def register_variant(variant: Variant) -> Variant:
    """Add ``variant`` to ``VARIANTS`` under its ``peft_type`` (once)."""
    if not variant.peft_type or variant.peft_type in VARIANTS:
        raise ValueError(f"peft_type {variant.peft_type!r} is empty or registered twice")
    VARIANTS[variant.peft_type] = variant
    return variant
