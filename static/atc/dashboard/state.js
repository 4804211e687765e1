// The page's model of the garden: hosts by name, requests in flight by id, the newest seq applied (older events are
// dropped, so a resume or a reconnect never applies one twice), and what changed since the last render.

import { root } from "./dom.js";

export const SPARK_SECONDS = 120;

export const state = {
  lastSeq: 0,
  hosts: new Map(), // name -> Host (protocol shape) + {spark: [[ts, tok/s]]}
  flights: new Map(), // request id -> in flight or queued request
  operations: new Map(), // garden operation id -> its newest operation_* data, while queued or running
  aliases: [], // enabled aliases: {name, key, auto, description, targets: [normalised names]}
  counters: {},
  clockOffset: 0, // server epoch minus local epoch, in seconds
  public: root.dataset.public === "true",
};

// State changes mark what is dirty; one render pass shortly after draws it (render.js).
export const dirty = {
  header: true,
  flights: true,
  allHosts: true,
  fight: true, // the catfight panel (analysis.js)
  hosts: new Set(),
  all() {
    this.header = this.flights = this.allHosts = this.fight = true;
  },
};

export function serverNow() {
  return Date.now() / 1000 + state.clockOffset;
}

let hostAppeared = () => {};

/** `callback()` runs when an event names a host the page did not know: the views that list hosts rebuild. */
export function onNewHost(callback) {
  hostAppeared = callback;
}

/** Replaces the model with a snapshot's; the sparklines of hosts still there keep their history. */
export function loadSnapshotState(message) {
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
  state.aliases = data.aliases || [];
  state.public = Boolean(data.public);
  state.operations = new Map(); // rebuilt from the snapshot's recent operation events (main.js)
}

/** Takes an event's seq if it is newer than any applied; false means the page has seen it (dedup by seq).
 * A tick is not in the sequence (it carries the seq of the newest event before it): the newest tick always applies. */
export function takeSeq(event, live) {
  if (!event || typeof event.seq !== "number") return false;
  if (event.type === "tick") {
    if (live && typeof event.ts === "number") state.clockOffset = event.ts - Date.now() / 1000;
    return true;
  }
  if (event.seq <= state.lastSeq) return false;
  state.lastSeq = event.seq;
  return true;
}

/** Applies an event to the model; returns what the feed should know that the event does not say (a model name). */
export function updateState(event) {
  const handler = HANDLERS[event.type];
  return handler ? handler(event.data || {}, event) : undefined;
}

function ensureHost(name) {
  let host = state.hosts.get(name);
  if (!host) {
    host = { name, status: "unknown", models: [], hardware: {}, spark: [], max_concurrency: 1, slots_used: 0 };
    state.hosts.set(name, host);
    hostAppeared();
  }
  dirty.hosts.add(name);
  return host;
}

function garden_operation(data) {
  if (data.id === undefined) return;
  if (data.status === "queued" || data.status === "running") state.operations.set(data.id, data);
  else state.operations.delete(data.id);
  if (data.host) ensureHost(data.host);
}

const HANDLERS = {
  operation_started: garden_operation,
  operation_progress: garden_operation,
  operation_finished: garden_operation,
  aliases_changed(data) {
    state.aliases = data.aliases || [];
  },
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
