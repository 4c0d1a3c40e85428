"""``Report``: the rows, spectra and metadata of one analysis, and how they are saved.

A report holds one row per (layer, module[, expert][, head]) with every metric of
``spectra.metrics``, the singular values of each ΔW, and the metadata of the
run (source paths, detected format, scales, device, method, versions,
warnings, the modules not analysed and those the selection left out:
``not_selected``, ``not_selected_note``). ``Report.save(dir)`` writes

- ``metrics.csv``: ``layer``, ``module`` (the role), ``expert`` (only for
  mixture-of-experts rows), ``head`` (only when there are heads), ``name``,
  ``d_out``, ``d_in``, ``kind``, ``dtype``, ``scale`` (the adapter's scale,
  α/r and the like, also for the dense rebuilds of LoHa, LoKr and DoRA, from
  report.json's ``scales``; empty for a full fine-tune), ``adapter_rank``
  (the bound r of an adapter's update: r, n·r for a MultiLoRA sum; empty for
  a full fine-tune), ``rank_ceiling`` (the most rank this ΔW can have: r of
  a factored update, r₁·r₂ of LoHa, the product of LoKr's factor ranks,
  min(d_out, d_in) of any other dense ΔW; what the ``ceiling`` flag compares
  with), the floors below, then every metric under its METRICS.md name, then
  ``health`` (the row's flags, ``spectra.flags``; earlier reports named it
  ``flags``, and ``load`` reads it as ``health``);
- ``spectra.safetensors``: the singular values of each row (float64, keyed
  ``L{layer}.{module}``, ``L{layer}.{module}.h{head}`` or
  ``L{layer}.{module}.e{expert}``);
- ``report.json``: the metadata, the column types and the SHA-256 of the two
  files above, so ``Report.load`` can refuse a folder whose files disagree.

Every row carries what its σ can be trusted down to: ``accuracy_floor`` (σ_1
times the SVD path's relative floor, ``svd.accuracy_floor``), ``noise_floor``
(the rounding floor of a dense ΔW subtracted from stored weights,
``metrics.rounding_floor``; empty when there is none) and
``share_above_floor`` (the share of Σσ above the larger of the two, the rank
tolerance; ``metrics.share_above``). Rows with ΔW ≠ 0 and less than
``NOISE_SHARE`` of Σσ above the tolerance are named in one warning per
report (``noise_summary``): how many, which roles and layers, and the range
of their share above the floor.

The folder is written under a temporary name and renamed into place, so a
reader never sees half a report, and an existing report is replaced only
with ``force=True``. This module is a leaf: it holds and stores results and
judges rows (``at_noise_floor``, ``noise_summary``); ``spectra.analysis`` makes them.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save as save_numpy

from . import __version__
from .arguments import OUT
from .display import frame, html_table
from .errors import FormatError, SpectraError
from .io.atomic import check_output, holds, replace_folder
from .metrics import METRICS
from .selection import layer_ranges

__all__ = [
    "NOISE_SHARE",
    "REPORT_FILES",
    "Progress",
    "Report",
    "at_noise_floor",
    "check_target",
    "csv_text",
    "is_report",
    "noise_summary",
    "noise_warning",
    "spectrum_key",
    "version_warning",
]

METRICS_FILE, SPECTRA_FILE, META_FILE = "metrics.csv", "spectra.safetensors", "report.json"
REPORT_FILES = (METRICS_FILE, SPECTRA_FILE, META_FILE)
_ID_COLUMNS = (
    ("layer", "int"),
    ("module", "str"),
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
_OPTIONAL = ("head", "expert")  # id columns shown only when some row has one
_INT_METRICS = {"numerical_rank"} | {name for name in METRICS if name.startswith("energy_rank@")}

NOISE_SHARE = 0.5  # rows with less of Σσ above the rounding floor get a warning
_RENAMED = {"flags": "health"}  # columns of older reports, read under today's names

Progress = Callable[[int, int, str], None]


# The columns a notebook shows of a report (to_pandas() has them all).
_HTML_COLUMNS = (
    "layer",
    "module",
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


def spectrum_key(
    layer: int, module: str, head: int | None = None, expert: int | None = None
) -> str:
    """The key of one row's singular values: ``L3.k``, ``L3.k.h1``, ``L3.gate.e5`` (expert 5)."""
    key = f"L{layer}.{module}" + ("" if expert is None else f".e{expert}")
    return key + ("" if head is None else f".h{head}")


@dataclass
class Report:
    """The result of ``analyze()``: ``rows`` (dicts), ``spectra`` (σ by key) and ``meta``."""

    rows: list[dict[str, object]]
    spectra: dict[str, np.ndarray]
    meta: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rows = [_with_scale(row, self.meta) for row in self.rows]

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
        modules = ", ".join(dict.fromkeys(str(row["module"]) for row in self.rows))
        notes = len(self.warnings)
        warned = f", {notes} warning{'s' * (notes != 1)}" if notes else ""
        return (
            f"{what}: {len(self.rows)} rows, layers {layers} × {modules}{warned}; "
            f"{source.get('path')}"
        )

    def _repr_html_(self) -> str:
        """The rows as a table in a notebook, with the warnings under it."""
        shown = [
            c
            for c in _HTML_COLUMNS
            if c not in _OPTIONAL or self._has(c)
        ]
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
        )

    @property
    def warnings(self) -> list[str]:
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
        """The CSV columns, in order (``head`` only when some row has a head; ``health`` last)."""
        # head and expert only when some row has one; rank_ceiling only in reports that have it
        ids = [
            name
            for name, _ in _ID_COLUMNS
            if (name not in _OPTIONAL or self._has(name))
            and (name != "rank_ceiling" or any(name in row for row in self.rows))
        ]
        health = ["health"] if any("health" in row for row in self.rows) else []  # reports ≥ 0.2
        return ids + list(METRICS) + health

    def _has(self, column: str) -> bool:
        return any(row.get(column) is not None for row in self.rows)

    def spectrum(
        self, layer: int, module: str, head: int | None = None, expert: int | None = None
    ) -> np.ndarray:
        """The singular values (descending, float64) of one row."""
        return self.spectra[spectrum_key(layer, module, head, expert)]

    def to_pandas(self):
        """The rows as a ``pandas.DataFrame``, missing numbers as NaN (pandas imported here)."""
        return frame(self.rows, self.columns)

    def to_html(self, path: str | os.PathLike, force: bool = False) -> Path:
        """Write one self-contained HTML page of this report (``spectra.html``)."""
        from .html import write_html

        return write_html(self, path, force=force)

    # -- writing -----------------------------------------------------------

    def save(self, directory: str | os.PathLike, force: bool = False) -> Path:
        """Write the report folder atomically; an existing report needs ``force=True``."""
        out = Path(directory)
        check_target(out, force)
        try:
            with replace_folder(out) as staging:
                csv_bytes = self._csv_bytes()
                spectra_bytes = save_numpy(dict(self.spectra)) if self.spectra else b""
                (staging / METRICS_FILE).write_bytes(csv_bytes)
                (staging / SPECTRA_FILE).write_bytes(spectra_bytes)
                meta = dict(self.meta)
                meta["columns"] = [[name, _column_type(name)] for name in self.columns]
                meta["sha256"] = {
                    METRICS_FILE: hashlib.sha256(csv_bytes).hexdigest(),
                    SPECTRA_FILE: hashlib.sha256(spectra_bytes).hexdigest(),
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
        """Read a report folder written by ``save()``; its files must agree."""
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
            columns = [(_RENAMED.get(name, name), kind) for name, kind in columns]
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
                row[name] = _parse_cell(cell, kind)
            rows.append(row)
        spectra = load_numpy(str(folder / SPECTRA_FILE)) if contents[SPECTRA_FILE] else {}
        keys = [
            spectrum_key(row["layer"], row["module"], row["head"], row["expert"]) for row in rows
        ]
        if sorted(keys) != sorted(spectra):
            raise FormatError(
                f"{folder}: {METRICS_FILE} and {SPECTRA_FILE} list different modules; "
                "re-run spectra analyze"
            )
        return cls(rows=rows, spectra={key: spectra[key] for key in keys}, meta=meta)


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


def _column_type(name: str) -> str:
    types = dict(_ID_COLUMNS, health="str")
    if name in types:
        return types[name]
    return "int" if name in _INT_METRICS else "float"


def _with_scale(row: dict[str, object], meta: Mapping[str, object]) -> dict[str, object]:
    """The row with its ``scale`` filled from ``meta["scales"]`` where the row has none.

    A dense adapter update (LoHa, LoKr, DoRA) is rebuilt with its scale
    applied, so the row built from it carries no scale; report.json's
    ``scales`` still records the one used, and ``metrics.csv`` must say it too.
    """
    scales = meta.get("scales")
    if row.get("scale") is not None or not isinstance(scales, Mapping) or "layer" not in row:
        return row
    recorded = scales.get(
        spectrum_key(row["layer"], row["module"], row.get("head"), row.get("expert"))
    )
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


def _parse_cell(cell: str, kind: str) -> object:
    if cell == "":  # None is written as an empty cell (health of an unflagged row, no base)
        return None
    if kind == "int":
        return int(cell)
    if kind == "float":
        return float(cell)
    return cell


def is_report(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a report folder written by ``Report.save``."""
    return (Path(path) / META_FILE).is_file()


def check_target(out: str | os.PathLike, force: bool) -> None:
    """Raise ``ReportExistsError`` unless a report may be written to ``out``.

    A missing or empty folder is fine; an existing report needs ``force``; a
    folder of anything else is never replaced.
    """
    check_output(out, force, "report", holds(META_FILE))


# ---------------------------------------------------------------- analysis


def at_noise_floor(row: Mapping[str, object]) -> bool:
    """Whether a row's ΔW ≠ 0 has less than ``NOISE_SHARE`` of Σσ above its rank tolerance.

    Only rows with a rounding floor (dense ΔW subtracted from stored weights)
    can be; half, because below it the values at the floor weigh more in
    p_i = σ_i/Σσ (entropy, effective rank) than the update's own directions.
    """
    if row.get("noise_floor") is None or not row["spectral_norm"]:  # also: reports before 0.2
        return False
    return float(row["share_above_floor"]) < NOISE_SHARE


def noise_warning(row: Mapping[str, object]) -> str | None:
    """What was measured of one row at its rounding floor (``at_noise_floor``), else None."""
    if not at_noise_floor(row):
        return None
    key = spectrum_key(row["layer"], row["module"], row.get("head"), row.get("expert"))
    return (
        f"{key}: {float(row['share_above_floor']):.0%} of Σσ lies above the {row['dtype']} "
        f"rounding floor (σ ≤ {row['noise_floor']:.3g}; numerical rank {row['numerical_rank']})"
    )


def noise_summary(rows: Sequence[Mapping[str, object]]) -> str | None:
    """One warning for all rows at their rounding floor (``at_noise_floor``), else None.

    Says how many rows, which roles and layers (or the rows themselves when
    there are three or fewer), the dtypes, and the range of their share of
    Σσ above the floor: what was measured, once per report.
    """
    noisy = [row for row in rows if at_noise_floor(row)]
    if not noisy:
        return None
    shares = [float(row["share_above_floor"]) for row in noisy]
    if len(noisy) <= 3:
        where = ", ".join(
            spectrum_key(row["layer"], row["module"], row.get("head"), row.get("expert"))
            for row in noisy
        )
    else:
        roles = ", ".join(dict.fromkeys(str(row["module"]) for row in noisy))
        where = f"roles {roles}; layers {layer_ranges(int(row['layer']) for row in noisy)}"
    dtypes = "/".join(dict.fromkeys(str(row["dtype"]) for row in noisy))
    low, high = min(shares), max(shares)
    spread = f"{low:.0%}" if f"{low:.0%}" == f"{high:.0%}" else f"{low:.0%} to {high:.0%}"
    verb = "has" if len(noisy) == 1 else "have"
    return (
        f"{len(noisy)} of {len(rows)} modules ({where}) {verb} only {spread} of Σσ above the "
        f"{dtypes} rounding floor: "
        "their entropy and effective rank weigh values at that floor more than the update "
        "(health: noise)"
    )
