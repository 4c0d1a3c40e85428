"""One self-contained HTML page from a ``Report`` or a ``Comparison``: ``write_html``.

The page needs no server and no network: its CSS, its JavaScript, the data
(as JSON in a ``<script type="application/json">``) and the Figure 2 panels
(drawn by ``spectra.plot.histogram`` as inline SVG) are all in the one file.
It shows

- a layer × module heat-map of a metric chosen in a ``<select>`` (one per
  method for a comparison, on one colour scale, so that methods compare);
- the spectrum σᵢ/σ₁ of a module, drawn when its cell is hovered (a click
  keeps it; ``page.html?metric=stable_rank#L2.v`` opens on that metric and
  ``L2.v``), values at or below the
  row's floor left out as in every figure;
- Figure 2 (the equal-rank view; ``top`` as in ``plot.histogram``);
- the table: a report's rows, or a comparison's ``summary()`` (each report's
  rows folded below it), numbers to 6 significant digits;
- the warnings, and the modules not analysed.

The page's frame, style and script are the package's data files
(``page.html``, ``style.css``, ``script.js``, read with ``importlib.resources``);
what its script draws is ``data.page_data``. The file is written atomically
(``io.atomic.write_text_atomic``) and replaces an existing one only with
``force=True``, and only a page spectra wrote (its
``<meta name="generator" content="spectra">``): never any other file.
"""

from __future__ import annotations

import functools
import html
import io
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

from .. import __version__
from ..arguments import HTML
from ..display import format_number
from ..errors import SpectraError
from ..io.atomic import check_output, write_text_atomic
from ..report import Report
from .data import is_number, label_of, page_data, script_json

__all__ = ["check_html_target", "html_page", "write_html"]

_DIGITS = 6  # significant digits of the tables' numbers
_GENERATOR = '<meta name="generator" content="spectra">'  # in every page's head: how one is told


# ---------------------------------------------------------------- public


def check_html_target(path: str | os.PathLike, force: bool) -> None:
    """Refuse ``path`` unless the page may be written there (``io.atomic.check_output``).

    New, or a page spectra wrote with ``force``; never a folder or another file.
    """
    check_output(path, force, "HTML report", _is_page, folder=False, flag=HTML)


def _is_page(path: Path) -> bool:
    """Whether ``path`` is a page ``write_html`` wrote: HTML whose head names spectra."""
    try:
        with open(path, encoding="utf-8") as file:
            head = file.read(1024)
    except (OSError, UnicodeDecodeError):
        return False
    return head.startswith("<!DOCTYPE html>") and _GENERATOR in head.split("<title>")[0]


def write_html(
    results,
    path: str | os.PathLike,
    force: bool = False,
    top: int | str | None = None,
    title: str | None = None,
) -> Path:
    """Write the page of ``results`` (a ``Report`` or a ``Comparison``) to ``path``, atomically.

    An existing file is replaced only with ``force=True``; ``top`` is the K
    of Figure 2 (``plot.histogram``); ``title`` replaces the default one.
    """
    path = Path(path)
    check_html_target(path, force)
    page = html_page(results, top=top, title=title)
    try:
        write_text_atomic(path, page)
    except OSError as exc:
        raise SpectraError(f"{path}: writing the HTML report failed ({exc})") from exc
    return path


def html_page(results, top: int | str | None = None, title: str | None = None) -> str:
    """The page of a ``Report`` or a ``Comparison`` as text (``write_html`` writes it)."""
    if isinstance(results, Report):
        labels, reports = [label_of(results)], [results]
        table = _table(results.columns, results.rows)
        warnings = results.warnings
        kind, heading = "analyze", f"spectra report: {label_of(results)}"
        table_title, details = "Rows", ""
    elif all(hasattr(results, name) for name in ("labels", "reports", "summary")):  # Comparison
        labels, reports = list(results.labels), list(results.reports)
        table = _table(results.columns, results.summary())
        pairs = list(zip(labels, reports, strict=True))
        warnings = [f"{label}: {warning}" for label, report in pairs for warning in report.warnings]
        if getattr(results, "subspace", None) is not None:
            warnings += list(results.subspace.warnings)
        kind, heading = "compare", f"spectra comparison: {', '.join(labels)}"
        table_title = "Summary: mean over layers per label and role"
        details = "".join(
            f"<details><summary>{html.escape(label)}: {len(report.rows)} rows</summary>"
            f"{_table(report.columns, report.rows)}</details>"
            for label, report in pairs
        )
    else:
        raise SpectraError(
            f"write_html takes a Report or a Comparison; got {type(results).__name__}"
        )
    data = page_data(reports, labels, kind)
    parts = {
        "TITLE": html.escape(title or heading),
        "SOURCES": _sources(reports, labels),
        "FIGURE2": _figure2(reports, labels, top),
        "TABLE_TITLE": html.escape(table_title),
        "TABLE": table + _estimate_note(reports) + details + _more_tables(results, reports, labels),
        "WARNINGS": _warnings(warnings, reports, labels),
        "FOOTER": html.escape(
            f"spectra {__version__}; a self-contained page: no server, no network. "
            "Numbers: the report's, tables to 6 significant digits."
        ),
        "GENERATOR": _GENERATOR,
        "STYLE": _resource("style.css"),
        "SCRIPT": _resource("script.js"),
        "DATA": script_json(data),
    }
    page = _resource("page.html")
    for name, value in parts.items():
        page = page.replace(f"@@{name}@@", value)
    return page


@functools.cache
def _resource(name: str) -> str:
    """One of the package's data files (``page.html``, ``style.css``, ``script.js``) as text."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


# ---------------------------------------------------------------- the HTML parts


def _table(columns: Sequence[str], rows: Sequence[Mapping[str, object]]) -> str:
    """A plain HTML table (``data-column`` on each cell), in a scrolling box.

    Keys of the rows that ``columns`` lacks are shown after them when some row has a value.
    Numbers by ``display.format_number``; an empty text is missing too (a report read
    back from its CSV has "" where it had None).
    """
    extra = [k for row in rows for k, v in row.items() if k not in columns and v not in ("", None)]
    columns = [*columns, *dict.fromkeys(extra)]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        ('<tr class="estimated">' if row.get("estimated") is True else "<tr>")
        + "".join(
            f'<td data-column="{html.escape(c)}"'
            + (' class="num"' if is_number(row.get(c)) else "")
            + f">{html.escape(format_number(_missing_if_empty(row.get(c)), _DIGITS))}</td>"
            for c in columns
        )
        + "</tr>"
        for row in rows
    )
    return (
        '<div class="scroll"><table class="data">'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
    )


def _more_tables(results, reports: Sequence[Report], labels: Sequence[str]) -> str:
    """The tables beside the rows, each folded: head diversity, subspace metrics, interference.

    Each report's ``heads`` and ``head_shares`` (``--per-head``), and a
    comparison's ``subspace`` pairs and modules (``--subspace``) and
    ``interference`` rows (``--interference``), titled by the file ``save``
    writes them to; nothing for a table without rows.
    """
    several = len(reports) > 1
    found: list[tuple[str, Sequence[str] | None, Sequence[Mapping[str, object]]]] = []
    for label, report in zip(labels, reports, strict=True):
        prefix = f"{label}: " if several else ""
        found.append((f"{prefix}head diversity (heads.csv)", report.heads.columns, report.heads))
        shares = report.head_shares
        found.append((f"{prefix}head shares (head_shares.csv)", shares.columns, shares))
    subspace = getattr(results, "subspace", None)
    if subspace is not None:
        found.append(("subspace similarity (subspace_similarity.csv)", None, subspace.pairs))
        found.append(("amplification and intruders (subspace_modules.csv)", None, subspace.modules))
    interference = getattr(results, "interference", None)
    if interference is not None:
        rows = interference.rows
        found.append(("task interference (interference.csv)", interference.columns, rows))
    return "".join(
        f"<details><summary>{html.escape(title)}: {len(rows)} rows</summary>"
        f"{_table(columns or list(dict.fromkeys(k for row in rows for k in row)), rows)}</details>"
        for title, columns, rows in found
        if rows
    )


def _estimate_note(reports: Sequence[Report]) -> str:
    """A line under the table when some report estimated its dense ΔW (``meta["estimate"]``)."""
    notes = [report.meta["estimate"] for report in reports if "estimate" in report.meta]
    if not notes:
        return ""
    text = f"Estimated: {notes[0].get('note', '')}; {notes[0].get('spectrum', '')}."
    kinds = {column: kind for note in notes for column, kind in note.get("errors", {}).items()}
    listed = "".join(
        f"<li><code>{html.escape(column)}</code>: {html.escape(kind)}</li>"
        for column, kind in kinds.items()
    )  # what each error column holds: the page is read without report.json
    kinds_list = f'<ul class="note">{listed}</ul>' if listed else ""
    return f'<p class="note">{html.escape(text)}</p>{kinds_list}'


def _missing_if_empty(value: object) -> object:
    return None if value == "" else value


def _sources(reports: Sequence[Report], labels: Sequence[str]) -> str:
    """One line per method: source, format, variant, rows, device and method, when made."""
    items = []
    for label, report in zip(labels, reports, strict=True):
        meta, source = report.meta, report.meta.get("source", {})
        what = ", ".join(
            str(part)
            for part in (
                source.get("variant"),
                source.get("format") and f"{source['format']} format",
                f"{len(report.rows)} rows",
                meta.get("device") and f"device {meta['device']}",
                meta.get("method") and f"σ {meta['method']}",
                meta.get("created"),
            )
            if part
        )
        base = f"; base {source['base']}" if source.get("base") else ""
        items.append(
            f"<li><b>{html.escape(label)}</b>: <code>{html.escape(str(source.get('path')))}"
            f"</code>{html.escape(base)} ({html.escape(what)})</li>"
        )
    return f'<ul class="sources">{"".join(items)}</ul>'


def _figure2(reports: Sequence[Report], labels: Sequence[str], top: int | str | None) -> str:
    """Figure 2 as inline SVG (text kept as text), or a note saying why there is none."""
    import matplotlib

    from ..plot import histogram

    try:
        figure = histogram(reports, labels, top=top)[0]
    except SpectraError as exc:  # e.g. methods that share no module role
        return f'<p class="note">No Figure 2: {html.escape(str(exc))}</p>'
    buffer = io.StringIO()
    # one fixed salt: the page is the same for the same report (one figure: no id clashes)
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "spectra-html"}):
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    svg = buffer.getvalue()
    return svg[svg.index("<svg") :]


def _warnings(warnings: Sequence[str], reports: Sequence[Report], labels: Sequence[str]) -> str:
    """The warnings as a list, then the modules not analysed (folded), per method."""
    if warnings:
        items = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
        text = f'<ul class="warnings">{items}</ul>'
    else:
        text = '<p class="note">No warnings.</p>'
    for label, report in zip(labels, reports, strict=True):
        skipped = report.meta.get("not_analysed") or []
        if not skipped:
            continue
        items = "".join(
            f"<li><code>{html.escape(str(entry[0]))}</code>: {html.escape(str(entry[1]))}</li>"
            if isinstance(entry, list | tuple) and len(entry) == 2
            else f"<li>{html.escape(str(entry))}</li>"
            for entry in skipped
        )
        text += (
            f"<details><summary>{html.escape(label)}: {len(skipped)} tensors not analysed"
            f"</summary><ul>{items}</ul></details>"
        )
    return text
