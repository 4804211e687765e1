"""ASGI entry point: `python -m clood_site.serve clood_site.asgi:application` (daphne with clood's request limits,
what `./clood run` starts) and `manage.py runserver` serve this.

HTTP to /v1/…, /api/…, /status, /health, /ready, /metrics and /openapi.json goes to the proxy's consumers
(proxy/urls.py); the rest to Django (admin, ATC pages, static files). Websockets go to ATC (`/ws/atc/`: staff
session, origin checked).

Background work (routing snapshot, ATC ticks, and the host monitor unless CLOOD_RUN_MONITOR is off) starts with the
server's event loop: daphne has no ASGI lifespan, so it is started when the Twisted reactor runs; servers that speak
lifespan (uvicorn, hypercorn) start it on `lifespan.startup`.
"""

import os
import sys
from asyncio import ensure_future

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clood_site.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_application = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402
from django.urls import re_path  # noqa: E402

from atc.events import flushed as events_flushed  # noqa: E402
from atc.events import publish  # noqa: E402
from atc.live import start_ticker  # noqa: E402
from atc.routing import websocket_urlpatterns  # noqa: E402
from atc.stream import start as start_events_stream  # noqa: E402
from hosts import garden, snapshot  # noqa: E402
from hosts.monitor import let_go as let_go_of_monitor  # noqa: E402
from hosts.monitor import start_in_background as start_monitor  # noqa: E402
from proxy import records  # noqa: E402
from proxy.relay import close_session  # noqa: E402
from proxy.urls import urlpatterns as api_routes  # noqa: E402


def start_background():
    """Per-process background work: the routing snapshot refresher, ATC's ticks (and, with REDIS_URL, its share of
    the cluster's events), and the host monitor unless off."""
    snapshot.start_refresher()
    garden.bind_to_server_loop()
    start_ticker()
    start_events_stream()
    if settings.CLOOD_RUN_MONITOR:
        start_monitor()
    publish("proxy_started", pid=os.getpid(), monitor=settings.CLOOD_RUN_MONITOR)


async def stop_background():
    """Before the process exits: write the request log rows still waiting for their batch, send the last events, let
    another process take over the monitor, close upstream connections."""
    await records.flush()
    await events_flushed()
    await let_go_of_monitor()
    await close_session()


async def lifespan(scope, receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            start_background()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await stop_background()
            await send({"type": "lifespan.shutdown.complete"})
            return


application = ProtocolTypeRouter(
    {
        "http": URLRouter([*api_routes, re_path(r"", ASGIStaticFilesHandler(django_application))]),
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
        "lifespan": lifespan,
    }
)

if settings.CLOOD_TRIPWIRES:  # the test suite's search for leaked secrets (clood_site/tripwire.py)
    from clood_site.tripwire import TripwireASGI, from_settings  # noqa: E402

    application = TripwireASGI(application, from_settings())

_reactor = sys.modules.get("twisted.internet.reactor")
if _reactor is not None:
    # Startup triggers fire before the asyncio loop runs; callLater runs inside it. On SIGTERM / Ctrl-C the reactor
    # waits for the Deferred of a "before shutdown" trigger.
    from twisted.internet.defer import Deferred  # noqa: E402

    _reactor.callWhenRunning(_reactor.callLater, 0, start_background)
    _reactor.addSystemEventTrigger("before", "shutdown", lambda: Deferred.fromFuture(ensure_future(stop_background())))
