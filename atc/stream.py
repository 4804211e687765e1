"""ATC events across processes: one Redis stream that every clood process writes to and reads back (REDIS_URL).

A process hands each event to `send`; a sender task writes them in order with one Lua script per batch, which gives
each its seq (one counter for the cluster, raised above any seq this process has already shown, in case Redis came
back empty) and appends it to the stream in the same step, so stream order is seq order. A reader task per process
follows the stream (starting with what it still holds, so a new process's dashboards see recent history) and keeps
every event through atc.events.keep: a request served by process A appears on a dashboard of process B, in order,
once. While Redis is down (clood_site.shared) events are kept per process; the reader resumes where it stopped.
"""

import asyncio
import collections
import json
import logging

from django.conf import settings

from clood_site import shared

log = logging.getLogger(__name__)

BATCH = 200
READ_BLOCK_MS = 2000

# ARGV: prefix, floor (the highest seq this process has kept), stream length to keep, then event bodies in order.
PUBLISH = """
local P, floor, keep = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local counter, stream = P .. 'events:seq', P .. 'events'
local seq = tonumber(redis.call('GET', counter) or '0')
if seq < floor then seq = floor end
for i = 4, #ARGV do
  seq = seq + 1
  redis.call('XADD', stream, 'MAXLEN', '~', keep, '*', 'seq', seq, 'e', ARGV[i])
end
redis.call('SET', counter, seq)
return seq
"""

_outbox = collections.deque()
_wake = None  # asyncio.Event: the sender has work
_tasks = {}  # event loop -> (sender task, reader task)


def active():
    """Events go through Redis now (REDIS_URL is set and Redis answers)."""
    return shared.available()


def start():
    """Start this loop's sender and reader (the server does at startup, so a quiet process still reads)."""
    if shared.enabled():
        _start()


def send(event, sync=False):
    """Queue `event` (without seq) for the stream. From sync code with no loop, write it at once instead."""
    body = json.dumps({"type": event["type"], "ts": event["ts"], "data": event["data"]})
    if sync:
        _publish_now(body)
        return
    _outbox.append(body)
    _start()
    _wake.set()


def _start():
    global _wake
    loop = asyncio.get_running_loop()
    tasks = _tasks.get(loop)
    if tasks is None or any(task.done() for task in tasks):
        for old in [old for old in _tasks if old.is_closed()]:
            del _tasks[old]
        _wake = asyncio.Event()
        _tasks[loop] = (
            loop.create_task(_send_forever(), name="clood-events-sender"),
            loop.create_task(_read_forever(), name="clood-events-reader"),
        )


def _floor():
    from atc.events import last_seq

    return last_seq()


async def _send_forever():
    while True:
        if not _outbox:
            _wake.clear()
            await _wake.wait()
        bodies = [_outbox.popleft() for _ in range(min(BATCH, len(_outbox)))]
        try:
            await _publish_script()(args=[settings.CLOOD_REDIS_PREFIX, _floor(), settings.CLOOD_ATC_RECENT_EVENTS,
                                          *bodies])  # fmt: skip
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - keep them here rather than lose them
            if isinstance(error, shared.redis_errors()):
                shared.went_down(error, "publishing ATC events")
            else:
                log.exception("could not publish ATC events to Redis")
            _keep_here(bodies)


def _keep_here(bodies):
    from atc.events import keep, last_seq

    for body in bodies:
        event = json.loads(body)
        keep({"type": event["type"], "ts": event["ts"], "seq": last_seq() + 1, "data": event["data"]})


_scripts = {}


def _publish_script():
    connection = shared.client()
    script = _scripts.get(id(connection))
    if script is None:
        script = _scripts[id(connection)] = connection.register_script(PUBLISH)
    return script


def _publish_now(body):
    """Sync path (admin actions, management commands): a short-lived connection, the same script."""
    import redis

    try:
        with redis.Redis.from_url(settings.REDIS_URL, socket_timeout=shared.SOCKET_TIMEOUT,
                                  socket_connect_timeout=shared.SOCKET_TIMEOUT) as connection:  # fmt: skip
            connection.eval(PUBLISH, 0, settings.CLOOD_REDIS_PREFIX, _floor(), settings.CLOOD_ATC_RECENT_EVENTS, body)
    except Exception as error:  # noqa: BLE001 - publishing never fails the caller
        log.warning("could not publish an ATC event to Redis (%s)", type(error).__name__)


async def _read_forever():
    import redis.asyncio as redis

    from atc.events import keep

    stream = shared.key("events")
    last_id = None
    connection = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=READ_BLOCK_MS / 1000 + 3,
                                      socket_connect_timeout=shared.SOCKET_TIMEOUT)  # fmt: skip
    try:
        while True:
            if not shared.available():
                await asyncio.sleep(0.2)
                continue
            try:
                if last_id is None:  # what the stream still holds, oldest first
                    entries = list(reversed(await connection.xrevrange(stream, count=settings.CLOOD_ATC_RECENT_EVENTS)))
                    last_id = entries[-1][0] if entries else b"0-0"
                else:
                    answer = await connection.xread({stream: last_id}, count=1000, block=READ_BLOCK_MS)
                    entries = answer[0][1] if answer else []
            except asyncio.CancelledError:
                raise
            except shared.redis_errors() as error:
                shared.went_down(error, "reading ATC events")
                continue
            for entry_id, fields in entries:
                last_id = entry_id
                body = json.loads(fields[b"e"])
                keep({"type": body["type"], "ts": body["ts"], "seq": int(fields[b"seq"]), "data": body["data"]})
    finally:
        await connection.aclose()
