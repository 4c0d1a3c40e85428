"""``SpectraCallback``: the spectra of a Hugging Face ``Trainer`` run, logged as it trains.

Every ``every`` optimizer steps the callback takes the spectra of the live
model (``monitor.Monitor``: a peft LoRA's factored ΔW, or W − W_start of chosen
dense weights) in ``on_step_end``, after the optimizer step and before the
Trainer logs and saves that step, so a checkpoint saved at that step holds
exactly the weights measured, and asks the Trainer to log that step.

In that step's ``on_log`` the callback hands its scalars
(``spectra/L3.v/effective_rank`` per module, role means
``spectra/v/effective_rank``) to the Trainer's logging integrations itself
(the ``report_to`` callbacks: TensorBoard, W&B, MLflow, …, found among the
Trainer's callbacks), at the step they were taken; they show them under
``train/`` as they show the loss. This works wherever the callback stands:
``callbacks=[SpectraCallback(...)]`` puts it after the loggers, which have
then already written that step's ``logs``, so adding to ``logs`` alone would
reach none of them. Only the role means go into ``logs`` itself, so the
console line the Trainer prints (and loggers placed after the callback) get
a handful of keys, not one per module; loggers after the callback get the
per-module values from the callback and the means through ``logs``, each
value once. Every value is also added to ``state.log_history``, so
``trainer_state.json`` keeps them.

The Trainer hands callbacks no reference to itself: ``watch(trainer, ...)``
and ``callback.attach(trainer)`` give it the Trainer's callback handler;
passed in ``callbacks=``, the callback finds the handler that calls its
``on_train_begin`` (the caller's frame), and warns if it cannot. transformers
is imported only by this module, never by ``import spectra``.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence

from transformers import TrainerCallback
from transformers.trainer_callback import CallbackHandler

from ..defaults import SWEEP_METRICS
from ..errors import warn
from .loggers import scalars
from .monitor import Monitor

__all__ = ["SpectraCallback", "watch"]


class SpectraCallback(TrainerCallback):
    """Log the spectra of the model being trained every ``every`` steps (module docstring).

    ``modules``, ``layers``, ``kind``, ``adapter``, ``metrics``, ``prefix``,
    ``per_module``, ``device`` and ``method`` are ``monitor.Monitor``'s; with
    ``out=DIR`` each measured step's report is saved as ``DIR/step-<N>/``
    (``spectra sweep DIR --glob 'step-*'`` tabulates and plots them).
    Measured on the main process only. A dense ΔW is measured from the
    weights at ``on_train_begin`` (on a resumed run: the resumed weights).
    ``monitor`` is the ``Monitor`` once training has begun (``last``,
    ``history``).
    """

    def __init__(
        self,
        every: int = 100,
        modules: str | Sequence[str] | None = None,
        layers: str | Sequence[int] | None = None,
        *,
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
        self.options = {
            "modules": modules,
            "layers": layers,
            "every": every,
            "kind": kind,
            "adapter": adapter,
            "out": out,
            "force": force,
            "metrics": metrics,
            "prefix": prefix,
            "per_module": per_module,
            "device": device,
            "method": method,
        }
        self.monitor: Monitor | None = None
        self._handler: CallbackHandler | None = None
        self._pending: tuple[int, dict[str, float]] | None = None

    def __repr__(self) -> str:
        """``SpectraCallback(every=50, modules='k,v', out='run/')``: the options not at default."""
        defaults = SpectraCallback().options
        shown = [f"every={self.options['every']!r}"] + [
            f"{name}={value!r}"
            for name, value in self.options.items()
            if name != "every" and value != defaults[name]
        ]
        return f"SpectraCallback({', '.join(shown)})"

    def attach(self, trainer) -> SpectraCallback:
        """Put this callback first among ``trainer``'s and give it their handler; returns itself."""
        callbacks = trainer.callback_handler.callbacks
        callbacks[:] = [callback for callback in callbacks if callback is not self]
        callbacks.insert(0, self)
        self._handler = trainer.callback_handler
        return self

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero:
            return
        if self.monitor is None:  # the start weights of a dense ΔW are taken here
            self.monitor = Monitor(model, **self.options)
        if self._handler is None:
            self._handler = _calling_handler(self)
        loggers = [name for name in (args.report_to or []) if name != "none"]
        if loggers and self._handler is None:
            warn(
                f"SpectraCallback cannot find the Trainer's loggers ({', '.join(loggers)}), so "
                "they will not receive the spectra: use spectra.integrations.watch(trainer, ...) "
                "or callback.attach(trainer)"
            )

    def on_step_end(self, args, state, control, **kwargs):
        if self.monitor is None or not self.monitor.due(state.global_step):
            return
        self._pending = (state.global_step, self.monitor.take(state.global_step))
        control.should_log = True  # the Trainer logs this step, and on_log hands the spectra on

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._pending is None or logs is None:
            return
        step, values = self._pending
        if step != state.global_step:  # not this step's log (cannot happen in the Trainer's loop)
            return
        self._pending = None
        if state.log_history and state.log_history[-1].get("step") == step:
            state.log_history[-1].update(values)  # the copy trainer_state.json keeps, all values
        if self._handler is None:  # no loggers found (warned): whoever reads logs after us
            logs.update(values)
            return
        means = scalars(self.monitor.last, self.monitor.metrics, self.options["prefix"], False)
        per_module = {name: value for name, value in values.items() if name not in means}
        logs.update(means)  # the console line, and loggers after this callback
        callbacks = self._handler.callbacks
        here = next(i for i, callback in enumerate(callbacks) if callback is self)
        for position, callback in enumerate(callbacks):
            if not isinstance(callback, _logger_classes()):
                continue
            missed = dict(values) if position < here else dict(per_module)  # each value once
            if missed:
                callback.on_log(args, state, control, logs=missed, **kwargs)


def _logger_classes() -> tuple[type, ...]:
    """The Trainer's logging integrations (what ``report_to`` names), as classes."""
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    return tuple(set(INTEGRATION_TO_CALLBACK.values()))


def _calling_handler(callback: SpectraCallback) -> CallbackHandler | None:
    """The ``CallbackHandler`` holding ``callback`` that is calling it now, if any.

    The Trainer passes callbacks no reference to itself or its handler; the
    handler's ``call_event`` is the caller of the event method, a few frames up.
    """
    frame = inspect.currentframe()
    try:
        for _ in range(8):
            frame = frame.f_back if frame is not None else None
            if frame is None:
                return None
            caller = frame.f_locals.get("self")
            if isinstance(caller, CallbackHandler) and any(c is callback for c in caller.callbacks):
                return caller
        return None
    finally:
        del frame


def watch(trainer, every: int = 100, **options) -> SpectraCallback:
    """A ``SpectraCallback`` attached to ``trainer`` (first among its callbacks).

    ``options`` are ``SpectraCallback``'s. Returns the callback.
    """
    return SpectraCallback(every, **options).attach(trainer)
