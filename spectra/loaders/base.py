"""What every loaded checkpoint offers, and how a module selection is resolved.

A ``Checkpoint`` knows where each (layer, role) of its ΔW lives. It offers
``describe()`` (what is there, computing nothing: the ``inspect`` command),
``plan(modules, layers)`` (the selection, checked before any work starts) and
``deltas(modules, layers)`` (the ``LayerDelta`` of each selected module, read
lazily, one at a time).

Selection rules, so that a report is never silently partial:

- ``modules="all"`` means every role this checkpoint has;
- ``modules=None`` means ``("k", "v")``, whichever of the two the checkpoint
  has (a warning names a missing one); an explicitly named role that the
  checkpoint lacks is a ``SelectionError`` listing what it has.
- ``layers=None`` means every layer; an explicitly named layer that the
  checkpoint lacks is a ``SelectionError``.
- A selected (layer, role) pair that is missing while both the layer and the
  role exist elsewhere (e.g. an adapter on some layers' k only) is reported
  in the warnings.
- Every (layer, role) the checkpoint has that the selection leaves out is in
  ``Selection.not_selected``, and ``Selection.not_selected_note`` names them
  in one line with the flag that takes them in ("not selected: q, o, up, down
  in 6 layers (24 modules); --modules all for every role"): a default k, v
  run of an all-linear adapter says what else the file holds. ``analyze``
  stores both in the report (``meta["not_selected"]``,
  ``meta["not_selected_note"]``).

Nothing in a checkpoint vanishes: every tensor of an adapter file (and of a
full fine-tune) is either part of some (layer, role)'s ΔW or listed by
``not_analysed()`` as ``(tensor name, reason)`` — a module the architecture
map does not know, a bias, a router, a full weight of ``modules_to_save``, an
adapter that was not selected, … ``describe()`` carries that list (the
``inspect`` command prints it grouped by reason) and ``spectra.analyze`` puts
it in the report's ``meta["not_analysed"]``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..arguments import LAYERS, MODULES
from ..delta import LayerDelta
from ..errors import SelectionError
from ..selection import DEFAULT_MODULES, ROLES, layer_ranges, parse_layers, parse_modules
from .info import CheckpointInfo, ModuleInfo, group_by_reason, summarise_not_analysed
from .naming.architectures import ROLE_REASONS
from .storage.metadata import trainer_state

__all__ = [
    "DEFAULT_MODULES",
    "Checkpoint",
    "CheckpointInfo",
    "ModuleInfo",
    "Selection",
    "group_by_reason",
    "not_selected_note",
    "summarise_not_analysed",
]


@dataclass(frozen=True)
class Selection:
    """The (layer, role) pairs to analyse, in order, and what was left out."""

    keys: tuple[tuple[int, str], ...]
    warnings: tuple[str, ...]
    # (layer, role) pairs the checkpoint has that the selection leaves out, sorted
    not_selected: tuple[tuple[int, str], ...] = ()
    not_selected_note: str = ""  # one line naming them and the flag for the rest; "" if none


class Checkpoint(ABC):
    """A checkpoint whose per-module ΔW spectra can analyse.

    Made by ``spectra.load`` (each format has its subclass). ``describe()``
    says what is there, computing nothing; ``plan(modules, layers)`` checks a
    selection before any work; ``deltas(modules, layers)`` yields one
    ``LayerDelta`` per selected module, read lazily.

    Args:
        path: the checkpoint's local path.
        base: the base model's local path; ``None``: none.

    Example::

        checkpoint = spectra.load("adapter/")
        print(checkpoint.describe().variant, checkpoint.plan("all", None).keys)
        for delta in checkpoint.deltas(modules="v"):
            sigma = spectra.singular_values(delta)
    """

    format: str = ""

    def __init__(self, path: Path, base: Path | None):
        self.path = path
        self.base = base

    @property
    @abstractmethod
    def variant(self) -> str:
        """A human name of what was detected, e.g. ``"LoRA"`` or ``"rsLoRA"``."""

    @abstractmethod
    def available(self) -> Iterable[tuple[int, str]]:
        """Every (layer, role) this checkpoint has a ΔW for."""

    @abstractmethod
    def module_info(self, key: tuple[int, str]) -> ModuleInfo:
        """What is known of one (layer, role) before computing: shape, dtype, rank, scale."""

    def __repr__(self) -> str:
        pairs = list(self.available())
        layers = sorted({layer for layer, _ in pairs})
        roles = sorted({role for _, role in pairs}, key=_role_order)
        return (
            f"{type(self).__name__}({self.variant}, {self.format} format: {len(pairs)} modules, "
            f"layers {layer_ranges(layers)} × {', '.join(roles)}; {self.path})"
        )

    def details(self) -> dict[str, object]:
        """Format-specific facts for ``describe()`` (files, config fields)."""
        return {}

    def training(self) -> dict[str, object]:
        """What the checkpoint's files say about its training (``storage.metadata``).

        The default reads a Hugging Face Trainer's ``trainer_state.json`` beside
        the weights; a format whose files carry more (kohya's ``ss_*``, MLX-LM's
        config) says so. ``{}`` when nothing is known.
        """
        return trainer_state(self.path)

    def describe(self) -> CheckpointInfo:
        """What is in the checkpoint, computing nothing (the ``inspect`` command).

        Returns:
            A ``CheckpointInfo``: format, variant, base, one ``ModuleInfo`` per
            (layer, role), warnings, details and the tensors not analysed.
        """
        return CheckpointInfo(
            training=self.training(),
            path=str(self.path),
            format=self.format,
            variant=self.variant,
            base=str(self.base) if self.base else None,
            modules=[self.module_info(key) for key in sorted(self.available())],
            warnings=self.warnings(),
            details=self.details(),
            not_analysed=self.not_analysed(),
        )

    def not_analysed(self) -> list[tuple[str, str]]:
        """``(tensor name, reason)`` for every tensor of the checkpoint that no ΔW uses."""
        return []

    @abstractmethod
    def _delta(self, key: tuple[int, str]) -> Iterator[LayerDelta]:
        """The ΔW of one selected (layer, role) (several with heads)."""

    def check(self, selection: Selection) -> None:  # noqa: B027 - optional hook
        """Raise before any work if the selection cannot be analysed (e.g. no base)."""

    @abstractmethod
    def source_files(self) -> list[Path]:
        """Every file an analysis reads (weights, configs, the base's): what a cache key hashes."""

    def base_weight(self, key: tuple[int, str]) -> torch.Tensor | None:
        """W0 of one (layer, role), ``(d_out, d_in)`` float64, or None without a base."""
        return None

    def warnings(self) -> list[str]:
        """Warnings about the checkpoint as a whole (scales guessed, inits that moved W0, …)."""
        return []

    def plan(
        self, modules: Sequence[str] | None = None, layers: Sequence[int] | None = None
    ) -> Selection:
        """Resolve and check a selection (see the module docstring) without reading weights.

        Args:
            modules: roles (``"k,v"``, a list, ``"all"``); ``None`` (the
                default): k and v, whichever the checkpoint has.
            layers: ``"0-3,7"`` or a list; ``None`` (the default): every layer.

        Returns:
            A ``Selection``: the (layer, role) keys, warnings, and what was
            left out (``not_selected``, ``not_selected_note``).

        Raises:
            SelectionError: a role or layer asked for is not in the checkpoint.
            MissingBaseError: the selection's ΔW needs a base that was not given.
            BaseMismatchError: the base does not match the checkpoint.

        Example::

            selection = spectra.load("adapter/").plan("all", "0-3")
            print(selection.keys, selection.not_selected_note)
        """
        try:
            selection = select(sorted(self.available()), modules, layers, self.path)
        except _MissingRoleError as exc:  # say which unmapped modules might be the role asked for
            left_out = [pair for pair in self.not_analysed() if pair[1] in ROLE_REASONS]
            if not left_out:
                raise
            raise SelectionError(f"{exc}. {summarise_not_analysed(left_out)}") from exc
        self.check(selection)
        return selection

    def deltas(
        self, modules: Sequence[str] | None = None, layers: Sequence[int] | None = None
    ) -> Iterator[LayerDelta]:
        """Yield the ``LayerDelta`` of each selected module, layer by layer, lazily.

        Args:
            modules: as ``plan`` takes them; ``None`` (the default): k and v.
            layers: as ``plan`` takes them; ``None`` (the default): every layer.

        Returns:
            An iterator of ``LayerDelta`` (several per module with heads).

        Example::

            for delta in spectra.load("adapter/").deltas(modules="k,v", layers=[0, 1]):
                print(delta.key, delta.update)
        """
        return self.deltas_for(self.plan(modules, layers))

    def deltas_for(self, selection: Selection) -> Iterator[LayerDelta]:
        """Yield the ``LayerDelta``s of a selection made by ``plan()``, one at a time."""
        for key in selection.keys:
            yield from self._delta(key)


class _MissingRoleError(SelectionError):
    """A selection error because a role is missing (unmapped modules may explain it)."""


def select(
    available: Sequence[tuple[int, str]],
    modules: str | Sequence[str] | None,
    layers: str | int | Sequence[int] | None,
    path: Path,
) -> Selection:
    """Apply the selection rules of this module to the pairs a checkpoint has.

    ``modules`` and ``layers`` are read by ``spectra.selection`` (``"k,v"``,
    ``"all"``, ``"0-3,7"`` or lists alike).
    """
    modules = parse_modules(modules)
    layers = parse_layers(layers)
    have_roles = sorted({role for _, role in available}, key=_role_order)
    have_layers = sorted({layer for layer, _ in available})
    if not available:
        raise _MissingRoleError(f"{path}: no projection modules found in this checkpoint")
    warnings: list[str] = []
    if modules == "all":
        modules = have_roles  # every role this checkpoint has

    if modules is None:
        roles = [role for role in DEFAULT_MODULES if role in have_roles]
        if not roles:
            raise _MissingRoleError(
                f"{path}: no k or v projection found; this checkpoint has roles "
                f"{', '.join(have_roles)}: pass {MODULES(','.join(have_roles))}"
            )
        for role in DEFAULT_MODULES:
            if role not in roles:
                warnings.append(
                    f"no {role!r} modules in this checkpoint (it has {', '.join(have_roles)}); "
                    f"analysing {', '.join(roles)}"
                )
    else:
        roles = list(modules)
        missing = [role for role in roles if role not in have_roles]
        if missing:
            raise _MissingRoleError(
                f"{path}: no {', '.join(missing)} modules in this checkpoint; it has "
                f"{', '.join(have_roles)} ({MODULES(','.join(have_roles))})"
            )

    if layers is None:
        chosen_layers = have_layers
    else:
        chosen_layers = sorted(set(layers))
        missing_layers = [layer for layer in chosen_layers if layer not in have_layers]
        if missing_layers:
            raise SelectionError(
                f"{path}: layer(s) {', '.join(map(str, missing_layers))} not in this checkpoint; "
                f"it has layers {layer_ranges(have_layers)} ({LAYERS})"
            )

    have = set(available)
    keys = []
    for layer in chosen_layers:
        for role in roles:
            if (layer, role) in have:
                keys.append((layer, role))
            else:
                warnings.append(f"layer {layer} has no {role!r} module in this checkpoint")
    if not keys:
        raise SelectionError(
            f"{path}: nothing to analyse for roles {roles} in layers {layer_ranges(chosen_layers)}"
        )
    chosen = set(keys)
    left_out = sorted((pair for pair in have if pair not in chosen), key=_pair_order)
    note = not_selected_note(left_out, roles, have_layers)
    return Selection(tuple(keys), tuple(warnings), tuple(left_out), note)


def not_selected_note(
    left_out: Sequence[tuple[int, str]], roles: Sequence[str], have_layers: Sequence[int]
) -> str:
    """One line naming the (layer, role) pairs a selection left out, and the flags for them.

    ``roles`` are the roles selected and ``have_layers`` every layer of the
    checkpoint; a pair of another role counts under ``--modules``, a pair of
    a selected role (so in a layer not selected) under ``--layers``:
    ``not selected: o in 6 layers (6 modules) and k, v in layers 3-5 (6
    modules); --modules all for every role, leave out --layers for every layer``.
    """
    other_roles = [pair for pair in left_out if pair[1] not in roles]
    other_layers = [pair for pair in left_out if pair[1] in roles]
    groups = [*_groups(other_roles, have_layers), *_groups(other_layers, have_layers)]
    if not groups:
        return ""
    hints = [f"{MODULES('all')} for every role"] if other_roles else []
    hints += [f"leave out {LAYERS} for every layer"] if other_layers else []
    return f"not selected: {' and '.join(groups)}; {', '.join(hints)}"


def _groups(pairs: Sequence[tuple[int, str]], have_layers: Sequence[int]) -> list[str]:
    """``q, o in 6 layers (12 modules)`` (every layer) or ``k in layers 3-5 (3 modules)``.

    Roles present in the same layers share a group.
    """
    layers_of: dict[str, list[int]] = {}
    for layer, role in sorted(pairs, key=_pair_order):
        layers_of.setdefault(role, []).append(layer)
    by_layers: dict[tuple[int, ...], list[str]] = {}
    for role in sorted(layers_of, key=_role_order):
        by_layers.setdefault(tuple(layers_of[role]), []).append(role)
    groups = []
    for layers, group in by_layers.items():
        if list(layers) == list(have_layers) and len(layers) > 1:
            where = f"{len(layers)} layers"
        else:
            where = f"layer{'s' * (len(layers) > 1)} {layer_ranges(layers)}"
        count = len(layers) * len(group)
        groups.append(f"{', '.join(group)} in {where} ({count} module{'s' * (count != 1)})")
    return groups


def _pair_order(pair: tuple[int, str]) -> tuple[int, int, str]:
    return (pair[0], _role_order(pair[1]), pair[1])


def _role_order(role: str) -> int:
    return ROLES.index(role) if role in ROLES else len(ROLES)
