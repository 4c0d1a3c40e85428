"""A report's tables beside ``metrics.csv``: rows with fixed columns, saved and read as CSV.

``metrics.csv`` has a row per analysed ΔW; some results are about several
ΔW at once and have rows of their own. Each such table is declared once
here (``TableSpec``: the ``Report`` attribute, its file and its typed
columns) and held as a ``Table``, a list of row dicts that knows its
columns, with ``to_pandas()`` and ``csv()`` as every table spectra writes:

- ``heads`` (``heads.csv``): one row per (layer, role, pair of heads) of a
  multi-head source analysed per head: ``cosine`` of the two B heads
  (flattened), ``delta_cosine`` of their ΔW_j, ``subspace_similarity`` of
  their top left singular vectors;
- ``head_shares`` (``head_shares.csv``): one row per (layer, role, head):
  the head's ``share`` of Σ_j ‖ΔW_j‖²_F.

``analysis.heads`` makes them; ``expert`` is a column only when a row has
one. ``write_tables`` writes the tables that have rows and returns their
SHA-256, which ``report.json`` keeps; ``read_tables`` reads back the ones it
lists and refuses a file that disagrees with it.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..display import frame, html_table
from ..errors import FormatError
from .rows import csv_text, parse_cell

__all__ = ["HEADS", "HEAD_SHARES", "TABLES", "Table", "TableSpec", "read_tables", "write_tables"]


@dataclass(frozen=True)
class TableSpec:
    """One extra table of a report: its ``Report`` attribute, its file, its typed columns."""

    name: str  # the Report attribute: "heads"
    file: str  # the file in the report folder: "heads.csv"
    columns: tuple[tuple[str, str], ...]  # (name, "int" | "float" | "str"), in order
    optional: tuple[str, ...] = ("expert",)  # written only when some row has a value


HEADS = TableSpec(
    "heads",
    "heads.csv",
    (
        ("layer", "int"),
        ("role", "str"),
        ("expert", "int"),
        ("head_a", "int"),
        ("head_b", "int"),
        ("cosine", "float"),
        ("delta_cosine", "float"),
        ("subspace_similarity", "float"),
    ),
)
HEAD_SHARES = TableSpec(
    "head_shares",
    "head_shares.csv",
    (("layer", "int"), ("role", "str"), ("expert", "int"), ("head", "int"), ("share", "float")),
)
TABLES = (HEADS, HEAD_SHARES)  # every extra table a Report holds, in the order it is saved


class Table(list):
    """The rows of one extra table (dicts keyed by column), with its ``TableSpec``.

    Args:
        spec: which table (``HEADS``, ``HEAD_SHARES``).
        rows: its rows, mappings keyed by column; default none.

    Example:
        >>> table = Table(HEAD_SHARES, [{"layer": 0, "role": "v", "head": 0, "share": 1.0}])
        >>> table.columns, len(table)
        (['layer', 'role', 'head', 'share'], 1)
    """

    def __init__(self, spec: TableSpec, rows: Iterable[Mapping[str, object]] = ()):
        super().__init__(dict(row) for row in rows)
        self.spec = spec

    @property
    def columns(self) -> list[str]:
        """The columns written, in order (``expert`` only when some row has one)."""
        return [
            name
            for name, _ in self.spec.columns
            if name not in self.spec.optional or any(row.get(name) is not None for row in self)
        ]

    def to_pandas(self):
        """The rows as a ``pandas.DataFrame``, missing numbers NaN (pandas imported here)."""
        return frame(self, self.columns)

    def csv(self) -> str:
        """The rows as CSV text, floats exact, missing values empty: the file ``save`` writes."""
        return csv_text(self.columns, self)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Table) and other.spec != self.spec:
            return False
        return list.__eq__(self, other)

    __hash__ = None  # a list: mutable, unhashable

    def __repr__(self) -> str:
        return f"Table({self.spec.name}: {len(self)} rows; {', '.join(self.columns)})"

    def _repr_html_(self) -> str:
        return html_table(self.columns, self, caption=f"{self.spec.name} ({self.spec.file})")


def write_tables(tables: Mapping[str, Table], folder: Path) -> dict[str, str]:
    """Write each table that has rows into ``folder``; the SHA-256 of each file written."""
    digests = {}
    for spec in TABLES:
        table = tables.get(spec.name)
        if table:
            data = table.csv().encode()
            (folder / spec.file).write_bytes(data)
            digests[spec.file] = hashlib.sha256(data).hexdigest()
    return digests


def read_tables(folder: Path, digests: Mapping[str, str], meta_file: str) -> dict[str, Table]:
    """Every extra table of a report folder, empty where none was saved.

    A table file is read when ``digests`` (report.json's ``sha256``) lists
    it and must match it; a table file that report.json does not list was
    not written with this report and is refused.
    """
    tables = {}
    for spec in TABLES:
        path = folder / spec.file
        if spec.file not in digests:
            if path.exists():
                raise FormatError(
                    f"{path}: not listed in {meta_file}; the folder mixes files of different "
                    "runs. Re-run spectra analyze"
                )
            tables[spec.name] = Table(spec)
            continue
        if not path.is_file():
            raise FormatError(f"{folder}: {meta_file} lists {spec.file}, which is missing")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != digests[spec.file]:
            raise FormatError(
                f"{path}: does not match the checksum in {meta_file}; the report folder was "
                "modified or mixes files of different runs. Re-run spectra analyze"
            )
        tables[spec.name] = _parse(spec, data.decode(), path)
    return tables


def _parse(spec: TableSpec, text: str, path: Path) -> Table:
    reader = csv.reader(io.StringIO(text))
    header = next(reader, [])
    kinds = dict(spec.columns)
    expected = [name for name, _ in spec.columns if name not in spec.optional]
    required = [name for name in header if name not in spec.optional]
    if required != expected or not set(header) <= set(kinds):
        raise FormatError(
            f"{path}: columns {', '.join(header)}; expected {', '.join(expected)} "
            f"(and optionally {', '.join(spec.optional)})"
        )
    rows = []
    for cells in reader:
        row: dict[str, object] = {name: None for name in spec.optional}
        for name, cell in zip(header, cells, strict=True):
            row[name] = parse_cell(cell, kinds[name])
        rows.append(row)
    return Table(spec, rows)
