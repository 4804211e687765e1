// One catfight, live: a column per contestant (model @ host) whose answer grows as GET /catfights/{id} is polled
// every 300 ms while the catfight runs, with its timer, TTFT, speed, cold/warm start and status; once it is
// completed, the ranking, the judge's scores and the summary. Text goes into the page with textContent only.
import {
  RANK_BY,
  catfightUrl,
  el,
  formatMs,
  formatRate,
  formatScore,
  formatSeconds,
  formatWhen,
  getJson,
} from "./api.js";

const POLL_MS = 300;
const MOST_RETRY_MS = 5000;
const TICK_MS = 100;
const SPEED_WINDOW_MS = 3000;

const root = document.getElementById("catfight");
const id = root.dataset.id;
const statusBadge = document.getElementById("status");
const problem = document.getElementById("problem");
const columnsBox = document.getElementById("columns");
const columns = new Map(); // entry id -> the column's elements, in the order the entries first came
let latest = null; // the last Catfight read
let failures = 0;
let ticker = null;

// ---- polling ----

async function poll() {
  let catfight;
  try {
    catfight = await getJson(catfightUrl(id));
  } catch (error) {
    failures += 1;
    if (error.status === 404) {
      showProblem(`There is no catfight #${id}.`, true);
      setStatus("not found", "failed");
      return;
    }
    showProblem(
      latest
        ? `Lost touch with clood (${error.message}); trying again…`
        : `Could not load catfight #${id}: ${error.message}`,
    );
    if (!latest) setStatus("error", "failed");
    setTimeout(poll, Math.min(POLL_MS * 2 ** failures, MOST_RETRY_MS));
    return;
  }
  failures = 0;
  latest = catfight;
  showProblem(null);
  try {
    render(catfight);
  } finally {
    if (catfight.status === "completed") stopTicking();
    else setTimeout(poll, POLL_MS);
  }
}

function showProblem(message, withLink = false) {
  problem.hidden = !message;
  if (!message) return;
  problem.replaceChildren(el("span", "", message));
  if (withLink) {
    const link = el("a", "", "See the catfights that exist");
    link.href = "/atc/catfights";
    problem.append(" ", link, ".");
  }
}

function setStatus(text, state) {
  statusBadge.textContent = text;
  statusBadge.dataset.state = state;
  root.dataset.status = state;
}

// ---- the whole catfight ----

function render(catfight) {
  const entries = Array.isArray(catfight.entries) ? catfight.entries : [];
  const done = catfight.status === "completed";
  const answered = entries.every((entry) => entry.status === "completed" || entry.status === "failed");
  if (done) setStatus("completed", "completed");
  else if (answered && entries.length) setStatus(catfight.judge ? "judging" : "ranking", "running");
  else setStatus("running", "running");
  document.title = `${done ? "" : "▶ "}Catfight ${id} · clood`;

  showQuestion(catfight);
  for (const entry of entries) {
    if (!columns.has(entry.id)) columns.set(entry.id, makeColumn(entry));
  }
  const perRow = columns.size <= 4 ? Math.max(columns.size, 1) : columns.size <= 6 ? 3 : 4;
  columnsBox.style.setProperty("--columns", String(perRow));
  columnsBox.dataset.rows = String(Math.min(Math.ceil(columns.size / perRow), 3));
  for (const entry of entries) fillColumn(columns.get(entry.id), entry, catfight);
  document.getElementById("exports").hidden = false;
  if (done) showRanking(catfight, entries);
  else startTicking();
}

function showQuestion(catfight) {
  document.getElementById("question").hidden = false;
  setText(document.getElementById("question-prompt"), catfight.prompt ?? "");
  const system = document.getElementById("question-system");
  system.hidden = !catfight.system;
  setText(system, catfight.system ? `System: ${catfight.system}` : "");

  const params = catfight.params ?? {};
  const given = [
    ["temperature", params.temperature],
    ["seed", params.seed],
    ["max tokens", params.max_tokens],
  ].filter(([, value]) => value !== null && value !== undefined);
  const judge = catfight.judge
    ? `${catfight.judge.model}${catfight.judge.host ? ` @ ${catfight.judge.host}` : ""}`
    : "none";
  const took = catfight.started_at && catfight.finished_at
    ? formatSeconds(Date.parse(catfight.finished_at) - Date.parse(catfight.started_at))
    : "–";
  const facts = [
    ["Rank by", RANK_BY[catfight.rank_by] ?? catfight.rank_by ?? "–"],
    ["Parameters", given.length ? given.map(([name, value]) => `${name} ${value}`).join(" · ") : "defaults"],
    ["Same host", catfight.parallel_same_host ? "in parallel" : "one after another"],
    ["Judge", judge],
    ["Started", formatWhen(catfight.started_at ?? catfight.created_at)],
    ["Took", took],
  ];
  const list = document.getElementById("facts");
  if (list.children.length !== facts.length) {
    list.replaceChildren(
      ...facts.map(([name]) => {
        const fact = el("div", "cf-fact");
        fact.append(el("dt", "", name), el("dd"));
        return fact;
      }),
    );
  }
  facts.forEach(([, value], index) => setText(list.children[index].lastChild, value));
}

// ---- a column per contestant ----

function makeColumn(entry) {
  const article = el("article", "cf-col");
  article.dataset.entry = entry.id;
  article.dataset.model = entry.model;
  article.dataset.host = entry.host;
  const head = el("header", "cf-col-head");
  const line = el("div", "cf-col-line");
  const badges = el("div", "cf-badges");
  const status = el("span", "cf-badge cf-badge-status");
  const start = el("span", "cf-badge cf-badge-start");
  const rank = el("span", "cf-badge cf-badge-rank");
  start.hidden = rank.hidden = true;
  badges.append(rank, status, start);
  line.append(el("p", "cf-at", `@ ${entry.host}`), badges);
  head.append(el("h2", "cf-model", entry.model), line);

  const figures = el("dl", "cf-figures");
  const figure = (label, className) => {
    const box = el("div", `cf-figure ${className}`);
    const value = el("dd", "", "–");
    box.append(el("dt", "", label), value);
    figures.append(box);
    return value;
  };
  const column = {
    article,
    status,
    start,
    rank,
    timer: figure("time", "cf-fig-timer"),
    ttft: figure("TTFT", "cf-fig-ttft"),
    speed: figure("tok/s", "cf-fig-speed"),
    load: figure("load", "cf-fig-load"),
    tokens: figure("tokens", "cf-fig-tokens"),
    output: el("div", "cf-output"),
    error: el("p", "cf-col-error"),
    judge: el("div", "cf-col-judge"),
    entry,
  };
  column.output.tabIndex = 0;
  column.error.hidden = column.judge.hidden = true;
  article.append(head, figures, column.error, column.output, column.judge);
  columnsBox.append(article);
  return column;
}

function fillColumn(column, entry, catfight) {
  column.entry = entry;
  const { article } = column;
  article.dataset.status = entry.status;
  setText(column.status, entry.status === "pending" ? "waiting" : entry.status);

  // `cold` is only certain once the answer is over (a warm start is not reported early); a cold start may be.
  const finished = entry.status === "completed" || entry.status === "failed";
  column.start.hidden = !(entry.started_at && (finished || entry.cold));
  setText(column.start, entry.cold ? "cold start" : "warm");
  column.start.classList.toggle("cold", Boolean(entry.cold));
  setText(column.ttft, formatMs(entry.ttft_ms));
  showSpeed(column, entry);
  setText(column.load, entry.cold || entry.load_ms ? formatMs(entry.load_ms) : "–");
  setText(column.tokens, entry.completion_tokens ?? "–");
  tickColumn(column);

  const output = column.output;
  const nearEnd = output.scrollHeight - output.scrollTop - output.clientHeight < 40;
  if (output.textContent !== (entry.output ?? "")) {
    output.textContent = entry.output ?? "";
    if (nearEnd && entry.status === "running") output.scrollTop = output.scrollHeight; // follow a growing answer
  }
  const waiting = entry.status === "pending" ? "waiting for its turn…" : "waiting for the first token…";
  output.dataset.placeholder = entry.status === "pending" || entry.status === "running" ? waiting : "(no answer)";

  column.error.hidden = !entry.error;
  setText(column.error, entry.error ?? "");

  const done = catfight.status === "completed";
  const winner = done && catfight.winner !== null && catfight.winner === entry.id;
  article.classList.toggle("winner", winner);
  column.rank.hidden = !done || entry.status === "failed"; // the status badge already says failed
  if (done) {
    column.rank.className = `cf-badge cf-badge-rank ${winner ? "gold" : entry.rank ? "" : "unranked"}`;
    setText(column.rank, rankText(entry, winner));
  }
  const scored = entry.judge_score !== null && entry.judge_score !== undefined;
  column.judge.hidden = !scored && !entry.judge_explanation;
  if (!column.judge.hidden) {
    column.judge.replaceChildren(
      el("span", "cf-score", scored ? `${formatScore(entry.judge_score)}/10` : "–"),
      el("span", "cf-explanation", entry.judge_explanation ?? ""),
    );
  }
}

function showSpeed(column, entry) {
  // The API gives tokens/s once an answer is over; while it runs, the speed is measured here from the token count
  // over the last few polls (the page's own clock, so a skewed server clock does not matter).
  const speed = column.speed;
  if (entry.status !== "running" || typeof entry.completion_tokens !== "number") {
    column.samples = [];
    speed.classList.remove("estimate");
    speed.removeAttribute("title");
    setText(speed, formatRate(entry.tokens_per_s));
    return;
  }
  const now = performance.now();
  const samples = (column.samples ?? []).filter((sample) => now - sample.at <= SPEED_WINDOW_MS);
  samples.push({ at: now, tokens: entry.completion_tokens });
  column.samples = samples;
  const first = samples[0];
  const seconds = (now - first.at) / 1000;
  if (seconds < 0.5 || entry.completion_tokens === 0) return;
  speed.classList.add("estimate");
  speed.title = "measured in this page over the last few seconds";
  setText(speed, `≈ ${formatRate((entry.completion_tokens - first.tokens) / seconds)}`);
}

function rankText(entry, winner) {
  if (winner) return `#${entry.rank ?? 1} winner`;
  if (entry.rank) return `#${entry.rank}`;
  return entry.status === "failed" ? "failed" : "no answer";
}

function setText(element, value) {
  const text = String(value ?? "");
  if (element.textContent !== text) element.textContent = text;
}

// ---- timers ----

function elapsedMs(entry) {
  if (!entry.started_at) return null;
  const started = Date.parse(entry.started_at);
  if (entry.finished_at) return entry.duration_ms ?? Date.parse(entry.finished_at) - started;
  return Math.max(0, Date.now() - started);
}

function tickColumn(column) {
  const entry = column.entry;
  const elapsed = elapsedMs(entry);
  setText(column.timer, elapsed === null ? "–" : formatSeconds(elapsed));
}

function startTicking() {
  ticker ??= setInterval(() => columns.forEach(tickColumn), TICK_MS);
}

function stopTicking() {
  clearInterval(ticker);
  ticker = null;
  columns.forEach(tickColumn);
}

// ---- the result ----

function showRanking(catfight, entries) {
  const ranked = [...entries].sort((a, b) => (a.rank ?? Infinity) - (b.rank ?? Infinity));
  const rows = ranked.map((entry) => {
    const winner = catfight.winner !== null && catfight.winner === entry.id;
    const row = el("tr", winner ? "winner" : entry.rank ? "" : "unranked");
    row.dataset.entry = entry.id;
    row.dataset.status = entry.status;
    const cell = (text, className = "") => row.appendChild(el("td", className, text));
    const place = cell(entry.rank ?? "–", "num cf-place");
    if (winner) place.append(el("span", "cf-crown", " ★"));
    const who = cell("", "cf-who");
    who.append(el("strong", "", entry.model), el("span", "muted", ` @ ${entry.host}`));
    cell(resultText(entry, winner), "cf-outcome");
    cell(formatSeconds(entry.duration_ms ?? elapsedMs(entry)), "num");
    cell(formatMs(entry.ttft_ms), "num");
    cell(formatRate(entry.tokens_per_s), "num");
    cell(entry.completion_tokens ?? "–", "num");
    cell(entry.started_at ? (entry.cold ? "cold" : "warm") : "–", entry.cold ? "cold" : "");
    cell(entry.cold || entry.load_ms ? formatMs(entry.load_ms) : "–", "num");
    cell(formatScore(entry.judge_score), "num cf-judged");
    const why = cell("", "cf-why cf-judged");
    why.append(el("span", "cf-clamp", entry.judge_explanation || ""));
    why.title = entry.judge_explanation || "";
    if (entry.error) row.title = entry.error;
    return row;
  });
  document.querySelector("#ranking tbody").replaceChildren(...rows);
  const judged = Boolean(catfight.judge) || entries.some((entry) => typeof entry.judge_score === "number");
  document.getElementById("ranking").classList.toggle("unjudged", !judged);
  setText(document.getElementById("summary"), catfight.summary ?? "");
  document.getElementById("result").hidden = false;
}

function resultText(entry, winner) {
  if (entry.status === "failed") return `failed${entry.error ? `: ${entry.error}` : ""}`;
  if (!entry.rank) return "no answer";
  return winner ? "winner" : "answered";
}

poll();
