// The catfight analysis panel: the newest catfight while it runs (each contestant and its phase), then its summary
// and ranking until dismissed or the next one starts. Also which models are fighting on which host, for the cards.

import { $, el, root } from "./dom.js";
import { fmtMs, fmtRate, plural } from "./format.js";
import { dirty } from "./state.js";

const RANK_BY = { fastest: "fastest", tokens_per_s: "tokens/s", judge: "judge score" };

let shown = null; // the catfight on the panel: {id, prompt, rankBy, contestants: Map entry -> Contestant, result}
const running = new Map(); // entry id -> {catfight, model, host}: contestants generating now
const dismissed = new Set(); // "id:running" / "id:done"; kept across snapshots, so a reconnect does not reopen it

// The panel follows the newest catfight (ids only grow); events of older ones only move the highlights.
function fightFor(id) {
  if (shown && Number(id) < shown.id) return null;
  if (!shown || shown.id !== Number(id)) {
    shown = { id: Number(id), prompt: "", rankBy: "", contestants: new Map(), result: null };
  }
  return shown;
}

function contestant(fight, entry, model, host) {
  if (!fight.contestants.has(entry)) fight.contestants.set(entry, { entry, model, host, phase: "waiting" });
  return fight.contestants.get(entry);
}

const HANDLERS = {
  catfight_started(data) {
    const fight = fightFor(data.id);
    if (!fight) return;
    fight.prompt = data.prompt || "";
    fight.rankBy = data.rank_by || "";
    for (const c of data.contestants || []) contestant(fight, c.entry, c.model, c.host);
  },

  catfight_entry(data) {
    if (data.phase === "started" || data.phase === "first_token") {
      running.set(data.entry, { catfight: data.id, model: data.model, host: data.host });
    } else {
      running.delete(data.entry);
    }
    dirty.hosts.add(data.host);
    const fight = fightFor(data.id);
    if (!fight) return;
    const entry = contestant(fight, data.entry, data.model, data.host);
    entry.phase = data.phase;
    for (const key of ["ttft_ms", "tokens_per_s", "duration_ms", "error"]) {
      if (data[key] !== null && data[key] !== undefined) entry[key] = data[key];
    }
  },

  catfight_completed(data) {
    for (const [entry, fighting] of running) {
      if (fighting.catfight !== data.id) continue;
      running.delete(entry);
      dirty.hosts.add(fighting.host);
    }
    const fight = fightFor(data.id);
    if (!fight) return;
    fight.prompt = data.prompt || fight.prompt;
    fight.rankBy = data.rank_by || fight.rankBy;
    fight.result = { summary: data.summary || "", winner: data.winner || null, ranking: data.ranking || [] };
  },
};

const dismissKey = (fight) => `${fight.id}:${fight.result ? "done" : "running"}`;

export const catfights = {
  /** Forgets what the page knew: a snapshot's events are applied again from the start. */
  reset() {
    shown = null;
    running.clear();
    dirty.fight = true;
  },

  apply(event) {
    const handler = HANDLERS[event.type];
    if (!handler) return;
    handler(event.data || {});
    dirty.fight = true;
  },

  /** The models fighting on `host` now (each from its entry's start until it completes or fails). */
  modelsOn(host) {
    return [...running.values()].filter((f) => f.host === host).map((f) => f.model);
  },

  render() {
    const visible = Boolean(shown) && !dismissed.has(dismissKey(shown));
    $("fight").hidden = !visible;
    root.classList.toggle("with-fight", visible);
    if (!visible) return;
    const fight = shown;
    const result = fight.result;
    $("fight").dataset.catfight = fight.id;
    $("fight").dataset.state = result ? "done" : "running";
    $("fight").classList.toggle("no-winner", Boolean(result) && !result.winner);
    $("fight-name").textContent = `Catfight #${fight.id}`;
    $("fight-prompt").textContent = fight.prompt;
    $("fight-prompt").title = fight.prompt;
    const state = $("fight-state");
    state.textContent = !result ? "running" : result.winner ? "done" : "no winner";
    state.className = `fight-state ${!result ? "running" : result.winner ? "done" : "none"}`;
    $("fight-link").href = `/atc/catfight/${encodeURIComponent(fight.id)}`;
    $("fight-meta").textContent = meta(fight);
    $("fight-summary").textContent = result ? result.summary : "";
    $("fight-summary").hidden = !result || !result.summary;
    if (result) renderRanking(result);
    else renderContestants(fight);
  },
};

function meta(fight) {
  const parts = [];
  if (fight.rankBy) parts.push(`ranked by ${RANK_BY[fight.rankBy] || fight.rankBy}`);
  const entries = fight.result ? fight.result.ranking : [...fight.contestants.values()];
  parts.push(plural(entries.length, "contestant"));
  if (!fight.result) {
    const finished = entries.filter((c) => c.phase === "completed" || c.phase === "failed").length;
    parts.push(`${finished} finished`);
  }
  return parts.join(" · ");
}

function head(...labels) {
  const row = el("tr");
  for (const [label, className] of labels) row.append(el("th", className, label));
  return row;
}

function contestantCell(model, host) {
  const cell = el("td", "col-contestant");
  cell.append(el("span", "fight-model", model), el("span", "fight-at", " @ "), el("span", "fight-host", host));
  return cell;
}

function phaseText(c) {
  switch (c.phase) {
    case "started":
      return "running";
    case "first_token":
      return `first token after ${fmtMs(c.ttft_ms)}`;
    case "completed":
      return `done in ${fmtMs(c.duration_ms)} at ${fmtRate(c.tokens_per_s)} tok/s`;
    case "failed":
      return `failed: ${c.error || "no answer"}`;
    default:
      return "waiting";
  }
}

function renderContestants(fight) {
  $("fight-head").replaceChildren(head(["contestant"], ["phase"]));
  $("fight-body").replaceChildren(
    ...[...fight.contestants.values()].map((c) => {
      const row = el("tr", `phase-${c.phase}`);
      row.dataset.entry = c.entry;
      row.dataset.host = c.host;
      row.append(contestantCell(c.model, c.host), el("td", "col-phase", phaseText(c)));
      return row;
    }),
  );
}

function outcome(row, isWinner) {
  if (row.status === "failed") return `failed: ${row.error || "no answer"}`;
  if (row.rank === null || row.rank === undefined) return "empty answer";
  return isWinner ? "★ winner" : "done";
}

function renderRanking(result) {
  const judged = result.ranking.some((r) => r.judge_score !== null && r.judge_score !== undefined);
  const columns = [["#", "num"], ["contestant"], ["result"], ["time", "num"], ["TTFT", "num"], ["tok/s", "num"]];
  if (judged) columns.push(["score", "num"]);
  $("fight-head").replaceChildren(head(...columns));
  const winner = result.winner;
  $("fight-body").replaceChildren(
    ...result.ranking.map((r) => {
      const isWinner = Boolean(winner) && winner.entry === r.entry;
      const unranked = r.rank === null || r.rank === undefined;
      const row = el("tr", isWinner ? "winner" : unranked ? "unranked" : "");
      row.dataset.entry = r.entry;
      row.dataset.host = r.host;
      row.dataset.status = r.status;
      row.append(
        el("td", "num col-rank", unranked ? "–" : r.rank),
        contestantCell(r.model, r.host),
        el("td", "col-outcome", outcome(r, isWinner)),
        el("td", "num", fmtMs(r.duration_ms)),
        el("td", "num", fmtMs(r.ttft_ms)),
        el("td", "num", fmtRate(r.tokens_per_s)),
      );
      if (judged) row.append(el("td", "num col-score", r.judge_score ?? "–"));
      return row;
    }),
  );
}

/** The × hides the panel; a dismissed running catfight comes back with its result, a dismissed result stays away. */
export function wireAnalysisPanel() {
  $("fight-close").addEventListener("click", () => {
    if (shown) dismissed.add(dismissKey(shown));
    catfights.render();
  });
}
