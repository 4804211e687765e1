"""Websocket routes (mounted in clood_site/asgi.py)."""

from channels.generic.websocket import AsyncWebsocketConsumer
from django.urls import path, re_path

from atc.consumers import AtcConsumer


class UnknownSocket(AsyncWebsocketConsumer):
    async def connect(self):
        await self.close(code=4404)


websocket_urlpatterns = [
    path("ws/atc/", AtcConsumer.as_asgi()),
    re_path(r"", UnknownSocket.as_asgi()),
]
