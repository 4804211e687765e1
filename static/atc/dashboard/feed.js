// The event feed: each event as a sentence, newest first, capped, filtered by type / host / model.

import { showDecision } from "./decision.js";
import { $, el } from "./dom.js";
import { fmtClock, fmtMs, fmtRate, plural } from "./format.js";
import { state } from "./state.js";

const FEED_CAP = 300;
const ROUTINE_CAP = 60; // health checks that changed nothing are kept apart, so they never push real news out

// An event as a sentence; `context.model` names the model for the events that only carry a request id.
function describe(event, context = {}) {
  const d = event.data || {};
  const model = d.model || context.model || "";
  switch (event.type) {
    case "host_status": {
      if (d.status === "offline") return `${d.host} ${d.transition ? "went" : "is"} offline: ${d.error || "no answer"}`;
      if (d.status === "disabled") return `${d.host} is disabled`;
      if (d.status === "unknown") return `${d.host} has not been checked yet`;
      const latency = d.latency_ms !== null && d.latency_ms !== undefined ? `, ${fmtMs(d.latency_ms)}` : "";
      const version = d.version ? ` (v${d.version}${latency})` : latency ? ` (${latency.slice(2)})` : "";
      return d.transition ? `${d.host} is online${version}` : `${d.host} checked: online${version}`;
    }
    case "inventory_changed": {
      const parts = [];
      const list = (label, names) => names && names.length && parts.push(`${label} ${names.join(", ")}`);
      list("loaded", d.loaded);
      list("unloaded", d.unloaded);
      list("new", d.added);
      list("removed", d.removed);
      list("new digest for", d.changed);
      list("benchmarked", d.benchmarked);
      return `${d.host}: ${parts.join("; ") || "inventory refreshed"}`;
    }
    case "request_queued": {
      const waitingFor = (d.candidates || []).join(", ");
      return `${model} queued at position ${d.position}${waitingFor ? `, waiting for ${waitingFor}` : ""}`;
    }
    case "request_started": {
      const reason = d.decision && d.decision.reason ? `: ${d.decision.reason}` : "";
      const attempt = d.attempt > 1 ? ` (attempt ${d.attempt})` : "";
      const served = d.alias && d.resolved_model ? ` → ${d.resolved_model}` : ""; // an alias, and what it became
      const tier = d.auto ? ` [${d.auto.tier}]` : "";
      return `${model}${tier}${served} → ${d.host} (${d.cold ? "cold" : "warm"})${attempt}${reason}`;
    }
    case "request_first_token":
      return `first token${model ? ` of ${model}` : ""} from ${d.host} after ${fmtMs(d.ttft_ms)}`;
    case "request_completed": {
      const parts = [`completed ${model} on ${d.host} in ${fmtMs(d.duration_ms)}`];
      if (d.tokens !== null && d.tokens !== undefined) parts.push(plural(d.tokens, "token"));
      if (d.tokens_per_s) parts.push(`${fmtRate(d.tokens_per_s)} tok/s`);
      if (d.ttft_ms !== null && d.ttft_ms !== undefined) parts.push(`TTFT ${fmtMs(d.ttft_ms)}`);
      if (d.cold) parts.push("cold start");
      return parts.join(", ");
    }
    case "request_failed": {
      const status = d.status ? ` (HTTP ${d.status})` : "";
      const next = d.will_retry ? " — trying the next host" : "";
      return `failed ${model} on ${d.host || "no host"}${status}: ${d.error || "no answer"}${next}`;
    }
    case "catfight_started": {
      const contestants = (d.contestants || []).map((c) => `${c.model} @ ${c.host}`).join(" vs ");
      return `catfight #${d.id} started${contestants ? `: ${contestants}` : ""}`;
    }
    case "catfight_entry":
      return `catfight #${d.id}: ${entrySentence(d)}`;
    case "catfight_completed": {
      const winner = d.winner ? `${d.winner.model} on ${d.winner.host} wins` : "no winner";
      return `catfight #${d.id} completed: ${d.summary || winner}`;
    }
    case "operation_started":
      return `${operationName(d)} started`;
    case "operation_finished": {
      if (d.status === "failed") return `${operationName(d)} failed: ${d.error || "no reason given"}`;
      const r = d.result || {};
      if (d.kind === "benchmark") {
        const figures = [r.ttft_ms != null ? `TTFT ${fmtMs(r.ttft_ms)}` : "", r.gen_tps ? `${fmtRate(r.gen_tps)} tok/s` : ""];
        return `${operationName(d)} done: ${figures.filter(Boolean).join(", ") || "no figures"}`;
      }
      if (d.kind === "discover") return `${operationName(d)} done: ${plural(r.found || 0, "server")} found`;
      return `${operationName(d)} done`;
    }
    case "aliases_changed": {
      const names = (d.aliases || []).map((a) => a.name);
      return names.length ? `aliases now: ${names.join(", ")}` : "no aliases now";
    }
    case "proxy_started":
      return "clood started";
    case "proxy_stopping":
      return "clood is stopping";
    default:
      return genericSentence(event.type, d);
  }
}

function operationName(d) {
  if (d.kind === "discover") return `discover on ${d.model}`;
  return `${d.kind} ${d.model}${d.host ? ` on ${d.host}` : ""}`;
}

function entrySentence(d) {
  const who = `${d.model} on ${d.host}`;
  switch (d.phase) {
    case "started":
      return `${who} started`;
    case "first_token":
      return `first token of ${d.model} from ${d.host} after ${fmtMs(d.ttft_ms)}`;
    case "completed": {
      const parts = [`${who} done in ${fmtMs(d.duration_ms)}`];
      if (d.tokens_per_s) parts.push(`${fmtRate(d.tokens_per_s)} tok/s`);
      if (d.ttft_ms !== null && d.ttft_ms !== undefined) parts.push(`TTFT ${fmtMs(d.ttft_ms)}`);
      return parts.join(", ");
    }
    case "failed":
      return `${who} failed: ${d.error || "no answer"}`;
    default:
      return `${who} ${d.phase}`;
  }
}

function genericSentence(type, data) {
  const words = String(type).replaceAll("_", " ");
  const details = Object.entries(data)
    .filter(([, value]) => value !== null && value !== undefined && value !== "" && typeof value !== "object")
    .slice(0, 6)
    .map(([key, value]) => `${key.replaceAll("_", " ")} ${value}`);
  return details.length ? `${words}: ${details.join(", ")}` : words;
}

const KIND = {
  host_status: "host", inventory_changed: "models", request_queued: "queue", request_started: "route",
  request_first_token: "ttft", request_completed: "done", request_failed: "fail",
  catfight_started: "fight", catfight_entry: "fight", catfight_completed: "result",
  operation_started: "garden", operation_finished: "garden", aliases_changed: "alias",
};

export const feed = {
  entries: [], // newest last; each {event, row, host, model, routine}
  list: $("feed"),
  models: new Map(), // request id -> model, for the events that do not name it (first token)

  clear() {
    this.entries = [];
    this.models.clear();
    this.list.replaceChildren();
  },

  add(event, context = {}) {
    const d = event.data || {};
    const request = String(event.type).startsWith("request_"); // catfight events carry a catfight id, not a request's
    const model = d.model || context.model || (request && this.models.get(d.id)) || "";
    if (request && d.id && d.model) this.models.set(d.id, d.model);
    if (this.models.size > FEED_CAP * 2) this.models.delete(this.models.keys().next().value);
    const routine = event.type === "host_status" && !d.transition; // a health check that changed nothing
    const row = el("li", `ev ev-${event.type}${routine ? " ev-routine" : ""}`);
    row.dataset.type = event.type;
    row.dataset.seq = event.seq;
    if (d.host) row.dataset.host = d.host;
    if (model) row.dataset.model = model;
    if (d.id && request) row.dataset.request = d.id;
    const catfight = String(event.type).startsWith("catfight_");
    if (catfight) row.dataset.catfight = d.id;
    const failedEntry = event.type === "catfight_entry" && d.phase === "failed";
    const failedOperation = event.type === "operation_finished" && d.status === "failed";
    if (event.type === "request_failed" || failedEntry || failedOperation ||
      (event.type === "host_status" && d.status === "offline")) {
      row.classList.add("ev-bad");
    }
    row.append(el("time", "ev-time", fmtClock(event.ts)), el("span", "ev-kind", KIND[event.type] || "info"));
    const body = el("span", "ev-text", describe(event, { ...context, model }));
    row.append(body);
    if (event.type === "catfight_started" && d.prompt) row.append(el("q", "ev-prompt", d.prompt));
    if (event.type === "catfight_completed") {
      const link = el("a", "ev-link", "details ›");
      link.href = `/atc/catfight/${encodeURIComponent(d.id)}`;
      body.append(" ", link);
    }
    if (event.type === "request_started") {
      if (d.prompt) row.append(el("q", "ev-prompt", d.prompt));
      row.classList.add("ev-clickable");
      row.tabIndex = 0;
      row.setAttribute("role", "button");
      row.title = "Show the routing decision";
      row.addEventListener("click", () => showDecision(event));
      row.addEventListener("keydown", (key) => {
        if (key.key === "Enter" || key.key === " ") {
          key.preventDefault();
          showDecision(event);
        }
      });
    }
    const entry = { event, row, host: d.host || "", model, routine };
    row.hidden = !this.matches(entry);
    this.entries.push(entry);
    this.list.prepend(row);
    const kept = this.entries.filter((e) => e.routine === routine).length;
    if (kept > (routine ? ROUTINE_CAP : FEED_CAP)) {
      const oldest = this.entries.findIndex((e) => e.routine === routine);
      this.entries.splice(oldest, 1)[0].row.remove();
    }
  },

  matches(entry) {
    const type = $("filter-type").value;
    const host = $("filter-host").value;
    const text = $("filter-text").value.trim().toLowerCase();
    if (entry.routine && !$("filter-routine").checked) return false;
    // The "catfight" choice stands for all three catfight_* types.
    if (type && entry.event.type !== type && !entry.event.type.startsWith(`${type}_`)) return false;
    if (host && entry.host !== host) return false;
    if (text && !entry.model.toLowerCase().includes(text) && !entry.row.textContent.toLowerCase().includes(text)) {
      return false;
    }
    return true;
  },

  refilter() {
    for (const entry of this.entries) entry.row.hidden = !this.matches(entry);
  },
};

/** Re-filters the feed whenever a filter changes. */
export function wireFilters() {
  for (const id of ["filter-type", "filter-host", "filter-routine"]) $(id).addEventListener("change", () => feed.refilter());
  $("filter-text").addEventListener("input", () => feed.refilter());
}

// The host filter lists the hosts the page knows, keeping the choice while that host is there.

export function refreshHostFilter() {
  const select = $("filter-host");
  const chosen = select.value;
  const names = [...state.hosts.keys()];
  const have = [...select.options].slice(1).map((o) => o.value);
  if (have.join("\n") === names.join("\n")) return;
  select.replaceChildren(new Option("all hosts", ""), ...names.map((name) => new Option(name, name)));
  select.value = names.includes(chosen) ? chosen : "";
}
