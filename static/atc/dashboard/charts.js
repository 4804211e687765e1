// The charts (uPlot, vendored in static/vendor/uplot): requests and tokens per second, TTFT, tokens/s per host,
// over a window that slides with the clock. Each host keeps one colour here, used by its sparkline too.

import uPlot from "../../vendor/uplot/uPlot.esm.js";
import { $ } from "./dom.js";
import { fmtClock, fmtMs, fmtRate } from "./format.js";
import { serverNow, state } from "./state.js";

const CHART_SECONDS = 300;
const TTFT_POINTS = 300;
const HOST_COLOURS = ["#58a6ff", "#f0883e", "#a371f7", "#3fb950", "#f778ba", "#e3b341", "#39c5cf", "#ff7b72"];

export const colourOf = (() => {
  const assigned = new Map();
  return (host) => {
    if (!assigned.has(host)) assigned.set(host, HOST_COLOURS[assigned.size % HOST_COLOURS.length]);
    return assigned.get(host);
  };
})();

export const series = {
  rate: [], // [ts, requests/s, tokens/s]
  hostRate: [], // [ts, {host: tok/s}]
  ttft: [], // [ts, host, ms]
  ttftSeen: new Set(), // request ids already plotted
};

export function chartsFromEvent(event) {
  const d = event.data || {};
  if (event.type === "tick") {
    const last = series.rate[series.rate.length - 1];
    if (last && last[0] >= event.ts) return;
    const counters = d.counters || {};
    series.rate.push([event.ts, counters.requests_per_s || 0, counters.tokens_per_s || 0]);
    const perHost = {};
    for (const host of d.hosts || []) perHost[host.name] = host.tokens_per_s || 0;
    series.hostRate.push([event.ts, perHost]);
    const oldest = event.ts - CHART_SECONDS;
    while (series.rate.length && series.rate[0][0] < oldest) series.rate.shift();
    while (series.hostRate.length && series.hostRate[0][0] < oldest) series.hostRate.shift();
    charts.dirty = true;
  } else if (event.type === "request_first_token" || event.type === "request_completed") {
    if (d.ttft_ms === null || d.ttft_ms === undefined || series.ttftSeen.has(d.id)) return;
    series.ttftSeen.add(d.id);
    series.ttft.push([event.ts, d.host, d.ttft_ms]);
    series.ttft.sort((a, b) => a[0] - b[0]);
    while (series.ttft.length > TTFT_POINTS || (series.ttft.length && series.ttft[0][0] < event.ts - CHART_SECONDS)) {
      series.ttft.shift();
    }
    if (series.ttftSeen.size > TTFT_POINTS * 4) series.ttftSeen = new Set([...series.ttftSeen].slice(-TTFT_POINTS));
    charts.dirty = true;
  }
}

const AXIS = {
  stroke: "#aab6c2",
  font: "14px system-ui, sans-serif",
  grid: { stroke: "rgba(255,255,255,0.07)", width: 1 },
  ticks: { stroke: "rgba(255,255,255,0.15)", width: 1 },
};

function slidingWindow() {
  const now = serverNow();
  return [now - CHART_SECONDS, now];
}

export const charts = {
  plots: {},
  hostKey: "",
  dirty: true,

  rebuild() {
    const names = [...state.hosts.keys()];
    const key = names.join("\n");
    if (key === this.hostKey && this.plots.rate) return;
    this.hostKey = key;
    for (const plot of Object.values(this.plots)) plot.destroy();
    this.plots = {
      rate: this.make("chart-rate", [
        { label: "requests/s", stroke: "#3fb950", width: 2, scale: "rps", value: (u, v) => fmtRate(v) },
        { label: "tokens/s", stroke: "#58a6ff", width: 2, scale: "tps", fill: "rgba(88,166,255,0.12)",
          value: (u, v) => fmtRate(v) },
      ], [
        { ...AXIS, scale: "rps", label: "req/s", size: 50 },
        { ...AXIS, scale: "tps", label: "tok/s", side: 1, grid: { show: false }, size: 60 },
      ]),
      ttft: this.make("chart-ttft", names.map((name) => ({
        label: name, stroke: colourOf(name), width: 0, paths: () => null,
        points: { show: true, size: 9, fill: colourOf(name) }, value: (u, v) => fmtMs(v),
      })), [{ ...AXIS, label: "ms", size: 60 }]),
      hosts: this.make("chart-hosts", names.map((name) => ({
        label: name, stroke: colourOf(name), width: 2, value: (u, v) => fmtRate(v),
      })), [{ ...AXIS, label: "tok/s", size: 60 }]),
    };
    this.dirty = true;
  },

  make(id, lines, yAxes) {
    const box = $(id);
    box.replaceChildren();
    const scales = { x: { time: true, range: () => slidingWindow() } };
    for (const axis of yAxes) scales[axis.scale || "y"] = { range: (u, min, max) => [0, Math.max(1, max * 1.1)] };
    const options = {
      ...plotSize(box),
      series: [{}, ...lines.map((line) => ({ scale: "y", ...line }))],
      scales,
      axes: [{ ...AXIS, values: (u, splits) => splits.map((s) => fmtClock(s).slice(0, 5)) }, ...yAxes],
      legend: { live: false },
      cursor: { show: false },
    };
    return new uPlot(options, this.data(id, lines), box);
  },

  data(id) {
    const names = [...state.hosts.keys()];
    if (id === "chart-rate") {
      return [series.rate.map((p) => p[0]), series.rate.map((p) => p[1]), series.rate.map((p) => p[2])];
    }
    if (id === "chart-hosts") {
      return [series.hostRate.map((p) => p[0]), ...names.map((name) => series.hostRate.map((p) => p[1][name] ?? null))];
    }
    return [series.ttft.map((p) => p[0]), ...names.map((name) => series.ttft.map((p) => (p[1] === name ? p[2] : null)))];
  },

  draw() {
    if (!this.plots.rate) return;
    this.plots.rate.setData(this.data("chart-rate"));
    this.plots.hosts.setData(this.data("chart-hosts"));
    this.plots.ttft.setData(this.data("chart-ttft"));
    this.dirty = false;
  },

  resize() {
    for (const [name, plot] of Object.entries(this.plots)) plot.setSize(plotSize($(`chart-${name}`)));
  },
};

// A plot fills its box's width; its height comes from the CSS (--plot-height), which the layout changes.
function plotSize(box) {
  const height = parseInt(getComputedStyle(box).getPropertyValue("--plot-height"), 10) || 200;
  return { width: Math.max(200, box.clientWidth), height };
}

/** Resizes the plots when the charts' row changes width (a plot does not follow its box by itself). */
export function followChartsWidth() {
  let chartsWidth = 0;
  new ResizeObserver(() => {
    const width = $("charts").clientWidth;
    if (width !== chartsWidth) {
      chartsWidth = width;
      charts.resize();
    }
  }).observe($("charts"));
}
