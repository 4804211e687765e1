"""Routing decisions (DESIGN §4): which hosts may serve a model, in which order, and why.

`choose_hosts` is pure: it reads the snapshot, the live stats and the slot counts it is given, and returns a
`Decision` whose candidates are ordered best first, with each one's score and a one-line reason.
"""

import itertools
import secrets
from dataclasses import dataclass, field

STRATEGIES = ("smart", "priority", "fastest", "least-loaded", "round-robin")

_round_robin = itertools.count()

# Under `smart`, hosts whose speeds differ by less than this are equally fast.
SPEED_STEP_MS = 25.0


@dataclass
class Candidate:
    host: object  # hosts.snapshot.HostView
    model: object  # hosts.snapshot.ModelView
    loaded: bool
    in_flight: int
    max_concurrency: int
    speed_ms: float | None  # see _speed_of: the best evidence of how fast this host answers this model
    speed_source: str = "health check"  # "observed" | "benchmark" | "observed (other models)" | "health check"
    score: dict = field(default_factory=dict)

    @property
    def free(self):
        return self.in_flight < self.max_concurrency

    def as_dict(self):
        return {
            "host": self.host.name,
            "loaded": self.loaded,
            "in_flight": self.in_flight,
            "max_concurrency": self.max_concurrency,
            "speed_ms": round(self.speed_ms, 1) if self.speed_ms is not None else None,
            "speed_source": self.speed_source,
            "priority": self.host.priority,
            **self.score,
        }


@dataclass
class Decision:
    model: str
    strategy: str
    candidates: list
    excluded: dict  # host name -> why it was not a candidate
    reason: str
    id: str = field(default_factory=lambda: secrets.token_hex(6))
    # Set by proxy.aliases when the client asked for an alias: its name, why this model, and auto's tier choice.
    alias: str = ""
    alias_reason: str = ""
    auto: dict | None = None

    def as_dict(self):
        answer = {
            "id": self.id,
            "model": self.model,
            "resolved_model": self.model,
            "strategy": self.strategy,
            "candidates": [c.as_dict() for c in self.candidates],
            "excluded": self.excluded,
            "reason": self.reason,
        }
        if self.alias:
            answer.update(alias=self.alias, alias_reason=self.alias_reason)
        if self.auto is not None:
            answer["auto"] = self.auto
        return answer


def choose_hosts(model, snapshot, stats, in_flight, *, strategy="smart", backends=("ollama", "openai")):
    """Order the hosts that can serve the normalised `model` under `strategy`."""
    candidates, excluded = [], {}
    for host in snapshot.hosts:
        why_not = _why_not(host, model, stats, backends)
        if why_not:
            excluded[host.name] = why_not
            continue
        host_stats = stats.hosts.get(host.name)
        loaded = host.models[model].loaded or bool(host_stats and host_stats.recently_loaded(model))
        speed_ms, speed_source = _speed_of(host, host.models[model], host_stats)
        candidates.append(
            Candidate(
                host=host,
                model=host.models[model],
                loaded=loaded,
                in_flight=in_flight.get(host.name, 0),
                max_concurrency=host.max_concurrency,
                speed_ms=speed_ms,
                speed_source=speed_source,
            )
        )
    ordered = _ORDER[strategy](candidates)
    for rank, candidate in enumerate(ordered, 1):
        candidate.score["rank"] = rank
    return Decision(model, strategy, ordered, excluded, _reason(strategy, ordered, excluded, model))


def _speed_of(host, model, host_stats):
    """How fast the host answers this model, best evidence first: the p50 TTFT live traffic measured for this model
    here, else the admin's benchmark of this model on this host, else the p50 TTFT of the host's other models, else
    the smoothed health-check latency. Returns (ms or None, source)."""
    observed = host_stats.p50_ttft_ms(model.name) if host_stats else None
    if observed is not None:
        return observed, "observed"
    if model.bench_ttft_ms is not None:
        return model.bench_ttft_ms, "benchmark"
    observed = host_stats.p50_ttft_ms() if host_stats else None
    if observed is not None:
        return observed, "observed (other models)"
    return host.latency_ms, "health check"


def _why_not(host, model, stats, backends):
    if not host.enabled:
        return "disabled"
    if host.backend not in backends:
        return f"{host.backend} backend cannot serve this endpoint"
    if model not in host.models:
        return "does not have the model"
    if not host.online:
        return "offline" if host.online is False else "not checked yet"
    if host.circuit != "closed":
        return "circuit open (health checks failing)"
    if host.last_checked_at:
        stats.host_seen_well(host.name, host.last_checked_at)
    if not stats.circuit_allows(host.name):
        return "circuit open (requests failing)"
    return None


def _speed(candidate):
    return candidate.speed_ms if candidate.speed_ms is not None else float("inf")


def _by_priority(candidates):
    for c in candidates:
        c.score["key"] = [c.host.priority, round(_speed(c), 1)]
    return sorted(candidates, key=lambda c: (c.host.priority, _speed(c), c.host.name))


def _by_speed(candidates):
    for c in candidates:
        c.score["key"] = [round(_speed(c), 1), c.host.priority]
    return sorted(candidates, key=lambda c: (_speed(c), c.host.priority, c.host.name))


def _by_load(candidates):
    for c in candidates:
        c.score["load"] = round(c.in_flight / c.max_concurrency, 3)
    return sorted(candidates, key=lambda c: (c.in_flight / c.max_concurrency, c.host.priority, c.host.name))


def _round_robin_order(candidates):
    if not candidates:
        return []
    ordered = sorted(candidates, key=lambda c: c.host.name)
    start = next(_round_robin) % len(ordered)
    return ordered[start:] + ordered[:start]


def _speed_class(candidate):
    """Speed in steps of SPEED_STEP_MS: smaller differences are noise, and priority decides between them."""
    speed = _speed(candidate)
    return speed if speed == float("inf") else int(speed // SPEED_STEP_MS)


def _smart(candidates):
    """Model already loaded (no cold start) → a free slot → observed speed → priority."""
    for c in candidates:
        c.score["key"] = [int(not c.loaded), int(not c.free), _speed_class(c), c.host.priority]
    return sorted(candidates, key=lambda c: (not c.loaded, not c.free, _speed_class(c), c.host.priority, c.host.name))


_ORDER = {
    "smart": _smart,
    "priority": _by_priority,
    "fastest": _by_speed,
    "least-loaded": _by_load,
    "round-robin": _round_robin_order,
}


def _reason(strategy, ordered, excluded, model):
    if not ordered:
        return f"no usable host has {model}"
    best = ordered[0]
    slots = f"{best.in_flight}/{best.max_concurrency} slots busy"
    if strategy == "smart":
        warmth = "has it loaded" if best.loaded else "is the best host without it loaded (cold start)"
        text = f"{best.host.name} {warmth}, {slots}"
    elif strategy == "priority":
        text = f"{best.host.name} has the best priority ({best.host.priority})"
    elif strategy == "fastest":
        speed = f"{best.speed_ms:.0f} ms, {best.speed_source}" if best.speed_ms is not None else "unknown speed"
        text = f"{best.host.name} is the fastest ({speed})"
    elif strategy == "least-loaded":
        text = f"{best.host.name} is the least loaded ({slots})"
    else:
        text = f"{best.host.name} is next in turn"
    if len(ordered) > 1:
        text += f"; fallbacks: {', '.join(c.host.name for c in ordered[1:])}"
    return text
