"""The proxy's live state: slots and queue (admission: shared through Redis when REDIS_URL is set, proxy/cluster.py),
and, per process, what it has seen of each host (stats) and the requests in flight or waiting (ATC's snapshot and
ticks)."""

import time

from proxy.cluster import SharedAdmission
from proxy.queue import Admission
from proxy.stats import LiveStats

admission = SharedAdmission(Admission())
stats = LiveStats()

# request id -> Flight (in flight) / dict (queued). Written only by proxy.consumers.
flights = {}
waiting = {}


class Flight:
    """One request being served: what ATC shows in its in-flight table."""

    __slots__ = ("id", "model", "host", "endpoint", "stream", "cold", "started_ts", "client", "prompt", "telemetry")

    def __init__(self, *, id, model, host, endpoint, stream, cold, client, prompt, telemetry):  # noqa: A002
        self.id, self.model, self.host, self.endpoint = id, model, host, endpoint
        self.stream, self.cold, self.client, self.prompt = stream, cold, client, prompt
        self.telemetry = telemetry
        self.started_ts = time.time()

    @property
    def tokens(self):
        return self.telemetry.total_tokens

    def as_dict(self):
        ttft = self.telemetry.ttft_ms
        return {
            "id": self.id, "model": self.model, "host": self.host, "endpoint": self.endpoint, "stream": self.stream,
            "cold": self.cold, "started_ts": self.started_ts, "ttft_ms": round(ttft, 1) if ttft is not None else None,
            "tokens": self.tokens, "client": self.client, "prompt": self.prompt,
        }  # fmt: skip


def live_view():
    """What is happening right now, as plain data: in flight, queued, slots in use, per-host stats."""
    return {
        "in_flight": [flight.as_dict() for flight in flights.values()],
        "queued": list(waiting.values()),
        "slots": dict(admission.in_flight),
        "hosts": stats.hosts,
        "totals": dict(stats.totals),
        "in_flight_tokens": _tokens_by_host(),
    }


def _tokens_by_host():
    tokens = {}
    for flight in flights.values():
        tokens[flight.host] = tokens.get(flight.host, 0) + flight.tokens
    return tokens
