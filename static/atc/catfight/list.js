// The catfights that were run, newest first (GET /catfights), each linking to its page. While one is still
// running the list is read again every two seconds; `?started=1,2` (a challenge set just started) marks those.
import { RANK_BY, el, formatWhen, getJson, pageUrl } from "./api.js";

const PAGE = 50;
const REFRESH_MS = 2000;

const body = document.querySelector("#catfights tbody");
const empty = document.getElementById("empty");
const more = document.getElementById("more");
const problem = document.getElementById("problem");
const listStatus = document.getElementById("list-status");
const started = new Set((new URLSearchParams(location.search).get("started") ?? "").split(",").filter(Boolean));
let limit = PAGE;
let timer = null;

async function load() {
  clearTimeout(timer);
  let catfights;
  try {
    const answer = await getJson(`/catfights?limit=${limit}`);
    catfights = Array.isArray(answer.catfights) ? answer.catfights : [];
    problem.hidden = true;
  } catch (error) {
    problem.textContent = `Could not list the catfights: ${error.message}`;
    problem.hidden = false;
    timer = setTimeout(load, REFRESH_MS * 2);
    return;
  }
  body.replaceChildren(...catfights.map(row));
  empty.hidden = catfights.length > 0;
  more.hidden = catfights.length < limit;
  const running = catfights.filter((catfight) => catfight.status === "running").length;
  listStatus.textContent = running ? `${running} running · updating live` : `${catfights.length} shown`;
  if (running) timer = setTimeout(load, REFRESH_MS);
}

function row(catfight) {
  const tr = el("tr", started.has(String(catfight.id)) ? "just-started" : "");
  tr.dataset.id = catfight.id;
  tr.dataset.status = catfight.status;
  const link = (text) => {
    const a = el("a", "", text);
    a.href = pageUrl(catfight.id);
    return a;
  };
  const cell = (className, ...content) => {
    const td = el("td", className);
    td.append(...content);
    tr.append(td);
    return td;
  };
  cell("num", link(`#${catfight.id}`));
  cell("cf-when", formatWhen(catfight.created_at));
  const prompt = cell("cf-prompt-cell", link(catfight.prompt || "(no prompt)"));
  prompt.title = catfight.prompt ?? "";
  cell("num", String(catfight.contestants ?? "–"));
  cell("", RANK_BY[catfight.rank_by] ?? catfight.rank_by ?? "–");
  cell("", el("span", `cf-status small`, catfight.status)).firstChild.dataset.state = catfight.status;
  const winner = catfight.winner;
  if (winner) {
    const who = cell("cf-who winner-cell");
    who.append(el("span", "cf-crown", "★ "), el("strong", "", winner.model), el("span", "muted", ` @ ${winner.host}`));
  } else {
    cell("muted", catfight.status === "running" ? "…" : "no winner");
  }
  return tr;
}

body.addEventListener("click", (event) => {
  // The whole row opens the catfight, not only its links.
  const tr = event.target.closest("tr[data-id]");
  if (tr && !event.target.closest("a") && !window.getSelection().toString()) location.assign(pageUrl(tr.dataset.id));
});

more.addEventListener("click", () => {
  limit += PAGE;
  load();
});

load();
