// How durations, rates, clock times and counts read on the dashboard.

export function fmtMs(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "–";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.floor(ms / 60000)} min ${Math.round((ms % 60000) / 1000)} s`;
}

export function fmtRate(value) {
  if (value === null || value === undefined) return "–";
  return value >= 100 ? String(Math.round(value)) : String(Math.round(value * 10) / 10);
}

export function fmtClock(ts) {
  return new Date(ts * 1000).toLocaleTimeString([], { hour12: false });
}

export function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

export function latencyClass(ms) {
  if (ms === null || ms === undefined) return "lat-none";
  if (ms < 50) return "lat-good";
  if (ms < 250) return "lat-fair";
  return "lat-bad";
}
