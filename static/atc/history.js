// The history page's charts, drawn with the vendored uPlot from the figures the page embeds (#history-data).
// Every chart is bars over categories (hosts, models, hours); the second series is drawn over the first.
import uPlot from "../vendor/uplot/uPlot.esm.js";

const COLORS = { requests: "#388bfd", errors: "#f85149", p50: "#3fb950", p95: "#d29922", axis: "#8b98a5", grid: "#222d3b" };
const HEIGHT = 320;
const LABEL_CHARS = 22;
const MOST_BARS = 12; // hosts or models per chart, busiest first; the tables have them all
const COUNT_STEPS = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1e3, 2e3, 2500, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6];

function shorten(name) {
  return name.length > LABEL_CHARS ? name.slice(0, LABEL_CHARS - 1) + "…" : name;
}

function barSeries(label, color, size, thickest) {
  return {
    label,
    fill: color,
    stroke: color,
    width: 0,
    points: { show: false },
    paths: uPlot.paths.bars({ size: [size, thickest], align: 0 }),
  };
}

function barChart(container, { labels, series, unit, horizontal = false }) {
  // horizontal: one bar per row, names on the left (hosts and models have long names); else columns (hours).
  const xs = labels.map((_, i) => i);
  const axis = { stroke: COLORS.axis, font: "13px system-ui, sans-serif", ticks: { show: false } };
  const longest = Math.max(0, ...labels.map((label) => shorten(label).length));
  const options = {
    width: container.clientWidth || 600,
    height: HEIGHT,
    cursor: { drag: { x: false, y: false }, points: { show: false } },
    legend: { show: true, live: false },
    scales: {
      x: { time: false, range: [-0.5, Math.max(labels.length, 1) - 0.5], ...(horizontal ? { ori: 1, dir: -1 } : {}) },
      y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1], ...(horizontal ? { ori: 0 } : {}) },
    },
    axes: [
      {
        ...axis,
        side: horizontal ? 3 : 2,
        grid: { show: false },
        splits: () => xs,
        values: (u, splits) => splits.map((i) => shorten(labels[i] ?? "")),
        size: horizontal ? Math.min(200, 16 + longest * 7.5) : 36,
      },
      {
        ...axis,
        side: horizontal ? 2 : 3,
        grid: { stroke: COLORS.grid, width: 1 },
        size: horizontal ? 36 : unit ? 78 : 50,
        space: horizontal ? 70 : 30,
        incrs: unit ? undefined : COUNT_STEPS, // counts are whole numbers
        values: (u, splits) =>
          splits.map((v) => v.toLocaleString(undefined, { maximumFractionDigits: 1 }) + (unit && v ? " " + unit : "")),
      },
    ],
    series: [{}, ...series.map((s) => barSeries(s.label, s.color, s.size, horizontal ? 44 : 90))],
  };
  const chart = new uPlot(options, [xs, ...series.map((s) => s.values)], container);
  new ResizeObserver(() => chart.setSize({ width: container.clientWidth, height: HEIGHT })).observe(container);
  return chart;
}

function emptyNote(container, text) {
  const note = document.createElement("p");
  note.className = "muted chart-empty";
  note.textContent = text;
  container.replaceChildren(note);
}

function draw(figures) {
  const hosts = figures.hosts.slice(0, MOST_BARS);
  barChart(document.getElementById("chart-hosts"), {
    labels: hosts.map((h) => h.name),
    horizontal: true,
    series: [
      { label: "requests", color: COLORS.requests, size: 0.6, values: hosts.map((h) => h.requests) },
      { label: "errors", color: COLORS.errors, size: 0.6, values: hosts.map((h) => h.errors) },
    ],
  });

  const ttft = document.getElementById("chart-ttft");
  const models = figures.models.slice(0, MOST_BARS);
  if (models.length) {
    barChart(ttft, {
      labels: models.map((m) => m.name),
      unit: "ms",
      horizontal: true,
      series: [
        { label: "p95", color: COLORS.p95, size: 0.6, values: models.map((m) => m.p95) },
        { label: "p50", color: COLORS.p50, size: 0.6, values: models.map((m) => m.p50) },
      ],
    });
  } else {
    emptyNote(ttft, "No request in this period produced a token.");
  }

  const hours = document.getElementById("chart-hours");
  barChart(hours, {
    labels: figures.hours.requests.map((_, hour) => String(hour).padStart(2, "0")),
    series: [
      { label: "requests", color: COLORS.requests, size: 0.75, values: figures.hours.requests },
      { label: "errors", color: COLORS.errors, size: 0.75, values: figures.hours.errors },
    ],
  });
}

const source = document.getElementById("history-data");
if (source) {
  draw(JSON.parse(source.textContent));
}
