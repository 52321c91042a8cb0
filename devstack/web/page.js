// The panels as live charts: one request to /api/panels per refresh, one Chart.js chart per panel.
// A panel's rows are [x, series, value]: x is epoch milliseconds (time series, UTC) or a label (bars).
"use strict";

const COLORS = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
                "#9c755f", "#bab0ac", "#17becf", "#8c564b"];
const charts = new Map();  // panel name -> Chart
const rangeSelect = document.getElementById("range");
const statusLine = document.getElementById("status");
let latest = 0;  // the newest refresh: an older one that answers late is dropped
let timer = null;

function formatTime(ms, rangeS) {
  const iso = new Date(ms).toISOString();  // UTC, as stored
  return rangeS > 86400 ? iso.slice(5, 16).replace("T", " ") : iso.slice(11, 16);
}

function formatValue(value, unit) {
  return unit === "share" ? `${(value * 100).toFixed(1)}%` : value.toLocaleString("en-US");
}

function bySeries(rows) {
  const series = new Map();
  for (const [x, name, value] of rows) {
    if (!series.has(name)) series.set(name, new Map());
    series.get(name).set(x, value);
  }
  return series;
}

function chartData(panel) {
  const color = (i) => COLORS[i % COLORS.length];
  const series = [...bySeries(panel.rows)];
  if (panel.chart === "timeseries") {
    return {datasets: series.map(([name, points], i) => ({
      label: name, data: [...points].map(([x, y]) => ({x, y})), borderColor: color(i), backgroundColor: color(i),
      pointRadius: 0, borderWidth: 1.5}))};
  }
  const labels = [...new Set(panel.rows.map((row) => row[0]))];
  return {labels, datasets: series.map(([name, points], i) => ({
    label: name, data: labels.map((label) => (points.has(label) ? points.get(label) : null)),
    backgroundColor: color(i)}))};
}

function chartOptions(panel, data, rangeS) {
  const value = (v) => formatValue(v, panel.unit);
  const timeSeries = panel.chart === "timeseries";
  return {
    animation: false,
    maintainAspectRatio: false,
    interaction: {mode: timeSeries ? "nearest" : "index", intersect: false},
    scales: {
      x: timeSeries
        ? {type: "linear", bounds: "data", title: {display: true, text: "UTC"},
           ticks: {callback: (v) => formatTime(v, rangeS), maxTicksLimit: 8}}
        : {type: "category", ticks: {autoSkip: false, maxRotation: 35}},
      y: {beginAtZero: true, ticks: {callback: value}},
    },
    plugins: {
      legend: {display: data.datasets.length > 1, position: "right", labels: {boxWidth: 10}},
      tooltip: {callbacks: {
        title: (items) => (timeSeries ? `${formatTime(items[0].parsed.x, rangeS)} UTC` : items[0].label),
        label: (item) => `${item.dataset.label}: ${value(item.parsed.y)}`,
      }},
    },
  };
}

function card(panel) {
  const section = document.createElement("section");
  section.className = "card";
  section.id = `panel-${panel.name}`;
  section.innerHTML = '<h2></h2><p></p><div class="chart"><canvas></canvas></div><div class="error"></div>';
  section.querySelector("h2").textContent = panel.title;
  section.querySelector("p").textContent = panel.description;
  section.querySelector("canvas").dataset.panel = panel.name;
  document.getElementById("panels").append(section);
  return section;
}

function draw(panel, rangeS) {
  const section = document.getElementById(`panel-${panel.name}`) || card(panel);
  section.querySelector(".error").textContent = panel.error || "";
  if (panel.error) return;
  const data = chartData(panel);
  const options = chartOptions(panel, data, rangeS);
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

async function refresh() {
  clearTimeout(timer);
  const refreshing = ++latest;
  let refreshS = 5;
  try {
    const response = await fetch(`/api/panels?range=${rangeSelect.value}`);
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const body = await response.json();
    if (refreshing !== latest) return;
    refreshS = body.refresh_s;
    body.panels.forEach((panel) => draw(panel, body.range_s));
    const since = body.data_since_ms === null ? "" :
      `, data since ${new Date(body.data_since_ms).toISOString().slice(11, 19)} UTC (this stack's start)`;
    statusLine.textContent = `updated ${new Date().toLocaleTimeString()}, every ${refreshS} s, ` +
      `${body.interval_s / 60}-minute buckets${since}`;
    statusLine.className = "";
    document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || 0) + 1);
  } catch (error) {
    if (refreshing !== latest) return;
    statusLine.textContent = `cannot reach the server (${error.message}), retrying`;
    statusLine.className = "stale";
  }
  timer = setTimeout(refresh, refreshS * 1000);
}

rangeSelect.addEventListener("change", refresh);
refresh();
