"""``Report``: one analysis's rows, spectra and metadata, saved and loaded as a folder."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save as save_numpy

from .. import __version__
from ..arguments import OUT
from ..display import frame, html_table
from ..errors import FormatError, SpectraError
from ..io.atomic import check_output, holds, replace_folder
from ..metrics import METRICS
from ..selection import layer_ranges
from .rows import (
    ESTIMATE_COLUMNS,
    ID_COLUMNS,
    OPTIONAL,
    RENAMED,
    WEIGHT_COLUMNS,
    Row,
    column_type,
    csv_text,
    parse_cell,
    row_key,
    spectrum_key,
    with_scale,
)
from .tables import HEAD_SHARES, HEADS, TABLES, Table, read_tables, write_tables

__all__ = ["REPORT_FILES", "Progress", "Report", "check_target", "is_report", "version_warning"]

METRICS_FILE, SPECTRA_FILE, META_FILE = "metrics.csv", "spectra.safetensors", "report.json"
REPORT_FILES = (METRICS_FILE, SPECTRA_FILE, META_FILE)

Progress = Callable[[int, int, str], None]


# The columns a notebook shows of a report (to_pandas() has them all).
_HTML_COLUMNS = (
    "layer",
    "role",
    "expert",
    "head",
    "d_out",
    "d_in",
    "numerical_rank",
    "normalized_entropy",
    "effective_rank",
    "stable_rank",
    "top_share@1",
    "frobenius_norm",
    "relative_norm",
)


@dataclass
class Report:
    """The result of ``analyze()``: ``rows`` (``Row``s), ``spectra`` (σ by key) and ``meta``.

    Each row's ``scale`` is filled from ``meta["scales"]`` where the row has
    none. ``save(dir)`` writes ``metrics.csv``, ``spectra.safetensors`` and
    ``report.json`` atomically (and ``heads.csv``, ``head_shares.csv`` when
    there are heads); ``Report.load(dir)`` reads them back.

    Args:
        rows: one mapping per (layer, role[, expert][, head]): the ids and
            every metric (made into ``Row``s).
        spectra: the σ of each row, descending float64, keyed by
            ``spectrum_key`` (``L3.k``, ``L3.k.h1``, ``L3.gate.e5``).
        meta: the run's metadata (source, scales, device, method, versions,
            warnings, …); default empty.
        heads: a multi-head source's head diversity, one row per (layer,
            role, pair of heads): a ``Table`` (``spectra.report.tables``), made by
            ``analysis.heads``; default empty.
        head_shares: each head's share of Σ_j ‖ΔW_j‖²_F, one row per (layer,
            role, head); default empty.

    Example:
        >>> import numpy as np
        >>> report = Report([{"layer": 0, "role": "v"}], {"L0.v": np.array([2.0, 1.0])})
        >>> len(report), report.rows[0].key, report.spectrum(0, "v")
        (1, 'L0.v', array([2., 1.]))
    """

    rows: list[Row]
    spectra: dict[str, np.ndarray]
    meta: dict[str, object] = field(default_factory=dict)
    heads: Table = field(default_factory=lambda: Table(HEADS))
    head_shares: Table = field(default_factory=lambda: Table(HEAD_SHARES))

    def __post_init__(self) -> None:
        self.rows = [Row(with_scale(row, self.meta)) for row in self.rows]
        self.heads = Table(HEADS, self.heads)  # a list given is made a Table
        self.head_shares = Table(HEAD_SHARES, self.head_shares)

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"Report({self._headline()})"

    def _headline(self) -> str:
        """``LoRA, peft format: 12 rows, layers 0-5 × k, v, 1 warning; adapter/``."""
        source = self.meta.get("source", {})
        what = ", ".join(
            str(x) for x in (source.get("variant"), f"{source.get('format')} format") if x
        )
        layers = layer_ranges(int(row["layer"]) for row in self.rows)
        roles = ", ".join(dict.fromkeys(row.role for row in self.rows))
        notes = len(self.warnings)
        warned = f", {notes} warning{'s' * (notes != 1)}" if notes else ""
        guessed = sum(1 for row in self.rows if row.get("estimated"))
        warned += f", {guessed} estimated (errors in <metric>_err)" if guessed else ""
        return (
            f"{what}: {len(self.rows)} rows, layers {layers} × {roles}{warned}; "
            f"{source.get('path')}"
        )

    def _repr_html_(self) -> str:
        """The rows as a table in a notebook, with the warnings under it."""
        shown = [
            c
            for c in _HTML_COLUMNS
            if c not in OPTIONAL or self._has(c)
        ] + (["estimated"] if self._has("estimated") else [])
        return html_table(
            shown, self.rows, caption=f"Report — {self._headline()}", notes=self.warnings
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Report):
            return NotImplemented
        return (
            self.rows == other.rows
            and self.meta == other.meta
            and self.spectra.keys() == other.spectra.keys()
            and all(np.array_equal(self.spectra[k], other.spectra[k]) for k in self.spectra)
            and all(getattr(self, t.name) == getattr(other, t.name) for t in TABLES)
        )

    @property
    def warnings(self) -> list[str]:
        """The report's warnings (``meta["warnings"]``), a new list each time."""
        return list(self.meta.get("warnings", []))

    @property
    def not_selected(self) -> list[tuple[int, str]]:
        """The (layer, role) pairs the checkpoint has that the selection left out."""
        return [(int(layer), str(role)) for layer, role in self.meta.get("not_selected", [])]

    @property
    def not_selected_note(self) -> str:
        """One line naming ``not_selected`` and the flag for them; "" when nothing was left out."""
        return str(self.meta.get("not_selected_note") or "")

    @property
    def columns(self) -> list[str]:
        """The CSV columns, in order (``head`` only when some row has a head; ``health`` last).

        The columns that need W0 (``WEIGHT_COLUMNS``: ``analyze(..., esd=True,
        intruders=True)``) come after the metrics, in the reports that have them.
        """
        # head and expert only when some row has one; rank_ceiling only in reports that have it
        ids = [
            name
            for name, _ in ID_COLUMNS
            if (name not in OPTIONAL or self._has(name))
            and (name != "rank_ceiling" or any(name in row for row in self.rows))
        ]
        health = ["health"] if any("health" in row for row in self.rows) else []  # reports ≥ 0.2
        weights = [name for name in WEIGHT_COLUMNS if any(name in row for row in self.rows)]
        estimate = [name for name in ESTIMATE_COLUMNS if any(name in row for row in self.rows)]
        return ids + list(METRICS) + weights + estimate + health

    def _has(self, column: str) -> bool:
        return any(row.get(column) is not None for row in self.rows)

    def spectrum(
        self, layer: int, role: str, head: int | None = None, expert: int | None = None
    ) -> np.ndarray:
        """The singular values (descending, float64) of one module; ``spectrum_of`` for a row.

        Args:
            layer: the layer index.
            role: the module's role (``"k"``, ``"v"``, …).
            head: the head, in a report analysed per head; ``None`` (the
                default): the whole module.
            expert: the expert of a mixture-of-experts role; ``None`` (the
                default): not an expert.

        Returns:
            σ as a float64 ``numpy`` array, descending.

        Raises:
            KeyError: the report has no such row.

        Example:
            >>> import numpy as np
            >>> spectra = {"L3.gate.e5": np.array([3.0, 1.0])}
            >>> Report([{"layer": 3, "role": "gate", "expert": 5}], spectra).spectrum(
            ...     3, "gate", expert=5
            ... )
            array([3., 1.])
        """
        return self.spectra[spectrum_key(layer, role, head, expert)]

    def spectrum_of(self, row: Mapping[str, object]) -> np.ndarray:
        """The singular values (descending, float64) of one of this report's rows.

        Args:
            row: a row of ``rows`` (or any mapping with its ``layer``,
                ``role``, ``head`` and ``expert``).

        Returns:
            σ as a float64 ``numpy`` array, descending.

        Example:
            >>> import numpy as np
            >>> report = Report([{"layer": 0, "role": "k"}], {"L0.k": np.array([1.5, 0.5])})
            >>> [report.spectrum_of(row).tolist() for row in report.rows]
            [[1.5, 0.5]]
        """
        return self.spectra[row_key(row)]

    def to_pandas(self):
        """The rows as a ``pandas.DataFrame``, missing numbers as NaN (pandas imported here).

        Returns:
            A ``pandas.DataFrame`` with the ``columns`` of ``metrics.csv``,
            one row per (layer, role[, expert][, head]).

        Example::

            df = spectra.analyze("adapter/").to_pandas()
            df.pivot(index="layer", columns="role", values="effective_rank")
        """
        return frame(self.rows, self.columns)

    def to_html(self, path: str | os.PathLike, force: bool = False) -> Path:
        """Write one self-contained HTML page of this report (``spectra.html``).

        Args:
            path: the HTML file to write, atomically.
            force: replace a page spectra wrote there; default False.

        Returns:
            The path written.

        Raises:
            ReportExistsError: ``path`` exists and ``force`` is not given, or
                it is not a page spectra wrote.

        Example::

            spectra.analyze("adapter/").to_html("adapter.html")
        """
        from ..html import write_html

        return write_html(self, path, force=force)

    # -- writing -----------------------------------------------------------

    def save(self, directory: str | os.PathLike, force: bool = False) -> Path:
        """Write the report folder atomically; an existing report needs ``force=True``.

        The folder holds ``metrics.csv``, ``spectra.safetensors`` and
        ``report.json`` (module docstring of ``spectra.report``).

        Args:
            directory: the folder: missing, empty, or a report with ``force``.
            force: replace an existing report; default False.

        Returns:
            The folder, as a ``Path``.

        Raises:
            ReportExistsError: ``directory`` holds a report and no ``force``,
                or anything that is not a report.
            SpectraError: writing failed (nothing is written there).

        Example::

            report = spectra.analyze("adapter/")
            report.save("adapter-report/")
            assert spectra.Report.load("adapter-report/") == report
        """
        out = Path(directory)
        check_target(out, force)
        try:
            with replace_folder(out) as staging:
                csv_bytes = self._csv_bytes()
                spectra_bytes = save_numpy(dict(self.spectra)) if self.spectra else b""
                (staging / METRICS_FILE).write_bytes(csv_bytes)
                (staging / SPECTRA_FILE).write_bytes(spectra_bytes)
                meta = dict(self.meta)
                meta["columns"] = [[name, column_type(name)] for name in self.columns]
                meta["sha256"] = {
                    METRICS_FILE: hashlib.sha256(csv_bytes).hexdigest(),
                    SPECTRA_FILE: hashlib.sha256(spectra_bytes).hexdigest(),
                    **write_tables({t.name: getattr(self, t.name) for t in TABLES}, staging),
                }
                (staging / META_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        except OSError as exc:
            raise SpectraError(
                f"{out}: writing the report failed ({exc}); nothing was written there"
            ) from exc
        return out

    def _csv_bytes(self) -> bytes:
        return csv_text(self.columns, self.rows).encode()

    # -- reading -----------------------------------------------------------

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Report:
        """Read a report folder written by ``save()``; its files must agree.

        Columns of older reports are read under today's names (``module`` as
        ``role``, ``flags`` as ``health``).

        Args:
            directory: a folder written by ``Report.save``.

        Returns:
            The ``Report``, equal to the one saved.

        Raises:
            FormatError: a file is missing, ``report.json`` is not valid, a
                checksum or the column list disagrees, or the two files list
                different modules.

        Example::

            report = spectra.Report.load("adapter-report/")
            print(report.warnings, report.spectrum(0, "v")[:4])
        """
        folder = Path(directory)
        missing = [name for name in REPORT_FILES if not (folder / name).is_file()]
        if missing:
            raise FormatError(
                f"{folder}: not a spectra report folder; missing {', '.join(missing)} "
                f"(write one with spectra analyze {OUT})"
            )
        try:
            meta = json.loads((folder / META_FILE).read_text())
            columns = [(name, kind) for name, kind in meta.pop("columns")]
            header_names = [name for name, _ in columns]
            columns = [(RENAMED.get(name, name), kind) for name, kind in columns]
            digests = meta.pop("sha256")
        except (ValueError, KeyError, TypeError) as exc:
            raise FormatError(
                f"{folder / META_FILE}: not a valid spectra report.json ({exc})"
            ) from exc
        contents = {name: (folder / name).read_bytes() for name in (METRICS_FILE, SPECTRA_FILE)}
        for name, data in contents.items():
            if hashlib.sha256(data).hexdigest() != digests.get(name):
                raise FormatError(
                    f"{folder / name}: does not match the checksum in {META_FILE}; the report "
                    "folder was modified or mixes files of different runs. Re-run spectra analyze"
                )
        reader = csv.reader(io.StringIO(contents[METRICS_FILE].decode()))
        header = next(reader)
        if header != header_names:
            raise FormatError(f"{folder / METRICS_FILE}: columns disagree with {META_FILE}")
        rows = []
        for cells in reader:
            row: dict[str, object] = {"head": None, "expert": None}
            for (name, kind), cell in zip(columns, cells, strict=True):
                row[name] = parse_cell(cell, kind)
            rows.append(row)
        spectra = load_numpy(str(folder / SPECTRA_FILE)) if contents[SPECTRA_FILE] else {}
        keys = [
            row_key(row) for row in rows
        ]
        if sorted(keys) != sorted(spectra):
            raise FormatError(
                f"{folder}: {METRICS_FILE} and {SPECTRA_FILE} list different modules; "
                "re-run spectra analyze"
            )
        tables = read_tables(folder, digests, META_FILE)  # heads.csv, … where they were saved
        return cls(rows=rows, spectra={key: spectra[key] for key in keys}, meta=meta, **tables)


def version_warning(report: Report) -> str | None:
    """A warning when a saved report was made by another spectra version, else None.

    Definitions can change between versions (0.2 took Gini over the used
    directions and added the floor columns), so mixing versions in one
    comparison may compare unlike numbers.
    """
    made_by = report.meta.get("spectra_version")
    if made_by == __version__:
        return None
    source = report.meta.get("source", {}).get("path", "this report")
    return (
        f"{source}: report made by spectra {made_by or 'unknown'}, this is {__version__}; "
        "metric definitions may differ (re-run spectra analyze to compare like with like)"
    )


def is_report(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a report folder written by ``Report.save``."""
    return (Path(path) / META_FILE).is_file()


def check_target(out: str | os.PathLike, force: bool) -> None:
    """Raise ``ReportExistsError`` unless a report may be written to ``out``.

    A missing or empty folder is fine; an existing report needs ``force``; a
    folder of anything else is never replaced.
    """
    check_output(out, force, "report", holds(META_FILE))


