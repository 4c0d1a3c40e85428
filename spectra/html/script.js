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
