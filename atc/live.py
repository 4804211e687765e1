"""What the ATC page is sent: the snapshot on connect, and a `tick` every second (docs/atc-protocol.md).

Reads the routing snapshot (hosts) and the proxy's live view (requests, slots, counters); decides nothing.
"""

import asyncio
import logging
import time

from atc import events
from hosts import snapshot
from hosts.snapshot import model_as_dict
from proxy import aliases
from proxy.cluster import board
from proxy.state import live_view

log = logging.getLogger(__name__)

_ticker = None
_previous = {"at": 0.0, "requests": 0, "tokens": 0, "host_tokens": {}}


def _differing_digests(garden):
    digests = {}
    for host in garden.hosts:
        for name, model in host.models.items():
            if model.digest:
                digests.setdefault(name, set()).add(model.digest)
    return {name for name, seen in digests.items() if len(seen) > 1}


def host_as_dict(host, live, differing):
    stats = live["hosts"].get(host.name)
    return {
        "name": host.name,
        "backend": host.backend,
        "base_url": host.base_url,
        "status": host.status_label,
        "online": host.online,
        "latency_ms": round(host.latency_ms, 1) if host.latency_ms is not None else None,
        "version": host.version,
        "circuit": host.circuit if host.circuit != "closed" else (stats.circuit_state() if stats else "closed"),
        "last_error": host.last_error,
        "last_checked_at": host.last_checked_at.isoformat() if host.last_checked_at else None,
        "hardware": {"cpu": host.hardware_cpu, "gpu": host.hardware_gpu, "memory": host.hardware_memory},
        "notes": host.notes,
        "priority": host.priority,
        "enabled": host.enabled,
        "max_concurrency": host.max_concurrency,
        "slots_used": live["slots"].get(host.name, 0),
        "requests": stats.requests if stats else 0,
        "errors": stats.errors if stats else 0,
        "tokens": stats.tokens if stats else 0,
        "tokens_per_s": _round(stats.recent_tokens_per_s()) if stats else None,
        "p50_ttft_ms": _round(stats.p50_ttft_ms()) if stats else None,
        "models": [model_as_dict(m, m.name in differing) for m in host.models.values()],
    }


def counters(garden, live, per_second=None):
    per_second = per_second or {}
    return {
        "hosts_online": sum(1 for h in garden.hosts if h.enabled and h.online),
        "hosts_total": sum(1 for h in garden.hosts if h.enabled),
        "in_flight": len(live["in_flight"]),
        "queued": len(live["queued"]),
        "requests": live["totals"]["requests"],
        "errors": live["totals"]["errors"],
        "tokens": live["totals"]["tokens"],
        "requests_per_s": per_second.get("requests_per_s", 0.0),
        "tokens_per_s": per_second.get("tokens_per_s", 0.0),
    }


async def build_snapshot(public=False, recent_limit=200, anonymous=False):
    """The snapshot a page gets on connect; `anonymous`: for a viewer of the public view who is not logged in as
    staff, without prompts and client addresses."""
    garden = await snapshot.ensure_fresh()
    live = board.merged(live_view())
    differing = _differing_digests(garden)
    alias_table = await aliases.table()
    seq = events.last_seq()
    return {
        "type": "snapshot",
        "seq": seq,
        "data": {
            "hosts": [host_as_dict(h, live, differing) for h in garden.hosts],
            "aliases": aliases.for_atc(alias_table),
            "in_flight": [events.for_anonymous(f) for f in live["in_flight"]] if anonymous else live["in_flight"],
            "queued": live["queued"],
            "events": [k.public_event if anonymous else k.event for k in _recent(seq, recent_limit)],
            "counters": counters(garden, live, _previous.get("per_second")),
            "public": public,
        },
    }


def _recent(seq, limit):
    """The newest `limit` kept events up to `seq`."""
    return [k for k in events.recent if k.seq <= seq][-limit:]


def tick_data(live=None):
    """One second's worth of change: rates, tokens so far of each request, per-host slot use and speed.

    `live` is the proxy's live view, of the whole cluster when several processes share Redis (proxy.cluster.board).
    """
    garden = snapshot.current()
    live = live or live_view()
    now = time.monotonic()
    elapsed = max(1e-3, now - _previous["at"]) if _previous["at"] else 1.0
    in_flight_tokens = live["in_flight_tokens"]
    total_tokens = live["totals"]["tokens"] + sum(in_flight_tokens.values())
    host_tokens = {name: (stats.tokens + in_flight_tokens.get(name, 0)) for name, stats in live["hosts"].items()}
    per_second = {
        "requests_per_s": round(max(0, live["totals"]["requests"] - _previous["requests"]) / elapsed, 2),
        "tokens_per_s": round(max(0, total_tokens - _previous["tokens"]) / elapsed, 1),
    }
    hosts = []
    for host in garden.hosts:
        stats = live["hosts"].get(host.name)
        tokens_now = host_tokens.get(host.name, 0)
        rate = max(0, tokens_now - _previous["host_tokens"].get(host.name, tokens_now)) / elapsed
        hosts.append(
            {
                "name": host.name,
                "slots_used": live["slots"].get(host.name, 0),
                "slots_max": host.max_concurrency,
                "tokens_per_s": round(rate, 1),
                "requests": stats.requests if stats else 0,
                "errors": stats.errors if stats else 0,
            }
        )
    _previous.update(at=now, requests=live["totals"]["requests"], tokens=total_tokens, host_tokens=host_tokens,
                     per_second=per_second)  # fmt: skip
    return {
        "counters": counters(garden, live, per_second),
        "in_flight": [{"id": f["id"], "tokens": f["tokens"], "ttft_ms": f["ttft_ms"]} for f in live["in_flight"]],
        "hosts": hosts,
    }


async def _tick_forever():
    while True:
        await asyncio.sleep(1.0)
        try:
            await events.apublish("tick", **tick_data(await board.share(live_view())))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("ATC tick failed")


def start_ticker():
    global _ticker
    if _ticker is None or _ticker.done():
        _ticker = asyncio.get_running_loop().create_task(_tick_forever(), name="clood-atc-tick")
    return _ticker


def _round(value):
    return round(value, 1) if value is not None else None
