// The catfight leaderboard (GET /catfights/leaderboard): a table of every model @ host that has fought, and two
// bar charts drawn with the vendored uPlot, one bar per contestant: speed (median over best) and wins (over runs).
import uPlot from "../../vendor/uplot/uPlot.esm.js";
import { el, formatMs, formatRate, getJson } from "./api.js";

const COLORS = {
  best: "#1f6feb",
  median: "#39c5cf",
  runs: "#30415a",
  wins: "#f0b429",
  axis: "#b7c3cf",
  grid: "#222d3b",
};
const MOST_BARS = 12; // contestants per chart; the table has them all
const LABEL_CHARS = 26;
const ROW_HEIGHT = 38;

const shorten = (name) => (name.length > LABEL_CHARS ? name.slice(0, LABEL_CHARS - 1) + "…" : name);

async function load() {
  let rows;
  try {
    const answer = await getJson("/catfights/leaderboard");
    rows = Array.isArray(answer.rows) ? answer.rows : [];
  } catch (error) {
    const problem = document.getElementById("problem");
    problem.textContent = `Could not read the leaderboard: ${error.message}`;
    problem.hidden = false;
    return;
  }
  document.querySelector("#leaderboard tbody").replaceChildren(...rows.map(row));
  document.getElementById("empty").hidden = rows.length > 0;
  if (!rows.length) {
    document.querySelector(".cf-charts").hidden = true;
    return;
  }
  const top = rows.slice(0, MOST_BARS);
  const labels = top.map((r) => `${r.model} @ ${r.host}`);
  barChart(document.getElementById("chart-speed"), labels, "tok/s", [
    { label: "best", color: COLORS.best, values: top.map((r) => r.best_tokens_per_s) },
    { label: "median", color: COLORS.median, values: top.map((r) => r.median_tokens_per_s) },
  ]);
  barChart(document.getElementById("chart-wins"), labels, "", [
    { label: "runs", color: COLORS.runs, values: top.map((r) => r.runs) },
    { label: "wins", color: COLORS.wins, values: top.map((r) => r.wins) },
  ]);
}

function row(standing, index) {
  const tr = el("tr", index === 0 && standing.wins ? "leader" : "");
  tr.dataset.model = standing.model;
  tr.dataset.host = standing.host;
  const cell = (text, className = "") => tr.appendChild(el("td", className, text));
  cell(String(index + 1), "num cf-place");
  cell(standing.model, "cf-model-cell");
  cell(standing.host, "cf-host-cell");
  cell(standing.runs ?? 0, "num");
  cell(standing.completed ?? "–", "num");
  cell(standing.wins ?? 0, `num cf-wins${standing.wins ? " some" : ""}`);
  cell(formatRate(standing.best_tokens_per_s), "num");
  cell(formatRate(standing.median_tokens_per_s), "num");
  cell(formatMs(standing.median_ttft_ms), "num");
  return tr;
}

function barChart(container, labels, unit, series) {
  // One horizontal bar per contestant, the second series drawn over the first (median over best, wins over runs).
  const xs = labels.map((_, i) => i);
  const height = Math.max(160, 70 + labels.length * ROW_HEIGHT);
  const axis = { stroke: COLORS.axis, font: "15px system-ui, sans-serif", ticks: { show: false } };
  const longest = Math.max(0, ...labels.map((label) => shorten(label).length));
  const options = {
    width: container.clientWidth || 600,
    height,
    cursor: { drag: { x: false, y: false }, points: { show: false } },
    legend: { show: true, live: false },
    scales: {
      x: { time: false, range: [-0.5, Math.max(labels.length, 1) - 0.5], ori: 1, dir: -1 },
      y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1], ori: 0 },
    },
    axes: [
      {
        ...axis,
        side: 3,
        grid: { show: false },
        splits: () => xs,
        values: (u, splits) => splits.map((i) => shorten(labels[i] ?? "")),
        size: Math.min(240, 16 + longest * 8),
      },
      {
        ...axis,
        side: 2,
        grid: { stroke: COLORS.grid, width: 1 },
        size: 36,
        space: 70,
        incrs: unit ? undefined : [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000],
        values: (u, splits) =>
          splits.map((v) => v.toLocaleString(undefined, { maximumFractionDigits: 1 }) + (unit && v ? ` ${unit}` : "")),
      },
    ],
    series: [
      {},
      ...series.map((s) => ({
        label: s.label,
        fill: s.color,
        stroke: s.color,
        width: 0,
        points: { show: false },
        paths: uPlot.paths.bars({ size: [0.6, 40], align: 0 }),
      })),
    ],
  };
  const data = [xs, ...series.map((s) => s.values.map((v) => (typeof v === "number" ? v : null)))];
  const chart = new uPlot(options, data, container);
  new ResizeObserver(() => chart.setSize({ width: container.clientWidth, height })).observe(container);
}

load();
