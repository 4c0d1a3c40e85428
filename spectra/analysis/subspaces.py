"""Subspace metrics across the sources of a comparison (``compare(..., subspace=True)``).

For every (layer, role) that all sources share, ``measure_subspaces`` takes
the top singular vectors of each source's ΔW (``spectra.subspace``) and
gives:

- ``pairs``: one row per (layer, role, method a, method b) with the subspace
  similarity of their top-k left singular vectors and the k used on each side;
- ``modules``: one row per (method, layer, role) with the amplification
  factor and the intruder-dimension count, both of which need W0 (empty,
  with a warning, for a source without a base).

A saved report as a source is refused: it keeps singular values, not
vectors, and spectra does not re-open a checkpoint from a report's metadata.
Each checkpoint is read once: ``compare`` collects the vectors in its σ pass
(``SubspaceCollector`` given to ``analyze(..., each=)``), ``measure_subspaces``
streams each checkpoint's selected modules through the same collector.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..arguments import BASE, LAYERS, MODULES, PER_HEAD, SUBSPACE
from ..delta import LayerDelta, spectrum_key
from ..display import frame
from ..errors import SpectraError
from ..io.hub import locate
from ..loaders import ROLES, Checkpoint, Selection, options_for
from ..report import Progress, csv_text, is_report
from ..subspace import (
    INTRUDER_EPS,
    INTRUDER_TOP,
    SUBSPACE_RANK,
    Vectors,
    amplification,
    base_singular_vectors,
    intruder_dimensions,
    singular_vectors,
    subspace_similarity,
)
from ..svd import resolve_device
from .sources import load
from .stream import rounding_floor_of

__all__ = [
    "SubspaceCollector",
    "SubspaceResult",
    "check_subspace_options",
    "combine",
    "measure_subspaces",
    "refuse_reports",
]

PAIR_COLUMNS = ("layer", "role", "label_a", "label_b", "d_out", "k_a", "k_b", "similarity")
MODULE_COLUMNS = ("label", "layer", "role", "k", "amplification", "intruder_dimensions")


@dataclass
class SubspaceResult:
    """Similarity between methods per module, and amplification and intruders per method."""

    rank: int
    intruder_top: int
    intruder_eps: float
    pairs: list[dict[str, object]] = field(default_factory=list)
    modules: list[dict[str, object]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def mean_by_label(self, label: str, role: str, column: str) -> float | None:
        """The mean of a ``modules`` column over layers; None if no layer has a value."""
        values = [
            float(row[column])
            for row in self.modules
            if row["label"] == label and row["role"] == role and row[column] is not None
        ]
        return sum(values) / len(values) if values else None

    def pairs_to_pandas(self):
        """``pairs`` (one row per layer, module and pair of methods) as a DataFrame."""
        return frame(self.pairs, PAIR_COLUMNS)

    def modules_to_pandas(self):
        """``modules`` (amplification and intruders per method and module) as a DataFrame."""
        return frame(self.modules, MODULE_COLUMNS)

    def pairs_csv(self) -> str:
        return csv_text(PAIR_COLUMNS, self.pairs)

    def modules_csv(self) -> str:
        return csv_text(MODULE_COLUMNS, self.modules)


def _open(
    source: str | os.PathLike, base: str | os.PathLike | None, options: dict[str, object]
) -> Checkpoint:
    """The checkpoint behind a source (``refuse_reports`` has turned saved reports away)."""
    source = locate(source, "CKPT")  # once, for options_for and load
    return load(source, base=base, **options_for(source, options))


def refuse_reports(sources: Sequence[str | os.PathLike]) -> None:
    """Subspace metrics need singular vectors, which a saved report does not keep."""
    for source in sources:
        if is_report(source):
            raise SpectraError(
                f"{source}: a saved report keeps singular values, not the singular vectors that "
                "subspace metrics need, and spectra does not re-open checkpoints behind your "
                f"back: pass the checkpoint itself (or drop {SUBSPACE})"
            )


def check_subspace_options(
    rank: int, intruder_top: int, intruder_eps: float, options: dict[str, object]
) -> None:
    """Refuse subspace settings that cannot be measured, before any work."""
    if rank < 1 or intruder_top < 1 or not 0 < intruder_eps <= 1:
        raise SpectraError(
            f"subspace rank ({rank}) and intruder top ({intruder_top}) must be at least 1 and "
            f"the intruder threshold ({intruder_eps}) in (0, 1]"
        )
    if options.get("per_head"):
        raise SpectraError(f"subspace metrics compare whole modules: drop {PER_HEAD}")


class SubspaceCollector:
    """One source's singular vectors, amplification and intruders, taken as its ΔW stream by.

    Called with ``(checkpoint, delta)`` for each module (``analyze(..., each=)``
    passes σ too, which is not needed here), so a checkpoint is read once for
    σ and vectors alike. ``base_memo`` (shared by the collectors of one
    comparison) keeps W0's singular vectors per base and module.
    """

    def __init__(
        self,
        label: str,
        rank: int = SUBSPACE_RANK,
        intruder_top: int = INTRUDER_TOP,
        intruder_eps: float = INTRUDER_EPS,
        device: str | torch.device = "auto",
        base_memo: dict[tuple[str, tuple[int, str]], torch.Tensor] | None = None,
    ):
        self.label = label
        self.rank, self.intruder_top, self.intruder_eps = rank, intruder_top, intruder_eps
        self.device = resolve_device(device)
        self.base_memo = {} if base_memo is None else base_memo
        self.vectors: dict[tuple[int, str], Vectors] = {}
        self.rows: dict[tuple[int, str], dict[str, object]] = {}
        self.has_base = False

    def __call__(self, checkpoint: Checkpoint, delta: LayerDelta, *_: object) -> None:
        if delta.head is not None:  # subspace metrics compare whole modules
            return
        key = (delta.layer, delta.role)
        vectors = singular_vectors(
            delta.update, self.rank, self.device, rounding_floor=rounding_floor_of(delta)
        )
        row: dict[str, object] = {
            "label": self.label,
            "layer": key[0],
            "role": key[1],
            "k": vectors.k,
            "amplification": None,
            "intruder_dimensions": None,
        }
        W0 = checkpoint.base_weight(key)
        if W0 is not None:
            self.has_base = True
            memo = (str(checkpoint.base), key)
            if memo not in self.base_memo:
                self.base_memo[memo] = base_singular_vectors(W0.to(self.device))
            row["amplification"] = amplification(vectors, W0)
            row["intruder_dimensions"] = intruder_dimensions(
                W0,
                delta.update,
                self.intruder_top,
                self.intruder_eps,
                self.device,
                self.base_memo[memo],
            )
        self.vectors[key], self.rows[key] = vectors, row


def combine(collectors: Sequence[SubspaceCollector]) -> SubspaceResult:
    """Pairs and module rows over the (layer, role) every collector saw, in layer order."""
    first = collectors[0]
    result = SubspaceResult(first.rank, first.intruder_top, first.intruder_eps)
    shared = set.intersection(*(set(c.vectors) for c in collectors))
    if not shared:
        raise SpectraError(
            f"{', '.join(c.label for c in collectors)}: no (layer, module) in common for "
            f"subspace metrics; choose {MODULES} and {LAYERS} that every source has"
        )
    for key in sorted(shared, key=lambda key: (key[0], _role_order(key[1]))):
        result.modules.extend(c.rows[key] for c in collectors)
        for a, b in itertools.combinations(collectors, 2):
            U_a, U_b = a.vectors[key].U, b.vectors[key].U
            if U_a.shape[0] != U_b.shape[0]:
                raise SpectraError(
                    f"{spectrum_key(*key)}: {a.label} has d_out {U_a.shape[0]}, {b.label} "
                    f"{U_b.shape[0]}; subspaces of different models cannot be compared"
                )
            result.pairs.append(
                {
                    "layer": key[0],
                    "role": key[1],
                    "label_a": a.label,
                    "label_b": b.label,
                    "d_out": U_a.shape[0],
                    "k_a": a.vectors[key].k,
                    "k_b": b.vectors[key].k,
                    "similarity": subspace_similarity(U_a, U_b),
                }
            )
    result.warnings.extend(
        f"{c.label}: no base model, so no amplification or intruder dimensions (they need W0: "
        f"pass {BASE})"
        for c in collectors
        if not c.has_base
    )
    return result


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

    ``modules`` are the roles all sources share. Each checkpoint is read once,
    module by module. Dense ΔW take a full float64 SVD here (the σ-only path
    does not), and intruders one SVD of W0 and one of W0 + ΔW per module, so
    this is opt-in. ``compare(..., subspace=True)`` takes the same metrics in
    its σ pass instead (``SubspaceCollector``).
    """
    check_subspace_options(rank, intruder_top, intruder_eps, options)
    refuse_reports(sources)
    base = locate(base, BASE) if base is not None else None  # once for every source
    checkpoints = [_open(source, base, options) for source in sources]
    keys = _shared_keys(checkpoints, labels, modules, layers)
    memo: dict[tuple[str, tuple[int, str]], torch.Tensor] = {}
    collectors = []
    for label, checkpoint in zip(labels, checkpoints, strict=True):
        collect = SubspaceCollector(label, rank, intruder_top, intruder_eps, device, memo)
        for done, delta in enumerate(checkpoint.deltas_for(Selection(tuple(keys), ())), 1):
            collect(checkpoint, delta)
            if progress is not None:
                progress(done, len(keys), f"subspaces {label} L{delta.layer}.{delta.role}")
        collectors.append(collect)
    return combine(collectors)


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
            f"choose {MODULES} and {LAYERS} that every source has"
        )
    return sorted(shared, key=lambda key: (key[0], _role_order(key[1])))


def _role_order(role: str) -> int:
    return ROLES.index(role) if role in ROLES else len(ROLES)
