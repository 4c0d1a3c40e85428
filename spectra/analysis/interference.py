"""Task interference between the sources of a comparison (``compare(..., interference=True)``).

Two or more fine-tunes of one base are task vectors: per module, ΔW_a, ΔW_b
of one shape. Each is taken as its singular triplets ``U Σ Vᵀ`` in float64
up to its numerical rank r (the report's ``numerical_rank``: the part of ΔW
above its rank tolerance; a factored ΔW from the QR core of its factors,
never a dense product), and its top k = min(K, r) triplets, K the
``interference_rank`` (default: r itself). For every (layer, role) all
sources share and every pair (a, b):

- ``sar_a_to_b``, the subspace alignment ratio
  ``SAR_k(a, b) = ‖U_k(a) U_k(a)ᵀ ΔW_b‖_F / ‖ΔW_b‖_F``: the share of b's
  update that lies in a's top-k left singular subspace, in [0, 1] (Marczak et
  al. 2025, "No Task Left Behind", arXiv 2502.04959); not symmetric, so
  ``sar_b_to_a`` as well. Empty (0/0) when ΔW_b is zero; 0 when k_a is 0.
- ``sti``, the singular task interference of Gargiulo et al. (CVPR 2025,
  "Task Singular Vectors", arXiv 2412.00081, their Eq. for STI)
  ``‖(UᵀU − I) Σ (VᵀV − I)‖₁`` with ``U = [U_k(a) U_k(b)]``,
  ``V = [V_k(a) V_k(b)]``, ``Σ = diag(Σ_k(a), Σ_k(b))`` and ``‖·‖₁`` the
  sum of absolute entries; as ``U_k``, ``V_k`` have orthonormal columns it is
  computed blockwise, ``‖U_aᵀU_b Σ_b V_bᵀV_a‖₁ + ‖U_bᵀU_a Σ_a V_aᵀV_b‖₁``.

Each checkpoint is read once: ``compare`` opens them before any work (to
refuse sources of different bases), an ``InterferenceCollector`` takes each
module's triplets in the σ pass (``analyze(..., each=)``) and keeps them,
(d_out + d_in)·r float64 values per module and source, until pairs are formed.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..arguments import BASE, INTERFERENCE, INTERFERENCE_RANK, LAYERS, MODULES, PER_HEAD
from ..delta import Dense, Factored, LayerDelta, spectrum_key
from ..display import frame
from ..errors import SpectraError
from ..loaders import ROLES, Checkpoint, options_for
from ..metrics import numerical_rank, rank_tolerance
from ..report import csv_text, is_report
from ..subspace import singular_vectors
from ..svd import accuracy_floor, resolve_device
from .sources import cached_base, load
from .stream import rounding_floor_of

__all__ = [
    "INTERFERENCE_FILE",
    "InterferenceCollector",
    "InterferencePlan",
    "InterferenceResult",
    "TaskVectors",
    "chain",
    "plan_interference",
    "save_interference",
    "singular_task_interference",
    "subspace_alignment_ratio",
    "task_vectors",
]

INTERFERENCE_FILE = "interference.csv"
COLUMNS = ("layer", "role", "label_a", "label_b", "k_a", "k_b", "sar_a_to_b", "sar_b_to_a", "sti")

Key = tuple[int, str, int | None]  # (layer, role, expert)


# -- the maths ----------------------------------------------------------------


@dataclass(frozen=True)
class TaskVectors:
    """One ΔW's singular triplets up to its numerical rank, float64 on the CPU.

    Args:
        U: ``(d_out, r)`` left singular vectors, by descending σ.
        S: ``(r,)`` the singular values, descending.
        V: ``(d_in, r)`` right singular vectors.

    Example:
        >>> import torch
        >>> vectors = task_vectors(torch.diag(torch.tensor([3.0, 2.0, 0.0])))
        >>> vectors.rank, vectors.S.tolist()
        (2, [3.0, 2.0])
    """

    U: torch.Tensor  # (d_out, r)
    S: torch.Tensor  # (r,)
    V: torch.Tensor  # (d_in, r)

    @property
    def rank(self) -> int:
        """r, the number of triplets held (the numerical rank of ΔW)."""
        return self.U.shape[1]

    def top(self, k: int | None) -> int:
        """k cut to the rank: ``min(k, r)``; ``None``: r."""
        return self.rank if k is None else min(k, self.rank)


def task_vectors(
    update: Dense | Factored | torch.Tensor,
    rank: int | None = None,
    device: str | torch.device = "cpu",
    rounding_floor: float | None = None,
) -> TaskVectors:
    """The singular triplets of ΔW in float64, up to its numerical rank (or ``rank``, if lower).

    A factored ΔW = s·B@A takes them from the QR factors of B and Aᵀ (an r×r
    SVD), a dense one from a float64 SVD (``spectra.subspace.singular_vectors``).

    Args:
        update: ΔW: a ``Dense`` or ``Factored`` update, or a 2-D tensor.
        rank: keep at most this many triplets (the report's numerical rank,
            which ``compare`` passes); ``None`` (the default): the numerical
            rank of the float64 SVD.
        device: where the SVD runs; default ``"cpu"``.
        rounding_floor: a dense ΔW's rounding-noise floor, which the rank
            tolerance takes into account; ``None`` (the default): none.

    Returns:
        A ``TaskVectors`` on the CPU.

    Example:
        >>> import torch
        >>> task_vectors(torch.eye(4)[:, :2] @ torch.eye(4)[:2]).rank
        2
    """
    if isinstance(update, torch.Tensor):
        update = Dense(update)
    k = min(update.shape) if rank is None else rank
    vectors = singular_vectors(update, k, device, rounding_floor=rounding_floor)
    # copies: a slice of a dense SVD's U would keep all of it alive
    return TaskVectors(vectors.U.clone(), vectors.S[: vectors.k].clone(), vectors.V.clone())


def subspace_alignment_ratio(a: TaskVectors, b: TaskVectors, k: int | None = None) -> float:
    """``‖U_k(a) U_k(a)ᵀ ΔW_b‖_F / ‖ΔW_b‖_F``: the share of ΔW_b in a's top-k subspace.

    ``ΔW_b`` is b's update up to its numerical rank (``U_b Σ_b V_bᵀ``), so the
    ratio is ``‖U_k(a)ᵀ U_b Σ_b‖_F / ‖Σ_b‖``.

    Args:
        a: the task whose top-k left singular vectors span the subspace.
        b: the task whose update is projected.
        k: a's vectors used, cut to its rank; ``None`` (the default): all of them.

    Returns:
        A float in [0, 1]; NaN when ΔW_b is zero, 0 when a has no vectors.

    Raises:
        SpectraError: the two updates have different output sizes.

    Example:
        >>> import torch
        >>> a = task_vectors(torch.diag(torch.tensor([1.0, 0.0])))
        >>> b = task_vectors(torch.tensor([[3.0, 0.0], [4.0, 0.0]]))
        >>> round(subspace_alignment_ratio(a, b), 6)  # 3 of 5 lies along e1
        0.6
    """
    if a.U.shape[0] != b.U.shape[0]:
        raise SpectraError(f"d_out {a.U.shape[0]} against {b.U.shape[0]}: no shared subspace")
    norm_b = float(torch.linalg.vector_norm(b.S))
    if norm_b == 0:
        return float("nan")
    U_a = a.U[:, : a.top(k)]  # (d_out, k_a)
    projected = U_a.T @ (b.U * b.S)  # (k_a, r_b): U_k(a)ᵀ U_b Σ_b
    return float(torch.linalg.matrix_norm(projected)) / norm_b


def singular_task_interference(tasks: Sequence[TaskVectors], k: int | None = None) -> float:
    """``‖(UᵀU − I) Σ (VᵀV − I)‖₁`` over the tasks' top-k triplets (Gargiulo et al. 2025).

    ``U``, ``V`` are the tasks' top-k singular vectors side by side, ``Σ``
    their singular values block by block, ``‖·‖₁`` the sum of absolute
    entries. Computed block by block: block (i, m) of the product is
    ``Σ_{j ≠ i, m} U_iᵀU_j Σ_j V_jᵀV_m`` (the diagonal blocks of ``UᵀU − I``
    are zero for orthonormal ``U_i``).

    Args:
        tasks: two or more tasks of one shape.
        k: each task's triplets used, cut to its rank; ``None`` (the
            default): all of them.

    Returns:
        A float ≥ 0, in units of σ; 0 for orthogonal column or row spaces.

    Raises:
        SpectraError: the tasks' shapes differ.

    Example:
        >>> import torch
        >>> a = task_vectors(torch.diag(torch.tensor([2.0, 0.0])))
        >>> singular_task_interference([a, a])  # identical: 2·Σσ
        4.0
    """
    shapes = {(t.U.shape[0], t.V.shape[0]) for t in tasks}
    if len(shapes) > 1:
        raise SpectraError(f"task vectors of shapes {sorted(shapes)}: interference needs one shape")
    top = [(t.U[:, : t.top(k)], t.S[: t.top(k)], t.V[:, : t.top(k)]) for t in tasks]
    total = 0.0
    for i, m in itertools.product(range(len(top)), repeat=2):
        block = torch.zeros(top[i][0].shape[1], top[m][0].shape[1], dtype=torch.float64)
        for j, (U_j, S_j, V_j) in enumerate(top):
            if j not in (i, m):
                block += ((top[i][0].T @ U_j) * S_j) @ (V_j.T @ top[m][2])  # (k_i, k_m)
        total += float(block.abs().sum())
    return total


# -- one comparison -----------------------------------------------------------


class InterferenceCollector:
    """One source's task vectors per module, taken as its ΔW stream by.

    Called with ``(checkpoint, delta, σ)`` for each module (``analyze(..., each=)``):
    the numerical rank is the report row's (σ of the analysis, the tolerance
    of its ``method``), the triplets come from ``task_vectors``.
    """

    def __init__(self, label: str, method: str = "fast", device: str | torch.device = "auto"):
        self.label, self.method, self.device = label, method, resolve_device(device)
        self.vectors: dict[Key, TaskVectors] = {}

    def __call__(self, checkpoint: Checkpoint, delta: LayerDelta, sigma: torch.Tensor) -> None:
        if delta.head is not None:  # interference compares whole modules
            return
        kind = "factored" if isinstance(delta.update, Factored) else "dense"
        floor = rounding_floor_of(delta)
        relative = accuracy_floor(delta.shape, kind, self.method)
        tol = rank_tolerance(sigma, delta.shape, relative_floor=relative, rounding=floor)
        rank = numerical_rank(sigma, delta.shape, tol=tol)  # the row's numerical_rank
        vectors = task_vectors(delta.update, rank, self.device, floor)
        self.vectors[(delta.layer, delta.role, delta.expert)] = vectors


@dataclass
class InterferenceResult:
    """SAR both ways and STI per module and pair of sources: ``interference.csv``.

    Args:
        rank: K, the top singular vectors compared; ``None``: each ΔW's numerical rank.
        rows: one dict per (layer, role, pair), keyed by ``columns``.
        warnings: what the numbers need said.

    Example::

        result = spectra.compare(["a/", "b/"], interference=True).interference
        result.to_pandas()  # layer, role, label_a, label_b, k_a, k_b, sar_a_to_b, …
    """

    rank: int | None
    rows: list[dict[str, object]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        """The table's columns; ``expert`` after ``role`` only when some row has one."""
        if any(row.get("expert") is not None for row in self.rows):
            return [*COLUMNS[:2], "expert", *COLUMNS[2:]]
        return list(COLUMNS)

    def to_pandas(self):
        """The rows as a ``pandas.DataFrame`` (NaN for a missing value).

        Returns:
            A DataFrame of ``columns``, one row per (layer, role, pair).

        Example::

            df = comparison.interference.to_pandas()
            df.pivot_table(index="layer", columns="role", values="sar_a_to_b")
        """
        return frame(self.rows, self.columns)

    def csv(self) -> str:
        """The rows as CSV text: what ``Comparison.save`` writes to ``interference.csv``."""
        return csv_text(self.columns, self.rows)

    def means(self) -> list[dict[str, object]]:
        """Per (role, pair): the mean over layers of each measure (empty cells left out)."""
        groups: dict[tuple[str, str, str], list[dict[str, object]]] = {}
        for row in self.rows:
            groups.setdefault((row["role"], row["label_a"], row["label_b"]), []).append(row)
        means = []
        for (role, a, b), rows in groups.items():
            mean: dict[str, object] = {"role": role, "label_a": a, "label_b": b}
            mean["layers"] = len(rows)
            for column in ("sar_a_to_b", "sar_b_to_a", "sti"):
                values = [float(v) for r in rows if (v := r[column]) is not None and v == v]
                mean[column] = sum(values) / len(values) if values else None
            means.append(mean)
        return means


def _pair_row(key: Key, a: InterferenceCollector, b: InterferenceCollector, rank: int | None):
    va, vb = a.vectors[key], b.vectors[key]
    if (va.U.shape[0], va.V.shape[0]) != (vb.U.shape[0], vb.V.shape[0]):
        raise SpectraError(
            f"{spectrum_key(key[0], key[1], expert=key[2])}: {a.label} is "
            f"{va.U.shape[0]}×{va.V.shape[0]} and {b.label} {vb.U.shape[0]}×{vb.V.shape[0]}: "
            "task vectors of different models cannot interfere"
        )
    return {
        "layer": key[0],
        "role": key[1],
        "expert": key[2],
        "label_a": a.label,
        "label_b": b.label,
        "k_a": va.top(rank),
        "k_b": vb.top(rank),
        "sar_a_to_b": _number(subspace_alignment_ratio(va, vb, rank)),  # None: ΔW_b = 0
        "sar_b_to_a": _number(subspace_alignment_ratio(vb, va, rank)),
        "sti": singular_task_interference([va, vb], rank),
    }


@dataclass
class InterferencePlan:
    """What ``compare`` needs for interference: the opened checkpoints and their collectors."""

    checkpoints: list[Checkpoint]  # opened before any work, read by analyze
    collectors: list[InterferenceCollector]
    rank: int | None

    def finish(self) -> InterferenceResult:
        """The pairs over the modules every source has, in layer and role order."""
        result = InterferenceResult(self.rank)
        shared = set.intersection(*(set(c.vectors) for c in self.collectors))
        if not shared:
            labels = ", ".join(c.label for c in self.collectors)
            raise SpectraError(
                f"{labels}: no (layer, module) in common for task interference; choose "
                f"{MODULES} and {LAYERS} that every source has"
            )
        order = sorted(shared, key=lambda key: (key[0], _role_order(key[1]), key[2] or 0))
        for key in order:
            for a, b in itertools.combinations(self.collectors, 2):
                result.rows.append(_pair_row(key, a, b, self.rank))
        for c in self.collectors:
            whole = [k for k in order if c.vectors[k].top(self.rank) >= c.vectors[k].U.shape[0]]
            if whole:
                result.warnings.append(
                    f"{c.label}: in {len(whole)} of {len(order)} modules its top-k vectors span "
                    "every output direction, so its SAR towards the others is 1 by construction; "
                    f"give a smaller {INTERFERENCE_RANK('K')} to compare the leading directions"
                )
        return result


def plan_interference(
    sources: Sequence[str | os.PathLike],
    labels: Sequence[str],
    base: str | os.PathLike | None,
    options: dict[str, object],
    rank: int | None = None,
    method: str = "fast",
    device: str = "auto",
) -> InterferencePlan:
    """Refuse what cannot be measured, open the checkpoints and check they share one base.

    Called by ``compare`` before any work. ``base`` given: every source is
    read against it. Otherwise each source's base is the one it opened, or
    its config's ``base_model_name_or_path`` (the local folder it names, when
    there is one): all must be the same.
    """
    if rank is not None and rank < 1:
        raise SpectraError(
            f"interference rank {rank}: give at least 1 ({INTERFERENCE_RANK('K')}), or none for "
            "each update's numerical rank"
        )
    if len(sources) < 2:
        raise SpectraError(f"task interference needs two sources or more; drop {INTERFERENCE}")
    if options.get("per_head"):
        raise SpectraError(f"task interference compares whole modules: drop {PER_HEAD}")
    for source in sources:
        if is_report(source):
            raise SpectraError(
                f"{source}: a saved report keeps singular values, not the singular vectors that "
                "task interference needs, and spectra does not re-open checkpoints behind your "
                f"back: pass the checkpoint itself (or drop {INTERFERENCE})"
            )
    checkpoints = [load(s, base=base, **options_for(s, options)) for s in sources]
    if base is None:
        _check_one_base(checkpoints, labels)
    collectors = [InterferenceCollector(label, method, device) for label in labels]
    return InterferencePlan(list(checkpoints), collectors, rank)


def _base_of(checkpoint: Checkpoint) -> str | None:
    """The base a checkpoint was tuned from: the folder it opened, else what its config names."""
    if checkpoint.base is not None:
        return str(Path(checkpoint.base).resolve())
    name = checkpoint.details().get("base_model_name_or_path")
    if not name:
        return None
    found = cached_base(name)
    return str(found.resolve()) if found is not None else str(name)


def _check_one_base(checkpoints: Sequence[Checkpoint], labels: Sequence[str]) -> None:
    bases = [_base_of(checkpoint) for checkpoint in checkpoints]
    for label, found in zip(labels, bases, strict=True):
        if found is None:
            raise SpectraError(
                f"{label}: no base model is known (no {BASE} given and none named in its "
                "config), so spectra cannot check that every source was tuned from one base, "
                f"as task interference needs: pass {BASE('DIR')}"
            )
    for (label_a, base_a), (label_b, base_b) in itertools.pairwise(zip(labels, bases, strict=True)):
        if base_a != base_b:
            raise SpectraError(
                f"{label_a} was tuned from {base_a} and {label_b} from {base_b}: task "
                "interference compares updates of one base model. Compare fine-tunes of one "
                f"base, pass {BASE('DIR')} if both are one model saved in two places, or drop "
                f"{INTERFERENCE}"
            )


def chain(*calls: Callable[..., None] | None) -> Callable[..., None] | None:
    """One ``each=`` callback that calls every given one in turn; None if none is given."""
    given = [call for call in calls if call is not None]

    def each(*args: object) -> None:
        for call in given:
            call(*args)

    return each if given else None


def save_interference(result: InterferenceResult, folder: Path, figure_format: str) -> None:
    """``interference.csv`` and the heat-map ``interference.<figure_format>`` into ``folder``."""
    (folder / INTERFERENCE_FILE).write_text(result.csv())
    if result.rows:
        from ..plot import interference_heatmap, save_figure

        figure = interference_heatmap(result)[0]
        save_figure(figure, folder / f"interference.{figure_format}")


def _number(value: float) -> float | None:
    return None if value != value else value  # NaN (0/0) is an empty cell


def _role_order(role: str) -> int:
    return ROLES.index(role) if role in ROLES else len(ROLES)
