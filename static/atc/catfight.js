// Start a catfight: a prompt (or a saved challenge set), a grid of models × hosts built from /v1/models, the rules,
// an optional judge. Submitting posts to /catfights and goes to the live view. The last choices are remembered.
import { ApiError, RANK_BY, el, getJson, option, pageUrl, postJson } from "./catfight/api.js";

const FORM_KEY = "clood.catfight.form";
const MIN_CONTESTANTS = 2;
const MAX_CONTESTANTS = 12;
const RETRY_MS = 5000;
const cannotChat = (model) => /embed/i.test(model); // embedding models have no answer to race

const form = document.getElementById("catfight-form");
const promptBox = document.getElementById("prompt");
const setSelect = document.getElementById("challenge-set");
const setPreview = document.getElementById("set-preview");
const grid = document.getElementById("grid");
const gridStatus = document.getElementById("grid-status");
const pickedCount = document.getElementById("picked-count");
const judgeModel = document.getElementById("judge-model");
const judgeHost = document.getElementById("judge-host");
const rubric = document.getElementById("rubric");
const startButton = document.getElementById("start");
const formError = document.getElementById("form-error");

let models = []; // /v1/models entries
let challengeSets = [];
let rubricFromSet = null; // the rubric a chosen set filled in, cleared again if the set is unchosen
const remembered = readRemembered();
const picked = new Set((remembered.contestants ?? []).map(({ model, host }) => key(model, host)));

function key(model, host) {
  return JSON.stringify([model, host]);
}

function readRemembered() {
  try {
    return JSON.parse(localStorage.getItem(FORM_KEY)) ?? {};
  } catch {
    return {};
  }
}

// ---- the grid of models × hosts ----

async function loadModels() {
  try {
    const body = await getJson("/v1/models");
    models = (Array.isArray(body.data) ? body.data : []).filter((model) => model.clood?.hosts?.length);
  } catch (error) {
    gridStatus.textContent = `Could not list the models: ${error.message}. Trying again…`;
    setTimeout(loadModels, RETRY_MS);
    return;
  }
  if (!models.length) {
    gridStatus.textContent = "No online host serves a model right now; looking again every few seconds.";
    setTimeout(loadModels, RETRY_MS);
    return;
  }
  drawGrid();
  fillJudgeModels();
}

function drawGrid() {
  const hosts = [...new Set(models.flatMap((model) => model.clood.hosts))].sort();
  const chatModels = models.filter((model) => !cannotChat(model.id));
  const present = new Set(chatModels.flatMap((model) => model.clood.hosts.map((host) => key(model.id, host))));
  for (const gone of [...picked].filter((k) => !present.has(k))) picked.delete(gone);

  const head = el("tr");
  head.append(el("th", "", "Model"));
  for (const host of hosts) {
    const th = el("th", "cf-host");
    th.scope = "col";
    const toggle = el("button", "cf-toggle", host);
    toggle.type = "button";
    toggle.title = `pick every model on ${host}`;
    toggle.addEventListener("click", () => toggleAll(grid.querySelectorAll(`input[data-host="${CSS.escape(host)}"]`)));
    th.append(toggle);
    head.append(th);
  }
  grid.tHead.replaceChildren(head);

  const rows = models.map((model) => {
    const row = el("tr");
    row.dataset.model = model.id;
    const chat = !cannotChat(model.id);
    if (!chat) row.className = "cf-nochat";
    const th = el("th");
    th.scope = "row";
    const toggle = el("button", "cf-toggle", model.id);
    toggle.type = "button";
    toggle.disabled = !chat;
    toggle.title = chat ? `pick ${model.id} on every host` : "an embedding model: it cannot answer a prompt";
    toggle.addEventListener("click", () => toggleAll(row.querySelectorAll("input")));
    th.append(toggle);
    row.append(th);
    for (const host of hosts) row.append(gridCell(model, host, chat));
    return row;
  });
  grid.tBodies[0].replaceChildren(...rows);
  gridStatus.textContent = "";
  showCount();
}

function gridCell(model, host, chat) {
  const td = el("td", "cf-cell");
  if (!model.clood.hosts.includes(host)) return td;
  const loaded = (model.clood.loaded_on ?? []).includes(host);
  const label = el("label", loaded ? "cf-pick loaded" : "cf-pick");
  const box = document.createElement("input");
  box.type = "checkbox";
  box.dataset.model = model.id;
  box.dataset.host = host;
  box.disabled = !chat;
  box.checked = chat && picked.has(key(model.id, host));
  box.setAttribute("aria-label", `${model.id} @ ${host}`);
  box.addEventListener("change", () => {
    if (box.checked) picked.add(key(model.id, host));
    else picked.delete(key(model.id, host));
    showCount();
  });
  label.append(box, el("span", "cf-dot"), el("span", "cf-where", loaded ? "loaded" : "cold"));
  label.title = `${model.id} @ ${host}: ${loaded ? "loaded, a warm start" : "not loaded, a cold start"}`;
  td.append(label);
  return td;
}

function toggleAll(boxes) {
  const usable = [...boxes].filter((box) => !box.disabled);
  const check = !usable.every((box) => box.checked);
  for (const box of usable) {
    if (box.checked === check) continue;
    box.checked = check;
    box.dispatchEvent(new Event("change"));
  }
}

function showCount() {
  const count = picked.size;
  pickedCount.textContent = String(count);
  pickedCount.classList.toggle("bad", count > MAX_CONTESTANTS);
  pickedCount.classList.toggle("ok", count >= MIN_CONTESTANTS && count <= MAX_CONTESTANTS);
}

// ---- the judge ----

function fillJudgeModels() {
  const chosen = judgeModel.value || remembered.judge?.model || "";
  const chatModels = models.filter((model) => !cannotChat(model.id));
  judgeModel.replaceChildren(option("", "— no judge —"), ...chatModels.map((model) => option(model.id, model.id)));
  judgeModel.value = chatModels.some((model) => model.id === chosen) ? chosen : "";
  fillJudgeHosts(remembered.judge?.host);
}

function fillJudgeHosts(chosen = judgeHost.value) {
  const model = models.find((m) => m.id === judgeModel.value);
  const hosts = model?.clood.hosts ?? [];
  judgeHost.replaceChildren(option("", "any host"), ...hosts.map((host) => option(host, host)));
  judgeHost.value = hosts.includes(chosen) ? chosen : "";
  judgeHost.disabled = !model;
}

// ---- challenge sets ----

async function loadChallengeSets() {
  try {
    const body = await getJson("/catfights/challenge-sets");
    challengeSets = Array.isArray(body.challenge_sets) ? body.challenge_sets : [];
  } catch (error) {
    setSelect.title = `Could not list the challenge sets: ${error.message}`;
    return;
  }
  if (!challengeSets.length) {
    const none = option("", "no saved challenge sets (they are made in the admin)");
    none.disabled = true;
    setSelect.append(none);
    return;
  }
  setSelect.append(
    ...challengeSets.map((set) => {
      const count = set.prompts?.length ?? 0;
      return option(String(set.id), `${set.name} (${count} prompt${count === 1 ? "" : "s"})`);
    }),
  );
}

function chosenSet() {
  return challengeSets.find((set) => String(set.id) === setSelect.value) ?? null;
}

function showSet() {
  const set = chosenSet();
  promptBox.hidden = Boolean(set);
  setPreview.hidden = !set;
  if (rubricFromSet !== null && rubric.value === rubricFromSet) rubric.value = "";
  rubricFromSet = null;
  if (!set) return;
  const prompts = set.prompts ?? [];
  document.getElementById("set-summary").textContent =
    `One catfight per prompt: ${prompts.length} catfight${prompts.length === 1 ? "" : "s"} with the same contestants.`;
  document.getElementById("set-prompts").replaceChildren(...prompts.map((text) => el("li", "", text)));
  if (set.rubric && !rubric.value.trim()) {
    rubric.value = set.rubric;
    rubricFromSet = set.rubric;
  }
}

// ---- submitting ----

function numberField(id, { integer = false, min = null, max = null, name }) {
  const raw = document.getElementById(id).value.trim();
  if (raw === "") return undefined;
  const value = Number(raw);
  if (!Number.isFinite(value) || (integer && !Number.isInteger(value))) {
    throw new ApiError(`${name} must be ${integer ? "a whole number" : "a number"}.`);
  }
  if ((min !== null && value < min) || (max !== null && value > max)) {
    throw new ApiError(`${name} must be between ${min ?? "−∞"} and ${max ?? "∞"}.`);
  }
  return value;
}

function request() {
  // In the grid's order (model by model, host by host), not the order they were ticked in.
  const contestants = [...grid.querySelectorAll("tbody input:checked")].map((box) => ({
    model: box.dataset.model,
    host: box.dataset.host,
  }));
  if (contestants.length < MIN_CONTESTANTS) throw new ApiError("Pick at least two contestants (model @ host).");
  if (contestants.length > MAX_CONTESTANTS) {
    throw new ApiError(`At most ${MAX_CONTESTANTS} contestants; ${contestants.length} are picked.`);
  }
  const rankBy = form.elements.rank_by.value;
  const body = { contestants, rank_by: rankBy, parallel_same_host: document.getElementById("parallel").checked };
  const set = chosenSet();
  if (set) body.challenge_set = set.id;
  else {
    body.prompt = promptBox.value;
    if (!body.prompt.trim()) throw new ApiError("Write a prompt, or pick a challenge set.");
  }
  const system = document.getElementById("system").value;
  if (system.trim()) body.system = system;
  const temperature = numberField("temperature", { min: 0, max: 2, name: "Temperature" });
  const seed = numberField("seed", { integer: true, name: "Seed" });
  const maxTokens = numberField("max-tokens", { integer: true, min: 1, name: "Max tokens" });
  if (temperature !== undefined) body.temperature = temperature;
  if (seed !== undefined) body.seed = seed;
  if (maxTokens !== undefined) body.max_tokens = maxTokens;
  if (judgeModel.value) {
    body.judge = { model: judgeModel.value };
    if (judgeHost.value) body.judge.host = judgeHost.value;
    if (rubric.value.trim()) body.judge.rubric = rubric.value;
  } else if (rankBy === "judge") {
    throw new ApiError(`Ranking by ${RANK_BY.judge} needs a judge: pick its model.`);
  }
  return body;
}

function remember(body) {
  const { contestants, system, temperature, seed, max_tokens, rank_by, parallel_same_host, judge } = body;
  const kept = { contestants, system, temperature, seed, max_tokens, rank_by, parallel_same_host, judge };
  kept.prompt = body.prompt ?? remembered.prompt;
  localStorage.setItem(FORM_KEY, JSON.stringify(kept));
}

function restore() {
  if (remembered.prompt) promptBox.value = remembered.prompt;
  if (remembered.system) document.getElementById("system").value = remembered.system;
  for (const [id, name] of [["temperature", "temperature"], ["seed", "seed"], ["max-tokens", "max_tokens"]]) {
    const value = remembered[name];
    if (value !== undefined && value !== null) document.getElementById(id).value = value;
  }
  const rank = form.querySelector(`input[name=rank_by][value="${CSS.escape(remembered.rank_by ?? "fastest")}"]`);
  if (rank) rank.checked = true;
  document.getElementById("parallel").checked = Boolean(remembered.parallel_same_host);
  if (remembered.judge?.rubric) rubric.value = remembered.judge.rubric;
}

function showError(message) {
  formError.textContent = message;
  formError.hidden = !message;
}

async function submit() {
  showError("");
  let body;
  try {
    body = request();
  } catch (error) {
    showError(error.message);
    return;
  }
  startButton.disabled = true;
  startButton.textContent = "Starting…";
  try {
    const started = await postJson("/catfights", body);
    remember(body);
    if (Array.isArray(started.catfights)) {
      const ids = started.catfights.map((catfight) => catfight.id).join(",");
      location.assign(`/atc/catfights?started=${encodeURIComponent(ids)}`);
    } else {
      location.assign(pageUrl(started.id));
    }
  } catch (error) {
    showError(`The catfight did not start: ${error.message}`);
    startButton.disabled = false;
    startButton.textContent = "Start the catfight";
  }
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  if (!startButton.disabled) submit();
});
promptBox.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) form.requestSubmit();
});
judgeModel.addEventListener("change", () => fillJudgeHosts());
setSelect.addEventListener("change", showSet);

restore();
showCount();
loadModels();
loadChallengeSets();
