// The in-flight table: one row per running or queued request, kept in start order, elapsed time ticking.

import { $, el } from "./dom.js";
import { fmtMs } from "./format.js";
import { serverNow, state } from "./state.js";

const flightRows = new Map(); // request id -> {row, cells}

export function renderFlights() {
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

export function tickElapsed() {
  const now = serverNow();
  for (const [id, entry] of flightRows) {
    const flight = state.flights.get(id);
    if (flight && flight.started_ts) entry.cells.elapsed.textContent = fmtMs(Math.max(0, now - flight.started_ts) * 1000);
  }
}
