"""Subspace metrics across the sources of a comparison (``compare(..., subspace=True)``).

For every (layer, role) that all sources share, ``measure_subspaces`` takes
the top singular vectors of each source's ΔW (``spectra.subspace``) and
gives:

- ``pairs``: one row per (layer, role, method a, method b) with the subspace
  similarity of their top-k left singular vectors and the k used on each side;
- ``modules``: one row per (method, layer, role) with the amplification
  factor and the intruder-dimension count, both of which need W0 (empty,
  with a warning, for a source without a base).

A source given as a saved report is re-opened from the checkpoint its
``report.json`` names, since reports keep singular values but not vectors.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import SpectraError
from ..io.hub import locate
from ..loaders import Checkpoint, options_for
from ..report import Progress, Report, csv_text, is_report
from ..subspace import (
    INTRUDER_EPS,
    INTRUDER_TOP,
    SUBSPACE_RANK,
    amplification,
    base_singular_vectors,
    intruder_dimensions,
    singular_vectors,
    subspace_similarity,
)
from ..svd import resolve_device
from .sources import load
from .stream import rounding_floor_of

__all__ = ["SubspaceResult", "measure_subspaces"]

PAIR_COLUMNS = ("layer", "module", "method_a", "method_b", "d_out", "k_a", "k_b", "similarity")
MODULE_COLUMNS = ("method", "layer", "module", "k", "amplification", "intruder_dimensions")


@dataclass
class SubspaceResult:
    """Similarity between methods per module, and amplification and intruders per method."""

    rank: int
    intruder_top: int
    intruder_eps: float
    pairs: list[dict[str, object]] = field(default_factory=list)
    modules: list[dict[str, object]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def mean_by_method(self, method: str, module: str, column: str) -> float | None:
        """The mean of a ``modules`` column over layers; None if no layer has a value."""
        values = [
            float(row[column])
            for row in self.modules
            if row["method"] == method and row["module"] == module and row[column] is not None
        ]
        return sum(values) / len(values) if values else None

    def pairs_csv(self) -> str:
        return csv_text(PAIR_COLUMNS, self.pairs)

    def modules_csv(self) -> str:
        return csv_text(MODULE_COLUMNS, self.modules)


def _open(
    source: str | os.PathLike, base: str | os.PathLike | None, options: dict[str, object]
) -> Checkpoint:
    """The checkpoint behind a source, re-opened from ``report.json`` for a saved report."""
    if is_report(source):
        saved = Report.load(source).meta.get("source", {})
        path = saved.get("path")
        if not (path and Path(path).exists()) and saved.get("hub_id"):
            # its snapshot folder is gone: the same commit, looked up in the local cache only
            commit = saved.get("commit")
            path = f"{saved['hub_id']}@{commit}" if commit else saved["hub_id"]
        elif not path or not Path(path).exists():
            raise SpectraError(
                f"{source}: subspace metrics need singular vectors, which reports do not keep, "
                f"and the checkpoint it was made from ({path}) is gone; pass the checkpoint "
                "instead of the report"
            )
        return load(path, base=saved.get("base"), **saved.get("options", {}))
    source = locate(source, "CKPT")  # once, for options_for and load
    return load(source, base=base, **options_for(source, options))


def measure_subspaces(
    sources: Sequence[str | os.PathLike],
    labels: Sequence[str],
    modules: Sequence[str],
    layers: Sequence[int] | None = None,
    base: str | os.PathLike | None = None,
    device: str = "auto",
    *,
    rank: int = SUBSPACE_RANK,
    intruder_top: int = INTRUDER_TOP,
    intruder_eps: float = INTRUDER_EPS,
    progress: Progress | None = None,
    **options: object,
) -> SubspaceResult:
    """Subspace similarity of every pair of sources, amplification and intruders of each.

    ``modules`` are the roles all sources share. Dense ΔW take a full float64
    SVD here (the σ-only path does not), and intruders one SVD of W0 and one
    of W0 + ΔW per module, so this is opt-in.
    """
    if rank < 1 or intruder_top < 1 or not 0 < intruder_eps <= 1:
        raise SpectraError(
            f"subspace rank ({rank}) and intruder top ({intruder_top}) must be at least 1 and "
            f"the intruder threshold ({intruder_eps}) in (0, 1]"
        )
    if options.get("per_head"):
        raise SpectraError("subspace metrics compare whole modules: drop --per-head")
    target = resolve_device(device)
    result = SubspaceResult(rank, intruder_top, intruder_eps)
    base = locate(base, "--base") if base is not None else None  # once for every source
    checkpoints = [_open(source, base, options) for source in sources]
    keys = _shared_keys(checkpoints, labels, modules, layers)
    base_vectors: dict[tuple[str, tuple[int, str]], torch.Tensor] = {}
    without_base = set(labels)
    for done, key in enumerate(keys, start=1):
        vectors = {}
        for label, checkpoint in zip(labels, checkpoints, strict=True):
            layer, role = key
            (delta,) = [d for d in checkpoint.deltas([role], [layer]) if d.head is None]
            vectors[label] = singular_vectors(
                delta.update, rank, target, rounding_floor=rounding_floor_of(delta)
            )
            row: dict[str, object] = {
                "method": label,
                "layer": key[0],
                "module": key[1],
                "k": vectors[label].k,
                "amplification": None,
                "intruder_dimensions": None,
            }
            W0 = checkpoint.base_weight(key)
            if W0 is not None:
                without_base.discard(label)
                memo = (str(checkpoint.base), key)
                if memo not in base_vectors:
                    base_vectors[memo] = base_singular_vectors(W0.to(target))
                row["amplification"] = amplification(vectors[label], W0)
                row["intruder_dimensions"] = intruder_dimensions(
                    W0, delta.update, intruder_top, intruder_eps, target, base_vectors[memo]
                )
            result.modules.append(row)
        for a, b in itertools.combinations(labels, 2):
            U_a, U_b = vectors[a].U, vectors[b].U
            if U_a.shape[0] != U_b.shape[0]:
                raise SpectraError(
                    f"L{key[0]}.{key[1]}: {a} has d_out {U_a.shape[0]}, {b} {U_b.shape[0]}; "
                    "subspaces of different models cannot be compared"
                )
            similarity = subspace_similarity(U_a, U_b)
            result.pairs.append(
                {
                    "layer": key[0],
                    "module": key[1],
                    "method_a": a,
                    "method_b": b,
                    "d_out": U_a.shape[0],
                    "k_a": vectors[a].k,
                    "k_b": vectors[b].k,
                    "similarity": similarity,
                }
            )
        if progress is not None:
            progress(done, len(keys), f"subspaces L{key[0]}.{key[1]}")
    for label in labels:
        if label in without_base:
            result.warnings.append(
                f"{label}: no base model, so no amplification or intruder dimensions "
                "(they need W0: pass --base)"
            )
    return result


def _shared_keys(
    checkpoints: Sequence[Checkpoint],
    labels: Sequence[str],
    modules: Sequence[str],
    layers: Sequence[int] | None,
) -> list[tuple[int, str]]:
    shared = None
    for checkpoint in checkpoints:
        keys = set(checkpoint.plan(modules, layers).keys)
        shared = keys if shared is None else shared & keys
    if not shared:
        raise SpectraError(
            f"{', '.join(labels)}: no (layer, module) in common for subspace metrics; "
            "choose --modules and --layers that every source has"
        )
    return sorted(shared, key=lambda key: (key[0], modules.index(key[1])))
