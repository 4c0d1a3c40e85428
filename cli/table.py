"""Plain-text tables for the terminal: right-aligned numbers, a rule under the header."""

from __future__ import annotations

from collections.abc import Sequence


def format_value(value: object, digits: int = 4) -> str:
    """Numbers to short text: integers as they are, floats to ``digits`` significant digits."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def render(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A table with one column per header entry; text left-aligned, numbers right-aligned."""
    cells = [[format_value(value) for value in row] for row in rows]
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
