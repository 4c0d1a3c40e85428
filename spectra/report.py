"""``analyze()`` and the ``Report`` it returns: rows, spectra and metadata.

A report holds one row per (layer, module[, head]) with every metric of
``spectra.metrics``, the singular values of each ΔW, and the metadata of the
run (source paths, detected format, scales, device, method, versions,
warnings). ``Report.save(dir)`` writes

- ``metrics.csv``: ``layer``, ``module`` (the role), ``head`` (only when
  there are heads), ``name``, ``d_out``, ``d_in``, ``kind``, ``dtype``,
  ``scale``, ``adapter_rank`` (the bound r of an adapter's update: r, n·r for
  a MultiLoRA sum; empty for a full fine-tune), the floors below, then every
  metric under its METRICS.md name;
- ``spectra.safetensors``: the singular values of each row (float64, keyed
  ``L{layer}.{module}`` or ``L{layer}.{module}.h{head}``);
- ``report.json``: the metadata, the column types and the SHA-256 of the two
  files above, so ``Report.load`` can refuse a folder whose files disagree.

Every row carries what its σ can be trusted down to: ``accuracy_floor`` (σ_1
times the SVD path's relative floor, ``svd.accuracy_floor``), ``noise_floor``
(the rounding floor of a dense ΔW subtracted from stored weights,
``metrics.rounding_floor``; empty when there is none) and
``share_above_floor`` (the share of Σσ above the larger of the two, the rank
tolerance; ``metrics.share_above``). A row with ΔW ≠ 0 and less than
``NOISE_SHARE`` of Σσ above the tolerance gets a warning: its balance
metrics measure rounding noise, not the update.

The folder is written under a temporary name and renamed into place, so a
reader never sees half a report, and an existing report is replaced only
with ``force=True``.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import io
import json
import os
import platform
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save as save_numpy

from . import __version__
from .atomic import check_replaceable, replace_folder
from .delta import Factored, LayerDelta
from .errors import FormatError, NonFiniteError, SpectraError
from .hub import locate
from .loaders import load
from .metrics import METRICS, compute, rank_tolerance, rounding_floor, share_above
from .svd import (
    accuracy_floor,
    check_finite,
    check_method,
    resolve_device,
    singular_values_stream,
)

__all__ = [
    "NOISE_SHARE",
    "REPORT_FILES",
    "Report",
    "analyze",
    "check_target",
    "is_report",
    "noise_warning",
    "rank_tolerance_of",
    "rounding_floor_of",
    "spectrum_key",
    "version_warning",
]

METRICS_FILE, SPECTRA_FILE, META_FILE = "metrics.csv", "spectra.safetensors", "report.json"
REPORT_FILES = (METRICS_FILE, SPECTRA_FILE, META_FILE)
_ID_COLUMNS = (
    ("layer", "int"),
    ("module", "str"),
    ("head", "int"),
    ("name", "str"),
    ("d_out", "int"),
    ("d_in", "int"),
    ("kind", "str"),
    ("dtype", "str"),
    ("scale", "float"),
    ("adapter_rank", "int"),
    ("accuracy_floor", "float"),
    ("noise_floor", "float"),
    ("share_above_floor", "float"),
)
_INT_METRICS = {"numerical_rank"} | {name for name in METRICS if name.startswith("energy_rank@")}

NOISE_SHARE = 0.5  # rows with less of Σσ above the rounding floor get a warning

Progress = Callable[[int, int, str], None]


def spectrum_key(layer: int, module: str, head: int | None = None) -> str:
    """The key of one row's singular values: ``L3.k`` or ``L3.k.h1``."""
    return f"L{layer}.{module}" + ("" if head is None else f".h{head}")


@dataclass
class Report:
    """The result of ``analyze()``: ``rows`` (dicts), ``spectra`` (σ by key) and ``meta``."""

    rows: list[dict[str, object]]
    spectra: dict[str, np.ndarray]
    meta: dict[str, object] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        source = self.meta.get("source", {})
        return (
            f"Report({len(self.rows)} rows, format={source.get('format')!r}, "
            f"path={source.get('path')!r})"
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
    def columns(self) -> list[str]:
        """The CSV columns, in order (``head`` only when some row has a head)."""
        has_heads = any(row.get("head") is not None for row in self.rows)
        ids = [name for name, _ in _ID_COLUMNS if name != "head" or has_heads]
        return ids + list(METRICS)

    def spectrum(self, layer: int, module: str, head: int | None = None) -> np.ndarray:
        """The singular values (descending, float64) of one row."""
        return self.spectra[spectrum_key(layer, module, head)]

    def to_pandas(self):
        """The rows as a ``pandas.DataFrame`` (pandas is imported only here)."""
        import pandas as pd

        return pd.DataFrame(
            [{column: row.get(column) for column in self.columns} for row in self.rows],
            columns=self.columns,
        )

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
                "(write one with spectra analyze --out)"
            )
        try:
            meta = json.loads((folder / META_FILE).read_text())
            columns = [(name, kind) for name, kind in meta.pop("columns")]
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
        if header != [name for name, _ in columns]:
            raise FormatError(f"{folder / METRICS_FILE}: columns disagree with {META_FILE}")
        rows = []
        for cells in reader:
            row: dict[str, object] = {"head": None}
            for (name, kind), cell in zip(columns, cells, strict=True):
                row[name] = _parse_cell(cell, kind)
            rows.append(row)
        spectra = load_numpy(str(folder / SPECTRA_FILE)) if contents[SPECTRA_FILE] else {}
        keys = [spectrum_key(row["layer"], row["module"], row["head"]) for row in rows]
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
    types = dict(_ID_COLUMNS)
    if name in types:
        return types[name]
    return "int" if name in _INT_METRICS else "float"


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
    if cell == "" and kind != "str":
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
    check_replaceable(out, force, META_FILE, "report")


# ---------------------------------------------------------------- analysis


def analyze(
    path: str | os.PathLike,
    base: str | os.PathLike | None = None,
    modules: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    device: str = "auto",
    method: str = "fast",
    *,
    format: str = "auto",
    progress: Progress | None = None,
    prefetch: int = 1,
    batch_size: int | None = None,
    jobs: int | None = None,
    skip_nonfinite: bool = False,
    **options: object,
) -> Report:
    """Rebuild ΔW of each selected module, take its singular values, compute every metric.

    ``path`` and ``base`` are as ``spectra.load`` takes them (a path, a Hub id
    in the local cache, ``hf://org/name[@revision]`` to download); each is
    resolved once, and ``meta["source"]`` records the Hub id, the revision
    asked for and the commit of the snapshot analysed (``hub_id``,
    ``revision``, ``commit``; ``base_hub_id``, ``base_commit`` for the base).
    ``modules`` are roles (``"k"``, ``"v"``, …); ``None`` means k and v,
    whichever the checkpoint has. ``layers=None`` means every layer.
    ``method`` is ``"fast"`` (Gram eigenvalues) or ``"exact"`` (float64 SVD)
    for dense ΔW; factored ΔW always takes the exact QR core.
    ``progress(done, total, label)`` is called after each module. Reading
    overlaps computing: on the CPU, ``jobs`` modules (default 2, 1 on a
    single thread) are read and decomposed side by side, each on
    ``torch.get_num_threads() // jobs`` threads; with ``jobs=1`` or on a GPU,
    the next module is read on a background thread while one is decomposed
    (``prefetch`` modules ahead, 0 to read in turn), and on a GPU same-shaped
    dense updates are decomposed in batches of ``batch_size`` (default 8).
    None of these changes the results beyond rounding (identical for the
    same thread count). A module whose weights hold NaN or Inf
    raises ``NonFiniteError``, or with ``skip_nonfinite=True`` is left out and
    named in the warnings and in ``meta["skipped"]``. Every tensor of the
    checkpoint that no analysed ΔW uses is in ``meta["not_analysed"]`` as
    ``[tensor, reason]``. ``options``
    go to ``spectra.load`` (``adapter``, ``per_head``, ``directional_only``,
    ``lora_alpha``).
    """
    source = locate(path, "CKPT")  # each Hub id once: the snapshot recorded is the one read
    base_source = locate(base, "--base") if base is not None else None
    checkpoint = load(source, base=base_source, format=format, **options)
    selection = checkpoint.plan(modules, layers)
    target = resolve_device(device)
    check_method(method)
    warnings = [*checkpoint.warnings(), *selection.warnings]
    rows: list[dict[str, object]] = []
    spectra: dict[str, np.ndarray] = {}
    scales: dict[str, dict[str, object]] = {}
    total = len(selection.keys)  # progress counts modules; a module may have several heads
    done: set[tuple[int, str]] = set()
    skipped: list[str] = []
    deltas = checkpoint.deltas_for(selection)
    if skip_nonfinite:
        deltas = _finite_only(deltas, skipped)
    stream = singular_values_stream(
        deltas, target, method, prefetch=prefetch, batch_size=batch_size, jobs=jobs
    )
    for delta, sigma in stream:  # σ: (k,) float64, descending
        info = checkpoint.module_info((delta.layer, delta.role))
        row = _row(delta, sigma, method, info.rank)
        key = spectrum_key(delta.layer, delta.role, delta.head)
        rows.append(row)
        spectra[key] = sigma.numpy()
        if info.scale is not None:
            scales[key] = {"scale": info.scale, "source": info.scale_source}
        if row["spectral_norm"] == 0:
            warnings.append(f"{key}: ΔW is exactly zero; every metric is 0 for it")
        noise = noise_warning(row)
        if noise is not None:
            warnings.append(noise)
        done.add((delta.layer, delta.role))
        if progress is not None:
            progress(len(done) + len(skipped), total, key)
        del delta, sigma  # free this module's ΔW before the next ones are read and decomposed
    if skipped:
        warnings.append(
            f"{len(skipped)} modules skipped for NaN/Inf weights (--skip-nonfinite): "
            f"{', '.join(skipped)}; this report is not the whole selection"
        )
    meta = {
        "spectra_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": {
            "path": str(source.path.resolve()),
            "hub_id": source.hub_id,
            "revision": source.revision,
            "commit": source.commit,
            "base": str(Path(checkpoint.base).resolve()) if checkpoint.base is not None else None,
            "base_hub_id": base_source.hub_id if base_source is not None else None,
            "base_commit": base_source.commit if base_source is not None else None,
            "format": checkpoint.format,
            "variant": checkpoint.variant,
            "options": {k: v for k, v in options.items() if v not in (None, False)},
        },
        "modules": list(dict.fromkeys(role for _, role in selection.keys)),
        "layers": sorted({layer for layer, _ in selection.keys}),
        "device": str(target),
        "method": method,
        "dtype": "float64",
        "scales": scales,
        "rank_tolerance": (
            "max(accuracy_floor, noise_floor): accuracy_floor = σ_1·max(d)·ε64 for factored "
            "and exact, σ_1·√(max(d)·ε64) for fast; noise_floor = ε(source dtype)·rms(W)·"
            "(√d_out+√d_in), only for dense ΔW subtracted from stored weights"
        ),
        "versions": _versions(),
        "warnings": warnings,
        "skipped": skipped,
        # every tensor no analysed ΔW uses, with why (loaders/base.py): [[tensor, reason], …]
        "not_analysed": [[name, reason] for name, reason in checkpoint.not_analysed()],
    }
    return Report(rows=rows, spectra=spectra, meta=meta)


def _finite_only(deltas: Iterator[LayerDelta], skipped: list[str]) -> Iterator[LayerDelta]:
    """Pass on the deltas whose weights are finite; record the others in ``skipped``."""
    for delta in deltas:
        try:
            check_finite(delta)
        except NonFiniteError:
            skipped.append(delta.label)
            continue
        yield delta


def rounding_floor_of(delta: LayerDelta) -> float | None:
    """The rounding-noise floor of a dense ΔW subtracted from known weights, else None.

    A factored ΔW is exactly low rank whatever its factors' dtype, and a dense
    one rebuilt from adapter factors (DoRA, LoHa, LoKr) is exact in float64:
    neither carries rounding noise (their ``weight_rms`` is None).
    """
    if isinstance(delta.update, Factored) or delta.weight_rms is None:
        return None
    return rounding_floor(delta.shape, delta.source_dtype, delta.weight_rms)


def rank_tolerance_of(delta: LayerDelta, sigma: torch.Tensor, method: str) -> float:
    """The numerical-rank tolerance of one ΔW whose σ came from ``method`` (METRICS.md).

    ``metrics.rank_tolerance`` with the SVD path's accuracy floor
    (``svd.accuracy_floor``) and the checkpoint's rounding floor
    (``rounding_floor_of``); the subspace metrics take the same tolerance
    for their exact SVD (``subspace.singular_vectors``).
    """
    kind = "factored" if isinstance(delta.update, Factored) else "dense"
    return rank_tolerance(
        sigma,
        delta.shape,
        relative_floor=accuracy_floor(delta.shape, kind, method),
        rounding=rounding_floor_of(delta),
    )


def _row(
    delta: LayerDelta, sigma: torch.Tensor, method: str, rank: int | None
) -> dict[str, object]:
    """One report row; ``rank`` is the adapter's r for a dense adapter update (DoRA, LoHa, LoKr)."""
    factored = isinstance(delta.update, Factored)
    kind = "factored" if factored else "dense"
    sigma_1 = float(sigma.max()) if sigma.numel() else 0.0
    tol = rank_tolerance_of(delta, sigma, method)
    row: dict[str, object] = {
        "layer": delta.layer,
        "module": delta.role,
        "head": delta.head,
        "name": delta.name,
        "d_out": delta.shape[0],
        "d_in": delta.shape[1],
        "kind": kind,
        "dtype": str(delta.source_dtype).removeprefix("torch."),
        "scale": float(delta.update.scale) if factored else None,
        "adapter_rank": delta.update.rank if factored else rank,
        "accuracy_floor": sigma_1 * accuracy_floor(delta.shape, kind, method),
        "noise_floor": rounding_floor_of(delta),
        "share_above_floor": share_above(sigma, tol),
    }
    row.update(compute(sigma, delta.shape, tol=tol, base_norm=delta.base_norm))
    return row


def noise_warning(row: Mapping[str, object]) -> str | None:
    """A warning for a row whose ΔW is not clearly above its rounding floor, else None.

    Flagged when ΔW ≠ 0 and less than ``NOISE_SHARE`` of Σσ lies in singular
    values above the rank tolerance: the entropy and effective rank of ΔW are
    then mostly those of the rounding noise of the checkpoint's dtype (half,
    because the values at the floor then weigh more in p_i = σ_i/Σσ than the
    update's own directions).
    """
    if row.get("noise_floor") is None or not row["spectral_norm"]:  # also: reports before 0.2
        return None
    share = row["share_above_floor"]
    if share >= NOISE_SHARE:
        return None
    key = spectrum_key(row["layer"], row["module"], row["head"])
    return (
        f"{key}: ΔW is not clearly above the {row['dtype']} rounding floor "
        f"(σ ≤ {row['noise_floor']:.3g}): only {share:.0%} of Σσ lies above it "
        f"(numerical rank {row['numerical_rank']}); its entropy and effective rank measure "
        "rounding noise, not the update"
    )


def _versions() -> dict[str, str]:
    import safetensors

    return {
        "spectra": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "safetensors": safetensors.__version__,
    }
