// The routing decision panel: why a request went where it went, opened from its row in the feed.

import { $, el } from "./dom.js";
import { fmtClock, fmtMs } from "./format.js";

export function showDecision(event) {
  const d = event.data || {};
  const decision = d.decision || {};
  const body = $("detail-body");
  body.replaceChildren();
  const served = d.alias && d.resolved_model ? ` → ${d.resolved_model}` : "";
  $("detail-title").textContent = `${d.model}${served} → ${d.host}`;

  const facts = el("dl", "facts");
  const fact = (label, value) => {
    if (value === undefined || value === null || value === "") return;
    facts.append(el("dt", null, label), el("dd", null, value));
  };
  fact("when", fmtClock(event.ts));
  fact("strategy", decision.strategy);
  if (d.auto) fact("auto tier", `${d.auto.tier}: ${d.auto.reason}`);
  fact("alias", d.alias_reason);
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
        c.speed_ms === null || c.speed_ms === undefined ? "–"
          : `${fmtMs(c.speed_ms)}${c.speed_source ? ` (${c.speed_source})` : ""}`, c.priority, score,
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

/** The close button and Escape hide the panel. */
export function wireDecisionPanel() {
  $("detail-close").addEventListener("click", () => {
    $("detail").hidden = true;
  });
  document.addEventListener("keydown", (key) => {
    if (key.key === "Escape") $("detail").hidden = true;
  });
}
