"""Spectra of a model while it trains: ``Monitor`` for any loop, ``spectra_of_model`` for now.

Both read a ``LiveModel`` (``integrations.live``: a peft LoRA kept factored,
or W − W_start of chosen dense weights) and make their ``Report`` with the
library's one report builder, ``analysis.stream.build_report``: the rows and
the metadata keys are those of ``spectra.analyze``, only ``meta["source"]``
says where the weights were (a model in memory, at a step) instead of files.
``start_weights`` keeps what a dense ΔW is measured from.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ..analysis.stream import build_report
from ..defaults import SWEEP_METRICS
from ..errors import SpectraError, warn
from ..loaders import Selection
from ..metrics import METRICS
from ..report import Report
from ..svd import check_method, resolve_device, singular_values
from .live import LiveModel
from .loggers import scalars

__all__ = ["Monitor", "spectra_of_model", "start_weights"]


def start_weights(
    model: torch.nn.Module,
    modules: str | Sequence[str] | None = None,
    layers: str | Sequence[int] | None = None,
) -> dict[str, torch.Tensor]:
    """Float64 CPU copies of the chosen dense weights, now (before training), by module name.

    What ``spectra_of_model(..., kind="dense", start=...)`` subtracts. Only
    the selected modules are copied.
    """
    live = LiveModel(model, "dense")
    return live.start_weights(live.plan(modules, layers))


def spectra_of_model(
    model: torch.nn.Module,
    modules: str | Sequence[str] | None = None,
    layers: str | Sequence[int] | None = None,
    *,
    kind: str = "auto",
    adapter: str | None = None,
    start: Mapping[str, torch.Tensor] | None = None,
    device: str = "auto",
    method: str = "fast",
    step: int | None = None,
) -> Report:
    """The spectra of a model in memory, now, as a ``Report`` like ``spectra.analyze``'s.

    A peft model gives its LoRA layers' ΔW = s·B@A (``kind="adapter"``, the
    default when the model has peft layers); any other model gives
    W − ``start`` for the chosen modules (``kind="dense"``; ``start`` from
    ``start_weights``, taken before training). ``modules`` and ``layers``
    are read as ``analyze`` reads them (``"k,v"``, ``"all"``, ``"0-3"``);
    a role or layer the model lacks is a ``SelectionError``. ``step`` is
    recorded in ``meta["source"]["step"]``.

    Example::

        start = start_weights(model, "q,v")            # before training
        ...
        report = spectra_of_model(model, "q,v", kind="dense", start=start)
    """
    live = LiveModel(model, kind, adapter, start)
    return _report(live, live.plan(modules, layers), device, method, step)


def _report(
    live: LiveModel, selection: Selection, device: str, method: str, step: int | None
) -> Report:
    """Each selected module's σ and row, in a report made by ``analysis.stream.build_report``."""
    target = resolve_device(device)
    check_method(method)
    results = (
        (delta, singular_values(delta, target, method))  # σ: (k,) float64, descending
        for delta in live.deltas_for(selection)
    )
    source = {
        "path": str(live.path) + ("" if step is None else f" step {step}"),
        "format": live.format,
        "variant": live.variant,
        "model": type(live.model).__name__,
        "step": step,
        "options": {"kind": live.kind, "adapter": live.adapter},
    }
    return build_report(live, selection, results, target, method, source)


class Monitor:
    """Spectra of a model every ``every`` steps of a training loop (any loop).

    Made before training: for a dense model (``kind="dense"``, or a model
    without peft layers) it copies the chosen weights then, as the start
    that ΔW is measured from. ``step(step)`` returns the scalars to log
    (``scalars()``) at steps that are multiples of ``every``, else None;
    with ``out``, each such step's report is also saved to
    ``out/step-<N>/``, a report folder that ``spectra compare``,
    ``spectra plot`` and ``spectra sweep out --glob 'step-*'`` read.
    ``last`` is the latest report, ``history`` every logged
    ``(step, scalars)``.

    Example::

        monitor = Monitor(model, modules="q,v", every=50, out="spectra-run/")
        for step, batch in enumerate(loader, 1):
            ...; optimizer.step()
            logged = monitor.step(step)
            if logged:
                writer.add_scalars / wandb.log(logged, step=step)
    """

    def __init__(
        self,
        model: torch.nn.Module,
        modules: str | Sequence[str] | None = None,
        layers: str | Sequence[int] | None = None,
        *,
        every: int = 100,
        kind: str = "auto",
        adapter: str | None = None,
        out: str | os.PathLike | None = None,
        force: bool = False,
        metrics: str | Sequence[str] = SWEEP_METRICS,
        prefix: str = "spectra",
        per_module: bool = True,
        device: str = "auto",
        method: str = "fast",
    ):
        if not isinstance(every, int) or every < 1:
            raise SpectraError(f"every must be a positive number of steps, got {every!r}")
        self.metrics = (
            tuple(METRICS)
            if metrics == "all"
            else tuple(metrics.split(",") if isinstance(metrics, str) else metrics)
        )
        scalars(Report([], {}), self.metrics)  # unknown metric names fail here, not mid-run
        check_method(method)
        resolve_device(device)
        self.live = LiveModel(model, kind, adapter)
        self.selection = self.live.plan(modules, layers)
        if self.live.kind == "dense":  # only the chosen modules, float64, on the CPU
            self.live.start = self.live.start_weights(self.selection)
        self.every, self.out, self.force = every, None if out is None else Path(out), force
        self.prefix, self.per_module = prefix, per_module
        self.device, self.method = device, method
        self.last: Report | None = None
        self.history: list[tuple[int, dict[str, float]]] = []
        self._warned: set[str] = set()

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def step(self, step: int) -> dict[str, float] | None:
        """The scalars to log at ``step`` if it is due (see the class docstring), else None."""
        if not self.due(step):
            return None
        return self.take(step)

    def take(self, step: int) -> dict[str, float]:
        """The spectra now, whatever the step: the report kept, saved with ``out``, as scalars."""
        report = _report(self.live, self.selection, self.device, self.method, step)
        for warning in report.warnings:  # each distinct warning once per run, not every step
            if warning not in self._warned:
                self._warned.add(warning)
                warn(f"step {step}: {warning}")
        if self.out is not None:
            report.save(self.out / f"step-{step}", force=self.force)
        self.last = report
        logged = scalars(report, self.metrics, self.prefix, self.per_module)
        self.history.append((step, logged))
        return logged
