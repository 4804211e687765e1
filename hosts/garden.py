"""Garden operations an admin starts: pull, delete, preload, unload and benchmark a model on a host, copy one host's
models onto another, and discover hosts on a subnet.

Each operation is a `GardenOperation` row and a task of the server process that accepted it. As it goes it publishes
`operation_started`, `operation_progress` and `operation_finished` ATC events (the admin's progress bars and the ATC
dashboard listen to them) and keeps its progress and outcome in its row. A host's failure is the operation's failure,
told in its message; it never raises into the server. The admin views call the `start_*` functions (sync); the work
itself (hosts/operations.py) is async and talks to the host with its own httpx client.
"""

import asyncio
import dataclasses
import datetime
import logging
import time

from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import DatabaseError, IntegrityError, transaction
from django.utils import timezone

from atc import events
from atc.events import apublish
from clood_site import shared
from clood_site.db import in_db_thread
from hosts import discover, monitor
from hosts.models import GardenOperation, Host
from hosts.names import model_name_problem, normalize_model_name
from hosts.operations import RUNNERS, Failed

log = logging.getLogger(__name__)

Kind = GardenOperation.Kind
Status = GardenOperation.Status

EVENT_INTERVAL = 0.25  # progress events of one operation at most this often (s)
SAVE_INTERVAL = 1.0  # progress written to its row at most this often (s)
HEARTBEAT = 5.0  # a running operation's row is touched at least this often...
STALE_AFTER = 30.0  # ...so one untouched for this long belongs to a process that stopped

_server_loop = None
_tasks = set()  # strong references to running operations


class Refused(Exception):
    """An operation that cannot start; the message says why, for the admin. `existing` is the one in the way."""

    def __init__(self, message, existing=None):
        super().__init__(message)
        self.existing = existing


def bind_to_server_loop():
    """Called as the server starts: operations the admin starts run on this loop, beside the requests."""
    global _server_loop
    _server_loop = asyncio.get_running_loop()


# --- Starting (sync: the admin's views) ---


def start_pulls(hosts, model, user=""):
    """Pull `model` onto each host. Returns (operations started, [refusal messages])."""
    name = _model_name(model)
    started, refused = [], []
    for host in hosts:
        try:
            _ollama_only(host, "pull")
            started.append(_create(Kind.PULL, host, name, user))
        except Refused as exc:
            refused.append(str(exc))
    _launch([op.pk for op in started])
    return started, refused


def start_copy(source, target, user=""):
    """Pull onto `target` every model `source` has that `target` lacks, one after another."""
    _ollama_only(target, "copy models onto")
    if source.pk == target.pk:
        raise Refused("Pick two different hosts to copy models between.")
    have = set(target.models.values_list("name", flat=True))
    missing = [row.remote_name for row in source.models.order_by("name") if row.name not in have]
    if not missing:
        raise Refused(f"{target.name} already has every model {source.name} has.")
    started, refused = [], []
    for remote_name in missing:
        try:  # queued: one pull at a time, so the models arrive one by one instead of all at the end
            started.append(_create(Kind.PULL, target, _model_name(remote_name), user, status=Status.QUEUED))
        except Refused as exc:
            refused.append(str(exc))
    _launch([op.pk for op in started], one_at_a_time=True)
    return started, refused


def start_on_model(kind, row, user=""):
    """Delete, preload, unload or benchmark the inventory row's model on its host."""
    if kind != Kind.BENCHMARK:
        _ollama_only(row.host, kind)
    operation = _create(kind, row.host, row.name, user)
    _launch([operation.pk])
    return operation


def start_discover(subnet, ports, user=""):
    """Scan `subnet` on `ports` for hosts. Raises Refused with the reason when the subnet or ports are not allowed."""
    try:
        targets = discover.parse_targets(subnet, ports, max_addresses=settings.CLOOD_DISCOVER_MAX_ADDRESSES)
    except ValueError as exc:
        raise Refused(str(exc)) from None
    operation = GardenOperation.objects.create(
        kind=Kind.DISCOVER, model=str(subnet).strip()[:255], requested_by=user, process=shared.PROCESS_ID,
        result={"ports": list(targets.ports)}, total=targets.total,
    )  # fmt: skip
    _launch([operation.pk])
    return operation


def _model_name(model):
    model = (model or "").strip()
    problem = model_name_problem(model) if model else "it is empty"
    if problem:
        raise Refused(f"'{model[:100]}' is not a model name: {problem}.")
    return normalize_model_name(model)


def _ollama_only(host, what):
    if host.backend != Host.Backend.OLLAMA:
        raise Refused(f"{host.name} is an OpenAI-compatible server: clood can only {what} models on Ollama hosts.")


def _create(kind, host, model, user, status=Status.RUNNING):
    """The operation's row; a pull or delete of a model already being pulled or deleted there is refused."""
    fields = {"kind": kind, "host": host, "host_name": host.name, "model": model, "status": status,
              "requested_by": user, "process": shared.PROCESS_ID}  # fmt: skip
    for _ in range(2):
        try:
            with transaction.atomic():
                return GardenOperation.objects.create(**fields)
        except IntegrityError:
            existing = _in_the_way(host, model)
            if existing is None:
                continue  # it finished meanwhile, or was stale: try again
            verb = "pulled onto" if existing.kind == Kind.PULL else "deleted from"
            raise Refused(
                f"{model} is already being {verb} {host.name} (operation #{existing.pk}).", existing
            ) from None
    raise Refused(f"{model} on {host.name} is busy with another operation; try again.")


def _in_the_way(host, model):
    """The active pull or delete of `model` on `host`; one whose process stopped long ago is marked failed."""
    existing = GardenOperation.objects.filter(
        host=host, model=model, kind__in=[Kind.PULL, Kind.DELETE], status__in=[Status.QUEUED, Status.RUNNING]
    ).first()
    if existing is not None and existing.updated_at < _stale_before():
        _fail_stale(existing)
        return None
    return existing


def expire_stale():
    """Queued and running operations untouched for STALE_AFTER belong to a process that was killed (one that stops
    normally marks what it ran as failed): mark them failed too, so no bar shows "running" or "queued" forever.
    The admin's operation pages call this as they are shown."""
    stale = GardenOperation.objects.filter(status__in=[Status.QUEUED, Status.RUNNING], updated_at__lt=_stale_before())
    for op in stale:
        _fail_stale(op)


def _stale_before():
    return timezone.now() - datetime.timedelta(seconds=STALE_AFTER)


def _fail_stale(op):
    """Mark `op` failed, with its operation_finished event, unless it moved meanwhile (its process is alive after
    all, or another page marked it first)."""
    before = op.status
    op.status, op.error, op.finished_at = Status.FAILED, "the clood process running it stopped", timezone.now()
    if GardenOperation.objects.filter(pk=op.pk, status=before, updated_at=op.updated_at).update(
        status=op.status, error=op.error, finished_at=op.finished_at
    ):
        events.publish("operation_finished", **op.as_event(), result={})


def _launch(ids, one_at_a_time=False):
    """Run the operations on the server's loop and return at once; without one (a management command, a test's
    client), run them here to the end."""
    if not ids:
        return
    loop = _server_loop
    if loop is not None and loop.is_running():
        asyncio.run_coroutine_threadsafe(_start(ids, one_at_a_time), loop)
    else:  # one at a time: the caller waits anyway, and SQLite's in-memory test database takes one writer
        async_to_sync(_run_here)(ids, True)


async def _run_here(ids, one_at_a_time):
    await _run_all(ids, one_at_a_time)
    await events.flushed()  # this loop ends with the call: its events must be on their way first


def check_soon(names):
    """Have the monitor check these hosts now (newly registered ones), without waiting for it here."""
    loop = _server_loop
    if loop is not None and loop.is_running():
        asyncio.run_coroutine_threadsafe(_keep_running(monitor.check_hosts(names)), loop)
    else:
        async_to_sync(monitor.check_and_publish)(names)


async def _keep_running(work):
    task = asyncio.ensure_future(work)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


async def _start(ids, one_at_a_time):
    await _keep_running(_run_all(ids, one_at_a_time))


async def _run_all(ids, one_at_a_time):
    if one_at_a_time:
        waiting = list(ids)
        keeper = asyncio.create_task(_touch_queued_forever(waiting))  # queued ones beat too, or they'd look stale
        try:
            for pk in ids:
                waiting.remove(pk)
                await run(pk)
        finally:
            keeper.cancel()
    else:
        await asyncio.gather(*(run(pk) for pk in ids))


async def _touch_queued_forever(waiting):
    """Touch the queued operations of a one-at-a-time run every HEARTBEAT, as a running one touches its own row:
    those of a process that was killed then go stale and are marked failed (expire_stale), the others never."""
    while True:
        await asyncio.sleep(HEARTBEAT)
        try:
            await in_db_thread(GardenOperation.objects.filter(pk__in=list(waiting), status=Status.QUEUED).update)(
                updated_at=timezone.now()
            )
        except Exception:  # noqa: BLE001 - keep beating: a stopped keeper would make them look stale
            log.warning("could not touch queued garden operations", exc_info=True)


# --- Running (async) ---


class Progress:
    """An operation's progress: events at most every EVENT_INTERVAL, its row at most every SAVE_INTERVAL."""

    def __init__(self, operation):
        self.operation = operation
        self.evented_at = 0.0
        self.saved_at = time.monotonic()

    async def update(self, *, message=None, completed=None, total=None):
        op = self.operation
        if message is not None:
            op.message = str(message)[:500]
        if completed is not None:
            op.completed = completed
        if total is not None:
            op.total = total
        now = time.monotonic()
        if now - self.evented_at >= EVENT_INTERVAL:
            self.evented_at = now
            await apublish("operation_progress", **op.as_event())
        if now - self.saved_at >= SAVE_INTERVAL:
            await self.save()

    async def save(self, *fields, attempts=1):
        """Write the operation's row. A database error is logged, never raised: the events carry the progress, and
        the outcome is tried `attempts` times (a busy SQLite file frees up in a moment)."""
        self.saved_at = time.monotonic()
        op = self.operation
        op.updated_at = timezone.now()
        fields = fields or ("message", "completed", "total")
        for attempt in range(attempts):
            try:
                await in_db_thread(op.save)(update_fields=[*fields, "updated_at"])
                return
            except DatabaseError as exc:
                if attempt == attempts - 1:
                    log.warning("could not save garden operation %s: %s", op, exc)
                else:
                    await asyncio.sleep(0.2 * (attempt + 1))

    async def beat(self):
        while True:
            await asyncio.sleep(HEARTBEAT)
            if time.monotonic() - self.saved_at >= HEARTBEAT:
                await self.save()


async def run(pk):
    """Run one operation to its end. Never raises (but for cancellation)."""
    try:
        op = await in_db_thread(GardenOperation.objects.select_related("host").filter(pk=pk).first)()
    except DatabaseError:
        log.exception("could not read garden operation #%s; it does not run", pk)
        return
    if op is None or not op.active:
        return
    op.status, op.started_at = Status.RUNNING, timezone.now()
    progress = Progress(op)
    await progress.save("status", "started_at", attempts=5)
    await apublish("operation_started", **op.as_event())
    beat = asyncio.create_task(progress.beat())
    try:
        if op.kind != Kind.DISCOVER and op.host is None:
            raise Failed("the host was deleted")
        result = await RUNNERS[op.kind](op, progress)
    except Failed as exc:
        op.status, op.error = Status.FAILED, str(exc)[:2000]
    except asyncio.CancelledError:
        op.status, op.error = Status.FAILED, "clood stopped while it ran"
        await _finish(op, progress)
        raise
    except Exception:
        log.exception("garden operation %s failed unexpectedly", op)
        op.status, op.error = Status.FAILED, "clood hit an internal error; it has been logged"
    else:
        op.status = Status.SUCCEEDED
        op.result = {**op.result, **(result or {})}
    finally:
        beat.cancel()
    await _finish(op, progress)


async def _finish(op, progress):
    op.finished_at = timezone.now()
    if op.status == Status.FAILED:
        log.warning("garden operation %s failed: %s", op, op.error)
    await progress.save("status", "error", "result", "finished_at", "message", "completed", "total", attempts=5)
    await apublish("operation_finished", **op.as_event(), result=_public_result(op))


def _public_result(op):
    """What the finished event carries: the figures, not a discover's whole list."""
    if op.kind == Kind.DISCOVER:
        return {"found": len(op.result.get("found", []))}
    return op.result


def import_found(op, chosen_urls):
    """Register the hosts a finished discover found whose base URLs are in `chosen_urls`. Returns the new hosts."""
    taken = set(Host.objects.values_list("name", flat=True))
    registered = set(Host.objects.values_list("base_url", flat=True))
    created = []
    for found in op.result.get("found", []):
        if found["base_url"] not in chosen_urls or found["base_url"] in registered:
            continue
        name = discover.suggested_name(_as_found(found), taken)
        taken.add(name)
        created.append(Host.objects.create(name=name, base_url=found["base_url"], backend=found["backend"],
                                           notes=f"Found by discover (operation #{op.pk})."))  # fmt: skip
    return created


def _as_found(row):
    fields = {f.name for f in dataclasses.fields(discover.Found) if f.init}
    return discover.Found(**{k: v for k, v in row.items() if k in fields})
