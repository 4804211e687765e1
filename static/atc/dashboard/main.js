// The ATC dashboard: one websocket (docs/atc-protocol.md), one in-memory picture of the garden, drawn into the page.
// Everything a client or host sent is put into the DOM with textContent / createElement, never innerHTML.
// This entry applies what the server says to the state and the views, and starts the page's clocks.

import { catfights, wireAnalysisPanel } from "./analysis.js";
import { cards } from "./cards.js";
import { charts, chartsFromEvent, followChartsWidth } from "./charts.js";
import { connection, reconnect, startConnection } from "./connection.js";
import { wireDecisionPanel } from "./decision.js";
import { $ } from "./dom.js";
import { feed, wireFilters } from "./feed.js";
import { tickElapsed } from "./flights.js";
import { scheduleRender } from "./render.js";
import { dirty, loadSnapshotState, onNewHost, state, takeSeq, updateState } from "./state.js";

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
  loadSnapshotState(message);
  $("public-badge").hidden = !state.public;
  feed.clear();
  catfights.reset(); // the snapshot's recent events hold the catfights to show, newest last
  for (const event of (message.data || {}).events || []) {
    if (String(event.type).startsWith("operation_")) updateState(event); // garden operations still running
    chartsFromEvent(event);
    catfights.apply(event);
    if (event.type !== "tick" && event.type !== "operation_progress") feed.add(event);
  }
  rebuildHostViews();
  dirty.all();
}

function applyEvent(event, live) {
  if (!takeSeq(event, live)) return;
  try {
    const context = updateState(event);
    catfights.apply(event);
    chartsFromEvent(event);
    if (event.type !== "tick" && event.type !== "operation_progress") feed.add(event, context);
  } catch (error) {
    console.error("ATC: could not show event", event, error); // one odd event must not stop the others
  }
}

function rebuildHostViews() {
  cards.rebuild();
  charts.rebuild();
}

// The x axis slides with the clock even when nothing happens, so the charts are redrawn every second.
function slideWithTheClock() {
  charts.draw();
  for (const name of state.hosts.keys()) dirty.hosts.add(name); // sparklines slide too
  scheduleRender();
}

onNewHost(rebuildHostViews);
wireFilters();
wireDecisionPanel();
wireAnalysisPanel();
setInterval(tickElapsed, 250);
setInterval(slideWithTheClock, 1000);
followChartsWidth();

// For the browser tests and curious people: `cloodATC.reconnect(true)` drops the socket and asks for a new snapshot.
window.cloodATC = {
  state,
  socket: () => connection.socket,
  reconnect,
};
charts.rebuild();
startConnection(handleMessage);
