"""A tripwire for secrets in clood's output, used by the test suite: when CLOOD_TRIPWIRES lists canary values,
every HTTP response (headers and body), websocket message and log record this process sends out is searched for
them. A hit is appended to CLOOD_TRIPWIRE_REPORT as one line saying where (never the value itself).

Off by default; then nothing here is installed. Streamed bodies are searched across chunk boundaries.
"""

import logging
import os
import threading

from django.conf import settings
from django.utils.deprecation import MiddlewareMixin


class Tripwire:
    def __init__(self, canaries, report_path=""):
        self.canaries = [c.encode() for c in canaries if c]
        self.keep = max((len(c) for c in self.canaries), default=1) - 1
        self.report_path = report_path
        self.lock = threading.Lock()

    def scan(self, where, data, tail=b""):
        """Search `data` (bytes, following `tail` from the same stream); returns the tail to pass with the next
        chunk of that stream."""
        if not data:
            return tail
        window = tail + data
        for index, canary in enumerate(self.canaries):
            if canary in window:
                self.report(where, index)
        return window[-self.keep :] if self.keep else b""

    def report(self, where, index):
        line = f"canary #{index} in {where} (pid {os.getpid()})\n"
        if self.report_path:
            with self.lock, open(self.report_path, "a") as report:
                report.write(line)


def from_settings():
    return Tripwire(settings.CLOOD_TRIPWIRES, settings.CLOOD_TRIPWIRE_REPORT)


class TripwireASGI:
    """ASGI middleware: searches what `send` carries for every http and websocket connection."""

    def __init__(self, app, tripwire):
        self.app = app
        self.tripwire = tripwire

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        where = f"{scope['type']} {scope.get('path', '')}"
        tail = b""

        async def checked_send(message):
            nonlocal tail
            kind = message["type"]
            if kind == "http.response.start":
                headers = b"\n".join(name + b": " + value for name, value in message.get("headers", ()))
                self.tripwire.scan(f"{where} (headers)", headers)
            elif kind == "http.response.body":
                tail = self.tripwire.scan(where, message.get("body", b""), tail)
            elif kind == "websocket.send":
                text = message.get("text")
                self.tripwire.scan(f"{where} (message)", text.encode() if text is not None else message.get("bytes"))
            await send(message)

        return await self.app(scope, receive, checked_send)


class TripwireMiddleware(MiddlewareMixin):
    """The same for Django's own responses when they don't pass through ASGI (the test client). MiddlewareMixin
    keeps the stack async-capable: a sync-only middleware would move async views into a thread."""

    def __init__(self, get_response):
        super().__init__(get_response)
        self.tripwire = from_settings()

    def process_response(self, request, response):
        where = f"django {request.path}"
        headers = "\n".join(f"{k}: {v}" for k, v in response.items()).encode()
        self.tripwire.scan(f"{where} (headers)", headers)
        if not response.streaming:
            self.tripwire.scan(where, response.content)
        return response


class TripwireLogFilter(logging.Filter):
    """Searches every log record (message and traceback) as it is emitted; never drops one."""

    def __init__(self):
        super().__init__()
        self.tripwire = None

    def filter(self, record):
        if self.tripwire is None:
            self.tripwire = from_settings()
        text = record.getMessage()
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        self.tripwire.scan(f"log {record.name}", text.encode("utf-8", "replace"))
        return True
