"""The event bus helper: publish an ATC event to the channel-layer group `atc` (DESIGN §6).

Publishing never blocks and never raises into the caller: the send runs as a task of the running loop, and a
failing channel layer is logged (once per failure streak), not propagated.
"""

import asyncio
import collections
import itertools
import json
import logging
import time

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings

log = logging.getLogger(__name__)

GROUP = "atc"
MESSAGE_TYPE = "atc.event"  # the consumer's handler is `atc_event`

_sequence = itertools.count(1)
_pending = set()  # strong references to in-flight sends, so they are not garbage-collected mid-way
_failing = False
# The newest events of this process, for snapshots and for resuming a reconnecting dashboard.
recent = collections.deque(maxlen=settings.CLOOD_ATC_RECENT_EVENTS)


def make_event(event_type, data):
    event = {"type": event_type, "ts": time.time(), "seq": next(_sequence), "data": data}
    if event_type != "tick":
        recent.append(event)
    return event


def last_seq():
    return recent[-1]["seq"] if recent else 0


def events_after(seq):
    """Events newer than `seq`, or None when some of them are no longer kept (the caller needs a snapshot)."""
    if recent and recent[0]["seq"] > seq + 1 and seq < last_seq():
        return None
    return [event for event in recent if event["seq"] > seq]


async def apublish(event_type, **data):
    """Publish from async code: returns at once; the send happens in the background."""
    event = make_event(event_type, data)
    _schedule(asyncio.get_running_loop(), event)
    return event


def publish(event_type, **data):
    """Publish from sync code (management commands, admin actions). Never raises."""
    event = make_event(event_type, data)
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        async_to_sync(_send)(event)
    else:  # called from sync code inside a running loop: schedule, don't block it
        _schedule(loop, event)
    return event


def _schedule(loop, event):
    layer = get_channel_layer()
    if layer is None or (hasattr(layer, "has_receivers") and not layer.has_receivers(GROUP)):
        return  # nobody is watching in this process (in-memory layer): no task, no serialising
    task = loop.create_task(_send(event))
    _pending.add(task)
    task.add_done_callback(_pending.discard)


async def _send(event):
    global _failing
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
