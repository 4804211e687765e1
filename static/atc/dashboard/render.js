// One render pass, shortly after state changes, draws what they marked dirty: the numbers on top, the in-flight
// table, the catfight panel, the host cards, the aliases and the feed's host filter.

import { renderAliases } from "./aliases.js";
import { catfights } from "./analysis.js";
import { cards } from "./cards.js";
import { $ } from "./dom.js";
import { refreshHostFilter } from "./feed.js";
import { renderFlights } from "./flights.js";
import { fmtRate } from "./format.js";
import { dirty, state } from "./state.js";

let renderScheduled = false;

export function scheduleRender() {
  if (renderScheduled) return;
  renderScheduled = true;
  setTimeout(render, 30);
}

function render() {
  renderScheduled = false;
  if (dirty.header || dirty.flights) renderHeader();
  if (dirty.flights) renderFlights();
  if (dirty.fight) catfights.render();
  const names = dirty.allHosts || dirty.flights ? [...state.hosts.keys()] : [...dirty.hosts];
  for (const name of names) cards.update(name);
  renderAliases(); // cheap, and drawn again only when what it shows changed (hosts, models, aliases)
  dirty.header = dirty.flights = dirty.allHosts = dirty.fight = false;
  dirty.hosts.clear();
  refreshHostFilter();
}

// The numbers along the top: hosts online, in flight, queued, requests/s and tokens/s.
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
