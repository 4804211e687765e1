// The aliases panel: each enabled alias, its models in order, and the one a request would get now — the first one
// some usable host (enabled, online, circuit not open) holds, as proxy/aliases.py routes. `auto` lists its tiers,
// each with what it would serve. Drawn again only when what it shows changed.

import { $, el } from "./dom.js";
import { state } from "./state.js";

const shown = (key) => String(key).replace(/:latest$/, "");
let drawn = "";

/** Names of the models the hosts hold: all of them (`usable` false) or only those that can serve now, as routing
 * sees them (enabled, online, circuit not open). */
function heldBy(usable) {
  const held = new Set();
  for (const host of state.hosts.values()) {
    const serving = host.enabled !== false && host.online && host.circuit !== "open"; // half-open: a probe goes
    if (usable && !serving) continue;
    for (const model of host.models || []) held.add(model.name);
  }
  return held;
}

/** What a request for `alias` would get now: {serving: key or null}, {tiers} for auto, or {shadowed: true} when a
 * real model has its name on some host, in any state (a real model wins, as proxy/aliases.py resolves). */
function servingNow(alias, held, heldAnywhere, byKey) {
  if (heldAnywhere.has(alias.key)) return { shadowed: true };
  if (alias.auto) {
    const tiers = alias.targets.map((key) => {
      const tier = heldAnywhere.has(key) ? null : byKey.get(key);
      const models = tier ? tier.targets : [key];
      return { key, serving: models.find((m) => held.has(m)) || null };
    });
    return { tiers };
  }
  return { serving: alias.targets.find((key) => held.has(key)) || null };
}

export function renderAliases() {
  const aliases = state.aliases || [];
  const held = heldBy(true);
  const heldAnywhere = heldBy(false);
  const byKey = new Map(aliases.map((a) => [a.key, a]));
  const rows = aliases.map((alias) => ({ alias, now: servingNow(alias, held, heldAnywhere, byKey) }));
  const signature = JSON.stringify(rows.map(({ alias, now }) => [alias, now, alias.targets.map((t) => held.has(t))]));
  if (signature === drawn) return;
  drawn = signature;

  $("aliases-panel").hidden = aliases.length === 0;
  $("aliases-count").textContent = aliases.length;
  const body = $("aliases-body");
  body.replaceChildren();
  for (const { alias, now } of rows) {
    const row = el("tr");
    row.dataset.alias = alias.name;
    const name = el("td", "alias-name", alias.name);
    if (alias.description) name.title = alias.description;
    row.append(name, chain(alias, now, held), el("td", "", ""));
    row.lastChild.replaceChildren(...servingCell(alias, now));
    body.append(row);
  }
}

function chain(alias, now, held) {
  const cell = el("td");
  const list = el("span", "alias-chain");
  alias.targets.forEach((key, i) => {
    if (i) list.append(el("span", "alias-arrow", alias.auto ? "·" : "→"));
    const target = el("span", "alias-target", shown(key));
    if (held.has(key)) target.classList.add("held");
    if (!alias.auto && now.serving === key) target.classList.add("serving");
    list.append(target);
  });
  cell.append(list);
  return cell;
}

function servingCell(alias, now) {
  if (now.shadowed) return [el("span", "muted", "a real model of this name (it wins over the alias)")];
  if (now.tiers) {
    const text = now.tiers.map((t) => `${shown(t.key)} → ${t.serving ? shown(t.serving) : "nothing"}`).join("; ");
    return [el("span", "muted", "by the prompt: "), el("span", "", text)];
  }
  if (now.serving) return [el("span", "alias-serving", shown(now.serving))];
  return [el("span", "alias-none", "nothing: no usable host has any of these models")];
}
