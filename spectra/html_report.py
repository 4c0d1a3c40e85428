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

Every number comes from the report: the JSON holds the rows as saved
(floats exact) and each row's σ, all of them up to ``SPECTRUM_POINTS``
values, beyond that the first 64 and log-spaced ones with their indices
(what a log-scale line needs). The file is written atomically and replaces
an existing one only with ``force=True``, and only a page spectra wrote (its
``<meta name="generator" content="spectra">``): never any other file.
"""

from __future__ import annotations

import html
import io
import json
import math
import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from . import __version__
from .errors import SpectraError
from .io.atomic import check_output
from .metrics import METRICS
from .report import Report, spectrum_key

__all__ = ["DEFAULT_METRIC", "SPECTRUM_POINTS", "check_html_target", "html_page", "write_html"]

DEFAULT_METRIC = "normalized_entropy"  # the heat-map's metric when the page opens
SPECTRUM_POINTS = 512  # σ per row kept whole up to this many; beyond, log-spaced ones
_HEAD_POINTS = 64  # … of which the first are always kept
_DIGITS = 6  # significant digits of the tables' numbers
_GENERATOR = '<meta name="generator" content="spectra">'  # in every page's head: how one is told


# ---------------------------------------------------------------- public


def check_html_target(path: str | os.PathLike, force: bool) -> None:
    """Refuse ``path`` unless the page may be written there (``io.atomic.check_output``).

    New, or a page spectra wrote with ``force``; never a folder or another file.
    """
    check_output(path, force, "HTML report", _is_page, folder=False, flag="--html")


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
        _write_atomically(path, page)
    except OSError as exc:
        raise SpectraError(f"{path}: writing the HTML report failed ({exc})") from exc
    return path


def html_page(results, top: int | str | None = None, title: str | None = None) -> str:
    """The page of a ``Report`` or a ``Comparison`` as text (``write_html`` writes it)."""
    if isinstance(results, Report):
        labels, reports = [_label_of(results)], [results]
        table = _table(results.columns, results.rows)
        warnings = results.warnings
        kind, heading = "analyze", f"spectra report: {_label_of(results)}"
        table_title, details = "Rows", ""
    elif all(hasattr(results, name) for name in ("labels", "reports", "summary")):  # Comparison
        labels, reports = list(results.labels), list(results.reports)
        table = _table(results.columns, results.summary())
        pairs = list(zip(labels, reports, strict=True))
        warnings = [f"{label}: {warning}" for label, report in pairs for warning in report.warnings]
        if getattr(results, "subspace", None) is not None:
            warnings += list(results.subspace.warnings)
        kind, heading = "compare", f"spectra comparison: {', '.join(labels)}"
        table_title = "Summary: mean over layers per method and module"
        details = "".join(
            f"<details><summary>{html.escape(label)}: {len(report.rows)} rows</summary>"
            f"{_table(report.columns, report.rows)}</details>"
            for label, report in pairs
        )
    else:
        raise SpectraError(
            f"write_html takes a Report or a Comparison; got {type(results).__name__}"
        )
    data = _data(reports, labels, kind)
    parts = {
        "TITLE": html.escape(title or heading),
        "SOURCES": _sources(reports, labels),
        "FIGURE2": _figure2(reports, labels, top),
        "TABLE_TITLE": html.escape(table_title),
        "TABLE": table + details,
        "WARNINGS": _warnings(warnings, reports, labels),
        "FOOTER": html.escape(
            f"spectra {__version__}; a self-contained page: no server, no network. "
            "Numbers: the report's, tables to 6 significant digits."
        ),
        "GENERATOR": _GENERATOR,
        "STYLE": _STYLE,
        "SCRIPT": _SCRIPT,
        "DATA": _script_json(data),
    }
    page = _PAGE
    for name, value in parts.items():
        page = page.replace(f"@@{name}@@", value)
    return page


# ---------------------------------------------------------------- the data


def _label_of(report: Report) -> str:
    """A report's name on the page: its variant (``LoRA``), else its folder's name."""
    source = report.meta.get("source", {})
    return str(source.get("variant") or Path(str(source.get("path", "report"))).name)


def _data(reports: Sequence[Report], labels: Sequence[str], kind: str) -> dict:
    """What the page's script draws: methods with their rows and σ, the metrics to choose."""
    from .plot import floor_of, method_colors
    from .plot._rows import trusted

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
        if any(_is_number(row.get(name)) for report in reports for row in report.rows)
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
    """A row's spectrum key (``L3.k``, ``L3.k.h1``; an expert's where rows have one) and σ."""
    where = [row["layer"], row["module"], row.get("head")]
    if row.get("expert") is not None:  # mixture-of-experts rows
        where.append(row["expert"])
    return spectrum_key(*where), report.spectrum(*where)


def _ordered_columns(columns: Sequence[str]) -> list[str]:
    """Heat-map columns in the order of ``ROLES`` (q k v o gate up down), then by number.

    ``k.h0``, ``k.h1`` … ``k.h10`` for heads (and experts) in numerical order.
    """
    from .loaders.names import ROLES

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
    from . import metrics

    family, _, level = name.partition("@")
    function = getattr(metrics, family, None)
    doc = (getattr(function, "__doc__", None) or "").strip()
    line = doc.splitlines()[0] if doc else ""
    if level:  # energy_rank@0.9: q = 0.9; top_share@1: m = 1
        line = f"{line} Here {'q' if family == 'energy_rank' else 'm'} = {level}."
    return line.replace("``", "")


def _is_number(value: object) -> bool:
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


def _script_json(data: object) -> str:
    """JSON safe inside ``<script>``: ``<``, ``>`` and ``&`` escaped as JSON escapes."""
    text = json.dumps(_plain(data), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# ---------------------------------------------------------------- the HTML parts


def _cell(value: object) -> str:
    """A table cell's text: floats to 6 significant digits, None and empty text as ``–``."""
    if value is None or value == "":
        return "–"
    if isinstance(value, float):
        return f"{value:.{_DIGITS}g}"
    if isinstance(value, list | tuple):
        return ", ".join(str(item) for item in value)
    return str(value)


def _table(columns: Sequence[str], rows: Sequence[Mapping[str, object]]) -> str:
    """A plain HTML table (``data-column`` on each cell), in a scrolling box.

    Keys of the rows that ``columns`` lacks are shown after them when some row has a value.
    """
    extra = [k for row in rows for k, v in row.items() if k not in columns and v not in ("", None)]
    columns = [*columns, *dict.fromkeys(extra)]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td data-column="{html.escape(c)}"'
            + (' class="num"' if _is_number(row.get(c)) else "")
            + f">{html.escape(_cell(row.get(c)))}</td>"
            for c in columns
        )
        + "</tr>"
        for row in rows
    )
    return (
        '<div class="scroll"><table class="data">'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
    )


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

    from .plot import histogram

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


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a new file beside ``path`` (``open``'s mode), then rename it over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        staging = path.parent / f".{path.name}.partial-{secrets.token_hex(6)}"
        try:
            handle = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        break
    else:
        raise OSError(f"no free name for a temporary file beside {path.name}")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)


# ---------------------------------------------------------------- the page

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
@@GENERATOR@@
<title>@@TITLE@@</title>
<style>@@STYLE@@</style>
</head>
<body>
<div id="js-error" hidden></div>
<header>
<h1>@@TITLE@@</h1>
@@SOURCES@@
</header>
<noscript><p class="note">The heat-map and the spectra are drawn by JavaScript;
the figure and the tables below need none.</p></noscript>
<section id="explore">
<div id="maps">
<h2>Layer × module</h2>
<div class="controls">
<label for="metric">metric</label> <select id="metric"></select>
<span id="colorbar"><span id="bar-low"></span><span class="bar"></span>
<span id="bar-high"></span></span>
</div>
<p id="metric-help" class="note"></p>
<div id="heatmaps"></div>
<p class="note">Hover over a cell for its spectrum; click to keep it.
Grey: no value. One colour scale for all methods.</p>
<p id="flag-note" class="note"></p>
</div>
<aside id="spectrum">
<h2>Spectrum <span id="spectrum-key"></span></h2>
<div id="spectrum-chart"></div>
<ul id="spectrum-caption"></ul>
</aside>
</section>
<section id="figure2">
<h2>Figure 2</h2>
@@FIGURE2@@
</section>
<section id="table">
<h2>@@TABLE_TITLE@@</h2>
@@TABLE@@
</section>
<section id="warnings">
<h2>Warnings</h2>
@@WARNINGS@@
</section>
<footer>@@FOOTER@@</footer>
<script type="application/json" id="spectra-data">@@DATA@@</script>
<script>@@SCRIPT@@</script>
</body>
</html>
"""

_STYLE = """
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 16px 24px;
  color: #222; background: #fff; }
h1 { font-size: 20px; margin: 0 0 6px; }
h2 { font-size: 16px; margin: 18px 0 8px; }
h3 { font-size: 14px; margin: 0 0 4px; border-bottom: 3px solid #888; display: inline-block; }
code { font-size: 12px; }
.note { color: #666; font-size: 12px; margin: 4px 0; }
ul.sources { margin: 0; padding-left: 20px; }
#js-error { background: #fdd; border: 1px solid #c00; padding: 8px; white-space: pre-wrap; }
#explore { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
#maps { flex: 1 1 560px; min-width: 320px; }
#spectrum { flex: 0 0 580px; position: sticky; top: 8px; }
#heatmaps { display: flex; flex-wrap: wrap; gap: 18px; }
.heatmap-box { max-width: 100%; overflow-x: auto; }
.controls { display: flex; align-items: center; gap: 8px; flex-wrap: wrap; }
#colorbar { display: inline-flex; align-items: center; gap: 6px; font-size: 12px; }
#colorbar .bar { width: 160px; height: 12px; border: 1px solid #aaa; background: linear-gradient(
  to right, #440154, #482878, #3e4989, #31688e, #26828e, #1f9e89, #35b779, #6ece58, #b5de2b,
  #fde725); }
table.heatmap { border-collapse: separate; border-spacing: 2px; font-size: 12px; }
table.heatmap th { font-weight: normal; color: #555; padding: 0 4px; }
table.heatmap td.cell { min-width: 52px; height: 24px; text-align: center; cursor: pointer;
  font-variant-numeric: tabular-nums; border: 2px solid transparent; }
table.heatmap td.cell.selected { border-color: #e00; }
table.heatmap td.flagged { background-image: linear-gradient(225deg, #e00 7px, transparent 7px); }
table.heatmap td.empty { background: #f4f4f4; cursor: default; }
#spectrum-chart svg { border: 1px solid #ddd; background: #fff; }
#spectrum-caption { font-size: 12px; padding-left: 18px; }
#figure2 svg { max-width: 100%; height: auto; }
.scroll { overflow-x: auto; max-width: 100%; }
table.data { border-collapse: collapse; font-size: 12px; }
table.data th, table.data td { border-bottom: 1px solid #e4e4e4; padding: 2px 8px;
  white-space: nowrap; }
table.data th { position: sticky; top: 0; background: #f7f7f7; text-align: left; }
table.data td.num { text-align: right; font-variant-numeric: tabular-nums; }
details { margin: 6px 0; }
ul.warnings li { color: #8a4b00; }
footer { margin-top: 24px; color: #888; font-size: 12px; }
"""

# The page's script: reads the JSON, builds the heat-maps, draws a spectrum as SVG on hover.
_SCRIPT = r"""
"use strict";
window.onerror = function (message, source, line) {
  const box = document.getElementById("js-error");
  box.hidden = false;
  box.textContent = "script error: " + message + " (line " + line + ")";
};
(function () {
  const DATA = JSON.parse(document.getElementById("spectra-data").textContent);
  const SVG_NS = "http://www.w3.org/2000/svg";
  const VIRIDIS = ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89",
                   "#35b779", "#6ece58", "#b5de2b", "#fde725"];
  const num = v => (typeof v === "string" ? Number(v) : v);  // "Infinity", "NaN"
  const isNum = v => typeof num(v) === "number" && Number.isFinite(num(v));

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const name in attrs || {}) node.setAttribute(name, attrs[name]);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const name in attrs || {}) node.setAttribute(name, attrs[name]);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function short(v) {
    if (v === null || v === undefined) return "–";
    const x = num(v);
    if (!Number.isFinite(x)) return String(x);
    return Number.isInteger(x) && Math.abs(x) < 1e6 ? String(x) : x.toPrecision(3);
  }
  function hex(c) { return [1, 3, 5].map(i => parseInt(c.slice(i, i + 2), 16)); }
  function viridis(t) {
    const x = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
    const i = Math.min(Math.floor(x), VIRIDIS.length - 2), f = x - i;
    const a = hex(VIRIDIS[i]), b = hex(VIRIDIS[i + 1]);
    return "rgb(" + a.map((v, k) => Math.round(v + f * (b[k] - v))).join(",") + ")";
  }

  // --- heat-maps: one table per method, cells filled by paint()
  const cells = [];
  const byKey = {};  // key -> [{method, row}]
  for (const method of DATA.methods) {
    const lookup = {};
    for (const row of method.rows) {
      lookup[row.layer + "|" + row.column] = row;
      (byKey[row.key] = byKey[row.key] || []).push({method: method, row: row});
    }
    const box = el("div", {"class": "heatmap-box"});
    const title = el("h3", {}, method.label);
    title.style.borderColor = method.color;
    box.appendChild(title);
    const table = el("table", {"class": "heatmap", "data-method": method.label});
    const head = el("tr");
    head.appendChild(el("th", {}, "layer"));
    for (const column of method.columns) head.appendChild(el("th", {}, column));
    table.appendChild(head);
    for (const layer of method.layers) {
      const tr = el("tr");
      tr.appendChild(el("th", {}, String(layer)));
      for (const column of method.columns) {
        const row = lookup[layer + "|" + column];
        const td = el("td", {"class": row ? "cell" : "empty"});
        if (row) {
          td.dataset.key = row.key;
          td.addEventListener("mouseenter", () => show(row.key));
          td.addEventListener("click", () => { pinned = row.key; show(row.key); });
          cells.push({td: td, method: method, row: row});
        }
        tr.appendChild(td);
      }
      table.appendChild(tr);
    }
    table.addEventListener("mouseleave", () => show(pinned));
    box.appendChild(table);
    document.getElementById("heatmaps").appendChild(box);
  }

  const select = document.getElementById("metric");
  for (const name of DATA.metrics) select.appendChild(el("option", {value: name}, name));
  const asked = new URLSearchParams(window.location.search).get("metric");  // ?metric=…
  const first = DATA.metrics.includes(asked) ? asked : DATA.default_metric;
  if (first) select.value = first;
  select.addEventListener("change", paint);

  function paint() {
    const metric = select.value;
    const values = cells.map(c => num(c.row[metric])).filter(Number.isFinite);
    const low = Math.min(...values), high = Math.max(...values);
    document.getElementById("bar-low").textContent = values.length ? short(low) : "";
    document.getElementById("bar-high").textContent = values.length ? short(high) : "";
    document.getElementById("metric-help").textContent = DATA.metric_help[metric] || "";
    const flat = !(high - low > 1e-9 * Math.max(Math.abs(low), Math.abs(high)));  // one value
    for (const c of cells) {
      const value = c.row[metric];
      c.td.title = c.method.label + " " + c.row.key + "\n" + metric + " = " + String(num(value)) +
        (c.row.health ? "\nhealth: " + c.row.health : "");
      c.td.classList.toggle("flagged", Boolean(c.row.health));
      if (isNum(value)) {
        const t = flat ? 0.5 : (num(value) - low) / (high - low);
        c.td.style.backgroundColor = viridis(t);
        c.td.style.color = t < 0.6 ? "#fff" : "#000";
      } else {
        c.td.style.backgroundColor = "#ddd";
        c.td.style.color = "#000";
      }
      c.td.textContent = short(value);
      c.td.dataset.value = value === null ? "" : String(value);
    }
  }

  // --- the spectrum of one module: σᵢ/σ₁ above the floor, log-log, one line per method
  function show(key) {
    if (!key || !byKey[key]) return;
    for (const c of cells) c.td.classList.toggle("selected", c.row.key === key);
    document.getElementById("spectrum-key").textContent = key;
    const chart = document.getElementById("spectrum-chart");
    chart.replaceChildren(drawSpectrum(byKey[key]));
    const caption = document.getElementById("spectrum-caption");
    caption.replaceChildren(...byKey[key].map(({method, row}) => el("li", {},
      method.label + ": " + row.d_out + "×" + row.d_in + ", " + row.kind + ", σ₁ = " +
      short(row.spectral_norm) + ", numerical rank " + short(row.numerical_rank) + ", " +
      row.spectrum.above_floor + " of " + row.spectrum.count + " values above the floor" +
      (row.floor > 0 ? " (" + short(row.floor) + ")" : "") +
      (row.health ? "; health: " + row.health : ""))));
  }

  function points(row) {
    const sigma = row.spectrum.sigma.map(num), index = row.spectrum.index;
    const out = [];
    if (!(sigma[0] > 0)) return out;
    for (let i = 0; i < sigma.length; i++) {
      if (sigma[i] > row.floor) out.push([index ? index[i] : i + 1, sigma[i] / sigma[0]]);
    }
    return out;
  }

  function drawSpectrum(entries) {
    const W = 560, H = 340, L = 62, R = 16, T = 14, B = 46;
    const root = svg("svg", {id: "spectrum-svg", width: W, height: H,
                             viewBox: "0 0 " + W + " " + H, role: "img"});
    const series = entries.map(e => ({label: e.method.label, color: e.method.color,
                                      pts: points(e.row)}));
    const all = series.flatMap(s => s.pts);
    if (!all.length) {
      root.appendChild(svg("text", {x: W / 2, y: H / 2, "text-anchor": "middle",
                                    fill: "#666"}, "no singular value above the floor"));
      return root;
    }
    const xTop = Math.max(1, Math.ceil(Math.log10(Math.max(...all.map(p => p[0])))));
    const yLow = Math.min(-1, Math.floor(Math.log10(Math.min(...all.map(p => p[1])))));
    const px = x => L + (Math.log10(x) / xTop) * (W - L - R);
    const py = y => T + (Math.log10(y) / yLow) * (H - T - B);
    const axis = {stroke: "#999", "stroke-width": 1};
    root.appendChild(svg("line", Object.assign({x1: L, y1: H - B, x2: W - R, y2: H - B}, axis)));
    root.appendChild(svg("line", Object.assign({x1: L, y1: T, x2: L, y2: H - B}, axis)));
    for (let k = 0; k <= xTop; k++) {
      const x = px(Math.pow(10, k));
      root.appendChild(svg("line", {x1: x, y1: T, x2: x, y2: H - B, stroke: "#eee"}));
      root.appendChild(svg("text", {x: x, y: H - B + 16, "text-anchor": "middle",
                                    "font-size": 11}, String(Math.pow(10, k))));
    }
    const yStep = Math.max(1, Math.ceil(-yLow / 8));
    for (let k = 0; k >= yLow; k -= yStep) {
      const y = py(Math.pow(10, k));
      root.appendChild(svg("line", {x1: L, y1: y, x2: W - R, y2: y, stroke: "#eee"}));
      root.appendChild(svg("text", {x: L - 6, y: y + 4, "text-anchor": "end", "font-size": 11},
                           k === 0 ? "1" : "1e" + k));
    }
    root.appendChild(svg("text", {x: (L + W - R) / 2, y: H - 8, "text-anchor": "middle",
                                  "font-size": 12}, "index i"));
    root.appendChild(svg("text", {x: 14, y: (T + H - B) / 2, "text-anchor": "middle",
                                  "font-size": 12, transform: "rotate(-90 14 " +
                                  (T + H - B) / 2 + ")"}, "σᵢ / σ₁ (above the floor)"));
    series.forEach((s, n) => {
      if (!s.pts.length) return;
      const coords = s.pts.map(p => px(p[0]).toFixed(2) + "," + py(p[1]).toFixed(2)).join(" ");
      root.appendChild(svg("polyline", {"class": "series", points: coords, fill: "none",
                                        stroke: s.color, "stroke-width": 1.8,
                                        "data-label": s.label, "data-count": s.pts.length}));
      if (s.pts.length <= 40) {
        for (const p of s.pts) {
          root.appendChild(svg("circle", {cx: px(p[0]), cy: py(p[1]), r: 2.5, fill: s.color}));
        }
      }
      const y = H - B - 10 - 16 * (series.length - 1 - n);  // bottom left: spectra fall
      root.appendChild(svg("line", {x1: L + 12, y1: y - 4, x2: L + 32, y2: y - 4,
                                    stroke: s.color, "stroke-width": 2}));
      root.appendChild(svg("text", {x: L + 37, y: y, "font-size": 12},
                           s.label + " (" + s.pts.length + ")"));
    });
    return root;
  }

  if (cells.some(c => c.row.health)) {
    document.getElementById("flag-note").textContent =
      "A red corner marks a module with health flags (hover for them; the table's health column).";
  }
  paint();
  const wanted = decodeURIComponent(window.location.hash.slice(1));
  let pinned = byKey[wanted] ? wanted : (cells.length ? cells[0].row.key : null);
  show(pinned);
  document.body.dataset.ready = "1";
})();
"""
