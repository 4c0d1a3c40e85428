"""A report's rows: the ``Row`` type, its key, its columns and how they are written.

A row is one analysed ΔW — a layer, a role, an expert of a mixture-of-experts
role, a head of a multi-head adapter — with every metric of
``spectra.metrics``. ``Row`` is a ``dict`` of its columns (so CSV, JSON and
pandas take it as it is) that knows what identifies it: ``layer``, ``role``,
``expert``, ``head`` and ``key``, the name of its spectrum
(``delta.spectrum_key``: ``L3.k``, ``L3.k.h1``, ``L3.gate.e5``). Every place
that looks a spectrum up takes ``row_key(row)``; nothing builds a key by hand.

``role`` is what the module does (``k``, ``v``, ``gate``, …); a module's
*path* (``encoder.layer.3.attention.self.key``) is its ``name``. Reports
written before 0.2 called the role ``module`` and the health ``flags``:
``RENAMED`` reads them under today's names.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence

from ..delta import spectrum_key
from ..metrics import METRICS
from ..metrics.estimate import ESTIMATED

__all__ = [
    "ESTIMATE_COLUMNS",
    "ID_COLUMNS",
    "OPTIONAL",
    "RENAMED",
    "WEIGHT_COLUMNS",
    "Row",
    "column_type",
    "csv_text",
    "parse_cell",
    "row_key",
    "spectrum_key",
    "with_scale",
]

ID_COLUMNS = (
    ("layer", "int"),
    ("role", "str"),
    ("expert", "int"),
    ("head", "int"),
    ("name", "str"),
    ("d_out", "int"),
    ("d_in", "int"),
    ("kind", "str"),
    ("dtype", "str"),
    ("scale", "float"),
    ("adapter_rank", "int"),
    ("rank_ceiling", "int"),
    ("accuracy_floor", "float"),
    ("noise_floor", "float"),
    ("share_above_floor", "float"),
)
OPTIONAL = ("head", "expert")  # id columns shown only when some row has one
# What needs the base weights W0, measured on request (analysis.weights: analyze's esd=True,
# intruders=True): after the metrics, only in reports that have them.
WEIGHT_COLUMNS = (
    "alpha_base",
    "xmin_base",
    "ks_base",
    "alpha_tuned",
    "xmin_tuned",
    "ks_tuned",
    "intruder_dimensions",
)
# An estimated report's (analyze's estimate=True, analysis.estimated): whether the row is
# estimated, then each estimated metric's error; after the metrics, only in such reports.
ESTIMATE_COLUMNS = ("estimated", *(f"{name}_err" for name in ESTIMATED))
INT_METRICS = {"numerical_rank", "intruder_dimensions"} | {
    name for name in METRICS if name.startswith("energy_rank@")
}

RENAMED = {"flags": "health", "module": "role"}  # columns of older reports, by today's names


class Row(dict):
    """One report row: its columns by name, and what identifies it."""

    __slots__ = ()

    @property
    def layer(self) -> int:
        return int(self["layer"])

    @property
    def role(self) -> str:
        """What the module does: ``q``, ``k``, ``v``, ``o``, ``gate``, ``up``, ``down``."""
        return str(self["role"])

    @property
    def head(self) -> int | None:
        return self.get("head")

    @property
    def expert(self) -> int | None:
        return self.get("expert")

    @property
    def key(self) -> str:
        """The name of this row's spectrum (``L3.k``, ``L3.k.h1``, ``L3.gate.e5``)."""
        return row_key(self)


def row_key(row: Mapping[str, object]) -> str:
    """The key of a row's spectrum, from its layer, role, expert and head."""
    return spectrum_key(int(row["layer"]), str(row["role"]), row.get("head"), row.get("expert"))


def column_type(name: str) -> str:
    types = dict(ID_COLUMNS, health="str", estimated="bool")
    if name in types:
        return types[name]
    return "int" if name in INT_METRICS else "float"


def with_scale(row: dict[str, object], meta: Mapping[str, object]) -> dict[str, object]:
    """The row with its ``scale`` filled from ``meta["scales"]`` where the row has none.

    A dense adapter update (LoHa, LoKr, DoRA) is rebuilt with its scale
    applied, so the row built from it carries no scale; report.json's
    ``scales`` still records the one used, and ``metrics.csv`` must say it too.
    """
    scales = meta.get("scales")
    if row.get("scale") is not None or not isinstance(scales, Mapping) or "layer" not in row:
        return row
    recorded = scales.get(row_key(row))
    scale = recorded.get("scale") if isinstance(recorded, Mapping) else None
    if not isinstance(scale, int | float) or isinstance(scale, bool):
        return row
    return {**row, "scale": float(scale)}


def csv_text(columns: Sequence[str], rows: Iterable[Mapping[str, object]]) -> str:
    """Rows as CSV text with these columns: floats exact (``repr``), None empty.

    Every table spectra writes (metrics, summaries, sweeps, subspaces) goes
    through here, so all of them read back the same way.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_format_cell(row.get(column)) for column in columns])
    return buffer.getvalue()


def _format_cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # shortest exact round trip
    return str(value)


def parse_cell(cell: str, kind: str) -> object:
    if cell == "":  # None is written as an empty cell (health of an unflagged row, no base)
        return None
    if kind == "int":  # an estimated energy rank is fractional
        return int(cell) if cell.lstrip("-").isdigit() else float(cell)
    if kind == "bool":
        return cell == "True"
    if kind == "float":
        return float(cell)
    return cell
