"""The host monitor: checks every enabled host on an interval, concurrently, and records health and inventory.

One dead address never stalls the others: each host has its own deadline (hosts.backends). A result is written with
`UPDATE … WHERE pk` on the health fields only, so an admin edit made during a check is never overwritten, and a host
removed while being checked is simply skipped. Every check publishes `host_status`; a changed inventory publishes
`inventory_changed` (DESIGN §6).

With several processes (REDIS_URL), one of them monitors for the cluster: the one holding the lock `monitor` in
Redis, which it renews; the others read its results from the database through their routing snapshot. A lock
left by a process that died expires within two thirds of an interval, and another process takes over. While Redis
is down every process monitors (the writes above make that harmless).
"""

import asyncio
import logging
import time

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from atc.events import apublish, flushed
from clood_site import shared
from hosts.backends import HostTarget, check_host, make_client
from hosts.models import Host, HostModel
from hosts.snapshot import model_as_dict

log = logging.getLogger(__name__)

_background_task = None


def target_for(host, known_details=None):
    return HostTarget(
        name=host.name,
        base_url=host.base_url,
        backend=host.backend,
        api_key=host.api_key,
        static_models=host.static_model_names(),
        known_details=known_details or {},
    )


def _load_targets(names):
    hosts = Host.objects.filter(name__in=names) if names is not None else Host.objects.filter(enabled=True)
    hosts = list(hosts)
    details = {}
    for row in HostModel.objects.filter(host__in=hosts).exclude(details_digest=""):
        details.setdefault(row.host_id, {})[row.name] = (row.details_digest, row.capabilities, row.context_length)
    return [(host.pk, target_for(host, details.get(host.pk))) for host in hosts]


async def check_hosts(names=None):
    """Check the given hosts (by name; default: every enabled host) at once. Returns [(name, HostReport)].

    Each host's result is recorded as soon as its own check ends, so a slow host delays nobody else's news.
    """
    targets = await sync_to_async(_load_targets)(names)
    async with make_client() as client:
        reports = await asyncio.gather(*(_check_and_record(client, host_id, target) for host_id, target in targets))
    return [(target.name, report) for (_, target), report in zip(targets, reports, strict=True)]


async def check_and_publish(names=None):
    """`check_hosts` for a loop about to close (a management command): returns once its events are published."""
    reports = await check_hosts(names)
    await flushed()
    return reports


async def _check_and_record(client, host_id, target):
    report = await check_host(client, target)
    events = await sync_to_async(record_report)(host_id, report)
    for event_type, data in events:
        await apublish(event_type, **data)
    return report


def record_report(host_id, report):
    """Write one check's result. Returns the events to publish ([] when the host is gone)."""
    now = timezone.now()
    with transaction.atomic():
        host = Host.objects.select_for_update().filter(pk=host_id).first()
        if host is None:
            return []
        was_online = host.online
        before = (host.online, host.version, host.last_error, host.circuit, host.latency_ms)
        health = {"last_checked_at": now}
        if report.ok:
            alpha = settings.CLOOD_LATENCY_SMOOTHING
            latency = report.latency_ms
            if latency is not None and host.latency_ms is not None and host.online:
                latency = alpha * latency + (1 - alpha) * host.latency_ms
            health.update(
                online=True,
                latency_ms=latency,
                version=report.version,
                last_error="",
                consecutive_failures=0,
                circuit=Host.Circuit.CLOSED,
                last_online_at=now,
            )
        else:
            failures = host.consecutive_failures + 1
            health.update(
                online=False,
                last_error=report.error,
                consecutive_failures=failures,
                circuit=Host.Circuit.OPEN if failures >= settings.CLOOD_CIRCUIT_THRESHOLD else host.circuit,
            )
        Host.objects.filter(pk=host_id).update(**health)
        for key, value in health.items():
            setattr(host, key, value)
        changes = sync_inventory(host, report.models, now) if report.ok else _mark_unloaded(host)
    if was_online is not host.online:
        level = logging.INFO if host.online else logging.WARNING
        detail = f": {host.last_error}" if host.last_error else ""
        log.log(level, "host %s is %s%s", host.name, host.status_label, detail)
    events = []
    if _noticeable(before, (host.online, host.version, host.last_error, host.circuit, host.latency_ms)):
        events.append(("host_status", host_status_data(host, transition=was_online is not host.online)))
    if changes:
        events.append(("inventory_changed", {"host": host.name, **changes, "models": inventory(host)}))
    return events


def inventory(host):
    """The host's whole inventory as ATC shows it, flagging names whose digest differs on another host."""
    rows = list(HostModel.objects.filter(host=host))
    others = HostModel.objects.filter(name__in=[r.name for r in rows]).exclude(host=host).exclude(digest="")
    other_digests = {}
    for name, digest in others.values_list("name", "digest"):
        other_digests.setdefault(name, set()).add(digest)
    return [model_as_dict(r, bool(r.digest and other_digests.get(r.name, {r.digest}) - {r.digest})) for r in rows]


def _noticeable(before, after):
    """Whether a check changed something worth an event: state, version, error, circuit, or latency by >25 %."""
    if before[:4] != after[:4]:
        return True
    old, new = before[4], after[4]
    if old is None or new is None:
        return old != new
    return abs(new - old) > max(5.0, 0.25 * old)


def host_status_data(host, transition=False):
    return {
        "host": host.name,
        "status": host.status_label,
        "online": host.online,
        "latency_ms": round(host.latency_ms, 1) if host.latency_ms is not None else None,
        "version": host.version,
        "error": host.last_error,
        "consecutive_failures": host.consecutive_failures,
        "circuit": host.circuit,
        "transition": transition,
    }


def sync_inventory(host, models, now):
    """Make the host's inventory rows match `models`. Returns what changed (empty dict when nothing did)."""
    existing = {row.name: row for row in HostModel.objects.filter(host=host)}
    seen = {}
    for model in models:
        seen[model.name] = model
    added, changed, loaded, unloaded = [], [], [], []
    fields = [
        "remote_name", "digest", "size", "family", "parameter_size", "quantization",
        "capabilities", "context_length", "details_digest", "loaded", "loaded_until", "size_vram",
    ]  # fmt: skip
    for name, model in seen.items():
        row = existing.get(name)
        if row is None:
            HostModel.objects.create(host=host, name=name, last_seen_at=now, **{f: getattr(model, f) for f in fields})
            added.append(name)
            if model.loaded:
                loaded.append(name)
            continue
        update = [*fields, "last_seen_at"]  # only these: a benchmark may be writing its figures to this row
        if row.digest != model.digest:
            changed.append(name)
            if row.digest:  # other bytes now: the old benchmark does not describe them
                row.bench_load_ms = row.bench_ttft_ms = row.bench_prompt_tps = row.bench_gen_tps = None
                row.bench_at = None
                update += ["bench_load_ms", "bench_ttft_ms", "bench_prompt_tps", "bench_gen_tps", "bench_at"]
        if row.loaded != model.loaded:
            (loaded if model.loaded else unloaded).append(name)
        for f in fields:
            setattr(row, f, getattr(model, f))
        row.last_seen_at = now
        row.save(update_fields=update)
    removed = sorted(set(existing) - set(seen))
    if removed:
        HostModel.objects.filter(host=host, name__in=removed).delete()
    changes = {"added": added, "removed": removed, "changed": changed, "loaded": loaded, "unloaded": unloaded}
    return changes if any(changes.values()) else {}


def _mark_unloaded(host):
    """An unreachable host's models are kept (it may come back) but nothing is known to be loaded on it."""
    names = list(HostModel.objects.filter(host=host, loaded=True).values_list("name", flat=True))
    if not names:
        return {}
    HostModel.objects.filter(host=host, loaded=True).update(loaded=False, loaded_until=None, size_vram=None)
    return {"added": [], "removed": [], "changed": [], "loaded": [], "unloaded": names}


async def run_forever(interval=None):
    """Check all enabled hosts every `interval` seconds until cancelled. A failing cycle is logged, not fatal."""
    interval = interval or settings.CLOOD_MONITOR_INTERVAL
    log.info("host monitor running every %g s", interval)
    while True:
        started = time.monotonic()
        for step in (check_hosts, expire_stale_operations):  # one failing does not skip the other
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("host monitor cycle failed (%s); trying again next interval", step.__name__)
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))


async def expire_stale_operations():
    """Garden operations left running or queued by a clood process that was killed are marked failed (the operations
    pages do it too as they are shown): one query a cycle, in the process that monitors."""
    from hosts import garden  # garden imports this module

    await sync_to_async(garden.expire_stale)()


# ARGV: lock key, this process, lock ms. Takes the lock when free, renews it when ours; 1 when we hold it.
LEAD = """
local holder = redis.call('GET', ARGV[1])
if holder == ARGV[2] then redis.call('PEXPIRE', ARGV[1], ARGV[3]) return 1 end
if holder == false then redis.call('SET', ARGV[1], ARGV[2], 'PX', ARGV[3]) return 1 end
return 0
"""
# ARGV: lock key, this process. Lets go of the lock (when stopping), so another process takes over at once.
LET_GO = "if redis.call('GET', ARGV[1]) == ARGV[2] then return redis.call('DEL', ARGV[1]) end return 0"

monitoring_here = False  # this process runs the monitor now (for /status)


async def lead_forever(interval=None):
    """Run the monitor while this process holds the cluster's monitor lock (or while Redis is down)."""
    global monitoring_here
    interval = interval or settings.CLOOD_MONITOR_INTERVAL
    lock_ms = int(max(1.0, interval * 2 / 3) * 1000)
    monitor = None
    try:
        while True:
            try:
                lead = bool(await shared.client().eval(LEAD, 0, shared.key("monitor"), shared.PROCESS_ID, lock_ms))
            except shared.redis_errors() as error:
                shared.went_down(error, "taking the monitor lock")
                lead = True  # nobody can coordinate: monitor here rather than nowhere
            shared.stop_if_cancelled()
            if lead and (monitor is None or monitor.done()):
                log.info("this process monitors the hosts (%s)", "Redis is down" if not shared.available() else
                         "it holds the monitor lock")  # fmt: skip
                monitor = asyncio.get_running_loop().create_task(run_forever(interval), name="clood-host-checks")
            elif not lead and monitor is not None:
                log.info("another process holds the monitor lock: this one stops monitoring")
                monitor.cancel()
                monitor = None
            monitoring_here = lead
            await asyncio.sleep(lock_ms / 3000)
    finally:
        monitoring_here = False
        if monitor is not None:
            monitor.cancel()


async def let_go():
    """Give up the monitor lock (the process is stopping)."""
    if _background_task is None or not shared.available():
        return
    _background_task.cancel()
    try:
        await shared.client().eval(LET_GO, 0, shared.key("monitor"), shared.PROCESS_ID)
    except shared.redis_errors():
        pass  # it expires by itself


def start_in_background():
    """Start the monitor (or, with REDIS_URL, the contest for it) as a task of the running loop, once per process."""
    global _background_task, monitoring_here
    if _background_task is None or _background_task.done():
        if shared.enabled():
            work = lead_forever()
        else:
            work = run_forever()
            monitoring_here = True
        _background_task = asyncio.get_running_loop().create_task(work, name="clood-host-monitor")
    return _background_task
