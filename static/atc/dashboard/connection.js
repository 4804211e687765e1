// The websocket (docs/atc-protocol.md): reconnect with backoff and ?since=, acks, a stalled stream starts afresh,
// 4401 means "log in".

import { $, root } from "./dom.js";
import { state } from "./state.js";

export const connection = {
  socket: null, attempt: 0, timer: null, opened: false, stopped: false,
  lastMessageAt: 0, lastAckAt: 0, fresh: false,
};
const STALL_SECONDS = 10; // ticks come every second: this long without a message means the stream is stuck
let handleMessage = () => {};

/** Opens the socket and keeps it open; `onMessage(message)` gets each parsed server message, then an ack may go. */
export function startConnection(onMessage) {
  handleMessage = onMessage;
  setInterval(closeIfStalled, 1000);
  connect();
}

/** Drops the socket as a network failure would; the page reconnects, asking for a new snapshot when `fresh`. */
export function reconnect(fresh = false) {
  connection.fresh = fresh;
  if (connection.socket) connection.socket.close();
}

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
function closeIfStalled() {
  const socket = connection.socket;
  if (!socket || socket.readyState !== WebSocket.OPEN) return;
  if (Date.now() - connection.lastMessageAt > STALL_SECONDS * 1000) {
    connection.fresh = true;
    socket.close();
  }
}

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
