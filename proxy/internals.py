"""GET /_clood/internals: what this process holds right now (asyncio tasks, upstream connections, slots, queue,
requests in flight), to find leaks in tests and when debugging. Routed only when CLOOD_EXPOSE_INTERNALS is on.
It answers counts and host names only: never a URL, a key or a prompt."""

import asyncio

from django.conf import settings
from django.urls import path

from proxy.consumers import ApiConsumer
from proxy.relay import connection_counts
from proxy.state import admission, flights, waiting


class InternalsConsumer(ApiConsumer):
    methods = ("GET",)

    async def serve(self, body):
        await self.send_json(
            {
                "tasks": len(asyncio.all_tasks()),
                "upstream_connections": connection_counts(),
                "slots": dict(admission.in_flight),
                "queued": admission.queued,
                "waiting": len(waiting),
                "flights": len(flights),
            }
        )


def internals_routes():
    """The route to InternalsConsumer when CLOOD_EXPOSE_INTERNALS is on, else none (read when the URLs load)."""
    return [path("_clood/internals", InternalsConsumer.as_asgi())] if settings.CLOOD_EXPOSE_INTERNALS else []
