"""``SpectraCallback``: the spectra of a Hugging Face ``Trainer`` run, logged as it trains.

Every ``every`` optimizer steps the callback takes the spectra of the live
model (``live.Monitor``: a peft LoRA's factored ΔW, or W − W_start of chosen
dense weights) in ``on_step_end``, after the optimizer step and before the
Trainer logs and saves that step, so a checkpoint saved at that step holds
exactly the weights measured. It asks the Trainer to log that step and adds
its scalars (``spectra/L3.v/effective_rank``, role means
``spectra/v/effective_rank``) to the ``logs`` of ``on_log``, which every
logger of ``report_to`` (TensorBoard, W&B, …) reads after it: TensorBoard
and W&B show them under ``train/`` as they show the loss. They are also
added to ``state.log_history``, so ``trainer_state.json`` keeps them.

Callbacks run in the order the Trainer holds them, and those passed as
``callbacks=[...]`` come after the loggers, which would then have written
their logs before the spectra were added: ``watch(trainer, ...)`` (or
``callback.attach(trainer)``) puts the callback first. transformers is
imported only by this module, never by ``import spectra``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from transformers import TrainerCallback

from ..defaults import SWEEP_METRICS
from ..errors import warn
from .live import Monitor

__all__ = ["SpectraCallback", "watch"]


class SpectraCallback(TrainerCallback):
    """Log the spectra of the model being trained every ``every`` steps (module docstring).

    ``modules``, ``layers``, ``kind``, ``adapter``, ``metrics``, ``prefix``,
    ``per_module``, ``device`` and ``method`` are ``live.Monitor``'s; with
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
        self._first = False
        self._pending: tuple[int, dict[str, float]] | None = None

    def attach(self, trainer) -> SpectraCallback:
        """Put this callback first among ``trainer``'s, before its loggers; returns itself."""
        callbacks = trainer.callback_handler.callbacks
        callbacks[:] = [callback for callback in callbacks if callback is not self]
        callbacks.insert(0, self)
        self._first = True
        return self

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero:
            return
        if self.monitor is None:  # the start weights of a dense ΔW are taken here
            self.monitor = Monitor(model, **self.options)
        loggers = [name for name in (args.report_to or []) if name != "none"]
        if loggers and not self._first:
            warn(
                f"SpectraCallback runs after the Trainer's loggers ({', '.join(loggers)}), so "
                "they will not receive the spectra: use spectra.integrations.watch(trainer, ...) "
                "or callback.attach(trainer) instead of callbacks=[...]"
            )

    def on_step_end(self, args, state, control, **kwargs):
        if self.monitor is None or not self.monitor.due(state.global_step):
            return
        self._pending = (state.global_step, self.monitor.take(state.global_step))
        control.should_log = True  # the Trainer logs this step, and on_log adds the spectra

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._pending is None or logs is None:
            return
        step, values = self._pending
        if step != state.global_step:  # not this step's log (cannot happen in the Trainer's loop)
            return
        self._pending = None
        logs.update(values)
        if state.log_history and state.log_history[-1].get("step") == step:
            state.log_history[-1].update(values)  # the copy trainer_state.json keeps


def watch(trainer, every: int = 100, **options) -> SpectraCallback:
    """A ``SpectraCallback`` placed first in ``trainer`` (so ``report_to`` loggers get it).

    ``options`` are ``SpectraCallback``'s. Returns the callback.
    """
    return SpectraCallback(every, **options).attach(trainer)
