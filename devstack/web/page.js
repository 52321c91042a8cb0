// The panels as live charts, with their filters and breakdowns (pipeline/panels.py) as controls. The page's
// address holds what is shown (range, filters, breakdown) and /api/panels answers the same query: a link
// shares the view, a reload keeps it. A panel's rows are [x, series, value]: x is epoch milliseconds (time
// series, UTC, a bucket's start) or a label (bars, stats).
"use strict";

const PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
                 "#9c755f", "#17becf", "#8c564b", "#bcbd22"];
const OTHER = "(other)", OTHER_COLOUR = "#bab0ac";
const DAY_MS = 86400000;
// tick steps, in seconds: each a multiple of the bucket, so that every tick is a bucket boundary
const TICK_STEPS_S = [60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800,
                      1209600, 2592000];
const MAX_TICKS = 8;
const charts = new Map();  // panel name -> Chart
const hidden = new Map();  // panel name -> the series the reader hid in its legend (kept across refreshes)
const statusLine = document.getElementById("status");
const rangeSelect = document.getElementById("range");
let state = readState();
let latest = 0;  // the newest refresh: an older one that answers late is dropped
let timer = null;
let shownOptions = "";

// --- the state, in the page's address ---------------------------------------------------------------------

function readState() {
  const params = new URLSearchParams(location.search);
  const filters = {};
  for (const [key, value] of params) {
    if (!["range", "from", "to", "by"].includes(key)) {
      filters[key] = [...new Set([...(filters[key] || []), ...value.split(",").filter(Boolean)])];
    }
  }
  return {range: params.get("from") ? null : (params.get("range") || "3600"), from: params.get("from"),
          to: params.get("to"), by: params.get("by") || "", filters};
}

function query(s = state) {
  const params = new URLSearchParams();
  if (s.from) {
    params.set("from", s.from);
    if (s.to) params.set("to", s.to);
  } else {
    params.set("range", s.range);
  }
  for (const [name, values] of Object.entries(s.filters)) values.forEach((value) => params.append(name, value));
  if (s.by) params.set("by", s.by);
  return params.toString();
}

function go(next) {  // a reader's change: into the address (Back returns to the previous view), then shown
  state = next;
  history.pushState(null, "", `?${query()}`);
  refresh();
}

function setFilter(name, values) {
  const filters = {...state.filters};
  if (values.length) filters[name] = values; else delete filters[name];
  go({...state, filters});
}

window.addEventListener("popstate", () => {
  state = readState();
  refresh();
});

// --- formatting ---------------------------------------------------------------------------------------------

function formatValue(value, unit) {
  if (value === null || value === undefined) return "–";
  if (unit === "share") return `${(value * 100).toFixed(value !== 0 && Math.abs(value) < 0.01 ? 3 : 1)}%`;
  return Math.round(value).toLocaleString("en-US");
}

const iso = (ms) => new Date(ms).toISOString();  // UTC, as stored
const day = (ms) => iso(ms).slice(0, 10);
const minute = (ms) => iso(ms).slice(11, 16);

function bucketTitle(ms, intervalS) {
  const end = ms + intervalS * 1000;
  if (intervalS % 86400 === 0) return intervalS === 86400 ? `${day(ms)} UTC` : `${day(ms)} – ${day(end - 1)} UTC`;
  return `${day(ms)} ${minute(ms)}–${day(end) === day(ms) ? "" : `${day(end)} `}${minute(end)} UTC`;
}

function hash(text) {  // FNV-1a: a series keeps its colour whatever its rank or its neighbours
  let h = 0x811c9dc5;
  for (const char of text) h = Math.imul(h ^ char.codePointAt(0), 0x01000193) >>> 0;
  return h;
}

function colours(names) {  // names that hash to one colour in a chart: the later one (by name) takes the next
  const taken = new Set();
  const result = new Map([[OTHER, OTHER_COLOUR]]);
  for (const name of [...names].filter((n) => n !== OTHER).sort()) {
    let slot = hash(name) % PALETTE.length;
    for (let i = 0; i < PALETTE.length && taken.has(slot); i++) slot = (slot + 1) % PALETTE.length;
    taken.add(slot);
    result.set(name, PALETTE[slot]);
  }
  return result;
}

// --- time axis: ticks on bucket boundaries, in UTC, with the date where the range spans days ---------------

function timeTicks(fromMs, lastMs, intervalS) {
  const spanS = (lastMs - fromMs) / 1000;
  let step = TICK_STEPS_S.find((s) => s % intervalS === 0 && spanS / s <= MAX_TICKS);
  if (!step) step = Math.ceil(spanS / MAX_TICKS / 2592000) * 2592000;
  const stepMs = step * 1000;
  const ticks = [];
  for (let t = Math.ceil(fromMs / stepMs) * stepMs; t <= lastMs; t += stepMs) ticks.push({value: t});
  return {ticks, step};
}

function tickLabel(ms, index, spansDays, step) {
  if (!spansDays) return minute(ms);
  if (step % 86400 === 0) return day(ms);
  return index === 0 || ms % DAY_MS === 0 ? [minute(ms), day(ms)] : minute(ms);
}

// --- charts -------------------------------------------------------------------------------------------------

function bySeries(rows) {
  const series = new Map();
  for (const [x, name, value] of rows) {
    if (!series.has(name)) series.set(name, new Map());
    series.get(name).set(x, value);
  }
  return series;
}

const MIN_COVERED = 0.2;  // a partial bucket's count is projected from at least a fifth of it, else left out

function point(x, value, panel, answer) {
  // a bucket not wholly covered (the current one, or one before the data began) is partial: drawn dashed,
  // and a count is projected from the part it covers, so that it never reads as a drop
  const intervalMs = answer.interval_s * 1000;
  const covered = Math.min(x + intervalMs, answer.now_ms) - Math.max(x, answer.data_since_ms ?? x);
  const partial = covered < intervalMs;
  const projected = covered >= MIN_COVERED * intervalMs ? value * intervalMs / covered : null;
  return {x, y: partial && panel.unit === "count" ? projected : value, value, partial, covered};
}

function chartData(panel, answer) {
  const series = bySeries(panel.rows);
  const colour = colours(series.keys());
  const hide = hidden.get(panel.name) || new Set();
  if (panel.chart === "timeseries") {
    return {datasets: [...series].map(([name, points]) => {
      const data = [...points].map(([x, value]) => point(x, value, panel, answer));
      const partial = (ctx) => (data[ctx.p0DataIndex].partial || data[ctx.p1DataIndex].partial ? [6, 4] : undefined);
      return {label: name, data, borderColor: colour.get(name), backgroundColor: colour.get(name),
              hidden: hide.has(name), borderWidth: 1.5, segment: {borderDash: partial},
              pointRadius: (ctx) => (ctx.raw && ctx.raw.partial ? 3 : 0), pointBackgroundColor: "#fff"};
    })};
  }
  const labels = [...new Set(panel.rows.map((row) => row[0]))];
  return {labels, datasets: [...series].map(([name, points]) => ({
    label: name, data: labels.map((label) => (points.has(label) ? points.get(label) : null)),
    backgroundColor: colour.get(name), hidden: hide.has(name)}))};
}

function drill(panel, kind, value) {  // a click on a bar or a series filters by it
  const name = panel.drill[kind];
  if (!name || value === OTHER || value === "(no flag)") return false;
  if (name === "flag") {  // flags: all of them, so a click adds (a combination adds each of its flags)
    setFilter(name, [...new Set([...(state.filters.flag || []), ...value.split(" + ")])]);
  } else {
    setFilter(name, [value]);
  }
  return true;
}

function chartOptions(panel, data, answer) {
  const value = (v) => formatValue(v, panel.unit);
  const timeSeries = panel.chart === "timeseries";
  const lastMs = Math.max(answer.from_ms, Math.floor((answer.to_ms - 1) / (answer.interval_s * 1000)) *
                          answer.interval_s * 1000);
  const spansDays = day(answer.from_ms) !== day(lastMs);
  let step = answer.interval_s;
  return {
    animation: false,
    maintainAspectRatio: false,
    interaction: timeSeries ? {mode: "index", intersect: false} : {mode: "nearest", intersect: true},
    onClick: (event, elements, chart) => {
      const [hit] = timeSeries ? chart.getElementsAtEventForMode(event, "nearest", {intersect: false}, true) : elements;
      if (!hit) return;
      const dataset = chart.data.datasets[hit.datasetIndex];
      if (!timeSeries && drill(panel, "label", chart.data.labels[hit.index])) return;
      drill(panel, "series", dataset.label);
    },
    scales: {
      x: timeSeries
        ? {type: "linear", min: answer.from_ms, max: lastMs, title: {display: true, text: "UTC"},
           afterBuildTicks: (axis) => {
             const built = timeTicks(answer.from_ms, lastMs, answer.interval_s);
             step = built.step;
             axis.ticks = built.ticks;
           },
           ticks: {autoSkip: false, maxRotation: 0, callback: (v, i) => tickLabel(v, i, spansDays, step)}}
        : {type: "category", ticks: {autoSkip: false, maxRotation: 40}},
      y: {beginAtZero: true, title: {display: true, text: panel.axis}, ticks: {callback: value}},
    },
    plugins: {
      legend: {
        display: data.datasets.length > 1, position: "bottom", labels: {boxWidth: 10},
        onClick: (event, item, legend) => {  // Chart.js's own toggle, remembered by series name
          Chart.defaults.plugins.legend.onClick.call(legend, event, item, legend);
          const hide = hidden.get(panel.name) || new Set();
          if (legend.chart.isDatasetVisible(item.datasetIndex)) hide.delete(item.text); else hide.add(item.text);
          hidden.set(panel.name, hide);
        },
      },
      tooltip: {callbacks: {
        title: (items) => (timeSeries ? bucketTitle(items[0].raw.x, answer.interval_s) : items[0].label),
        label: (item) => {
          const raw = item.raw;
          if (!timeSeries || !raw.partial) return `${item.dataset.label}: ${value(item.parsed.y)}`;
          const part = `${Math.round(raw.covered / 1000)} s of ${answer.interval_s} s`;
          return panel.unit === "count"
            ? `${item.dataset.label}: ${value(raw.value)} so far (${part}), about ${value(raw.y)} at this pace`
            : `${item.dataset.label}: ${value(raw.value)} so far (${part})`;
        },
      }},
    },
  };
}

// --- cards --------------------------------------------------------------------------------------------------

function card(panel) {
  const stat = panel.chart === "stat";
  const section = document.createElement("section");
  section.className = stat ? "stat" : "card";
  section.id = `panel-${panel.name}`;
  section.innerHTML = stat
    ? '<header><h2></h2><a class="csv" download>CSV</a></header><div class="value"></div><div class="change">' +
      '</div><p class="notes"></p><div class="error"></div>'
    : '<header><h2></h2><a class="csv" download>CSV</a></header><p class="description"></p><p class="notes"></p>' +
      '<div class="chart"><canvas></canvas></div><div class="error"></div>';
  section.querySelector("h2").textContent = panel.title;
  section.title = panel.description;
  if (stat) {
    section.dataset.stat = panel.name;
  } else {
    section.querySelector(".description").textContent = panel.description;
    section.querySelector("canvas").dataset.panel = panel.name;
  }
  document.getElementById(stat ? "headline" : "panels").append(section);
  return section;
}

function drawStat(section, panel, answer) {
  const values = Object.fromEntries(panel.rows.map(([label, , value]) => [label, value]));
  const [current, previous] = [values.current ?? null, values.previous ?? null];
  section.dataset.current = current;
  section.dataset.previous = previous;
  section.querySelector(".value").textContent = formatValue(current, panel.unit);
  const change = section.querySelector(".change");
  if (current === null || previous === null || (panel.unit === "count" && previous === 0)) {
    change.textContent = `previous period: ${formatValue(previous, panel.unit)}`;
    return;
  }
  const delta = panel.unit === "count" ? (current - previous) / previous : (current - previous) * 100;
  const sign = delta > 0 ? "▲" : delta < 0 ? "▼" : "=";
  const amount = panel.unit === "count" ? `${Math.abs(delta * 100).toFixed(1)}%` : `${Math.abs(delta).toFixed(2)} pt`;
  change.textContent = `${sign} ${amount} vs ${formatValue(previous, panel.unit)} the period before`;
}

function draw(panel, answer) {
  const section = document.getElementById(`panel-${panel.name}`) || card(panel);
  section.querySelector(".error").textContent = panel.error || "";
  section.querySelector(".notes").textContent = panel.notes.join("; ");
  section.querySelector(".csv").href = `/api/csv?panel=${encodeURIComponent(panel.name)}&${query()}`;
  if (panel.error) return;
  if (panel.chart === "stat") {
    drawStat(section, panel, answer);
    return;
  }
  const data = chartData(panel, answer);
  const options = chartOptions(panel, data, answer);
  const chart = charts.get(panel.name);
  if (chart) {
    chart.data = data;
    chart.options = options;
    chart.update("none");
  } else {
    const type = panel.chart === "timeseries" ? "line" : "bar";
    charts.set(panel.name, new Chart(section.querySelector("canvas"), {type, data, options}));
  }
}

// --- controls -----------------------------------------------------------------------------------------------

function localUtc(ms) {  // a datetime-local input's value, read as UTC
  return iso(ms).slice(0, 16);
}

function showControls(answer) {
  const custom = Boolean(state.from);
  rangeSelect.value = custom ? "custom" : state.range;
  if (rangeSelect.value !== (custom ? "custom" : state.range)) {  // a range of the address that is no preset
    rangeSelect.add(new Option(`last ${Math.round((answer.to_ms - answer.from_ms) / 60000)} minutes`, state.range));
    rangeSelect.value = state.range;
  }
  document.getElementById("custom").hidden = !custom && rangeSelect.value !== "custom";
  if (custom) {
    document.getElementById("from").value = localUtc(answer.from_ms);
    document.getElementById("to").value = localUtc(answer.to_ms);
  }
  const by = document.getElementById("by");
  if (by.options.length === 1) {
    for (const [name, label] of Object.entries(answer.breakdowns)) by.add(new Option(label, name));
  }
  by.value = state.by;
  const options = JSON.stringify(answer.filters.map((f) => [f.name, f.options, f.selected]));
  if (options !== shownOptions) {  // rebuilt only when they change: an open list stays open
    shownOptions = options;
    const filters = document.getElementById("filters");
    filters.replaceChildren(...answer.filters.map((f) => {
      const select = document.createElement("select");
      select.dataset.filter = f.name;
      select.add(new Option(`+ ${f.label}`, ""));
      f.options.filter((o) => !f.selected.includes(o)).forEach((o) => select.add(new Option(o, o)));
      select.addEventListener("change", () => setFilter(f.name, [...(state.filters[f.name] || []), select.value]));
      return select;
    }));
  }
  const chips = document.getElementById("chips");
  chips.replaceChildren(...answer.filters.flatMap((f) => f.selected.map((value) => {
    const chip = document.createElement("button");
    chip.type = "button";
    chip.className = "chip";
    chip.dataset.filter = f.name;
    chip.textContent = `${f.label}: ${value} ×`;
    chip.title = f.name === "flag" ? "runs with every chosen flag on; click to remove" : "click to remove";
    chip.addEventListener("click", () => setFilter(f.name, (state.filters[f.name] || []).filter((v) => v !== value)));
    return chip;
  })));
}

rangeSelect.addEventListener("change", () => {
  if (rangeSelect.value === "custom") {
    document.getElementById("custom").hidden = false;
    return;
  }
  go({...state, range: rangeSelect.value, from: null, to: null});
});
for (const id of ["from", "to"]) {
  document.getElementById(id).addEventListener("change", () => {
    const from = document.getElementById("from").value, to = document.getElementById("to").value;
    if (from) go({...state, range: null, from, to: to || null});
  });
}
document.getElementById("by").addEventListener("change", (event) => go({...state, by: event.target.value}));

// --- refresh ------------------------------------------------------------------------------------------------

async function refresh() {
  clearTimeout(timer);
  const refreshing = ++latest;
  let refreshS = 5;
  try {
    const response = await fetch(`/api/panels?${query()}`);
    if (!response.ok) throw new Error(`HTTP ${response.status}: ${await response.text()}`);
    const answer = await response.json();
    if (refreshing !== latest) return;
    refreshS = answer.refresh_s;
    showControls(answer);
    answer.panels.forEach((panel) => draw(panel, answer));
    const since = answer.data_since_ms === null ? "" :
      `; data since ${minute(answer.data_since_ms)} UTC (this stack's start)`;
    const to = day(answer.to_ms) === day(answer.from_ms) ? minute(answer.to_ms)
      : `${day(answer.to_ms)} ${minute(answer.to_ms)}`;
    statusLine.textContent = `${day(answer.from_ms)} ${minute(answer.from_ms)} – ${to} UTC, ` +
      `${answer.interval} buckets; updated every ${refreshS} s${since}`;
    statusLine.className = "";
    document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || 0) + 1);
  } catch (error) {
    if (refreshing !== latest) return;
    statusLine.textContent = `cannot reach the server (${error.message}), retrying`;
    statusLine.className = "stale";
  }
  timer = setTimeout(refresh, refreshS * 1000);
}

refresh();
