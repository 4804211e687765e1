// The ATC dashboard: one websocket (docs/atc-protocol.md), one in-memory picture of the garden, drawn into the page.
// Everything a client or host sent is put into the DOM with textContent / createElement, never innerHTML.

import uPlot from "../vendor/uplot/uPlot.esm.js";

const FEED_CAP = 300;
const ROUTINE_CAP = 60; // health checks that changed nothing are kept apart, so they never push real news out
const SPARK_SECONDS = 120;
const CHART_SECONDS = 300;
const TTFT_POINTS = 300;
const HOST_COLOURS = ["#58a6ff", "#f0883e", "#a371f7", "#3fb950", "#f778ba", "#e3b341", "#39c5cf", "#ff7b72"];

const root = document.getElementById("atc");
const $ = (id) => document.getElementById(id);

const state = {
  lastSeq: 0,
  hosts: new Map(), // name -> Host (protocol shape) + {spark: [[ts, tok/s]]}
  flights: new Map(), // request id -> in flight or queued request
  counters: {},
  clockOffset: 0, // server epoch minus local epoch, in seconds
  public: root.dataset.public === "true",
};

// ---------------------------------------------------------------------------------------------------------------
// Small helpers

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function serverNow() {
  return Date.now() / 1000 + state.clockOffset;
}

function fmtMs(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "–";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.floor(ms / 60000)} min ${Math.round((ms % 60000) / 1000)} s`;
}

function fmtRate(value) {
  if (value === null || value === undefined) return "–";
  return value >= 100 ? String(Math.round(value)) : String(Math.round(value * 10) / 10);
}

function fmtClock(ts) {
  return new Date(ts * 1000).toLocaleTimeString([], { hour12: false });
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

function latencyClass(ms) {
  if (ms === null || ms === undefined) return "lat-none";
  if (ms < 50) return "lat-good";
  if (ms < 250) return "lat-fair";
  return "lat-bad";
}

function modelMatches(hostModel, requested) {
  if (!requested) return false;
  return (
    hostModel.name === requested ||
    hostModel.remote_name === requested ||
    hostModel.name === `${requested}:latest` ||
    hostModel.remote_name === `${requested}:latest`
  );
}

const colourOf = (() => {
  const assigned = new Map();
  return (host) => {
    if (!assigned.has(host)) assigned.set(host, HOST_COLOURS[assigned.size % HOST_COLOURS.length]);
    return assigned.get(host);
  };
})();

// ---------------------------------------------------------------------------------------------------------------
// The connection: reconnect with backoff and ?since=, 4401 means "log in".

const connection = {
  socket: null, attempt: 0, timer: null, opened: false, stopped: false,
  lastMessageAt: 0, lastAckAt: 0, fresh: false,
};
const STALL_SECONDS = 10; // ticks come every second: this long without a message means the stream is stuck

function setConnection(status) {
  const box = $("conn");
  box.dataset.state = status;
  $("conn-text").textContent = status;
  root.dataset.ws = status;
}

function socketUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const since = state.lastSeq > 0 && !connection.fresh ? `?since=${state.lastSeq}` : "";
  return `${scheme}//${location.host}${root.dataset.wsPath}${since}`;
}

function connect() {
  clearTimeout(connection.timer);
  setConnection(connection.attempt ? "reconnecting" : "connecting");
  const socket = new WebSocket(socketUrl());
  connection.socket = socket;
  connection.opened = false;
  connection.fresh = false;
  connection.lastMessageAt = Date.now();
  socket.addEventListener("open", () => {
    connection.opened = true;
    setConnection("live");
  });
  socket.addEventListener("message", (message) => {
    if (socket !== connection.socket) return;
    connection.attempt = 0;
    connection.lastMessageAt = Date.now();
    let parsed;
    try {
      parsed = JSON.parse(message.data);
    } catch {
      return;
    }
    handleMessage(parsed);
    acknowledge(socket);
  });
  socket.addEventListener("close", (closed) => {
    if (socket !== connection.socket) return;
    connection.socket = null;
    if (closed.code === 4401) {
      needLogin();
      return;
    }
    if (!connection.opened && !state.public) checkStillLoggedIn();
    scheduleReconnect(closed.code === 4408);
  });
}

// Tell the server how far we have read (every few seconds), so it can tell a stuck client from a slow one.
function acknowledge(socket) {
  const now = Date.now();
  if (now - connection.lastAckAt < 2000 || socket.readyState !== WebSocket.OPEN) return;
  connection.lastAckAt = now;
  socket.send(JSON.stringify({ type: "ack", seq: state.lastSeq }));
}

// A stream that went silent (a restarted server would resume us from a seq it never reaches): start afresh.
setInterval(() => {
  const socket = connection.socket;
  if (!socket || socket.readyState !== WebSocket.OPEN) return;
  if (Date.now() - connection.lastMessageAt > STALL_SECONDS * 1000) {
    connection.fresh = true;
    socket.close();
  }
}, 1000);

function scheduleReconnect(soon) {
  if (connection.stopped) return;
  const base = soon ? 200 : Math.min(15000, 500 * 2 ** connection.attempt);
  connection.attempt += 1;
  setConnection("reconnecting");
  connection.timer = setTimeout(connect, base * (0.75 + Math.random() * 0.5));
}

function needLogin() {
  connection.stopped = true;
  clearTimeout(connection.timer);
  setConnection("logged out");
  $("login").hidden = false;
}

// A refused handshake shows up as a plain 1006 close; if the page itself now redirects to the login, say so.
async function checkStillLoggedIn() {
  try {
    const response = await fetch(location.pathname, { redirect: "manual", credentials: "same-origin" });
    if (response.type === "opaqueredirect" || response.status === 302) needLogin();
  } catch {
    // the server is down: keep reconnecting
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Applying what the server says

function handleMessage(message) {
  if (message.type === "snapshot") {
    loadSnapshot(message);
  } else if (message.type === "resume") {
    for (const event of message.events || []) applyEvent(event, false);
  } else if (message.type === "batch") {
    for (const event of message.events || []) applyEvent(event, true);
  } else {
    applyEvent(message, true);
  }
  scheduleRender();
}

function loadSnapshot(message) {
  const data = message.data || {};
  // The snapshot is the truth, even when its seq is lower than ours (the server restarted).
  state.lastSeq = message.seq || 0;
  const sparks = new Map([...state.hosts].map(([name, host]) => [name, host.spark]));
  state.hosts = new Map();
  for (const host of data.hosts || []) {
    state.hosts.set(host.name, { ...host, spark: sparks.get(host.name) || [] });
  }
  state.flights = new Map();
  for (const flight of data.in_flight || []) state.flights.set(flight.id, { ...flight, queued: false });
  for (const waiting of data.queued || []) {
    state.flights.set(waiting.id, { ...waiting, queued: true, started_ts: waiting.since_ts });
  }
  state.counters = data.counters || {};
  state.public = Boolean(data.public);
  $("public-badge").hidden = !state.public;
  feed.clear();
  for (const event of data.events || []) {
    chartsFromEvent(event);
    if (event.type !== "tick") feed.add(event);
  }
  cards.rebuild();
  charts.rebuild();
  dirty.all();
}

function applyEvent(event, live) {
  if (!event || typeof event.seq !== "number" || event.seq <= state.lastSeq) return;
  state.lastSeq = event.seq;
  if (live && event.type === "tick" && typeof event.ts === "number") {
    state.clockOffset = event.ts - Date.now() / 1000;
  }
  try {
    const handler = HANDLERS[event.type];
    const context = handler ? handler(event.data || {}, event) : undefined;
    chartsFromEvent(event);
    if (event.type !== "tick") feed.add(event, context);
  } catch (error) {
    console.error("ATC: could not show event", event, error); // one odd event must not stop the others
  }
}

function ensureHost(name) {
  let host = state.hosts.get(name);
  if (!host) {
    host = { name, status: "unknown", models: [], hardware: {}, spark: [], max_concurrency: 1, slots_used: 0 };
    state.hosts.set(name, host);
    cards.rebuild();
    charts.rebuild();
  }
  dirty.hosts.add(name);
  return host;
}

const HANDLERS = {
  host_status(data) {
    const host = ensureHost(data.host);
    Object.assign(host, {
      status: data.status,
      online: data.online,
      latency_ms: data.latency_ms,
      version: data.version || host.version,
      last_error: data.error || "",
      circuit: data.circuit,
      consecutive_failures: data.consecutive_failures,
    });
    dirty.header = true;
  },

  inventory_changed(data) {
    const host = ensureHost(data.host);
    if (Array.isArray(data.models)) {
      host.models = data.models;
    } else {
      const byName = new Map((host.models || []).map((m) => [m.name, m]));
      for (const name of data.removed || []) byName.delete(name);
      for (const name of data.added || []) if (!byName.has(name)) byName.set(name, { name, remote_name: name });
      for (const name of data.loaded || []) if (byName.has(name)) byName.get(name).loaded = true;
      for (const name of data.unloaded || []) if (byName.has(name)) byName.get(name).loaded = false;
      host.models = [...byName.values()];
    }
    dirty.allHosts = true; // a digest change on one host flags the model on the others too
  },

  request_queued(data, event) {
    const existing = state.flights.get(data.id);
    if (existing && !existing.queued) return;
    state.flights.set(data.id, {
      id: data.id, model: data.model, queued: true, position: data.position, candidates: data.candidates || [],
      started_ts: existing ? existing.started_ts : event.ts, tokens: 0, ttft_ms: null,
    });
    dirty.flights = true;
  },

  request_started(data, event) {
    const existing = state.flights.get(data.id) || {};
    state.flights.set(data.id, {
      id: data.id, model: data.model, host: data.host, endpoint: data.endpoint, stream: data.stream, cold: data.cold,
      attempt: data.attempt, client: data.client, prompt: data.prompt, queued: false, retrying: false,
      started_ts: existing.started_ts && !existing.queued ? existing.started_ts : event.ts,
      tokens: 0, ttft_ms: null,
    });
    dirty.flights = true;
    if (existing.host) dirty.hosts.add(existing.host);
    if (data.host) dirty.hosts.add(data.host);
  },

  request_first_token(data) {
    const flight = state.flights.get(data.id);
    if (flight) flight.ttft_ms = data.ttft_ms;
    dirty.flights = true;
    return { model: flight ? flight.model : "" };
  },

  request_completed(data) {
    finishFlight(data);
  },

  request_failed(data) {
    if (data.will_retry) {
      const flight = state.flights.get(data.id);
      if (flight) {
        flight.retrying = true;
        flight.failedHost = data.host;
      }
      dirty.flights = true;
      if (data.host) dirty.hosts.add(data.host);
      return;
    }
    finishFlight(data);
  },

  tick(data, event) {
    if (data.counters) state.counters = data.counters;
    dirty.header = true;
    const tokens = new Map((data.in_flight || []).map((f) => [f.id, f]));
    for (const flight of state.flights.values()) {
      const now = tokens.get(flight.id);
      if (now) {
        flight.tokens = now.tokens;
        if (now.ttft_ms !== null && now.ttft_ms !== undefined) flight.ttft_ms = now.ttft_ms;
        flight.missedTicks = 0;
      } else if (!flight.queued && event.ts - flight.started_ts > 5) {
        // A request the server no longer has (we missed its end): drop it after a few ticks.
        flight.missedTicks = (flight.missedTicks || 0) + 1;
        if (flight.missedTicks >= 3) state.flights.delete(flight.id);
      }
    }
    dirty.flights = true;
    for (const sample of data.hosts || []) {
      const host = state.hosts.get(sample.name);
      if (!host) continue;
      host.slots_used = sample.slots_used;
      host.max_concurrency = sample.slots_max ?? host.max_concurrency;
      host.requests = sample.requests;
      host.errors = sample.errors;
      host.tokens_per_s_now = sample.tokens_per_s;
      const spark = host.spark;
      if (!spark.length || spark[spark.length - 1][0] < event.ts) spark.push([event.ts, sample.tokens_per_s || 0]);
      while (spark.length && spark[0][0] < event.ts - SPARK_SECONDS) spark.shift();
      dirty.hosts.add(host.name);
    }
  },
};

function finishFlight(data) {
  const flight = state.flights.get(data.id);
  state.flights.delete(data.id);
  dirty.flights = true;
  if (data.host) dirty.hosts.add(data.host);
  if (flight && flight.host) dirty.hosts.add(flight.host);
}

// ---------------------------------------------------------------------------------------------------------------
// Events as sentences

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
      return `${d.host}: ${parts.join("; ") || "inventory refreshed"}`;
    }
    case "request_queued": {
      const waitingFor = (d.candidates || []).join(", ");
      return `${model} queued at position ${d.position}${waitingFor ? `, waiting for ${waitingFor}` : ""}`;
    }
    case "request_started": {
      const reason = d.decision && d.decision.reason ? `: ${d.decision.reason}` : "";
      const attempt = d.attempt > 1 ? ` (attempt ${d.attempt})` : "";
      return `${model} → ${d.host} (${d.cold ? "cold" : "warm"})${attempt}${reason}`;
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
    case "proxy_started":
      return "clood started";
    case "proxy_stopping":
      return "clood is stopping";
    default:
      return genericSentence(event.type, d);
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
};

// ---------------------------------------------------------------------------------------------------------------
// The event feed: newest first, capped, filtered by type / host / model.

const feed = {
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
    const model = d.model || context.model || this.models.get(d.id) || "";
    if (d.id && d.model) this.models.set(d.id, d.model);
    if (this.models.size > FEED_CAP * 2) this.models.delete(this.models.keys().next().value);
    const routine = event.type === "host_status" && !d.transition; // a health check that changed nothing
    const row = el("li", `ev ev-${event.type}${routine ? " ev-routine" : ""}`);
    row.dataset.type = event.type;
    row.dataset.seq = event.seq;
    if (d.host) row.dataset.host = d.host;
    if (model) row.dataset.model = model;
    if (d.id && String(event.type).startsWith("request_")) row.dataset.request = d.id;
    if (event.type === "request_failed" || (event.type === "host_status" && d.status === "offline")) {
      row.classList.add("ev-bad");
    }
    row.append(el("time", "ev-time", fmtClock(event.ts)), el("span", "ev-kind", KIND[event.type] || "info"));
    const body = el("span", "ev-text", describe(event, { ...context, model }));
    row.append(body);
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
    if (type && entry.event.type !== type) return false;
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

for (const id of ["filter-type", "filter-host", "filter-routine"]) $(id).addEventListener("change", () => feed.refilter());
$("filter-text").addEventListener("input", () => feed.refilter());

function refreshHostFilter() {
  const select = $("filter-host");
  const chosen = select.value;
  const names = [...state.hosts.keys()];
  const have = [...select.options].slice(1).map((o) => o.value);
  if (have.join("\n") === names.join("\n")) return;
  select.replaceChildren(new Option("all hosts", ""), ...names.map((name) => new Option(name, name)));
  select.value = names.includes(chosen) ? chosen : "";
}

// ---------------------------------------------------------------------------------------------------------------
// The routing decision panel

function showDecision(event) {
  const d = event.data || {};
  const decision = d.decision || {};
  const body = $("detail-body");
  body.replaceChildren();
  $("detail-title").textContent = `${d.model} → ${d.host}`;

  const facts = el("dl", "facts");
  const fact = (label, value) => {
    if (value === undefined || value === null || value === "") return;
    facts.append(el("dt", null, label), el("dd", null, value));
  };
  fact("when", fmtClock(event.ts));
  fact("strategy", decision.strategy);
  fact("reason", decision.reason);
  fact("start", `${d.cold ? "cold" : "warm"}${d.attempt > 1 ? `, attempt ${d.attempt}` : ""}`);
  fact("endpoint", `${d.endpoint || ""}${d.stream ? " (stream)" : ""}`);
  fact("client", d.client);
  fact("request", d.id);
  fact("decision", decision.id);
  fact("prompt", d.prompt);
  body.append(facts);

  body.append(el("h3", null, "Candidates"));
  const candidates = decision.candidates || [];
  if (candidates.length) {
    const table = el("table", "grid candidates");
    const head = el("tr");
    for (const label of ["rank", "host", "loaded", "in flight", "speed", "priority", "sort key"]) {
      head.append(el("th", null, label));
    }
    table.append(el("thead"), el("tbody"));
    table.tHead.append(head);
    for (const c of candidates) {
      const row = el("tr", c.host === d.host ? "chosen" : "");
      const score = Array.isArray(c.key) ? c.key.join(" · ") : c.load !== undefined ? `load ${c.load}` : "";
      for (const value of [
        c.rank, c.host, c.loaded ? "loaded" : "no", `${c.in_flight}/${c.max_concurrency}`,
        c.speed_ms === null || c.speed_ms === undefined ? "–" : fmtMs(c.speed_ms), c.priority, score,
      ]) {
        row.append(el("td", null, value));
      }
      table.tBodies[0].append(row);
    }
    body.append(table);
  } else {
    body.append(el("p", "muted", "no candidates"));
  }

  body.append(el("h3", null, "Excluded"));
  const excluded = Object.entries(decision.excluded || {});
  if (excluded.length) {
    const table = el("table", "grid excluded");
    table.append(el("tbody"));
    for (const [host, why] of excluded) {
      const row = el("tr");
      row.append(el("td", null, host), el("td", null, why));
      table.tBodies[0].append(row);
    }
    body.append(table);
  } else {
    body.append(el("p", "muted", "no host was excluded"));
  }
  $("detail").hidden = false;
  $("detail-close").focus();
}

$("detail-close").addEventListener("click", () => {
  $("detail").hidden = true;
});
document.addEventListener("keydown", (key) => {
  if (key.key === "Escape") $("detail").hidden = true;
});

// ---------------------------------------------------------------------------------------------------------------
// Rendering: state changes mark what is dirty; one render pass shortly after draws it.

const dirty = {
  header: true,
  flights: true,
  allHosts: true,
  hosts: new Set(),
  all() {
    this.header = this.flights = this.allHosts = true;
  },
};
let renderScheduled = false;

function scheduleRender() {
  if (renderScheduled) return;
  renderScheduled = true;
  setTimeout(render, 30);
}

function render() {
  renderScheduled = false;
  if (dirty.header || dirty.flights) renderHeader();
  if (dirty.flights) renderFlights();
  const names = dirty.allHosts || dirty.flights ? [...state.hosts.keys()] : [...dirty.hosts];
  for (const name of names) cards.update(name);
  dirty.header = dirty.flights = dirty.allHosts = false;
  dirty.hosts.clear();
  refreshHostFilter();
}

function renderHeader() {
  const hosts = [...state.hosts.values()].filter((h) => h.enabled !== false);
  const online = hosts.filter((h) => h.online).length;
  $("stat-hosts").textContent = `${online}/${hosts.length}`;
  $("stat-hosts").parentElement.classList.toggle("stat-warn", online < hosts.length);
  const flying = [...state.flights.values()];
  $("stat-flight").textContent = flying.filter((f) => !f.queued).length;
  $("stat-queued").textContent = flying.filter((f) => f.queued).length;
  $("stat-rps").textContent = fmtRate(state.counters.requests_per_s ?? 0);
  $("stat-tps").textContent = fmtRate(state.counters.tokens_per_s ?? 0);
}

// ---- in flight

const flightRows = new Map(); // request id -> {row, cells}

function renderFlights() {
  const body = $("flights-body");
  for (const [id, entry] of flightRows) {
    if (!state.flights.has(id)) {
      entry.row.remove();
      flightRows.delete(id);
    }
  }
  const ordered = [...state.flights.values()].sort((a, b) => (a.started_ts || 0) - (b.started_ts || 0));
  for (const [index, flight] of ordered.entries()) {
    let entry = flightRows.get(flight.id);
    if (!entry) {
      const row = el("tr");
      row.dataset.id = flight.id;
      const cells = {};
      for (const key of ["model", "host", "warmth", "elapsed", "tokens", "ttft", "client"]) {
        cells[key] = el("td", `col-${key}`);
        row.append(cells[key]);
      }
      entry = { row, cells };
      flightRows.set(flight.id, entry);
    }
    // Move a row only when it is out of place: moving restarts its arrival animation.
    if (body.children[index] !== entry.row) body.insertBefore(entry.row, body.children[index] || null);
    const { cells, row } = entry;
    row.classList.toggle("queued", Boolean(flight.queued));
    row.classList.toggle("retrying", Boolean(flight.retrying));
    row.dataset.host = flight.host || "";
    cells.model.textContent = flight.model || "";
    cells.model.title = flight.prompt || "";
    if (flight.queued) {
      cells.host.textContent = `queued #${flight.position ?? "?"}`;
      cells.warmth.textContent = "–";
    } else {
      cells.host.textContent = flight.retrying ? `${flight.failedHost} failed, retrying` : flight.host || "";
      cells.warmth.textContent = flight.cold ? "cold" : "warm";
      cells.warmth.className = `col-warmth ${flight.cold ? "cold" : "warm"}`;
    }
    cells.tokens.textContent = flight.queued ? "–" : flight.tokens ?? 0;
    cells.ttft.textContent = flight.ttft_ms === null || flight.ttft_ms === undefined ? "–" : fmtMs(flight.ttft_ms);
    cells.client.textContent = flight.client || "";
  }
  $("flights-count").textContent = state.flights.size;
  $("flights-empty").hidden = state.flights.size > 0;
  tickElapsed();
}

function tickElapsed() {
  const now = serverNow();
  for (const [id, entry] of flightRows) {
    const flight = state.flights.get(id);
    if (flight && flight.started_ts) entry.cells.elapsed.textContent = fmtMs(Math.max(0, now - flight.started_ts) * 1000);
  }
}
setInterval(tickElapsed, 250);

// ---- host cards

const cards = {
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
    dirty.allHosts = true;
    scheduleRender();
  },

  build(name) {
    const card = el("article", "host-card");
    card.dataset.host = name;
    const head = el("header", "hc-head");
    const parts = {
      card,
      name: el("h3", "hc-name", name),
      badge: el("span", "hc-badge"),
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
      error: el("p", "hc-error"),
    };
    head.append(parts.name, parts.badge, parts.latency);
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
      el("h4", "hc-section", "installed"), parts.installed, parts.error);
    return parts;
  },

  update(name) {
    const host = state.hosts.get(name);
    const parts = this.parts.get(name);
    if (!host || !parts) return;
    const status = host.status || (host.online ? "online" : "unknown");
    const serving = [...state.flights.values()].filter((f) => !f.queued && !f.retrying && f.host === name);
    parts.card.className = `host-card status-${status}${serving.length ? " serving" : ""}`;
    parts.badge.textContent = status;
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
      // Judged from the digests we hold (a host's own flag goes stale when another host changes).
      if (model.digest ? differing.has(model.name) : model.digest_differs) {
        const flag = el("span", "digest-flag", "≠ digest");
        flag.title = "another host has a different build of this model (digest differs)";
        item.append(flag);
        item.classList.add("differs");
      }
      item.dataset.model = model.name;
      return item;
    };
    const models = [...(host.models || [])].sort((a, b) => (a.remote_name || a.name).localeCompare(b.remote_name || b.name));
    const hot = models.filter((m) => m.loaded);
    const cold = models.filter((m) => !m.loaded);
    parts.loaded.replaceChildren(...(hot.length ? hot.map(chip) : [el("li", "chip-none", "nothing loaded")]));
    parts.installed.replaceChildren(...(cold.length ? cold.map(chip) : [el("li", "chip-none", "—")]));
    const showError = host.online === false && host.last_error;
    parts.error.textContent = showError ? host.last_error : "";
    parts.error.hidden = !showError;
    drawSparkline(parts.spark, host.spark, colourOf(name));
  },
};

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

// ---------------------------------------------------------------------------------------------------------------
// Charts (uPlot, vendored in static/vendor/uplot)

const series = {
  rate: [], // [ts, requests/s, tokens/s]
  hostRate: [], // [ts, {host: tok/s}]
  ttft: [], // [ts, host, ms]
  ttftSeen: new Set(), // request ids already plotted
};

function chartsFromEvent(event) {
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

const charts = {
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

// The x axis slides with the clock even when nothing happens, so the charts are redrawn every second.
setInterval(() => {
  charts.draw();
  for (const name of state.hosts.keys()) dirty.hosts.add(name); // sparklines slide too
  scheduleRender();
}, 1000);
let chartsWidth = 0;
new ResizeObserver(() => {
  const width = $("charts").clientWidth;
  if (width !== chartsWidth) {
    chartsWidth = width;
    charts.resize();
  }
}).observe($("charts"));

// ---------------------------------------------------------------------------------------------------------------

// For the browser tests and curious people: `cloodATC.reconnect(true)` drops the socket and asks for a new snapshot.
window.cloodATC = {
  state,
  socket: () => connection.socket,
  reconnect(fresh = false) {
    connection.fresh = fresh;
    if (connection.socket) connection.socket.close();
  },
};
charts.rebuild();
connect();
