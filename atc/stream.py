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
import itertools
import json
import logging

from django.conf import settings

from clood_site import shared

log = logging.getLogger(__name__)

BATCH = 200
READ_BLOCK_MS = 2000

# ARGV: prefix, floor (the highest seq this process has kept), stream length to keep, then (origin, event body)
# pairs in order; the origin lets the publishing process recognise its own events when it reads them back.
PUBLISH = """
local P, floor, keep = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local counter, stream = P .. 'events:seq', P .. 'events'
local seq = tonumber(redis.call('GET', counter) or '0')
if seq < floor then seq = floor end
for i = 4, #ARGV, 2 do
  seq = seq + 1
  redis.call('XADD', stream, 'MAXLEN', '~', keep, '*', 'seq', seq, 'o', ARGV[i], 'e', ARGV[i + 1])
end
redis.call('SET', counter, seq)
return seq
"""

MAX_AWAITED = 10_000

_outbox = collections.deque()  # origins of events to write, in order
_mine = {}  # origin -> event dict this process published and has not read back yet
_origins = itertools.count(1)
_wake = None  # asyncio.Event: the sender has work
_tasks = {}  # event loop -> (sender task, reader task)


def active():
    """Events go through Redis now (REDIS_URL is set and Redis answers)."""
    return shared.available()


def start():
    """Start this loop's reader and sender (the server does at startup, so a quiet process still reads).
    A management command only sends: its events go to the servers' dashboards, not to itself."""
    if shared.enabled():
        _start(read=True)


def send(event, sync=False):
    """Queue `event` (without seq) for the stream. When the reader gets it back, it fills in the seq of this very
    dict and keeps it. From sync code with no loop, it is written at once instead."""
    if sync:
        _publish_now(_body(event))
        return
    origin = f"{shared.PROCESS_ID}:{next(_origins)}"
    _mine[origin] = event
    while len(_mine) > MAX_AWAITED:  # never read back (Redis lost them): forget the oldest
        _mine.pop(next(iter(_mine)))
    _outbox.append(origin)
    _start()
    _wake.set()


async def flushed(timeout=5.0):
    """Wait until every event this process published is back from Redis and kept (or Redis is found down), at most
    `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while _mine and active() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)


def _body(event):
    return json.dumps({"type": event["type"], "ts": event["ts"], "data": event["data"]})


def _start(read=False):
    global _wake
    loop = asyncio.get_running_loop()
    for old in [old for old in _tasks if old.is_closed()]:
        del _tasks[old]
    tasks = _tasks.setdefault(loop, {})
    if tasks.get("send") is None or tasks["send"].done():
        _wake = asyncio.Event()
        tasks["send"] = loop.create_task(_send_forever(), name="clood-events-sender")
    if read and (tasks.get("read") is None or tasks["read"].done()):
        tasks["read"] = loop.create_task(_read_forever(), name="clood-events-reader")


def _reading():
    task = _tasks.get(asyncio.get_running_loop(), {}).get("read")
    return task is not None and not task.done()


def _floor():
    from atc.events import last_seq

    return last_seq()


async def _send_forever():
    while True:
        shared.stop_if_cancelled()
        if not _outbox:
            _wake.clear()
            await _wake.wait()
        origins = [_outbox.popleft() for _ in range(min(BATCH, len(_outbox)))]
        origins = [origin for origin in origins if origin in _mine]
        if not origins:
            continue
        pairs = [value for origin in origins for value in (origin, _body(_mine[origin]))]
        try:
            keep = settings.CLOOD_ATC_RECENT_EVENTS
            last = await _publish_script()(args=[settings.CLOOD_REDIS_PREFIX, _floor(), keep, *pairs])
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - keep them here rather than lose them
            if isinstance(error, shared.redis_errors()):
                shared.went_down(error, "publishing ATC events")
            else:
                log.exception("could not publish ATC events to Redis")
            _keep_here(origins)
        else:
            if not _reading():  # nobody here reads the stream (a management command, a test): keep them as sent
                _keep_sent(origins, int(last) - len(origins) + 1)


def _keep_sent(origins, first_seq):
    from atc.events import keep, send_to_layer

    for seq, origin in enumerate(origins, first_seq):
        event = _mine.pop(origin, None)
        if event is not None:
            event["seq"] = seq
            if keep(event):
                send_to_layer(event)


def _keep_here(origins):
    from atc.events import keep, last_seq

    for origin in origins:
        event = _mine.pop(origin, None)
        if event is not None:
            event["seq"] = last_seq() + 1
            keep(event)


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
            connection.eval(PUBLISH, 0, settings.CLOOD_REDIS_PREFIX, _floor(), settings.CLOOD_ATC_RECENT_EVENTS, "",
                            body)  # fmt: skip
    except Exception as error:  # noqa: BLE001 - publishing never fails the caller
        log.warning("could not publish an ATC event to Redis (%s)", type(error).__name__)


async def _read_forever():
    import redis.asyncio as redis

    from atc.events import keep, send_to_layer

    stream = shared.key("events")
    last_id = None
    connection = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=READ_BLOCK_MS / 1000 + 3,
                                      socket_connect_timeout=shared.SOCKET_TIMEOUT)  # fmt: skip
    try:
        while True:
            shared.stop_if_cancelled()
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
            except shared.redis_errors() as error:
                shared.went_down(error, "reading ATC events")
                continue
            for entry_id, fields in entries:
                last_id = entry_id
                seq = int(fields[b"seq"])
                event = _mine.pop(fields.get(b"o", b"").decode(), None)
                if event is not None:  # one of ours: the caller's dict gets its seq, and goes to the channel layer
                    event["seq"] = seq
                    if keep(event):
                        send_to_layer(event)
                    continue
                body = json.loads(fields[b"e"])
                keep({"type": body["type"], "ts": body["ts"], "seq": seq, "data": body["data"]})
    finally:
        await connection.aclose()
