"""The default channel layer when REDIS_URL is unset: channels' in-memory layer, made cheap for ATC events.

Channels' InMemoryChannelLayer deep-copies every message for every receiver and starts a task per receiver; with
twenty dashboards open that costs more than relaying the request the event is about. ATC events are never changed
after they are published, so receivers share one message, and a full receiver queue drops the message (the
consumer fills the gap from the kept events, see atc/consumers.py).
"""

import asyncio
import time

from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer


class EventLayer(InMemoryChannelLayer):
    async def send(self, channel, message):
        assert isinstance(message, dict), "message is not a dict"
        self.require_valid_channel_name(channel)
        queue = self.channels.setdefault(channel, asyncio.Queue(maxsize=self.get_capacity(channel)))
        try:
            queue.put_nowait((time.time() + self.expiry, message))
        except asyncio.QueueFull:
            raise ChannelFull(channel) from None

    async def group_send(self, group, message):
        assert isinstance(message, dict), "message is not a dict"
        self.require_valid_group_name(group)
        receivers = self.groups.get(group)
        if not receivers:
            return
        self._clean_expired()
        for channel in list(receivers):
            try:
                await self.send(channel, message)
            except ChannelFull:
                pass

    def has_receivers(self, group):
        return bool(self.groups.get(group))
