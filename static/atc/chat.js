// The chat console: a conversation kept in this page, streamed from clood's own /v1/chat/completions, and a log of
// where each message was routed (response headers, TTFT and speed measured here, cold/warm from the ATC websocket).
// Everything from the network is put into the page with textContent.

import { csrfHeaders } from "./csrf.js";

const MODEL_KEY = "clood.chat.model";
const KEPT_STARTS = 200; // request_started events remembered while waiting for their response headers

const select = document.getElementById("model");
const modelsStatus = document.getElementById("models-status");
const list = document.getElementById("messages");
const form = document.getElementById("composer");
const prompt = document.getElementById("prompt");
const sendButton = document.getElementById("send");
const routingBody = document.querySelector("#routing-log tbody");
const routingEmpty = document.getElementById("routing-empty");

let conversation = []; // {role, content}, what is sent with the next message; "new chat" starts another
let current = null; // the exchange being streamed: {controller, bubble, row}
const starts = new Map(); // request id -> the websocket's request_started data
const rowsById = new Map(); // request id -> routing log row

class ChatError extends Error {
  constructor(message, status = null) {
    super(message);
    this.status = status; // the HTTP status when clood refused or failed the request
  }
}

// ---- models ----

async function loadModels() {
  let body;
  try {
    const response = await fetch("/v1/models", { headers: { accept: "application/json", ...csrfHeaders() } });
    if (!response.ok) throw new ChatError(await errorMessage(response));
    body = await response.json();
  } catch (error) {
    select.replaceChildren(option("", "no models"));
    modelsStatus.textContent = `Could not list the models: ${error.message}`;
    setTimeout(loadModels, 5000);
    return;
  }
  const models = Array.isArray(body.data) ? body.data : [];
  if (!models.length) {
    select.replaceChildren(option("", "no models online"));
    modelsStatus.textContent = "No online host serves a model right now; looking again every few seconds.";
    setTimeout(loadModels, 5000);
    return;
  }
  select.replaceChildren(
    ...models.map((model) => {
      const hosts = model.clood?.hosts ?? [];
      const loaded = model.clood?.loaded_on ?? [];
      const where = hosts.map((host) => (loaded.includes(host) ? `${host} (loaded)` : host)).join(", ");
      return option(model.id, where ? `${model.id} — ${where}` : model.id);
    }),
  );
  const remembered = localStorage.getItem(MODEL_KEY);
  const chat = models.find((model) => !/embed/i.test(model.id)); // embedding models cannot chat
  select.value = models.some((model) => model.id === remembered) ? remembered : (chat ?? models[0]).id;
  select.disabled = false;
  modelsStatus.textContent = `${models.length} model${models.length === 1 ? "" : "s"} online`;
}

function option(value, text) {
  const element = document.createElement("option");
  element.value = value;
  element.textContent = text;
  return element;
}

// ---- the conversation ----

function bubble(kind, label, text = "") {
  list.querySelector(".hint")?.remove();
  const item = document.createElement("li");
  item.className = `msg ${kind}`;
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.textContent = label;
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  item.append(meta, body);
  list.append(item);
  return item;
}

function scrollToEnd(force = false) {
  const nearEnd = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  if (force || nearEnd) list.scrollTop = list.scrollHeight;
}

async function send(text) {
  const model = select.value;
  const thread = conversation; // a "new chat" during the stream must not receive this answer
  thread.push({ role: "user", content: text });
  bubble("user", "you", text);
  const reply = bubble("assistant", model);
  reply.dataset.state = "waiting";
  const replyText = reply.querySelector(".text");
  const row = routingRow(model);
  const controller = new AbortController();
  current = { controller, reply, row };
  setBusy(true);
  scrollToEnd(true);

  const sentAt = performance.now();
  const measured = { tokens: 0, firstAt: null, usage: null };
  let answer = "";
  let thinking = null;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "content-type": "application/json", accept: "text/event-stream", ...csrfHeaders() },
      body: JSON.stringify({ model, messages: thread, stream: true, stream_options: { include_usage: true } }),
      signal: controller.signal,
    });
    noteRouting(row, response.headers, reply, model);
    if (!response.ok) throw new ChatError(await errorMessage(response), response.status);
    reply.dataset.state = "streaming";
    let finished = false;
    for await (const event of sseEvents(response.body)) {
      if (event === DONE) {
        finished = true;
        break;
      }
      if (event.error) throw new ChatError(messageOf(event.error));
      if (event.usage) measured.usage = event.usage;
      for (const choice of event.choices ?? []) {
        const delta = choice.delta ?? {};
        const reasoning = delta.reasoning_content || delta.reasoning || "";
        if (!delta.content && !reasoning) continue;
        measured.tokens += 1;
        measured.firstAt ??= performance.now();
        if (reasoning) {
          if (!thinking) {
            thinking = document.createElement("div");
            thinking.className = "thinking";
            reply.insertBefore(thinking, replyText);
          }
          thinking.textContent += reasoning;
        }
        if (delta.content) {
          answer += delta.content;
          replyText.textContent = answer;
        }
      }
      showFigures(row, sentAt, measured);
      scrollToEnd();
    }
    if (!finished) throw new ChatError("The stream ended before it was complete (no [DONE]).");
    reply.dataset.state = "done";
    thread.push({ role: "assistant", content: answer });
    showFigures(row, sentAt, measured, performance.now());
    setResult(row, "ok", "ok");
  } catch (error) {
    showFigures(row, sentAt, measured, performance.now());
    if (error.name === "AbortError") {
      reply.dataset.state = "stopped";
      if (answer) thread.push({ role: "assistant", content: answer });
      setResult(row, "stopped", "stopped");
    } else {
      // The failed question stays in the conversation: the next message is sent after it.
      reply.dataset.state = "error";
      if (!answer && !thinking) reply.remove();
      const message = error instanceof ChatError ? error.message : `Could not reach clood: ${error.message}`;
      bubble("error", "error", message).dataset.state = "error";
      setResult(row, "error", error.status ? `HTTP ${error.status}` : "error", message);
    }
  } finally {
    if (current?.controller === controller) {
      current = null;
      setBusy(false);
    }
    scrollToEnd();
  }
}

const DONE = Symbol("done");

async function* sseEvents(stream) {
  // Server-sent events from a fetch body: one JSON object per `data:` line, DONE at `data: [DONE]`.
  const reader = stream.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      const lines = buffer.split("\n");
      buffer = lines.pop();
      for (const line of lines) {
        const event = parseLine(line);
        if (event !== undefined) yield event;
        if (event === DONE) return;
      }
    }
    const last = parseLine(buffer + decoder.decode());
    if (last !== undefined) yield last;
  } finally {
    reader.cancel().catch(() => {});
  }
}

function parseLine(line) {
  const trimmed = line.trim();
  if (!trimmed.startsWith("data:")) return undefined;
  const payload = trimmed.slice(5).trim();
  if (payload === "[DONE]") return DONE;
  try {
    return JSON.parse(payload);
  } catch {
    return undefined; // not JSON: ignore the line, as OpenAI's clients do
  }
}

async function errorMessage(response) {
  const text = await response.text().catch(() => "");
  let message = "";
  try {
    message = messageOf(JSON.parse(text).error);
  } catch {
    message = text.slice(0, 300);
  }
  return `HTTP ${response.status}${message ? ` · ${message}` : ""}`;
}

function messageOf(error) {
  if (typeof error === "string") return error;
  return error?.message ?? JSON.stringify(error);
}

function setBusy(busy) {
  sendButton.textContent = busy ? "Stop" : "Send";
  sendButton.classList.toggle("stop", busy);
  form.dataset.busy = busy ? "yes" : "";
}

function newChat() {
  current?.controller.abort();
  conversation = [];
  list.replaceChildren();
  const hint = document.createElement("li");
  hint.className = "hint";
  hint.textContent = "New conversation. Earlier messages are forgotten; the routing log stays.";
  list.append(hint);
  prompt.focus();
}

// ---- the routing log ----

function cell(row, name, text = "–") {
  const td = document.createElement("td");
  td.className = name;
  td.textContent = text;
  row.append(td);
  return td;
}

function routingRow(model) {
  routingEmpty.hidden = true;
  const row = document.createElement("tr");
  row.dataset.state = "pending";
  cell(row, "time", new Date().toLocaleTimeString([], { hour12: false }));
  cell(row, "model", model);
  cell(row, "host", "…");
  cell(row, "start");
  for (const name of ["ttft num", "tokens num", "speed num"]) cell(row, name);
  cell(row, "result", "…");
  routingBody.prepend(row);
  return row;
}

function noteRouting(row, headers, reply, model) {
  const host = headers.get("x-clood-host");
  const id = headers.get("x-clood-request-id");
  const decision = headers.get("x-clood-decision");
  row.querySelector(".host").textContent = host || "none";
  row.title = [id && `request ${id}`, decision && `decision ${decision}`].filter(Boolean).join(" · ");
  if (host) reply.querySelector(".meta").textContent = `${model} @ ${host}`;
  if (id) {
    row.dataset.requestId = id;
    rowsById.set(id, row);
    showStart(id);
  }
}

function showFigures(row, sentAt, measured, endedAt = null) {
  const tokens = measured.usage?.completion_tokens ?? measured.tokens;
  if (measured.firstAt !== null) row.querySelector(".ttft").textContent = `${Math.round(measured.firstAt - sentAt)} ms`;
  if (tokens) row.querySelector(".tokens").textContent = String(tokens);
  const end = endedAt ?? performance.now();
  if (measured.firstAt !== null && tokens > 1 && end > measured.firstAt) {
    // The proxy's own measure: tokens after the first, over the time after the first.
    row.querySelector(".speed").textContent = ((tokens - 1) / ((end - measured.firstAt) / 1000)).toFixed(1);
  }
}

function setResult(row, state, text, detail = "") {
  row.dataset.state = state;
  const result = row.querySelector(".result");
  result.textContent = text;
  if (detail) result.title = detail;
}

function showStart(id) {
  const row = rowsById.get(id);
  const started = starts.get(id);
  if (!row || !started) return;
  const start = row.querySelector(".start");
  start.textContent = started.cold ? "cold" : "warm";
  start.classList.toggle("cold", Boolean(started.cold));
  if (started.attempt > 1) row.querySelector(".host").textContent = `${started.host} (try ${started.attempt})`;
  const reason = started.decision?.reason;
  if (reason) start.title = `${started.decision.strategy ?? ""}: ${reason}`;
}

// ---- the ATC websocket (optional: only adds cold/warm; the console works without it) ----

function listen(delay = 1000) {
  let socket;
  try {
    socket = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws/atc/`);
  } catch {
    return;
  }
  socket.addEventListener("message", (message) => {
    let frame;
    try {
      frame = JSON.parse(message.data);
    } catch {
      return;
    }
    const events = frame.type === "batch" || frame.type === "resume" ? frame.events : [frame];
    for (const event of events) {
      if (event.type !== "request_started" || !event.data?.id) continue;
      starts.set(event.data.id, event.data);
      if (starts.size > KEPT_STARTS) starts.delete(starts.keys().next().value);
      showStart(event.data.id);
    }
  });
  socket.addEventListener("close", (closed) => {
    if (closed.code === 4401 || closed.code === 4404) return; // not allowed, or no such socket here
    setTimeout(() => listen(Math.min(delay * 2, 30000)), delay);
  });
}

// ---- wiring ----

form.addEventListener("submit", (event) => {
  event.preventDefault();
  if (current) {
    current.controller.abort();
    return;
  }
  const text = prompt.value.trim();
  if (!text || !select.value) return;
  localStorage.setItem(MODEL_KEY, select.value);
  prompt.value = "";
  send(text);
});

prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    if (!current) form.requestSubmit();
  }
});

document.getElementById("new-chat").addEventListener("click", newChat);

loadModels();
listen();
prompt.focus();
