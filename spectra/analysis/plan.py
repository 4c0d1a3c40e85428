"""A plan before the run: the predicted time and peak memory of an analysis, per device.

Nothing is read but the checkpoint's headers. Each selected module takes one
path of ``spectra.svd`` (``estimate`` is that of ``metrics.estimate``), and
its cost is the flop count of the path's steps divided by this machine's
calibrated rate of each step (``analysis.calibration``), plus the time to
read its tensors:

- ``factored`` (ΔW = s·B@A): QR of B and of Aᵀ, an r×r core and its SVD;
- ``fast`` (dense): the float64 Gram matrix of the smaller side (n²k flops
  on the CPU, its lower triangle; 2n²k on a GPU) and its eigenvalues (4n³/3);
- ``exact`` (dense): a float64 SVD of ΔW (4mn² − 4n³/3);
- ``estimate`` (dense): products of ΔW and ΔWᵀ with blocks of vectors: the
  quadrature's probes × (steps + 1) × 2, and randomized block Krylov for the top
  singular values (``metrics.estimate.estimate_metrics``'s defaults).

``module_cost`` is the one cost model: the plan sums it, and a scheduler
that orders modules by cost (largest first) can call it too. The wall time
on a device schedules the modules largest first on ``jobs`` slots (as
``svd.singular_values_stream`` runs them side by side on a CPU), each slot
reading its module then decomposing it; a GPU reads ahead while it
computes, so its wall time is the larger of the two sums. ``Plan.cluster``
spreads the same modules over ``nodes × jobs`` slots, each node reading
its own modules from shared storage.

Peak memory is that of the largest module (its tensors as stored, ΔW in
float64, and the path's workspace: the Gram matrix and the copy the
eigensolver makes, the SVD's copy, or the estimate's Krylov bases) times
the jobs that hold one each (on a GPU, times the batch of 8 same-shaped
dense updates the fast path decomposes together).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..arguments import RECALIBRATE
from ..loaders.base import select
from ..svd import default_jobs, resolve_device
from .calibration import Calibration, calibrate
from .costs import PATHS, ModuleCost, format_bytes, format_seconds, itemsize, module_cost, schedule
from .sources import load

__all__ = ["DevicePlan", "Plan", "module_entry", "plan", "plan_modules"]

_GPU_BATCH = 8  # same-shaped dense ΔW decomposed together on a GPU (svd.singular_values_stream)


@dataclass
class DevicePlan:
    """The totals of a plan on one device.

    Args:
        device: the device's name (``cpu``, the GPU's name).
        calibration: the rates the prediction used.
        jobs: modules decomposed side by side.
        seconds: predicted wall time of the whole analysis.
        compute_seconds: the decompositions' seconds, summed.
        read_seconds: the reading's seconds, summed.
        peak_memory: predicted peak bytes (the largest module's, times ``jobs``).

    Example:
        >>> c = Calibration({"device": "cpu"}, {}, jobs=2, threads=1, source="cached")
        >>> DevicePlan("cpu", c, 2, 10.0, 18.0, 2.0, 3 << 30).summary()
        'cpu: 10 s, peak 3.0 GiB (2 jobs; calibration cached)'
    """

    device: str
    calibration: Calibration
    jobs: int
    seconds: float
    compute_seconds: float
    read_seconds: float
    peak_memory: int

    def summary(self) -> str:
        """One line: wall time, peak memory, jobs and where the rates came from."""
        return (
            f"{self.device}: {format_seconds(self.seconds)}, peak {format_bytes(self.peak_memory)}"
            f" ({self.jobs} job{'s' if self.jobs > 1 else ''}; calibration "
            f"{self.calibration.source})"
        )

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict."""
        return {
            "device": self.device,
            "jobs": self.jobs,
            "seconds": self.seconds,
            "compute_seconds": self.compute_seconds,
            "read_seconds": self.read_seconds,
            "peak_memory_bytes": self.peak_memory,
            "calibration": self.calibration.to_dict(),
        }


@dataclass
class Plan:
    """What an analysis will cost, per module and per device, before it runs.

    Args:
        source: the checkpoint's path (or a name for shapes given directly).
        method: the dense method, ``"fast"``, ``"exact"`` or ``"estimate"``.
        modules: one ``ModuleCost`` per selected module.
        devices: one ``DevicePlan`` per device planned.
        notes: what the plan could not cover (``"no GPU here"``, unknown sides).

    Example::

        plan = spectra.plan("tuned/", base="base/", modules="all")
        print(plan)                 # Plan(tuned/: 560 modules, fast; cpu: 3.1 h, …)
        plan.to_dict()["devices"]
    """

    source: str
    method: str
    modules: list[ModuleCost]
    devices: list[DevicePlan]
    notes: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        devices = "; ".join(
            f"{d.device}: {format_seconds(d.seconds)}, {format_bytes(d.peak_memory)}"
            for d in self.devices
        )
        notes = "".join(f"; {note}" for note in self.notes)
        return f"Plan({self.source}: {len(self.modules)} modules, {self.method}; {devices}{notes})"

    def device(self, name: str | None = None) -> DevicePlan:
        """The ``DevicePlan`` of ``name`` (default: the first, the CPU)."""
        for plan in self.devices:
            if name is None or plan.device == name:
                return plan
        raise KeyError(f"no device {name!r} in this plan: {[d.device for d in self.devices]}")

    def cluster(self, nodes: int, device: str | None = None) -> float:
        """Predicted wall seconds on ``nodes`` machines like ``device``, each reading its modules.

        Modules go largest first to the first free of ``nodes × jobs`` slots.
        """
        chosen = self.device(device)
        costs = [m.total(chosen.device) for m in self.modules for _ in range(m.count)]
        return schedule(costs, nodes * chosen.jobs)

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict: the modules with their costs, the devices' totals, the notes."""
        return {
            "source": self.source,
            "method": self.method,
            "devices": [d.to_dict() for d in self.devices],
            "modules": [
                {
                    "layer": m.layer,
                    "role": m.role,
                    "shape": list(m.shape),
                    "path": m.path,
                    "rank": m.rank,
                    "count": m.count,
                    "read_bytes": m.read_bytes,
                    "memory_bytes": m.memory,
                    "seconds": m.seconds,
                    "read_seconds": m.read_seconds,
                }
                for m in self.modules
            ],
            "notes": self.notes,
        }

    def lines(self, title: str = "plan") -> list[str]:
        """The plan as text: each device's totals, then each role's time per module."""
        dense = _LABELS[self.method]
        out = [f"{title} ({len(self.modules)} modules; dense ΔW by {dense}):"]
        out += [f"  {d.summary()}" for d in self.devices]
        for note in self.notes:
            out.append(f"  {note}")
        if any(d.calibration.source == "cached" for d in self.devices):
            again = f"{RECALIBRATE} measures them again"
            out.append(f"  rates measured once on this machine, then cached ({again})")
        groups: dict[tuple[str, str, tuple[int, int]], list[ModuleCost]] = {}
        for m in self.modules:
            groups.setdefault((m.role, m.path, m.shape), []).append(m)
        for (role, path, shape), members in groups.items():
            count = sum(m.count for m in members)
            each = ", ".join(
                f"{d.device} {format_seconds(members[0].total(d.device))}" for d in self.devices
            )
            out.append(f"  {role} {shape[0]}x{shape[1]} by {_LABELS[path]} × {count}: each {each}")
        return out


# How each path reads in the printed plan.
_LABELS = {
    "factored": "the QR core",
    "fast": "the Gram eigenvalues",
    "exact": "the SVD",
    "estimate": "the estimate",
}


def module_entry(checkpoint, key: tuple[int, str], per_head: bool = False) -> dict:
    """One module of ``checkpoint`` as ``plan_modules`` takes it, from its headers.

    A side the files do not say is taken equal to the other. ``read_bytes``
    counts the tensors read as stored: the factors of a factored ΔW, the
    tuned weight (and W0 when ΔW = W − W0) of a dense one.

    Returns:
        ``{"layer", "role", "shape", "kind", "rank", "read_bytes", "count"}``.
    """
    info = checkpoint.module_info(key)
    d_out, d_in = info.shape
    shape = (d_out or d_in or 1, d_in or d_out or 1)
    size = itemsize(info.dtype)
    has_base = checkpoint.base is not None or checkpoint.format == "full"
    if info.kind == "factored":
        read_bytes = (shape[0] + shape[1]) * (info.rank or 1) * size
    else:  # the tuned weight, and W0 when ΔW = W − W0
        read_bytes = shape[0] * shape[1] * size * (2 if has_base else 1)
    return {
        "layer": info.layer,
        "role": info.role,
        "shape": shape,
        "kind": info.kind,
        "rank": info.rank,
        "read_bytes": read_bytes,
        "count": (info.experts or 1) * (info.heads if per_head and info.heads else 1),
    }


def plan_modules(
    entries: Sequence[dict],
    calibrations: Sequence[Calibration],
    *,
    method: str = "fast",
    source: str = "",
    jobs: int | None = None,
    notes: Sequence[str] = (),
    estimate: object | None = None,
) -> Plan:
    """A plan from module shapes, without a checkpoint (a model not on disk, a benchmark).

    Args:
        entries: one dict per module: ``layer``, ``role``, ``shape``, ``kind``
            (``"dense"`` or ``"factored"``) and optionally ``rank``,
            ``read_bytes`` and ``count``.
        calibrations: one per device.
        method: the dense path: ``"fast"``, ``"exact"`` or ``"estimate"``.
        source: a name for the plan.
        jobs: modules side by side; ``None`` (the default): each calibration's own
            (``"estimate"`` always takes one at a time).
        notes: lines to carry (what was assumed).
        estimate: ``"estimate"``'s settings (``analysis.estimated.EstimateSettings``);
            ``None`` (the default): its defaults.

    Returns:
        A ``Plan``.

    Example:
        >>> rates = {"gram": 2e10, "eigvalsh": 1e10, "svd": 4e9, "qr": 8e9, "thin": 2e10,
        ...          "read": 5e8}
        >>> c = Calibration({"device": "cpu"}, rates, jobs=1, threads=1)
        >>> p = plan_modules([{"layer": 0, "role": "q", "shape": (4096, 4096),
        ...                    "kind": "dense"}], [c])
        >>> round(p.device("cpu").seconds, 2)
        12.6
    """
    if method not in PATHS[1:]:
        raise ValueError(f"unknown method {method!r}: expected fast, exact or estimate")
    modules = []
    for entry in entries:
        path = "factored" if entry["kind"] == "factored" else method
        read_bytes = int(entry.get("read_bytes", 0))
        cost = ModuleCost(
            layer=entry["layer"],
            role=entry["role"],
            shape=tuple(entry["shape"]),
            path=path,
            read_bytes=read_bytes,
            memory=0,
            rank=entry.get("rank"),
            count=int(entry.get("count") or 1),
        )
        for calibration in calibrations:
            name = str(calibration.key.get("device"))
            seconds, read_seconds, held = module_cost(
                cost.shape,
                path,
                calibration,
                rank=cost.rank,
                read_bytes=read_bytes,
                estimate=estimate,
            )
            cost.seconds[name], cost.read_seconds[name] = seconds, read_seconds
            cost.memory = max(cost.memory, held)
        modules.append(cost)
    if method == "estimate":  # analyze --estimate takes one module at a time, on all threads
        jobs = 1
    devices = [_device_plan(modules, c, jobs) for c in calibrations]
    return Plan(source, method, modules, devices, list(notes))


def _device_plan(modules: list[ModuleCost], calibration: Calibration, jobs: int | None):
    name = str(calibration.key.get("device"))
    slots = jobs or calibration.jobs
    compute = sum(m.seconds[name] * m.count for m in modules)
    reading = sum(m.read_seconds[name] * m.count for m in modules)
    if name == "cpu":  # each job reads its module, then decomposes it
        wall = schedule([m.total(name) for m in modules for _ in range(m.count)], slots)
    else:  # a GPU reads the next modules while it decomposes
        wall = max(compute, reading) + (modules[0].read_seconds[name] if modules else 0.0)
    # a CPU holds one module per job; a GPU decomposes up to 8 same-shaped dense ΔW at once
    held = slots if name == "cpu" else (_GPU_BATCH if modules and modules[0].path == "fast" else 1)
    peak = max((m.memory for m in modules), default=0) * min(held, max(len(modules), 1))
    return DevicePlan(name, calibration, slots, wall, compute, reading, peak)


def plan(
    path: str | os.PathLike,
    base: str | os.PathLike | None = None,
    modules: str | Sequence[str] | None = None,
    layers: str | Sequence[int] | None = None,
    device: str = "auto",
    method: str = "fast",
    *,
    jobs: int | None = None,
    recalibrate: bool = False,
    estimate: object | None = None,
    checkpoint=None,
    check: bool = True,
    **options: object,
) -> Plan:
    """Predict the time and peak memory of ``spectra.analyze`` with these arguments.

    Only headers are read. The CPU is planned unless ``device`` names CUDA;
    a GPU when ``device`` is ``"auto"`` or CUDA and PyTorch sees one (else the
    plan notes "no GPU here"). Each device is calibrated once per machine
    (a few seconds; ``analysis.calibration``) and read back afterwards.

    Args:
        path: the checkpoint, as ``spectra.load`` takes it.
        base: its base model, for a full fine-tune; ``None`` (the default): none.
        modules: roles as ``analyze`` takes them; ``None`` (the default): k and v.
        layers: layers as ``analyze`` takes them; ``None`` (the default): all.
        device: ``"auto"`` (the default), ``"cpu"`` or ``"cuda"``.
        method: ``"fast"`` (the default), ``"exact"`` or ``"estimate"``.
        jobs: modules side by side on the CPU; ``None`` (the default): as analyze.
        recalibrate: measure the rates again even when cached.
        estimate: with ``method="estimate"``, its settings
            (``analysis.estimated.EstimateSettings``); ``None`` (the default): the defaults.
        checkpoint: ``path`` already opened (``spectra.load``), to skip opening it.
        check: refuse the selection as ``analyze`` would (a missing base, a
            role not there); ``False`` plans what the checkpoint has
            (``inspect``, which needs no base).
        options: loader options, as ``spectra.load`` takes them.

    Returns:
        A ``Plan``.

    Example::

        plan = spectra.plan("adapter/", modules="all")
        print(plan)            # Plan(adapter/: 24 modules, fast; cpu: 0.3 s, 12 MiB; no GPU here)
    """
    checkpoint = checkpoint or load(path, base=base, **options)
    if check:
        keys = checkpoint.plan(modules, layers).keys
    else:
        keys = select(sorted(checkpoint.available()), modules, layers, checkpoint.path).keys
    entries, notes = [], []
    for key in keys:
        entry = module_entry(checkpoint, key, bool(options.get("per_head")))
        if None in checkpoint.module_info(key).shape:
            notes.append(f"layer {entry['layer']} {entry['role']}: one side unknown, taken square")
        entries.append(entry)
    calibrations = []
    cpu_only = device == "cpu"
    if not str(device).startswith("cuda"):
        calibrations.append(calibrate("cpu", recalibrate=recalibrate))
    if not cpu_only and torch.cuda.is_available():
        calibrations.append(
            calibrate(
                resolve_device(device if device != "auto" else "cuda"), recalibrate=recalibrate
            )
        )
    elif str(device).startswith("cuda"):
        resolve_device(device)  # raises DeviceError: no GPU
    elif not cpu_only:
        notes.append("no GPU here (PyTorch sees no CUDA device)")
    if jobs is not None and calibrations and jobs != default_jobs(torch.device("cpu")):
        notes.append(f"{jobs} jobs: rates were measured on the threads of the default jobs")
    return plan_modules(
        entries,
        calibrations,
        method=method,
        source=str(checkpoint.path),
        jobs=jobs,
        notes=notes,
        estimate=estimate,
    )
