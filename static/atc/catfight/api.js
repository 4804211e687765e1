// The catfight JSON API (docs/catfight-api.md) as the pages use it, and the few DOM and number helpers they share.
// Everything from the network goes into the page with textContent.

import { csrfHeaders } from "../csrf.js";

export class ApiError extends Error {
  constructor(message, status = null) {
    super(message);
    this.status = status; // the HTTP status when clood answered, null when it could not be reached
  }
}

async function call(url, options = {}) {
  let response;
  try {
    const headers = { accept: "application/json", ...csrfHeaders(), ...options.headers };
    response = await fetch(url, { ...options, headers });
  } catch (error) {
    throw new ApiError(`Could not reach clood: ${error.message}`);
  }
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) {
    const detail = body?.error?.message ?? (typeof body?.error === "string" ? body.error : text.slice(0, 300));
    throw new ApiError(`HTTP ${response.status}${detail ? ` · ${detail}` : ""}`, response.status);
  }
  if (body === null) throw new ApiError(`HTTP ${response.status} · the answer was not JSON`, response.status);
  return body;
}

export function getJson(url) {
  return call(url);
}

export function postJson(url, payload) {
  return call(url, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(payload) });
}

export const catfightUrl = (id) => `/catfights/${encodeURIComponent(id)}`;
export const pageUrl = (id) => `/atc/catfight/${encodeURIComponent(id)}`;

// ---- DOM ----

export function el(tag, className = "", text = null) {
  const element = document.createElement(tag);
  if (className) element.className = className;
  if (text !== null && text !== undefined) element.textContent = String(text);
  return element;
}

export function option(value, text) {
  const element = document.createElement("option");
  element.value = value;
  element.textContent = text;
  return element;
}

// ---- figures ----

const isNumber = (value) => typeof value === "number" && Number.isFinite(value);

export function formatMs(value) {
  if (!isNumber(value)) return "–";
  if (value < 1000) return `${Math.round(value)} ms`;
  return `${(value / 1000).toFixed(value < 10_000 ? 2 : 1)} s`;
}

export function formatSeconds(ms) {
  return isNumber(ms) ? `${(ms / 1000).toFixed(1)} s` : "–";
}

export function formatRate(value) {
  return isNumber(value) ? value.toFixed(1) : "–";
}

export function formatScore(value) {
  if (!isNumber(value)) return "–";
  return Number.isInteger(value) ? String(value) : value.toFixed(1);
}

export function formatWhen(iso) {
  if (!iso) return "–";
  const when = new Date(iso);
  if (Number.isNaN(when.getTime())) return iso;
  const today = new Date().toDateString() === when.toDateString();
  const time = when.toLocaleTimeString([], { hour12: false });
  return today ? time : `${when.toLocaleDateString()} ${time}`;
}

export const RANK_BY = { fastest: "fastest", tokens_per_s: "tokens/s", judge: "judge score" };
