// Host cards: status, latency, slots, numbers, a tokens/s sparkline and the host's models as chips.
// A card whose host runs a catfight contestant wears a "⚔ catfight" badge, and that model's chip is marked.

import { catfights } from "./analysis.js";
import { colourOf, series } from "./charts.js";
import { $, el } from "./dom.js";
import { fmtMs, fmtRate, latencyClass } from "./format.js";
import { dirty, serverNow, SPARK_SECONDS, state } from "./state.js";

// Whether a host's model is the one a request named (`name` and `name:latest` are the same model).
function modelMatches(hostModel, requested) {
  if (!requested) return false;
  return (
    hostModel.name === requested ||
    hostModel.remote_name === requested ||
    hostModel.name === `${requested}:latest` ||
    hostModel.remote_name === `${requested}:latest`
  );
}

export const cards = {
  parts: new Map(), // host name -> element references

  rebuild() {
    const grid = $("hosts");
    const names = [...state.hosts.keys()];
    for (const [name, parts] of this.parts) {
      if (!state.hosts.has(name)) {
        parts.card.remove();
        this.parts.delete(name);
      }
    }
    for (const name of names) {
      if (!this.parts.has(name)) this.parts.set(name, this.build(name));
      grid.append(this.parts.get(name).card);
    }
    $("hosts-empty").hidden = names.length > 0;
    dirty.allHosts = true; // drawn by the render that follows every server message
  },

  build(name) {
    const card = el("article", "host-card");
    card.dataset.host = name;
    const head = el("header", "hc-head");
    const parts = {
      card,
      name: el("h3", "hc-name", name),
      badge: el("span", "hc-badge"),
      fight: el("span", "hc-fight", "⚔ catfight"),
      latency: el("span", "hc-latency"),
      meta: el("p", "hc-meta"),
      hardware: el("p", "hc-hardware"),
      slotsFill: el("div", "bar-fill"),
      slotsText: el("span", "hc-slots-text"),
      rate: el("span", "hc-num"),
      requests: el("span", "hc-num"),
      errors: el("span", "hc-num"),
      ttft: el("span", "hc-num"),
      spark: el("canvas", "hc-spark"),
      loaded: el("ul", "chips chips-hot"),
      installed: el("ul", "chips"),
      operations: el("ul", "hc-operations"),
      error: el("p", "hc-error"),
    };
    head.append(parts.name, parts.badge, parts.fight, parts.latency);
    const slots = el("div", "hc-slots");
    const bar = el("div", "bar");
    bar.append(parts.slotsFill);
    slots.append(el("span", "hc-label", "slots"), bar, parts.slotsText);
    const numbers = el("div", "hc-numbers");
    for (const [label, node] of [["tok/s", parts.rate], ["requests", parts.requests], ["errors", parts.errors],
      ["p50 TTFT", parts.ttft]]) {
      const box = el("div", "hc-stat");
      box.append(node, el("span", "hc-label", label));
      numbers.append(box);
    }
    parts.spark.setAttribute("aria-label", `${name} tokens per second, last two minutes`);
    card.append(head, parts.meta, parts.hardware, slots, numbers, parts.spark,
      el("h4", "hc-section hc-section-hot", "loaded now"), parts.loaded,
      el("h4", "hc-section", "installed"), parts.installed, parts.operations, parts.error);
    return parts;
  },

  update(name) {
    const host = state.hosts.get(name);
    const parts = this.parts.get(name);
    if (!host || !parts) return;
    const status = host.status || (host.online ? "online" : "unknown");
    const serving = [...state.flights.values()].filter((f) => !f.queued && !f.retrying && f.host === name);
    const fighting = catfights.modelsOn(name);
    parts.card.className = `host-card status-${status}`;
    parts.card.classList.toggle("serving", serving.length > 0);
    parts.card.classList.toggle("catfight", fighting.length > 0);
    parts.badge.textContent = status;
    parts.fight.hidden = !fighting.length;
    parts.fight.title = fighting.length ? `in a catfight: ${fighting.join(", ")}` : "";
    const latency = host.online ? host.latency_ms : null; // an offline host's last latency means nothing
    parts.latency.textContent = latency === null || latency === undefined ? "" : fmtMs(latency);
    parts.latency.className = `hc-latency ${latencyClass(latency)}`;
    parts.meta.textContent = [host.backend, host.version ? `v${host.version}` : "", host.priority !== undefined
      ? `priority ${host.priority}` : "", host.circuit && host.circuit !== "closed" ? `circuit ${host.circuit}` : ""]
      .filter(Boolean).join(" · ");
    const hw = host.hardware || {};
    parts.hardware.textContent = [hw.gpu, hw.cpu, hw.memory].filter(Boolean).join(" · ") || host.notes || "";
    parts.hardware.hidden = !parts.hardware.textContent;
    parts.hardware.title = host.notes || "";

    const max = host.max_concurrency || 1;
    const used = Math.max(host.slots_used ?? 0, serving.length); // ticks come once a second, requests any time
    parts.slotsFill.style.width = `${Math.min(100, (used / max) * 100)}%`;
    parts.slotsFill.classList.toggle("full", used >= max);
    parts.slotsText.textContent = `${used}/${max}`;
    parts.rate.textContent = fmtRate(host.tokens_per_s_now ?? 0);
    parts.requests.textContent = host.requests ?? 0;
    parts.errors.textContent = host.errors ?? 0;
    parts.errors.classList.toggle("bad", (host.errors || 0) > 0);
    parts.ttft.textContent = fmtMs(recentMedianTtft(name) ?? host.p50_ttft_ms);

    const servedModels = serving.map((f) => f.model);
    const differing = differingDigests();
    const chip = (model) => {
      const item = el("li", "chip", model.remote_name || model.name);
      if (servedModels.some((m) => modelMatches(model, m))) item.classList.add("serving");
      if (fighting.some((m) => modelMatches(model, m))) item.classList.add("fighting");
      // Judged from the digests we hold (a host's own flag goes stale when another host changes).
      if (model.digest ? differing.has(model.name) : model.digest_differs) {
        const flag = el("span", "digest-flag", "≠ digest");
        flag.title = "another host has a different build of this model (digest differs)";
        item.append(flag);
        item.classList.add("differs");
      }
      if (model.bench_ttft_ms != null || model.bench_gen_tps != null) {
        const figures = [model.bench_ttft_ms != null ? fmtMs(model.bench_ttft_ms) : "",
          model.bench_gen_tps != null ? `${fmtRate(model.bench_gen_tps)} tok/s` : ""].filter(Boolean).join(" · ");
        const bench = el("span", "bench", figures);
        bench.title = "benchmark from the admin: time to first token · generation speed";
        item.append(bench);
      }
      item.dataset.model = model.name;
      return item;
    };
    const models = [...(host.models || [])].sort((a, b) => (a.remote_name || a.name).localeCompare(b.remote_name || b.name));
    const hot = models.filter((m) => m.loaded);
    const cold = models.filter((m) => !m.loaded);
    parts.loaded.replaceChildren(...(hot.length ? hot.map(chip) : [el("li", "chip-none", "nothing loaded")]));
    parts.installed.replaceChildren(...(cold.length ? cold.map(chip) : [el("li", "chip-none", "—")]));
    const operations = [...state.operations.values()].filter((op) => op.host === name);
    parts.operations.replaceChildren(...operations.map(operationItem));
    parts.operations.hidden = !operations.length;
    const showError = host.online === false && host.last_error;
    parts.error.textContent = showError ? host.last_error : "";
    parts.error.hidden = !showError;
    drawSparkline(parts.spark, host.spark, colourOf(name));
  },
};

// A garden operation running on the host (a pull, a preload…) with its progress bar.
function operationItem(op) {
  const item = el("li", "hc-operation");
  item.dataset.operation = op.id;
  const bar = el("progress");
  bar.max = 100;
  if (op.percent !== null && op.percent !== undefined) bar.value = op.percent;
  const percent = op.percent !== null && op.percent !== undefined ? ` ${Math.round(op.percent)}%` : "";
  item.append(el("span", "hc-op-name", `${op.kind} ${op.model}${percent}`), bar,
    el("span", "hc-op-message", op.status === "queued" ? "queued" : op.message || ""));
  return item;
}

// The median TTFT of this host's requests plotted in the last minutes (the snapshot's figure until there are some).
function recentMedianTtft(name) {
  const values = series.ttft.filter((p) => p[1] === name).map((p) => p[2]).sort((a, b) => a - b);
  if (!values.length) return null;
  const middle = Math.floor(values.length / 2);
  return values.length % 2 ? values[middle] : (values[middle - 1] + values[middle]) / 2;
}

function differingDigests() {
  const digests = new Map();
  for (const host of state.hosts.values()) {
    for (const model of host.models || []) {
      if (!model.digest) continue;
      if (!digests.has(model.name)) digests.set(model.name, new Set());
      digests.get(model.name).add(model.digest);
    }
  }
  return new Set([...digests].filter(([, seen]) => seen.size > 1).map(([name]) => name));
}

function drawSparkline(canvas, points, colour) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 300;
  const height = canvas.clientHeight || 44;
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  ctx.strokeStyle = "rgba(255,255,255,0.08)";
  ctx.beginPath();
  ctx.moveTo(0, height - 0.5);
  ctx.lineTo(width, height - 0.5);
  ctx.stroke();
  if (!points.length) return;
  const end = serverNow();
  const top = Math.max(1, ...points.map((p) => p[1]));
  const x = (ts) => width - ((end - ts) / SPARK_SECONDS) * width;
  const y = (value) => height - 2 - (value / top) * (height - 6);
  ctx.beginPath();
  points.forEach(([ts, value], i) => (i ? ctx.lineTo(x(ts), y(value)) : ctx.moveTo(x(ts), y(value))));
  ctx.strokeStyle = colour;
  ctx.lineWidth = 2;
  ctx.stroke();
  ctx.lineTo(x(points[points.length - 1][0]), height);
  ctx.lineTo(x(points[0][0]), height);
  ctx.closePath();
  ctx.globalAlpha = 0.18;
  ctx.fillStyle = colour;
  ctx.fill();
  ctx.globalAlpha = 1;
  ctx.fillStyle = "#8b98a5";
  ctx.font = "12px system-ui, sans-serif";
  ctx.fillText(`tok/s · 2 min · max ${fmtRate(top)}`, 2, 12);
}
