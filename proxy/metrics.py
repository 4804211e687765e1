"""Prometheus metrics of this process (GET /metrics, docs/metrics.md): what each request did, recorded once when it
is logged, and the live state (queue, slots, hosts, upstream errors), read when scraped.

Labels carry host and model names only, never a URL or a key. A request's model label is the model it was routed
for (a name in some host's inventory) or "" when it was not routed, so a client cannot add label values by asking
for made-up models.
"""

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from hosts import snapshot
from proxy.state import admission, flights, stats

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

# clood's own registry, not prometheus_client's global one: nothing else registers into it by being imported.
REGISTRY = CollectorRegistry()

REQUESTS = Counter(
    "clood_requests",
    'Requests by the host that answered ("" if none did), routed model, endpoint and outcome.',
    ["host", "model", "endpoint", "outcome"],
    registry=REGISTRY,
)
TOKENS = Counter(
    "clood_tokens",
    "Completion tokens relayed, by host and model.",
    ["host", "model"],
    registry=REGISTRY,
)
TTFT = Histogram(
    "clood_ttft_seconds",
    "Time from sending a request to a host to its first token.",
    ["host", "model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
    registry=REGISTRY,
)
TOKENS_PER_SECOND = Histogram(
    "clood_tokens_per_second",
    "Generation speed of an answer: completion tokens per second after the first token.",
    ["host", "model"],
    buckets=(1, 2.5, 5, 10, 20, 35, 50, 75, 100, 150, 250, 500, 1000),
    registry=REGISTRY,
)
DURATION = Histogram(
    "clood_request_duration_seconds",
    "Time from sending a request to a host to the end of its answer.",
    ["host", "model", "endpoint"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
    registry=REGISTRY,
)


def request_recorded(endpoint, decision, host, outcome, fields):
    """One request's end, as proxy.consumers logs it: `fields` are the request log's timing and token fields."""
    model = decision.model if decision is not None and decision.candidates else ""
    REQUESTS.labels(host, model, endpoint, outcome).inc()
    if not host:
        return
    if fields.get("duration_ms") is not None:
        DURATION.labels(host, model, endpoint).observe(fields["duration_ms"] / 1000)
    if fields.get("ttft_ms") is not None:
        TTFT.labels(host, model).observe(fields["ttft_ms"] / 1000)
    if fields.get("tokens_per_s"):
        TOKENS_PER_SECOND.labels(host, model).observe(fields["tokens_per_s"])
    if fields.get("completion_tokens"):
        TOKENS.labels(host, model).inc(fields["completion_tokens"])


class LiveCollector:
    """Gauges read from the live state at scrape time, so they are never stale and cost nothing per request."""

    def collect(self):
        garden = snapshot.current()
        names = sorted({host.name for host in garden.hosts} | set(admission.in_flight))
        limits = {host.name: host.max_concurrency for host in garden.hosts}
        yield GaugeMetricFamily("clood_queue_length", "Requests waiting for a slot.", value=admission.queued)
        yield GaugeMetricFamily("clood_in_flight", "Requests being relayed to a host now.", value=len(flights))
        slots_in_use = GaugeMetricFamily("clood_slots_in_use", "Slots of the host taken now.", labels=["host"])
        slots_max = GaugeMetricFamily("clood_slots_max", "The host's max_concurrency.", labels=["host"])
        up = GaugeMetricFamily("clood_host_up", "1 when clood routes to the host (enabled, online, circuit closed).",
                               labels=["host"])  # fmt: skip
        errors = CounterMetricFamily("clood_upstream_errors", "Attempts at the host that failed (failed over, 5xx or "
                                     "broken off mid-answer).", labels=["host"])  # fmt: skip
        for name in names:
            slots_in_use.add_metric([name], admission.in_flight.get(name, 0))
            if name in limits:
                slots_max.add_metric([name], limits[name])
        for host in garden.hosts:
            up.add_metric([host.name], 1 if host.is_usable() else 0)
        for name, host_stats in sorted(stats.hosts.items()):
            errors.add_metric([name], host_stats.errors)
        yield from (slots_in_use, slots_max, up, errors)


REGISTRY.register(LiveCollector())


def exposition():
    """The whole scrape in Prometheus' text format 0.0.4 (CONTENT_TYPE)."""
    return generate_latest(REGISTRY)
