"""The cost model of an analysis: seconds and bytes of one module on a calibrated device.

Each module takes one path of ``spectra.svd`` (``estimate`` is that of
``metrics.estimate``), and its cost is the flop count of the path's steps
divided by the device's calibrated rate of each step
(``analysis.calibration``), plus the time to read its tensors:

- ``factored`` (ΔW = s·B@A): QR of B and of Aᵀ, an r×r core and its SVD;
- ``fast`` (dense): the float64 Gram matrix of the smaller side (n²k flops
  on the CPU, its lower triangle; 2n²k on a GPU) and its eigenvalues (4n³/3);
- ``exact`` (dense): a float64 SVD of ΔW (4mn² − 4n³/3);
- ``estimate`` (dense): products of ΔW and ΔWᵀ with blocks of vectors: the
  quadrature's probes × (steps + 1) × 2, and randomized block Krylov for the top
  singular values (``metrics.estimate.estimate_metrics``'s defaults).

``module_cost`` is the one cost model: the plan (``analysis.plan``) sums it,
and a scheduler that orders modules by cost (largest first) calls it too.
The bytes one job holds are its tensors as stored, ΔW in float64 and the
path's workspace: the Gram matrix and the copy the eigensolver makes, the
SVD's copy, or the estimate's Krylov bases.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import torch

from ..metrics.estimate import DEFAULT_PROBES, DEFAULT_STEPS, DEFAULT_TOP
from .calibration import Calibration

__all__ = [
    "PATHS",
    "ModuleCost",
    "flop_cost",
    "format_bytes",
    "format_seconds",
    "itemsize",
    "module_cost",
    "module_memory",
    "schedule",
]

PATHS = ("factored", "fast", "exact", "estimate")
_ESTIMATE = {"probes": DEFAULT_PROBES, "steps": DEFAULT_STEPS, "top": DEFAULT_TOP}
_KRYLOV_OVERSAMPLE, _KRYLOV_ITERATIONS = 8, 6  # as estimate_metrics calls block_krylov
_F64 = 8  # bytes per float64
_GPU_BATCH = 8  # same-shaped dense ΔW decomposed together on a GPU (svd.singular_values_stream)


@dataclass
class ModuleCost:
    """The predicted cost of one module on each device.

    Args:
        layer: the layer index.
        role: the module's role (k, v, q, …).
        shape: ``(d_out, d_in)`` of ΔW.
        path: how its σ are taken: one of ``PATHS``.
        read_bytes: the bytes of its tensors as stored (with the base's W0
            for a dense ΔW of a full fine-tune).
        memory: the bytes one job holds while it decomposes it.
        seconds: device → predicted seconds of the decomposition.
        read_seconds: device → predicted seconds of reading its tensors.
        rank: the adapter rank r of a factored ΔW; ``None`` for dense.
        count: rows it makes (experts of a mixture-of-experts role); 1 by default.

    Example:
        >>> m = ModuleCost(0, "v", (64, 64), "fast", 32768, 100_000, {"cpu": 0.5}, {"cpu": 0.1})
        >>> m.total("cpu")
        0.6
    """

    layer: int
    role: str
    shape: tuple[int, int]
    path: str
    read_bytes: int
    memory: int
    seconds: dict[str, float] = field(default_factory=dict)
    read_seconds: dict[str, float] = field(default_factory=dict)
    rank: int | None = None
    count: int = 1

    def total(self, device: str) -> float:
        """Reading and decomposing it on ``device``, in seconds."""
        return self.seconds[device] + self.read_seconds[device]


def module_cost(
    shape: tuple[int, int],
    path: str,
    calibration: Calibration,
    *,
    rank: int | None = None,
    read_bytes: int = 0,
    source_bytes: int | None = None,
    estimate: object | None = None,
) -> tuple[float, float, int]:
    """``(seconds, read seconds, bytes held)`` of one module on a calibrated device.

    Args:
        shape: ``(d_out, d_in)`` of ΔW.
        path: ``"factored"``, ``"fast"``, ``"exact"`` or ``"estimate"``.
        calibration: the device's rates (``analysis.calibration.calibrate``).
        rank: r of a factored ΔW (default: the smaller side).
        read_bytes: the bytes read from disk for it.
        source_bytes: the bytes its read tensors hold in memory (default ``read_bytes``).
        estimate: the ``"estimate"`` path's settings (an ``EstimateSettings``:
            its probes, steps and top); ``None`` (the default): the defaults.

    Returns:
        The decomposition's seconds, the reading's seconds, and the peak bytes
        one job holds.

    Example:
        >>> rates = {"gram": 2e10, "eigvalsh": 1e10, "svd": 4e9, "qr": 8e9, "thin": 2e10,
        ...          "read": 5e8}
        >>> c = Calibration({"device": "cpu"}, rates, jobs=1, threads=1)
        >>> small, _, _ = module_cost((1024, 1024), "fast", c)
        >>> large, _, _ = module_cost((2048, 2048), "fast", c)
        >>> round(large / small, 6)
        8.0
    """
    d_out, d_in = shape
    n, k = min(d_out, d_in), max(d_out, d_in)
    gpu = calibration.key.get("device") not in (None, "cpu")
    dense = _F64 * d_out * d_in  # ΔW in float64
    if path == "factored":
        r = min(rank or n, n)
        seconds = (
            calibration.seconds_of("qr", d_out, r)
            + calibration.seconds_of("qr", d_in, r)
            + calibration.seconds_of("thin", r, r, r)
            + calibration.seconds_of("svd", r, r)
        )
        held = _F64 * (d_out + d_in) * r * 2 + 3 * _F64 * r * r
    elif path == "fast":
        seconds = calibration.seconds_of("gram", n, k, full_gram=gpu) + calibration.seconds_of(
            "eigvalsh", n, n
        )
        held = dense + 2 * _F64 * n * n  # the Gram matrix and the eigensolver's copy
    elif path == "exact":
        seconds = calibration.seconds_of("svd", d_out, d_in)
        held = 2 * dense + _F64 * n * n  # the SVD's copy and its bidiagonal workspace
    elif path == "estimate":
        chosen = {name: getattr(estimate, name, default) for name, default in _ESTIMATE.items()}
        probes, top = chosen["probes"], chosen["top"]
        steps = min(chosen["steps"] + 1, n)  # m + 1 Lanczos steps; it stops at n
        block = min(top + _KRYLOV_OVERSAMPLE, n)
        basis = block * (_KRYLOV_ITERATIONS + 1)  # columns of the Krylov basis
        lanczos = calibration.seconds_of("thin", d_out, d_in, 2 * probes * steps)
        if basis >= n:  # the Krylov space would be all of it: a full SVD instead
            krylov = calibration.seconds_of("svd", d_out, d_in)
        else:
            columns = block * (2 + 2 * _KRYLOV_ITERATIONS) + top  # QᵀΔW's rows are kept
            krylov = calibration.seconds_of("thin", d_out, d_in, columns)
            krylov += calibration.seconds_of("svd", k, basis)
        seconds = lanczos + krylov
        held = dense + _F64 * (probes * steps * n + 2 * min(basis, n) * k)
    else:
        raise ValueError(f"unknown path {path!r}: expected one of {', '.join(PATHS)}")
    read_seconds = read_bytes / calibration.rates["read"]
    held += read_bytes if source_bytes is None else source_bytes
    return seconds, read_seconds, int(held)


# Every rate 1: seconds are then flop counts, what a scheduler orders modules by.
_UNIT = Calibration(
    {"device": "cpu"},
    {name: 1.0 for name in ("gram", "eigvalsh", "svd", "qr", "thin", "read")},
    jobs=1,
    threads=1,
)


def flop_cost(
    shape: tuple[int | None, int | None],
    kind: str,
    rank: int | None = None,
    dense_path: str = "fast",
    estimate: object | None = None,
) -> float:
    """The flops of one module's σ by ``module_cost``'s model: what orders modules by cost.

    A side the checkpoint does not say (``None``) counts as the other side.

    Args:
        shape: ``(d_out, d_in)``; a side may be None.
        kind: ``"factored"`` or ``"dense"``.
        rank: r of a factored ΔW; ``None``: its smaller side.
        dense_path: the path a dense ΔW takes: ``"fast"`` (the default),
            ``"exact"`` or ``"estimate"``.
        estimate: ``"estimate"``'s settings (``EstimateSettings``); None: the defaults.

    Returns:
        The flop count, a float.

    Example:
        >>> flop_cost((1024, 4096), "dense") == 1024**2 * 4096 + 4 * 1024**3 / 3
        True
    """
    d_out, d_in = shape
    d_out = d_out or d_in or 1
    d_in = d_in or d_out
    path = "factored" if kind == "factored" else dense_path
    return module_cost((d_out, d_in), path, _UNIT, rank=rank, estimate=estimate)[0]


def module_memory(entry: dict, dense_path: str = "fast", estimate: object | None = None) -> int:
    """The peak bytes one job holds for a module: ``module_cost``'s memory, no rates needed.

    Args:
        entry: the module as ``plan.module_entry`` gives it (shape, kind, rank, read_bytes).
        dense_path: the path of a dense ΔW: ``"fast"``, ``"exact"`` or ``"estimate"``.
        estimate: ``"estimate"``'s settings; None: the defaults.

    Returns:
        Bytes: its tensors as stored, ΔW in float64 and the path's workspace.

    Example:
        >>> entry = {"shape": (1024, 1024), "kind": "dense", "rank": None, "read_bytes": 0}
        >>> module_memory(entry) == 3 * 8 * 1024**2  # ΔW, its Gram matrix, eigvalsh's copy
        True
    """
    path = "factored" if entry["kind"] == "factored" else dense_path
    return module_cost(
        tuple(entry["shape"]),
        path,
        _UNIT,
        rank=entry.get("rank"),
        read_bytes=entry.get("read_bytes", 0),
        estimate=estimate,
    )[2]


def schedule(costs: list[float], slots: int) -> float:
    """The makespan of ``costs`` given largest first to the first free of ``slots``."""
    finish = [0.0] * max(1, min(slots, len(costs)))
    for cost in sorted(costs, reverse=True):
        heapq.heapreplace(finish, finish[0] + cost)
    return max(finish)


def itemsize(dtype: str) -> int:
    found = getattr(torch, str(dtype).removeprefix("torch."), None)
    return found.itemsize if isinstance(found, torch.dtype) else 4


def format_seconds(seconds: float) -> str:
    """``0.42 s``, ``12 s``, ``3.5 min``, ``2.1 h``, ``1.3 days``: a duration to read."""
    if seconds < 10:
        return f"{seconds:.2g} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def format_bytes(count: float) -> str:
    """``512 B``, ``12 MiB``, ``3.0 GiB``: a size to read."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            value = count / size
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{int(count)} B"
