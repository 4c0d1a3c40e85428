"""What a logger takes from a report: flat scalars (``scalars``).

``spectra/L3.v/effective_rank`` per module and ``spectra/v/effective_rank``
per role, the names TensorBoard, Weights & Biases and the Trainer's loggers
group by their ``/``. Used by ``Monitor`` and ``SpectraCallback``; any
``Report`` (a saved one, one from ``analyze``) gives the same scalars.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from ..defaults import SWEEP_METRICS
from ..errors import SpectraError
from ..metrics import METRICS
from ..report import Report, row_key

__all__ = ["scalars"]


def scalars(
    report: Report,
    metrics: Sequence[str] = SWEEP_METRICS,
    prefix: str = "spectra",
    per_module: bool = True,
) -> dict[str, float]:
    """Flat ``{name: value}`` for loggers: ``spectra/L3.v/effective_rank`` and role means.

    One value per row and metric (``per_module``), keyed by the row's
    ``report.row_key`` (``L3.k.h1`` for a head, ``L0.gate.e5`` for an
    expert), and the mean over layers (and heads, experts) per role,
    ``spectra/v/effective_rank``, as ``compare``'s summary takes it.
    Metrics that are None for a row (``relative_norm`` without W0) are left
    out.
    """
    unknown = [name for name in metrics if name not in METRICS]
    if unknown:
        raise SpectraError(
            f"unknown metric(s) {', '.join(unknown)}: expected some of {', '.join(METRICS)}"
        )
    values: dict[str, float] = {}
    by_role: dict[tuple[str, str], list[float]] = {}
    for row in report.rows:
        key = row_key(row)
        for metric in metrics:
            value = row.get(metric)
            if value is None:
                continue
            if per_module:
                values[f"{prefix}/{key}/{metric}"] = float(value)
            by_role.setdefault((str(row["role"]), metric), []).append(float(value))
    for (role, metric), found in by_role.items():
        values[f"{prefix}/{role}/{metric}"] = statistics.fmean(found)
    return values
