"""Head diversity: how alike the heads of a multi-head source are, and how they share the update.

A multi-head module has heads j = 0 … n−1, each with its own update
ΔW_j = s·B_j @ A_j: HydraLoRA / R-LoRA share one A (``loaders.methods.multihead``),
MultiLoRA's n parallel LoRAs each have their own A_j and carry their
scaling vector in the up-projection, B_j = diag(c_j)·B_j of the file
(``loaders.methods.multilora``). For each pair of heads a < b of a
(layer, role) this measures

- ``cosine``: the cosine of the flattened B heads, ⟨B_a, B_b⟩ / (‖B_a‖‖B_b‖):
  R-LoRA's measure of head diversity (Liu et al. 2025, arXiv 2502.15455;
  its ``analysis_cos.py`` takes the mean of the upper triangle per layer and
  module: ``mean_head_cosine``);
- ``delta_cosine``: the cosine of the flattened ΔW_a and ΔW_b;
- ``subspace_similarity``: ``spectra.subspace.subspace_similarity`` of the
  top-k left singular vectors of ΔW_a and ΔW_b (k = ``SUBSPACE_RANK``, cut
  to each head's numerical rank),

and for each head its ``share`` of Σ_j ‖ΔW_j‖²_F (for MultiLoRA: how the
learned scaling vectors split the update; cross terms ⟨ΔW_a, ΔW_b⟩ are not
part of it). Everything is taken from the factors in float64, never from a
d_out × d_in product: ⟨ΔW_a, ΔW_b⟩_F = s_a s_b tr((B_aᵀB_b)(A_b A_aᵀ)) =
s_a s_b Σ (B_aᵀB_b) ⊙ (A_a A_bᵀ), r×r blocks of two (n·r)² Gram matrices.
A head with ΔW_j = 0 (or B_j = 0) has no direction: its cosines, subspace
similarity and, when every head is zero, the shares are undefined and left
empty, with one warning per report.

``HeadCollector`` takes them as the per-head ΔW stream by
(``analyze(..., per_head=True)``: the same read as σ) and fills
``Report.heads`` and ``Report.head_shares``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..delta import Dense, Factored, LayerDelta, spectrum_key
from ..errors import SpectraError
from ..report import Report
from ..report.tables import HEAD_SHARES, HEADS, Table
from ..subspace import SUBSPACE_RANK, singular_vectors, subspace_similarity

__all__ = [
    "HeadCollector",
    "HeadDiversity",
    "head_columns",
    "head_diversity",
    "head_means",
    "head_summary",
    "mean_head_cosine",
]


@dataclass(frozen=True)
class HeadDiversity:
    """The head × head measures of one module, float64 ``numpy``; NaN where undefined.

    ``cosine`` (B heads; None when a head is dense), ``delta_cosine`` and
    ``subspace_similarity`` are ``(n, n)`` with ones on the diagonal of a
    non-zero head; ``norms`` are ‖ΔW_j‖_F and ``shares`` ‖ΔW_j‖²_F / Σ_i ‖ΔW_i‖²_F.
    """

    cosine: np.ndarray | None  # (n, n) of the flattened B heads
    delta_cosine: np.ndarray  # (n, n) of the flattened ΔW_j
    subspace_similarity: np.ndarray  # (n, n), top-k left singular vectors
    norms: np.ndarray  # (n,) ‖ΔW_j‖_F
    shares: np.ndarray  # (n,) of Σ_j ‖ΔW_j‖²_F

    @property
    def zero_heads(self) -> list[int]:
        """The heads with ΔW_j = 0."""
        return [int(j) for j in np.flatnonzero(self.norms == 0)]


def head_diversity(
    updates: Sequence[Dense | Factored],
    rank: int = SUBSPACE_RANK,
    rounding: Sequence[float | None] | None = None,
) -> HeadDiversity:
    """The cosines, subspace similarity and shares of one module's heads, in float64.

    Args:
        updates: each head's ΔW_j, in head order (``Factored``: from the
            factors; ``Dense``: from the matrices).
        rank: the top singular vectors compared (cut to each head's rank);
            default ``SUBSPACE_RANK``.
        rounding: each head's rounding floor for its numerical rank (a dense
            ΔW subtracted from stored weights); ``None`` (the default): none.

    Returns:
        A ``HeadDiversity``.

    Example:
        >>> import torch
        >>> B, A = torch.ones(4, 1), torch.ones(1, 3)
        >>> heads = head_diversity([Factored(B, A, 1.0), Factored(2 * B, A, 1.0)])
        >>> heads.cosine[0, 1].round(12), heads.shares.round(3).tolist()
        (np.float64(1.0), [0.2, 0.8])
    """
    if not updates:
        raise SpectraError("head diversity needs at least one head")
    factored = all(isinstance(u, Factored) for u in updates)
    inner = _factored_inner(updates) if factored else _dense_inner(updates)  # (n, n) ⟨ΔW_a, ΔW_b⟩
    norms = np.sqrt(np.clip(np.diag(inner), 0, None))  # (n,)
    total = float(np.sum(norms**2))
    shares = norms**2 / total if total > 0 else np.full(len(updates), np.nan)
    floors = rounding or [None] * len(updates)
    vectors = [
        singular_vectors(u, rank, "cpu", rounding_floor=f).U
        for u, f in zip(updates, floors, strict=True)
    ]  # each (d_out, k_j)
    subspace = np.array([[subspace_similarity(Ua, Ub) for Ub in vectors] for Ua in vectors])
    cosine = None
    if factored and len({tuple(u.B.shape) for u in updates}) == 1:
        ups = torch.stack([u.B.to(torch.float64).reshape(-1) for u in updates])  # (n, d_out·r)
        cosine = _cosines((ups @ ups.T).numpy())
    return HeadDiversity(cosine, _cosines(inner), subspace, norms, shares)


def _factored_inner(updates: Sequence[Factored]) -> np.ndarray:
    """⟨ΔW_a, ΔW_b⟩_F = s_a s_b Σ (B_aᵀB_b) ⊙ (A_a A_bᵀ), from two (n·r)² Gram matrices."""
    B = torch.cat([u.B.to(torch.float64) for u in updates], dim=1)  # (d_out, Σr) = [B_0 … B_n-1]
    A = torch.cat([u.A.to(torch.float64) for u in updates], dim=0)  # (Σr, d_in) = [A_0; …]
    products = (B.T @ B) * (A @ A.T)  # (Σr, Σr): block (a, b) is (B_aᵀB_b) ⊙ (A_a A_bᵀ)
    edges = np.cumsum([0, *(u.rank for u in updates)])
    scales = np.array([float(u.scale) for u in updates])
    n = len(updates)
    inner = np.empty((n, n))
    for a in range(n):
        for b in range(n):
            block = products[edges[a] : edges[a + 1], edges[b] : edges[b + 1]]  # (r_a, r_b)
            inner[a, b] = scales[a] * scales[b] * float(block.sum())
    return inner


def _dense_inner(updates: Sequence[Dense | Factored]) -> np.ndarray:
    """⟨ΔW_a, ΔW_b⟩_F of heads of which some are dense: the flattened matrices' Gram matrix."""
    flat = torch.stack([u.to_dense().to(torch.float64).reshape(-1) for u in updates])  # (n, d·d)
    return (flat @ flat.T).numpy()


def _cosines(gram: np.ndarray) -> np.ndarray:
    """Cosines from a Gram matrix; NaN where a vector is zero, rounding clipped to [−1, 1]."""
    norms = np.sqrt(np.clip(np.diag(gram), 0, None))  # (n,)
    outer = np.outer(norms, norms)
    with np.errstate(divide="ignore", invalid="ignore"):
        cosine = np.where(outer > 0, gram / outer, np.nan)
    return np.clip(cosine, -1.0, 1.0)


def _cell(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)


class HeadCollector:
    """Head diversity of each multi-head module, taken as its per-head ΔW stream by.

    Called with ``(checkpoint, delta)`` for every ΔW (``analyze``'s hook;
    σ, passed too, is not needed). Deltas without a head pass by; the heads
    of one module arrive together, and are measured when the next module
    starts (or at ``attach``), so one module's factors are held at a time.

    Args:
        rank: the top singular vectors compared; default ``SUBSPACE_RANK``.

    Example::

        collect = HeadCollector()
        for delta in spectra.load("hydra/", per_head=True).deltas():
            collect(None, delta)
        pairs, shares, warnings = collect.finish()
    """

    def __init__(self, rank: int = SUBSPACE_RANK):
        self.rank = rank
        self.heads, self.shares = Table(HEADS), Table(HEAD_SHARES)
        self._key: tuple[int, str, int | None] | None = None
        self._pending: list[LayerDelta] = []
        self._done: set[tuple[int, str, int | None]] = set()
        self._zero: list[str] = []

    def __call__(self, checkpoint: object, delta: LayerDelta, *_: object) -> None:
        if delta.head is None:
            return
        key = (delta.layer, delta.role, delta.expert)
        if key != self._key:
            self._measure()
            if key in self._done:  # the loaders yield a module's heads together
                raise SpectraError(f"{delta.key}: the heads of one module came apart in the stream")
            self._key = key
        self._pending.append(delta)

    def _measure(self) -> None:
        if not self._pending:
            return
        from .stream import rounding_floor_of  # stream imports this module to collect heads

        deltas = sorted(self._pending, key=lambda d: d.head)
        layer, role, expert = self._key
        found = head_diversity(
            [d.update for d in deltas], self.rank, [rounding_floor_of(d) for d in deltas]
        )
        heads = [d.head for d in deltas]
        ids = {"layer": layer, "role": role, "expert": expert}
        for a in range(len(heads)):
            self.shares.append({**ids, "head": heads[a], "share": _cell(found.shares[a])})
            for b in range(a + 1, len(heads)):
                cosine = found.cosine[a, b] if found.cosine is not None else np.nan
                self.heads.append(
                    {
                        **ids,
                        "head_a": heads[a],
                        "head_b": heads[b],
                        "cosine": _cell(cosine),
                        "delta_cosine": _cell(found.delta_cosine[a, b]),
                        "subspace_similarity": _cell(found.subspace_similarity[a, b]),
                    }
                )
        if found.zero_heads:
            self._zero.append(spectrum_key(layer, role, expert=expert))
        self._done.add(self._key)
        self._pending = []

    def finish(self) -> tuple[Table, Table, list[str]]:
        """The pair rows, the share rows and the warnings of every module seen.

        Returns:
            ``(heads, head_shares, warnings)``: the two tables of the report
            and a warning naming the modules with a zero head, if any.
        """
        self._measure()
        warnings = []
        if self._zero:
            named = ", ".join(self._zero[:6]) + (" …" if len(self._zero) > 6 else "")
            warnings.append(
                f"head diversity: {len(self._zero)} modules have a head with ΔW = 0 ({named}); "
                "a zero head has no direction, so its cosines and subspace similarity are "
                "left empty in heads.csv"
            )
        return self.heads, self.shares, warnings

    def attach(self, report: Report) -> Report:
        """Put the tables into ``report`` (and their warnings, and the rank compared).

        Args:
            report: the report of the analysis this collector watched.

        Returns:
            ``report``, with ``heads`` and ``head_shares`` filled when there were heads.
        """
        heads, shares, warnings = self.finish()
        if heads or shares:
            report.heads, report.head_shares = heads, shares
            report.meta["head_diversity"] = {"subspace_rank": self.rank}
            report.meta["warnings"] = [*report.warnings, *warnings]
        return report


def mean_head_cosine(report: Report, role: str) -> float | None:
    """The mean over layers of the mean B-head cosine of a role (R-LoRA's overall mean).

    Args:
        report: a report with heads (``Report.heads``).
        role: the role (``"k"``, ``"v"``, …).

    Returns:
        The mean over layers of each layer's mean over head pairs; None when
        the report has no defined cosine for the role.

    Example::

        report = spectra.analyze("hydra/", per_head=True)
        mean_head_cosine(report, "v")
    """
    return _mean_over_layers(report, role, "cosine")


def _mean_over_layers(report: Report, role: str, measure: str) -> float | None:
    """The mean over layers of each layer's mean of ``measure`` over head pairs; None if none."""
    by_layer: dict[tuple[int, object], list[float]] = {}
    for row in report.heads:
        if row["role"] == role and row[measure] is not None:
            by_layer.setdefault((row["layer"], row.get("expert")), []).append(row[measure])
    means = [sum(values) / len(values) for values in by_layer.values()]
    return sum(means) / len(means) if means else None


def head_means(report: Report) -> list[dict[str, object]]:
    """Per role, the mean over layers of each measure's mean over head pairs (what analyze prints).

    Args:
        report: a report with heads (none: an empty list).

    Returns:
        One dict per role: ``role``, ``cosine``, ``delta_cosine``,
        ``subspace_similarity`` (None where no value is defined).

    Example::

        for row in head_means(spectra.analyze("hydra/", per_head=True)):
            print(row["role"], row["cosine"])
    """
    roles = dict.fromkeys(str(row["role"]) for row in report.heads)
    measures = ("cosine", "delta_cosine", "subspace_similarity")
    return [
        {"role": role, **{m: _mean_over_layers(report, role, m) for m in measures}}
        for role in roles
    ]


def head_columns(reports: Sequence[Report]) -> list[str]:
    """The summary column a comparison adds when some report has heads: ``head_cosine``."""
    return ["head_cosine"] if any(report.heads for report in reports) else []


def head_summary(report: Report, role: str, reports: Sequence[Report]) -> dict[str, object]:
    """A comparison summary row's ``head_cosine`` (None for a label without heads), if any."""
    return {"head_cosine": mean_head_cosine(report, role)} if head_columns(reports) else {}
