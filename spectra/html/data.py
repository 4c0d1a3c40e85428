"""The data a page's script draws, as JSON: each method's rows, σ and heat-map columns.

Every number is the report's: the rows as saved (floats exact, non-finite
ones as ``"Infinity"``, ``"-Infinity"``, ``"NaN"``) and each row's σ, all of
it up to ``SPECTRUM_POINTS`` values, beyond that the first ``_HEAD_POINTS``
and log-spaced ones with their indices (what a log-scale line needs). The
JSON is made safe to sit inside ``<script>`` (``script_json``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..metrics import METRICS
from ..report import Report, row_key

__all__ = ["DEFAULT_METRIC", "SPECTRUM_POINTS", "is_number", "label_of", "page_data", "script_json"]

DEFAULT_METRIC = "normalized_entropy"  # the heat-map's metric when the page opens
SPECTRUM_POINTS = 512  # σ per row kept whole up to this many; beyond, log-spaced ones
_HEAD_POINTS = 64  # … of which the first are always kept


def label_of(report: Report) -> str:
    """A report's name on the page: its variant (``LoRA``), else its folder's name."""
    source = report.meta.get("source", {})
    return str(source.get("variant") or Path(str(source.get("path", "report"))).name)


def page_data(reports: Sequence[Report], labels: Sequence[str], kind: str) -> dict:
    """What the page's script draws: methods with their rows and σ, the metrics to choose."""
    from ..plot import floor_of, method_colors
    from ..plot._rows import trusted

    methods = []
    for label, color, report in zip(labels, method_colors(labels), reports, strict=True):
        rows = []
        for row in report.rows:
            key, sigma = _key_and_sigma(report, row)
            entry = {name: value for name, value in row.items()}
            entry["key"] = key
            entry["column"] = key.partition(".")[2]  # L3.k.h1 → k.h1: the heat-map's column
            entry["floor"] = floor_of(row)
            entry["spectrum"] = _spectrum_points(sigma)
            entry["spectrum"]["above_floor"] = int(trusted(report, row).size)
            rows.append(entry)
        columns = list(dict.fromkeys(entry["column"] for entry in rows))
        methods.append(
            {
                "label": label,
                "color": color,
                "source": str(report.meta.get("source", {}).get("path", "")),
                "layers": sorted({int(row["layer"]) for row in report.rows}),
                "columns": _ordered_columns(columns),
                "rows": rows,
            }
        )
    metrics = [
        name
        for name in METRICS
        if any(is_number(row.get(name)) for report in reports for row in report.rows)
    ]
    default = DEFAULT_METRIC if DEFAULT_METRIC in metrics else (metrics[0] if metrics else None)
    return {
        "kind": kind,
        "metrics": metrics,
        "metric_help": {name: _metric_help(name) for name in metrics},
        "default_metric": default,
        "methods": methods,
    }


def _key_and_sigma(report: Report, row: Mapping[str, object]) -> tuple[str, np.ndarray]:
    """A row's spectrum key (``L3.k``, ``L3.k.h1``, ``L3.gate.e5``) and σ."""
    return row_key(row), report.spectrum_of(row)


def _ordered_columns(columns: Sequence[str]) -> list[str]:
    """Heat-map columns in the order of ``ROLES`` (q k v o gate up down), then by number.

    ``k.h0``, ``k.h1`` … ``k.h10`` for heads (and experts) in numerical order.
    """
    from ..selection import ROLES

    def order(column: str):
        role, *parts = column.split(".")
        numbers = [(part[:1], int(part[1:]) if part[1:].isdigit() else -1) for part in parts]
        return (ROLES.index(role) if role in ROLES else len(ROLES), role, numbers)

    return sorted(columns, key=order)


def _spectrum_points(sigma: np.ndarray) -> dict:
    """σ as saved, all of it up to ``SPECTRUM_POINTS`` values, else a log-spaced subset.

    A subset carries ``index`` (1-based): the first ``_HEAD_POINTS`` values
    and log-spaced ones to the last, all exact.
    """
    sigma = np.asarray(sigma, dtype=np.float64)
    count = int(sigma.size)
    if count <= SPECTRUM_POINTS:
        return {"count": count, "sigma": sigma.tolist()}
    spread = np.geomspace(1, count, SPECTRUM_POINTS - _HEAD_POINTS).round().astype(int)
    index = np.unique(np.concatenate([np.arange(1, _HEAD_POINTS + 1), spread]))
    return {"count": count, "index": index.tolist(), "sigma": sigma[index - 1].tolist()}


def _metric_help(name: str) -> str:
    """The first line of a metric's docstring, for the page's legend."""
    from .. import metrics

    family, _, level = name.partition("@")
    function = getattr(metrics, family, None)
    doc = (getattr(function, "__doc__", None) or "").strip()
    line = doc.splitlines()[0] if doc else ""
    if level:  # energy_rank@0.9: q = 0.9; top_share@1: m = 1
        line = f"{line} Here {'q' if family == 'energy_rank' else 'm'} = {level}."
    return line.replace("``", "")


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _plain(value: object) -> object:
    """JSON-ready: numpy to Python, non-finite floats as "Infinity", "-Infinity", "NaN"."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set):
        return [_plain(item) for item in value]
    if isinstance(value, np.ndarray):
        return [_plain(item) for item in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def script_json(data: object) -> str:
    """JSON safe inside ``<script>``: ``<``, ``>`` and ``&`` escaped as JSON escapes."""
    text = json.dumps(_plain(data), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
