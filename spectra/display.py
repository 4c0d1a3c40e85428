"""How spectra's objects show themselves: short reprs, notebook tables, DataFrames.

One convention for the public API: results hold plain Python (``rows`` and
summaries are lists of dicts, spectra are numpy float64 arrays: what the CSV
and safetensors files are written from); ``to_pandas()`` gives a
``pandas.DataFrame`` in which every numeric column is float or int, a missing
value being NaN, never ``None``. Functions that take tensors (``singular_values``,
the ``metrics`` functions) return tensors of the same kind.

Nothing here imports torch, pandas or matplotlib at module level.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

__all__ = ["MISSING", "format_number", "frame", "html_table"]

_HTML_ROWS = 40  # rows shown in a notebook table before the rest are elided
MISSING = "–"  # a missing value in every table (format_number says why an en dash)


def format_number(value: object, digits: int = 4) -> str:
    """A table cell as text: every table spectra prints or renders goes through this.

    Floats to ``digits`` significant digits (``f"{value:.{digits}g}"``: 0.8571,
    1.2e-07, inf), integers and booleans as they are, a list or tuple as its
    items joined by ``", "``, other text as it is. A missing value — None, or
    a float NaN, which is how ``frame()`` writes a missing value — is
    ``MISSING``, an en dash ``–``: it cannot be read as the minus sign of a
    number in a right-aligned column (a hyphen can), it is what the notebook
    tables, the HTML page and its script already showed, and every output
    spectra writes is UTF-8 (the terminal tables' headers and warnings print
    σ and × as well). Empty text stays empty (a column with nothing to say,
    such as ``health`` on a healthy row).

    Example::

        >>> format_number(0.857142857), format_number(3), format_number(None)
        ('0.8571', '3', '–')
        >>> format_number(1 / 3, digits=6)
        '0.333333'
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    if isinstance(value, list | tuple):
        return ", ".join(str(item) for item in value)
    return str(value)


def frame(rows: Sequence[dict[str, object]], columns: Sequence[str]):
    """``rows`` as a ``pandas.DataFrame`` with ``columns``; numeric columns with None → NaN.

    A column with no value at all (``relative_norm`` without a base) is a float column of NaN.
    """
    import pandas as pd

    table = pd.DataFrame([{c: row.get(c) for c in columns} for row in rows], columns=columns)
    for column in table.columns:
        values = [v for v in table[column] if v is not None]
        is_number = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        if is_number and table[column].dtype == object:  # all None: a float column of NaN
            table[column] = pd.to_numeric(table[column], errors="coerce").astype(float)
    return table


def html_table(
    columns: Sequence[str],
    rows: Sequence[dict[str, object]],
    caption: str = "",
    notes: Sequence[str] = (),
) -> str:
    """A self-contained HTML table (for ``_repr_html_``), long tables elided in the middle."""
    shown: list[dict[str, object] | None] = list(rows)
    if len(rows) > _HTML_ROWS:
        half = _HTML_ROWS // 2
        shown = [*rows[:half], None, *rows[-half:]]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in shown:
        if row is None:
            body.append(
                f'<tr><td colspan="{len(columns)}">… {len(rows) - _HTML_ROWS} more</td></tr>'
            )
            continue
        cells = "".join(f"<td>{html.escape(format_number(row.get(c)))}</td>" for c in columns)
        body.append(f"<tr>{cells}</tr>")
    parts = [f"<div><p><b>{html.escape(caption)}</b></p>" if caption else "<div>"]
    parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")
    if notes:
        items = "".join(f"<li>{html.escape(note)}</li>" for note in notes)
        parts.append(f"<p>warnings:</p><ul>{items}</ul>")
    parts.append("</div>")
    return "".join(parts)
