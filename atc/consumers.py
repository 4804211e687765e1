"""The ATC websocket (`/ws/atc/`): a snapshot on connect (or a resume), then every event, in order, once.

Protocol: docs/atc-protocol.md. Live events are sent in batches: each connection wakes when something is
published, waits BATCH_SECONDS for more, and sends everything newer than what it sent last as one frame, read from
this process's buffer of recent events. So a dashboard costs a few frames a second whatever the request rate, and
nothing is lost or sent twice. The consumer never waits on its client; a client that acknowledges what it has read
(`{"type": "ack", "seq": N}`) and falls too far behind is closed (4408), and resumes when it reconnects.
"""

import asyncio
import time
from urllib.parse import parse_qs

from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from atc import events, stream
from atc.live import build_snapshot

CLOSE_UNAUTHORIZED = 4401
CLOSE_TOO_SLOW = 4408
BATCH_SECONDS = 0.1
# An acknowledging client further behind than this (events, or seconds without an ack) is dropped.
MAX_UNACKED_EVENTS = 2000
MAX_ACK_SILENCE = 60.0


class AtcConsumer(AsyncJsonWebsocketConsumer):
    channel_layer_alias = None  # events come from the process's buffer, not through the layer
    sender = None

    async def connect(self):
        user = self.scope.get("user")
        await self.accept()
        stream.start()
        staff = user is not None and user.is_active and user.is_staff
        if not (settings.CLOOD_ATC_PUBLIC or staff):
            await self.close(code=CLOSE_UNAUTHORIZED)
            return
        self.anonymous = not staff  # the public view: no prompts, no client addresses
        self.acked_seq = None  # None: this client does not acknowledge
        self.acked_at = time.monotonic()
        self.tick_sent = events.latest_tick  # the snapshot already says what it says
        since = _since(self.scope.get("query_string", b""))
        resumed = events.events_after(since, anonymous=self.anonymous) if since is not None else None
        if resumed is not None:
            self.last_seq = max([since] + [e["seq"] for e in resumed])
            await self.send_json({"type": "resume", "seq": self.last_seq, "events": resumed})
        else:
            await self.send_snapshot()
        self.sender = asyncio.create_task(self.send_batches())

    async def disconnect(self, code):
        if self.sender is not None:
            self.sender.cancel()

    async def receive_json(self, content, **kwargs):
        if isinstance(content, dict) and content.get("type") == "ack" and isinstance(content.get("seq"), int):
            self.acked_seq = content["seq"]
            self.acked_at = time.monotonic()

    async def send_snapshot(self):
        snapshot = await build_snapshot(public=settings.CLOOD_ATC_PUBLIC, anonymous=self.anonymous)
        self.last_seq = snapshot["seq"]
        await self.send_json(snapshot)

    async def send_batches(self):
        while True:
            if events.last_seq() <= self.last_seq and events.latest_tick is self.tick_sent:
                await events.news()
            await asyncio.sleep(BATCH_SECONDS)
            kept = events.kept_after(self.last_seq)
            if kept is None:  # this connection fell behind what is kept: start it afresh
                await self.send_snapshot()
                continue
            if kept:
                self.last_seq = max(self.last_seq, kept[-1].seq)
            tick = events.latest_tick
            if tick is not None and tick is not self.tick_sent:
                kept = [*kept, tick]  # ticks are not in the sequence: the newest one goes last
                self.tick_sent = tick
            if not kept:
                continue
            texts = (k.public_text for k in kept) if self.anonymous else (k.text for k in kept)
            await self.send(text_data='{"type":"batch","events":[' + ",".join(texts) + "]}")
            if self._too_far_behind():
                await self.close(code=CLOSE_TOO_SLOW)
                return

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
