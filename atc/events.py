"""The event bus helper: publish an ATC event (DESIGN §6).

Every event is kept in this process's buffer of recent events, which the ATC consumers read in batches (so the
cost of a dashboard does not grow with the request rate). Publishing never blocks and never raises into the caller.

One process (no REDIS_URL): an event gets its seq here, is kept at once, and is also sent to the channel-layer group
`atc` for any other listener. Several processes (REDIS_URL): an event goes to the Redis stream of atc/stream.py,
which gives it a seq for the whole cluster; every process reads the stream back into its buffer, so each dashboard
sees every process's events, in one order, once. The dict `apublish` returns gets its seq then (until then it is
None), and its publisher sends it to the channel-layer group. While Redis is down, events are kept per process.

Ticks are not in the sequence: a tick carries the seq of the newest event before it and only its newest one matters.
"""

import asyncio
import collections
import json
import logging
import time
import weakref

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings

log = logging.getLogger(__name__)

GROUP = "atc"
MESSAGE_TYPE = "atc.event"

_pending = set()  # strong references to in-flight sends, so they are not garbage-collected mid-way
_tail = weakref.WeakKeyDictionary()  # per event loop: the send scheduled last, which the next one waits for
_backlog = weakref.WeakKeyDictionary()  # per event loop: sends scheduled and not done
_failing = False
_dropped = False
MAX_BACKLOG = 10_000  # sends of one loop waiting for the ones before them


PRIVATE_FIELDS = ("prompt", "client")  # in a request's events: not for anonymous viewers (CLOOD_ATC_PUBLIC)


def for_anonymous(data):
    """`data` (an event's, or a flight's) without the prompt and the client's address, for a public view; `auto`'s
    reason goes too, as it may quote the prompt (`the prompt asks for writing ('write my …')`)."""
    auto = _without_reason(data.get("auto"))
    decision = data.get("decision")
    decision_auto = _without_reason(decision.get("auto")) if isinstance(decision, dict) else None
    if not any(data.get(name) for name in PRIVATE_FIELDS) and auto is None and decision_auto is None:
        return data
    public = {**data, **{name: "" for name in PRIVATE_FIELDS if name in data}}
    if auto is not None:
        public["auto"] = auto
    if decision_auto is not None:
        public["decision"] = {**decision, "auto": decision_auto}
    return public


def _without_reason(auto):
    """A copy of an `auto` dict without its reason, or None when there is no reason to take out."""
    return {**auto, "reason": ""} if isinstance(auto, dict) and auto.get("reason") else None


class Kept:
    """An event in the buffer, with its JSON text made once, when the first reader needs it (and once more for
    anonymous viewers when it names a prompt or a client)."""

    __slots__ = ("event", "seq", "_text", "_public_text")

    def __init__(self, event):
        self.event = event
        self.seq = event["seq"]
        self._text = None
        self._public_text = None

    @property
    def text(self):
        if self._text is None:
            self._text = json.dumps(self.event)
        return self._text

    @property
    def public_event(self):
        """The event as anonymous viewers see it: a request's prompt and client left out (a catfight's prompt is
        the show, and stays)."""
        data = self.event.get("data")
        if not (isinstance(data, dict) and self.event["type"].startswith("request_")):
            return self.event
        public = for_anonymous(data)
        return self.event if public is data else {**self.event, "data": public}

    @property
    def public_text(self):
        if self._public_text is None:
            public = self.public_event
            self._public_text = self.text if public is self.event else json.dumps(public)
        return self._public_text


# The newest events of this process (ticks aside), for snapshots, resumes and the consumers' batches.
recent = collections.deque(maxlen=settings.CLOOD_ATC_RECENT_EVENTS)
latest_tick = None  # ticks are not kept: only the newest one matters
_evicted_up_to = 0  # seq of the newest event pushed out of `recent`
_news = set()  # futures of readers waiting for the next event


def make_event(event_type, data, sync=False):
    """Make an event and keep it (or hand it to the shared stream, which keeps it when Redis gives it back)."""
    global latest_tick
    event = {"type": event_type, "ts": time.time(), "seq": None, "data": data}
    if event_type == "tick":
        event["seq"] = last_seq()
        latest_tick = Kept(event)
        _wake_readers()
    elif stream.active():
        stream.send(event, sync=sync)
    else:
        event["seq"] = max(last_seq(), _evicted_up_to) + 1
        keep(event)
    return event


def keep(event):
    """Add an event with its seq to the buffer; one not newer than the newest kept is dropped (seen already)."""
    global _evicted_up_to
    if event["seq"] <= last_seq():
        return False
    if len(recent) == recent.maxlen:
        _evicted_up_to = recent[0].seq
    recent.append(Kept(event))
    _wake_readers()
    return True


def _wake_readers():
    """Wake the readers waiting in news(). An event kept from another thread (an admin action, a sync_to_async call)
    wakes them through their own loop: a future is not thread-safe."""
    if _news:
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        waiting = list(_news)
        _news.clear()
        for future in waiting:
            loop = future.get_loop()
            if loop is here:
                _wake(future)
            elif not loop.is_closed():
                loop.call_soon_threadsafe(_wake, future)


def _wake(future):
    if not future.done():
        future.set_result(None)


def last_seq():
    """The seq of the newest kept event (ticks aside)."""
    return recent[-1].seq if recent else 0


def kept_after(seq):
    """Kept events newer than `seq`, or None when some of them are gone (the reader needs a snapshot)."""
    if seq < _evicted_up_to or seq > last_seq():  # gone, or from a sequence this process never had
        return None
    if not recent or recent[-1].seq <= seq:
        return []
    return [kept for kept in recent if kept.seq > seq]


def events_after(seq, anonymous=False):
    kept = kept_after(seq)
    if kept is None:
        return None
    return [k.public_event for k in kept] if anonymous else [k.event for k in kept]


async def news():
    """Wait until the next event is published."""
    future = asyncio.get_running_loop().create_future()
    _news.add(future)
    try:
        await future
    finally:
        _news.discard(future)


async def apublish(event_type, **data):
    """Publish from async code: returns at once; the send happens in the background."""
    event = make_event(event_type, data)
    if not stream.active():
        _schedule(asyncio.get_running_loop(), event)
    return event


async def flushed():
    """Wait until what this process published is in its buffer (at once with one process; with several, once
    Redis has given it its seq)."""
    if stream.active():
        await stream.flushed()


def publish(event_type, **data):
    """Publish from sync code (management commands, admin actions). Never raises."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    event = make_event(event_type, data, sync=loop is None)
    if stream.active():
        return event
    if loop is None:
        async_to_sync(_send)(event)
    else:  # called from sync code inside a running loop: schedule, don't block it
        _schedule(loop, event)
    return event


def send_to_layer(event):
    """Send a kept event to the channel-layer group (with several processes, only its publisher does, once it has
    the cluster's seq)."""
    _schedule(asyncio.get_running_loop(), event)


def _schedule(loop, event):
    layer = get_channel_layer()
    if layer is None or (hasattr(layer, "has_receivers") and not layer.has_receivers(GROUP)):
        return  # nobody is watching in this process (in-memory layer): no task, no serialising
    waiting = _backlog.get(loop, 0)
    if waiting >= MAX_BACKLOG:  # the layer is slower than the events: the group misses some (never the buffer)
        _dropping(True)
        return
    # One group_send is several round trips with channels-redis, so two sends in flight may land out of order:
    # each send waits for the one scheduled before it on this loop, and the group gets them in seq order.
    before = _tail.get(loop)
    task = loop.create_task(_send(event, after=before if before is not None and not before.done() else None))
    _tail[loop] = task
    _backlog[loop] = waiting + 1
    _pending.add(task)
    task.add_done_callback(lambda done: _sent(loop, done))


def _sent(loop, task):
    _pending.discard(task)
    _backlog[loop] = left = _backlog.get(loop, 1) - 1
    if _tail.get(loop) is task:
        del _tail[loop]
    if left < MAX_BACKLOG // 2:
        _dropping(False)


async def _send(event, after=None):
    global _failing
    if after is not None:
        await asyncio.wait([after])  # whether it sent, failed or was cancelled
        after = None
    layer = get_channel_layer()
    try:
        # Serialised once here, not once per dashboard.
        await layer.group_send(GROUP, {"type": MESSAGE_TYPE, "event": event, "text": json.dumps(event)})
    except Exception as exc:  # noqa: BLE001 - the caller must never see a publishing failure
        if not _failing:
            log.warning("could not publish ATC events (%s); requests are unaffected", type(exc).__name__)
        _failing = True
    else:
        _failing = False


def _dropping(now):
    global _dropped
    if now and not _dropped:
        log.warning("ATC events come faster than the channel layer takes them: some skip the 'atc' group "
                    "(dashboards read the kept events and miss none)")  # fmt: skip
    _dropped = now


from atc import stream  # noqa: E402 - stream calls back into keep()
