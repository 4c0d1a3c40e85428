"""What the command line prints: plain-text tables, the progress bar, warnings.

Tables are right-aligned numbers under a rule; ``metrics_table``, ``print_summary`` and
``print_sweep`` lay out a report, a comparison and a sweep. The progress bar and warnings go
to stderr, so stdout stays the table.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import click

import spectra
from spectra.defaults import SUMMARY_METRICS
from spectra.display import format_number

TABLE_COLUMNS = (
    ("layer", "layer"),
    ("role", "role"),
    ("shape", "shape"),
    ("numerical_rank", "num. rank"),  # "r" is the adapter's rank, in inspect
    ("normalized_entropy", "norm. entropy"),  # as compare prints it
    ("effective_rank", "eff. rank"),
    ("stable_rank", "stable rank"),
    ("energy_rank@0.9", "energy rank@0.9"),
)
SUMMARY_TITLES = ("norm. entropy", "eff. rank", "stable rank", "energy rank@0.9", "top-1 share")


def render(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A table with one column per header entry; text left-aligned, numbers right-aligned.

    Cells by ``spectra.display.format_number`` (4 significant digits, a missing value ``–``).
    """
    cells = [[format_number(value) for value in row] for row in rows]
    widths = [max([len(title)] + [len(row[i]) for row in cells]) for i, title in enumerate(header)]
    numeric = [
        all(isinstance(row[i], int | float) or row[i] is None for row in rows) and bool(rows)
        for i in range(len(header))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            value.rjust(width) if is_number else value.ljust(width)
            for value, width, is_number in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line(list(header)), "  ".join("-" * width for width in widths)]
    out += [line(row) for row in cells]
    return "\n".join(out)


class ProgressBar:
    """A progress bar over modules on stderr, shown only on a terminal and without --quiet."""

    def __init__(self, quiet: bool, label: str = "analysing", unit: str = "modules"):
        self.enabled = not quiet and sys.stderr.isatty()
        self.label = label
        self.unit = unit
        self._bar = None
        self._start = time.perf_counter()

    def __call__(self, done: int, total: int, key: str) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            self._bar = click.progressbar(
                length=total, label=self.label, file=sys.stderr, show_pos=True, show_eta=True
            )
            self._bar.__enter__()
        self._bar.length = total  # a sweep counts checkpoints, then the modules they hold
        rate = done / max(time.perf_counter() - self._start, 1e-9)
        self._bar.label = f"{self.label} {key} ({rate:.1f} {self.unit}/s)"
        self._bar.update(done - self._bar.pos)  # heads of one module share a step

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)


def with_progress(quiet: bool, call, *args, **kwargs):
    """Run ``spectra.analyze`` or ``spectra.compare`` with a progress bar over modules."""
    bar = ProgressBar(quiet, "analysing")
    try:
        return call(*args, progress=bar, **kwargs)
    finally:
        bar.close()


def warn(messages) -> None:
    """Each message as a yellow ``warning:`` line on stderr."""
    for message in messages:
        click.secho(f"warning: {message}", fg="yellow", err=True)


def metrics_table(report: spectra.Report) -> str:
    """The analyze table, with a ``health`` column and one line per flag under it (flags.py).

    ``noise`` has no line here: the report's one warning (``report.noise_summary``,
    printed with the warnings) names those rows and their share above the floor.
    """
    from spectra.report import flag_lines

    flagged = any(row.get("health") for row in report.rows)
    guessed = sum(1 for row in report.rows if row.get("estimated"))
    rows = []
    for row in report.rows:
        values = dict(row, shape=f"{row['d_out']}x{row['d_in']}")
        if row.get("expert") is not None:  # a mixture-of-experts role: gate.e5
            values["role"] = f"{values['role']}.e{row['expert']}"
        if row.get("head") is not None:
            values["role"] = f"{values['role']}.h{row['head']}"
        if row.get("estimated"):  # --estimate: the row is marked, its error beside it
            values["role"] = f"{values['role']} ~"
        rows.append(
            [values[key] for key, _ in TABLE_COLUMNS]
            + ([row.get("effective_rank_err")] if guessed else [])
            + ([row.get("health") or ""] if flagged else [])
        )
    header = [title for _, title in TABLE_COLUMNS] + (["± eff. rank"] if guessed else [])
    header += ["health"] if flagged else []
    lines = [render(header, rows), *flag_lines(report.rows, leave_out=("noise",))]
    if guessed:
        lines.append(
            f"~ {guessed} rows estimated (--estimate): ± eff. rank is one standard error; every "
            "metric's error is in <metric>_err of --out's metrics.csv and of --json, and "
            "report.json's 'estimate' says each kind; – marks what the estimate does not give"
        )
    return "\n".join(lines)


def not_selected_line(report: spectra.Report, label: str | None = None) -> str | None:
    """The line naming what the selection left out of a report's checkpoint, or None."""
    note = report.not_selected_note
    if not note:
        return None
    return f"{label}: {note}" if label else note


def print_summary(comparison) -> None:
    """The compare (and demo) table: means over layers per method and module, then the
    subspace similarity of each pair of methods when the comparison has one."""
    extra = [c for c in ("amplification", "intruder_dimensions") if c in comparison.columns]
    summary = comparison.summary()
    noisy = any(row["noise_rows"] for row in summary)
    guessed_rows = any(row.get("estimated_rows") for row in summary)  # --estimate
    rows = [
        [row["label"], f"{row['role']} ~" if row.get("estimated_rows") else row["role"]]
        + [row[m] for m in (*SUMMARY_METRICS, *extra)]
        + ([row["effective_rank_err"]] if guessed_rows else [])
        + ([f"{row['noise_rows']} of {row['rows']}" if row["noise_rows"] else ""] if noisy else [])
        for row in summary
    ]
    titles = [*SUMMARY_TITLES, *(("amplification", "intruders") if extra else ())]
    titles += ["± eff. rank"] if guessed_rows else []
    click.echo(render(["label", "role", *titles, *(["at noise floor"] if noisy else [])], rows))
    if noisy:
        click.echo(
            "at noise floor: modules not clearly above their rounding floor; their means of "
            "entropy and effective rank measure rounding, not the update"
        )
    guessed = [
        label
        for label, r in zip(comparison.labels, comparison.reports, strict=True)
        if "estimate" in r.meta and r.meta["estimate"].get("rows")
    ]
    if guessed:  # --estimate: these means are of estimated values
        click.echo(
            f"~ estimated: the dense ΔW of {', '.join(guessed)} were estimated (--estimate); "
            "their means are of estimates (± eff. rank: the mean of the rows' standard errors, "
            "summary.csv has each metric's), – marks what the estimate does not give"
        )
    if comparison.subspace is not None and comparison.subspace.pairs:
        pairs: dict[tuple[str, str, str], list[float]] = {}
        for row in comparison.subspace.pairs:
            key = (row["label_a"], row["label_b"], row["role"])
            pairs.setdefault(key, []).append(row["similarity"])
        click.echo(
            f"\nsubspace similarity of the top-{comparison.subspace.rank} left singular "
            "vectors, mean over layers:"
        )
        click.echo(
            render(
                ["label a", "label b", "role", "similarity"],
                [[a, b, m, sum(v) / len(v)] for (a, b, m), v in pairs.items()],
            )
        )


def print_sweep(result) -> None:
    """The sweep table: one line per checkpoint, means over modules."""
    columns = ("normalized_entropy", "effective_rank", "stable_rank")
    rows = []
    for checkpoint, report, hit in zip(
        result.checkpoints, result.reports, result.cached, strict=True
    ):
        means = [sum(float(r[c]) for r in report.rows) / len(report.rows) for c in columns]
        rows.append([checkpoint.step, checkpoint.path.name, "yes" if hit else "", *means])
    click.echo("mean over modules:")
    click.echo(
        render(["step", "checkpoint", "cached", "norm. entropy", "eff. rank", "stable rank"], rows)
    )
