"""The ATC websocket (`/ws/atc/`): a snapshot on connect (or a resume), then every event, in order, once.

Protocol: docs/atc-protocol.md. The consumer never waits on its client: events reach it through the channel layer
and are handed to the server at once. A client that acknowledges what it has read (`{"type": "ack", "seq": N}`)
and falls too far behind is closed (4408) and resumes from the events kept in memory when it reconnects.
"""

import time
from urllib.parse import parse_qs

from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from atc import events
from atc.live import build_snapshot

CLOSE_UNAUTHORIZED = 4401
CLOSE_TOO_SLOW = 4408
# An acknowledging client further behind than this (events, or seconds without an ack) is dropped.
MAX_UNACKED_EVENTS = 2000
MAX_ACK_SILENCE = 60.0


class AtcConsumer(AsyncJsonWebsocketConsumer):
    groups = []  # joined in connect(), after the permission check

    async def connect(self):
        user = self.scope.get("user")
        await self.accept()
        if not (settings.CLOOD_ATC_PUBLIC or (user is not None and user.is_active and user.is_staff)):
            await self.close(code=CLOSE_UNAUTHORIZED)
            return
        self.last_seq = 0
        self.acked_seq = None  # None: this client does not acknowledge
        self.acked_at = time.monotonic()
        # Join first, then read the state: any event after the snapshot's seq arrives through the group.
        await self.channel_layer.group_add(events.GROUP, self.channel_name)
        self.joined = True
        since = _since(self.scope.get("query_string", b""))
        resumed = events.events_after(since) if since is not None else None
        if resumed is not None:
            self.last_seq = max([since] + [e["seq"] for e in resumed])
            await self.send_json({"type": "resume", "seq": self.last_seq, "events": resumed})
        else:
            snapshot = await build_snapshot(public=settings.CLOOD_ATC_PUBLIC)
            self.last_seq = snapshot["seq"]
            await self.send_json(snapshot)

    async def disconnect(self, code):
        if getattr(self, "joined", False):
            await self.channel_layer.group_discard(events.GROUP, self.channel_name)

    async def receive_json(self, content, **kwargs):
        if isinstance(content, dict) and content.get("type") == "ack" and isinstance(content.get("seq"), int):
            self.acked_seq = content["seq"]
            self.acked_at = time.monotonic()

    async def atc_event(self, message):
        event = message["event"]
        seq = event["seq"]
        if seq <= self.last_seq:
            return  # already sent (in the snapshot or the resume)
        if seq > self.last_seq + 1:
            # The layer dropped messages for this channel: fill the gap from the kept events, or start afresh.
            missed = events.events_after(self.last_seq)
            if missed is None:
                snapshot = await build_snapshot(public=settings.CLOOD_ATC_PUBLIC)
                self.last_seq = snapshot["seq"]
                await self.send_json(snapshot)
            else:
                for kept in missed:
                    if kept["seq"] < seq:
                        await self.send_json(kept)
        self.last_seq = seq
        await self.send(text_data=message.get("text") or self.encode_json(event))
        if self._too_far_behind():
            await self.close(code=CLOSE_TOO_SLOW)

    def _too_far_behind(self):
        if self.acked_seq is None:
            return False
        return (self.last_seq - self.acked_seq > MAX_UNACKED_EVENTS
                or time.monotonic() - self.acked_at > MAX_ACK_SILENCE)  # fmt: skip


def _since(query_string):
    values = parse_qs(query_string.decode("latin-1")).get("since")
    if not values:
        return None
    try:
        return max(0, int(values[0]))
    except ValueError:
        return None
