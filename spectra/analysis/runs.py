"""A training run's checkpoints: ``find_checkpoints`` and its ``RunCheckpoint`` records.

The ``checkpoint-<step>/`` folders the Hugging Face Trainer writes, or
whatever a glob ``pattern`` (relative to the run) matches; each with its
training step: ``global_step`` from a ``trainer_state.json`` inside, else
the last number in its name. What a sweep (``analysis.sweeps``) analyses.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..arguments import GLOB
from ..errors import SpectraError

__all__ = ["RunCheckpoint", "find_checkpoints"]

_TRAINER_FOLDER = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True)
class RunCheckpoint:
    """One checkpoint of a run: its training step and where it is."""

    step: int
    path: Path


def _step_of(path: Path) -> int | None:
    state = path / "trainer_state.json"
    if state.is_file():
        try:
            return int(json.loads(state.read_text())["global_step"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    numbers = re.findall(r"\d+", path.name)
    return int(numbers[-1]) if numbers else None


def find_checkpoints(run: str | os.PathLike, pattern: str | None = None) -> list[RunCheckpoint]:
    """The checkpoints of a run, by step; ``SpectraError`` if there are none.

    Each step is ``global_step`` from a ``trainer_state.json`` inside the
    checkpoint, else the last number in its name.

    Args:
        run: a training output folder.
        pattern: a glob relative to ``run`` (e.g. ``"seed*/step-*"``);
            ``None`` (the default): the ``checkpoint-<step>/`` folders the
            Hugging Face Trainer writes.

    Returns:
        A list of ``RunCheckpoint`` (``step``, ``path``), sorted by step.

    Raises:
        SpectraError: ``run`` is no folder, nothing matches, a match has no
            step, or several matches share one step.

    Example::

        for found in spectra.find_checkpoints("output/"):
            print(found.step, found.path)
        spectra.find_checkpoints("output/", pattern="seed*/step-*")
    """
    run = Path(run)
    if not run.is_dir():
        raise SpectraError(f"{run}: no such folder (expected a training run's output folder)")
    if pattern is None:
        found = [p for p in run.iterdir() if p.is_dir() and _TRAINER_FOLDER.match(p.name)]
        what = "checkpoint-<step>/ folders (Hugging Face Trainer)"
    else:
        found = sorted(run.glob(pattern))
        what = f"paths matching {pattern!r}"
    if not found:
        listing = ", ".join(sorted(p.name for p in run.iterdir())[:12]) or "nothing"
        raise SpectraError(
            f"{run}: no checkpoints found; expected {what}, found {listing}. "
            f"Name others with {GLOB('PATTERN')}"
        )
    checkpoints = []
    for path in found:
        step = _step_of(path)
        if step is None:
            raise SpectraError(
                f"{path}: cannot tell its training step: no trainer_state.json and no number in "
                f"its name; choose the checkpoints with {GLOB}"
            )
        checkpoints.append(RunCheckpoint(step, path))
    checkpoints.sort(key=lambda c: (c.step, str(c.path)))
    steps = [c.step for c in checkpoints]
    repeated = sorted({s for s in steps if steps.count(s) > 1})
    if repeated:
        names = [str(c.path) for c in checkpoints if c.step in repeated]
        raise SpectraError(
            f"{run}: several checkpoints share step {repeated[0]}: {', '.join(names[:4])}; "
            f"narrow the selection with {GLOB}"
        )
    return checkpoints
