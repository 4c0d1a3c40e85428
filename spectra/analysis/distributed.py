"""One big checkpoint over a Ray cluster: its modules as Ray tasks, largest first.

``analyze(..., ray=ADDRESS)``, ``compare(..., ray=...)`` and
``extract(..., ray=...)`` hand the (layer, role) keys of their selection to
``run_modules``: one Ray task per key, submitted in order of predicted cost
(``predicted_cost``, largest first, so that the last tasks are short). Each
task opens the checkpoint from its path (``spectra.load`` with the same base,
format and options, on whichever node runs it; the path must be one every
node sees), reads only its own (layer, role) and returns what the driver
needs: for ``analyze`` the σ of each ΔW (``module_spectra``, a 1-D float64
array per row) with its ``LayerDelta`` stripped of tensors (``light_delta``:
shapes and dtypes only), with ``--estimate`` each dense ΔW's ``Estimate``
and top σ instead (``module_estimates``), for ``extract`` the module's LoRA
factors. No ΔW passes through the driver. The driver puts the results back in the
selection's order and builds the report by the same code as a serial run
(``stream.build_report``), so the rows and spectra equal the serial ones bit
for bit (the same functions on the same thread count: Ray gives each task
one CPU, as a serial run on two cores gives each of its two workers; an
estimating task takes all of the driver's threads, as ``--estimate`` runs
one module at a time on all of them).

Progress is reported as tasks finish; on Ctrl-C (or any error) the tasks
still pending are cancelled before the exception goes on. Ray is started or
joined as ``sweep`` does it (``executors.ray_session``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..arguments import ESD, INTERFERENCE, INTRUDERS, PER_HEAD, RAY, SUBSPACE
from ..delta import Dense, Factored, LayerDelta, spectrum_key
from ..errors import NonFiniteError, SpectraError
from ..loaders import Checkpoint, Selection
from ..report import Progress
from ..svd import default_jobs, finite_only, resolve_device, singular_values_stream
from .costs import flop_cost, module_memory
from .estimated import Estimates, EstimateSettings, estimate_stream
from .executors import ray_session, task_error
from .plan import module_entry
from .sources import load

__all__ = [
    "Opened",
    "check_ray_options",
    "light_delta",
    "module_estimates",
    "module_spectra",
    "predicted_cost",
    "run_modules",
    "spectra_on_ray",
]

Key = tuple[int, str]


@dataclasses.dataclass(frozen=True)
class Opened:
    """How a task opens the checkpoint: ``spectra.load(path, base, format, **options)``."""

    path: object  # a local path, or io.hub's Source (picklable; its path is what is read)
    base: object | None
    format: str
    options: dict[str, object]

    def open(self) -> Checkpoint:
        """The checkpoint, opened here (headers and configs: no weights read)."""
        return load(self.path, base=self.base, format=self.format, **self.options)


def check_ray_options(
    esd: bool, intruders: bool, each: Callable | None, options: dict[str, object]
) -> None:
    """Refuse, before any work, what needs a module's ΔW beside its σ on the driver.

    Those measures (α and intruders of W0 + ΔW, per-head diversity, the
    subspace metrics and interference of a comparison) read ΔW in the same
    pass as σ; on Ray only σ comes back.
    """
    asked = [
        str(argument)
        for argument, on in (
            (ESD, esd),
            (INTRUDERS, intruders),
            (PER_HEAD, options.get("per_head")),
            (f"{SUBSPACE} or {INTERFERENCE}", each is not None),
        )
        if on
    ]
    if asked:
        raise SpectraError(
            f"{RAY} runs σ and the balance metrics only; {asked[0]} needs each ΔW beside its "
            f"σ in one process: run it without {RAY}"
        )


def predicted_cost(
    checkpoint: Checkpoint, key: Key, dense_path: str = "fast", estimate: object | None = None
) -> float:
    """Predicted cost of one (layer, role): ``costs.flop_cost`` × its heads or experts.

    The plan's cost model (``analysis.costs``) in flops, so that the modules
    go to the cluster in the order the plan predicts they take.

    Args:
        checkpoint: the opened checkpoint (``module_info``: no weights read).
        key: ``(layer, role)``.
        dense_path: the path of a dense ΔW: ``"fast"`` (the default),
            ``"exact"`` or ``"estimate"`` (with its ``estimate`` settings).

    Returns:
        The predicted cost in floating-point operations.

    Example::

        checkpoint = spectra.load("tuned/", base="base/")
        order = sorted(checkpoint.plan().keys, key=lambda k: -predicted_cost(checkpoint, k))
    """
    info = checkpoint.module_info(key)
    copies = (info.heads or 1) * (info.experts or 1)
    return copies * flop_cost(info.shape, info.kind, info.rank, dense_path, estimate)


def light_delta(delta: LayerDelta) -> LayerDelta:
    """``delta`` with its tensors replaced by shapes (``meta`` tensors): what a report row needs.

    Ids, shape, dtypes, rank, scale, weight RMS and base norm are kept;
    nothing of ΔW itself, so that it crosses to the driver in a few bytes.
    """
    update = delta.update
    if isinstance(update, Factored):  # B (d_out, r), A (r, d_in)
        light = Factored(_shape_only(update.B), _shape_only(update.A), update.scale)
    else:  # (d_out, d_in)
        light = Dense(_shape_only(update.matrix), update.rank_bound)
    return dataclasses.replace(delta, update=light)


def _shape_only(tensor: torch.Tensor) -> torch.Tensor:
    return torch.empty(tensor.shape, dtype=tensor.dtype, device="meta")


def module_spectra(
    checkpoint: Checkpoint, key: Key, device: str, method: str, skip_nonfinite: bool
) -> tuple[list[tuple[LayerDelta, np.ndarray]], list[str]]:
    """A task's work for ``analyze``: σ of each ΔW of one (layer, role), and what was skipped.

    The same stream as a serial run (``svd.singular_values_stream``), one
    module at a time on this task's CPU (or GPU).

    Returns:
        ``([(light_delta, σ), …], skipped)``: σ a 1-D float64 array,
        descending; ``skipped`` the keys left out for NaN/Inf weights (with
        ``skip_nonfinite``).
    """
    deltas, skipped = _deltas_of(checkpoint, key, skip_nonfinite)
    results = []
    for delta, sigma in singular_values_stream(deltas, device, method, prefetch=0, jobs=1):
        results.append((light_delta(delta), sigma.numpy()))  # σ: (k,) float64
    return results, skipped


def module_estimates(
    checkpoint: Checkpoint,
    key: Key,
    device: str,
    method: str,
    skip_nonfinite: bool,
    settings: EstimateSettings,
) -> tuple[list[tuple[LayerDelta, np.ndarray, object]], list[str]]:
    """A task's work for ``analyze --estimate``: one (layer, role) as a serial run estimates it.

    The same stream as a serial estimating run (``estimated.estimate_stream``):
    a dense ΔW estimated with ``settings``, a factored one decomposed exactly.

    Returns:
        ``([(light_delta, σ, estimate), …], skipped)``: σ a 1-D float64 array
        (a dense ΔW's top σ), ``estimate`` its ``Estimate`` with CPU tensors,
        or None for a factored ΔW; ``skipped`` as in ``module_spectra``.
    """
    deltas, skipped = _deltas_of(checkpoint, key, skip_nonfinite)
    estimates = Estimates(settings)
    results = []
    for delta, sigma in estimate_stream(
        deltas, resolve_device(device), method, estimates, prefetch=0
    ):  # an Estimate holds CPU tensors (metrics.estimate): it crosses to the driver as it is
        found = estimates.get(spectrum_key(delta.layer, delta.role, delta.head, delta.expert))
        results.append((light_delta(delta), sigma.numpy(), found))  # σ: (k,) float64
    return results, skipped


def _deltas_of(checkpoint: Checkpoint, key: Key, skip_nonfinite: bool) -> tuple[object, list]:
    """The ΔW of one (layer, role), as a serial run streams them, and the keys left out."""
    deltas = checkpoint.deltas_for(Selection(keys=(key,), warnings=()))
    skipped: list[str] = []
    if skip_nonfinite:
        deltas = finite_only(deltas, skipped)
    return deltas, skipped


def _task(opened: Opened, key: Key, work: Callable, arguments: tuple, threads: int) -> object:
    """One Ray task: open the checkpoint on this node, do ``work`` on one (layer, role).

    On ``threads`` threads: those a local run gives the same work, so that
    its floating-point reductions, and results, are the same.
    """
    torch.set_num_threads(threads)
    return work(opened.open(), key, *arguments)


def run_modules(
    opened: Opened,
    checkpoint: Checkpoint,
    keys: Sequence[Key],
    work: Callable,
    arguments: tuple,
    address: bool | str,
    progress: Progress | None = None,
    threads: int | None = None,
    dense_path: str = "fast",
    estimate: object | None = None,
) -> tuple[list[object], dict[str, object]]:
    """Run ``work(checkpoint, key, *arguments)`` for each key as a Ray task, largest first.

    ``work`` must be a module-level function (Ray ships it by name) whose
    result is small. Each task runs on ``threads`` threads (default: this
    process's), the count a local run would give the same work, and asks
    Ray for as many CPUs (at most a node's) and for the memory the plan
    predicts it holds (``costs.module_memory``, at most the largest node's),
    so that Ray never packs more large modules on a node than fit. The
    tasks are submitted in order of ``predicted_cost`` with a dense ΔW on
    ``dense_path`` (and ``estimate``'s settings). ``progress(done, total,
    label)`` is called as tasks finish; on any exception (Ctrl-C included)
    the pending tasks are cancelled first.

    Returns:
        The results in the order of ``keys``, and where they ran
        (``{"name": "ray", "address", "nodes", "cpus", "gpus", "tasks"}``:
        what a report's ``meta["executor"]`` records).
    """
    order = sorted(
        range(len(keys)),
        key=lambda i: -predicted_cost(checkpoint, keys[i], dense_path, estimate),
    )
    threads = threads or torch.get_num_threads()
    results: dict[int, object] = {}
    with ray_session(address) as ray:
        resources = ray.cluster_resources()
        gpus = resources.get("GPU", 0)
        alive = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
        node_cpus = max([node.get("CPU", 0) for node in alive], default=1)
        cpus = max(1, min(threads, int(node_cpus)))  # never more than a node has: it would wait
        node_memory = max([node.get("memory", 0) for node in alive], default=0)
        task = ray.remote(num_cpus=cpus, num_gpus=1 if gpus else 0)(_task)

        def submit(i: int) -> object:
            held = module_memory(module_entry(checkpoint, keys[i]), dense_path, estimate)
            asked = {"memory": int(min(held, node_memory))} if node_memory else {}
            return task.options(**asked).remote(opened, keys[i], work, arguments, threads)

        pending = {submit(i): i for i in order}
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                index = pending.pop(ready[0])
                layer, role = keys[index]
                try:
                    results[index] = ray.get(ready[0])
                except ray.exceptions.RayTaskError as exc:
                    raise task_error(exc, f"{opened.path}: L{layer}.{role}") from None
                if progress is not None:
                    progress(len(results), len(keys), spectrum_key(layer, role))
        except BaseException:
            for ref in pending:  # stop what has not finished: nothing more runs for this call
                ray.cancel(ref, force=True)
            raise
        where = {
            "name": "ray",
            "address": ray.get_runtime_context().gcs_address,
            "nodes": sum(1 for node in ray.nodes() if node.get("Alive")),
            "cpus": int(resources.get("CPU", 0)),
            "gpus": int(gpus),
            "tasks": len(keys),
            "threads_per_task": threads,
        }
    return [results[i] for i in range(len(keys))], where


def spectra_on_ray(
    opened: Opened,
    checkpoint: Checkpoint,
    selection: Selection,
    local: tuple[str, str, bool, int | None],
    address: bool | str,
    progress: Progress | None,
    skipped: list[str],
    estimates: Estimates | None = None,
) -> tuple[list[tuple[LayerDelta, torch.Tensor]], dict[str, object]]:
    """``analyze``'s ``(delta, σ)`` stream from Ray tasks, in the selection's order.

    Each (layer, role) of ``selection`` is a task (``module_spectra``) with
    ``local`` = ``(device, method, skip_nonfinite, jobs)`` as ``analyze`` got
    them; the keys left out for NaN/Inf weights are added to ``skipped``, as a
    serial run adds them. Each task gets the threads a local run's worker has
    (``jobs`` modules side by side on the CPU share this process's threads).
    With ``estimates`` (``analyze --estimate``) each task is
    ``module_estimates`` with its settings, on all of this process's threads
    as a local estimating run, and each dense ΔW's ``Estimate`` is put in
    ``estimates`` by its spectrum key, as ``estimate_stream`` does here.

    Returns:
        ``[(light_delta, σ), …]`` in the order a serial run yields them (σ a
        float64 tensor), and where they ran (``run_modules``).
    """
    device, method, skip_nonfinite, jobs = local
    target = resolve_device(device)
    threads = torch.get_num_threads()
    if estimates is None:
        work, arguments, dense_path = module_spectra, (device, method, skip_nonfinite), method
        workers = default_jobs(target) if jobs is None else jobs
        side_by_side = target.type == "cpu" and workers > 1  # as svd.singular_values_stream
        threads = max(1, threads // workers) if side_by_side else threads
    else:  # one module at a time on all threads, as estimated.estimate_stream runs here
        arguments = (device, method, skip_nonfinite, estimates.settings)
        work, dense_path = module_estimates, "estimate"
    try:
        keys = selection.keys
        settings = estimates.settings if estimates is not None else None
        per_key, where = run_modules(
            opened, checkpoint, keys, work, arguments, address, progress, threads, dense_path,
            settings,
        )
    except NonFiniteError as exc:  # as a local run says it: which checkpoint holds the module
        raise NonFiniteError(f"{os.fspath(opened.path)}: {exc}") from None
    results = []
    for rows, left_out in per_key:
        for delta, sigma, *found in rows:  # module_estimates adds each row's Estimate or None
            if found and found[0] is not None:
                key = spectrum_key(delta.layer, delta.role, delta.head, delta.expert)
                estimates[key] = found[0]
            results.append((delta, torch.from_numpy(sigma.copy())))
        skipped.extend(left_out)
    return results, where
