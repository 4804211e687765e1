"""The upstream relay: one shared aiohttp ClientSession, bytes relayed to the client exactly as the host sent them.

Nothing is sent to the client until the host has shown that it answers: a stream's first complete line, or a
single body whole (or its first HOLD_BYTES). Every failure until then can be retried on another host, and
`UpstreamError.retryable` says which: connect error, timeout, 404/409/429/5xx, an HTML page, an answer that is not
the API's JSON (garbage, empty), a host that drips bytes without finishing a line. After that the relay only
reports how the answer ended.

Progress rule: after its first byte, the host must finish a line (or send HOLD_BYTES of one) within `idle_timeout`
(CLOOD_IDLE_TIMEOUT) of the last one, or the answer ends there: a host dripping a byte a second cannot hold a slot,
while a 100 MB line sent at network speed still goes through. The client gets whole lines (a line is held until it
ends or reaches HOLD_BYTES), so an answer cut short never leaves half a line before the consumer's in-band error.

Memory: one answer costs the relay at most 2 x HOLD_BYTES, however long its lines (telemetry keeps at most
MAX_LINE_BYTES of a line). Daphne has no backpressure, so a client that reads slower than its host sends still makes
daphne buffer the difference.

A complete `RelayResult` with an `error` is a note, not a failure: the host answered with another model than the
one asked for (compared as Ollama names: `llama3.2` is `llama3.2:latest`). The answer is relayed as it is (servers
such as llama.cpp may name their own alias), the request counts as ok, and the note goes into the request log's
error field and the request_completed event.

Why aiohttp and not httpx here: measured with bench/proxy_bench.py, httpx's connection pool does work per request
that grows with the number of pooled connections (a readability check of every idle connection), which made 1,000
concurrent streams collapse; aiohttp's pool does not. The monitor's management calls still use httpx.
"""

import asyncio
import json
from dataclasses import dataclass

import aiohttp
from django.conf import settings

from hosts.names import same_model

# Statuses that mean "try another host": busy (409, 429, 503), broken (5xx), or lost the model (404).
RETRY_STATUSES = {404, 408, 409, 429}
# Response headers passed on to the client; everything else (hop-by-hop, server, date…) is the relay's own.
PASSED_HEADERS = {b"content-type", b"content-length"}
# The start of a line is held back until the line ends or grows to this; a single body goes out in pieces this big.
HOLD_BYTES = 64 * 1024
HTML_TYPES = {"text/html", "application/xhtml+xml"}

_session = None
_session_loop = None


def upstream_session():
    """The process's shared upstream session (one per event loop, created on first use)."""
    global _session, _session_loop
    loop = asyncio.get_running_loop()
    if _session is None or _session_loop is not loop or _session.closed:
        connector = aiohttp.TCPConnector(
            limit=settings.CLOOD_UPSTREAM_MAX_CONNECTIONS, limit_per_host=0, keepalive_timeout=30,
            enable_cleanup_closed=False, use_dns_cache=True, ttl_dns_cache=10,
        )  # fmt: skip
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=settings.CLOOD_CONNECT_TIMEOUT)
        _session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False, trust_env=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"), cookie_jar=aiohttp.DummyCookieJar(),
        )  # fmt: skip
        _session_loop = loop
    return _session


class UpstreamError(Exception):
    def __init__(self, message, *, status=None, retryable=True, timeout=False):
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable
        self.timeout = timeout


@dataclass
class RelayResult:
    status: int
    complete: bool = True
    error: str = ""


def upstream_headers(host):
    headers = {"content-type": "application/json", "accept-encoding": "identity"}
    if host.api_key:
        headers["authorization"] = f"Bearer {host.api_key}"
    return headers


def describe_client_error(exc):
    """A short, secret-free description of an aiohttp failure (never its own text, which carries URLs)."""
    kinds = [
        (aiohttp.ClientConnectorError, "connection refused or host unreachable"),
        (aiohttp.ServerDisconnectedError, "connection closed by the host"),
        (aiohttp.ClientPayloadError, "the answer was cut off"),
        (aiohttp.ClientResponseError, "answered with an invalid HTTP response"),
        (aiohttp.ClientOSError, "network error"),
    ]
    for kind, text in kinds:
        if isinstance(exc, kind):
            return text
    return type(exc).__name__


async def relay(host, method, path, body, sink, telemetry, *, first_byte_timeout, idle_timeout):
    """Send one request to `host` and relay the answer into `sink` (start/body/end). Raises UpstreamError
    for failures before anything reached the client; returns a RelayResult once something did."""
    session = upstream_session()
    response = answer = None
    try:
        async with asyncio.timeout(first_byte_timeout):
            response = await session.request(method, host.base_url + path, data=body, headers=upstream_headers(host))
            if response.status in RETRY_STATUSES or response.status >= 500:
                detail = await _short_body(response)
                raise UpstreamError(f"{host.name} answered HTTP {response.status}{detail}", status=response.status)
            if response.content_type in HTML_TYPES:
                raise UpstreamError(f"{host.name} answered HTTP {response.status} with an HTML page, not the API",
                                    status=response.status)  # fmt: skip
            first = await response.content.read(HOLD_BYTES)
        answer = _Answer(host, response, telemetry, idle_timeout)
        await answer.hold(first)
    except TimeoutError:
        _close(response)
        silent = f"{host.name} sent nothing within {first_byte_timeout:g} s"
        raise UpstreamError(answer.no_progress() if answer else silent, timeout=True) from None
    except aiohttp.ClientError as exc:
        _close(response)
        raise UpstreamError(f"{host.name}: {describe_client_error(exc)}") from None
    except BaseException:
        _close(response)
        raise

    try:
        headers = [(k, v) for k, v in response.raw_headers if k.lower() in PASSED_HEADERS]
        await sink.start(response.status, headers)
        await answer.forward(sink)
        response.release()
        return RelayResult(status=response.status, error=model_note(host.name, body, telemetry.model))
    except TimeoutError:
        _close(response)
        await answer.end_line(sink)
        return RelayResult(response.status, complete=False, error=answer.no_progress())
    except aiohttp.ClientError as exc:
        _close(response)
        await answer.end_line(sink)
        return RelayResult(response.status, complete=False, error=f"{host.name}: {describe_client_error(exc)}")
    except BaseException:
        _close(response)
        raise


class _Answer:
    """The host's answer as it arrives: fed to telemetry at once, passed on to the client a whole line at a time."""

    def __init__(self, host, response, telemetry, idle_timeout):
        self.host = host
        self.response = response
        self.telemetry = telemetry
        self.idle_timeout = idle_timeout
        self.pending = b""  # received, not yet sent: the start of a line (or of a single body)
        self.ended = False
        self.mid_line = False  # the client was last sent part of a line (one longer than HOLD_BYTES)

    async def hold(self, chunk):
        """Read until there is something to send, then check it is an answer. Raises UpstreamError if not."""
        self._add(chunk)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.idle_timeout
        while not self.ended and not self._ready():
            async with asyncio.timeout_at(deadline):
                self._add(await self.response.content.read(HOLD_BYTES))
        telemetry, status = self.telemetry, self.response.status
        # Garbage: nothing read as the API's JSON, and either something that is not, or the whole answer is in.
        if status < 400 and not telemetry.parsed and (telemetry.unparsed or self.ended):
            preview = self.pending[:100].decode("utf-8", "replace").strip()
            detail = f": {preview}" if preview else " (an empty body)"
            raise UpstreamError(f"{self.host.name} answered HTTP {status} with something that is not the API's "
                                f"JSON{detail}", status=status)  # fmt: skip

    async def forward(self, sink):
        """Send what is ready, then read and send the rest of the answer, a line at a time, under the progress
        rule. Raises TimeoutError when the host breaks it, aiohttp.ClientError when the connection fails."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.idle_timeout
        while True:
            ready = self._ready()
            if ready:
                piece = self.pending if ready == len(self.pending) else self.pending[:ready]
                self.pending = self.pending[ready:]
                self.mid_line = not piece.endswith(b"\n")
                await sink.body(piece)
                if len(piece) >= HOLD_BYTES:
                    # Daphne takes whatever it is given and writes it out at most 128 KiB a loop turn: give it the
                    # turn before reading on, or a fast host's big answer piles up in its buffer.
                    await asyncio.sleep(0)
                deadline = loop.time() + self.idle_timeout
            if self.ended:
                return
            async with asyncio.timeout_at(deadline):
                self._add(await self.response.content.read(HOLD_BYTES))

    async def end_line(self, sink):
        """An answer cut off mid-line: end the line, so that what the client reads next starts on its own."""
        if self.mid_line and self.telemetry.format != "json":
            await sink.body(b"\n\n" if self.telemetry.format == "sse" else b"\n")

    def no_progress(self):
        if self.telemetry.format == "json":
            return f"{self.host.name} did not finish its answer within {self.idle_timeout:g} s"
        return f"{self.host.name} sent no complete line within {self.idle_timeout:g} s"

    def _add(self, chunk):
        if chunk:
            self.telemetry.feed(chunk)
            self.pending = self.pending + chunk if self.pending else chunk
        elif not self.ended:
            self.ended = True
            self.telemetry.finish()

    def _ready(self):
        """How many pending bytes can go to the client: all at the end or past HOLD_BYTES, else up to the last
        line's end (a single body waits for its end)."""
        pending = self.pending
        if self.ended or len(pending) >= HOLD_BYTES:
            return len(pending)
        if self.telemetry.format == "json":
            return 0
        return pending.rfind(b"\n") + 1


def model_note(host_name, body, answered):
    """A note when the answer names (`answered`) another model than the request `body` asked for, else ""."""
    if not answered or not body or json.dumps(answered).encode() in body:  # the usual case: no second parse
        return ""
    try:
        request = json.loads(body)
    except (ValueError, RecursionError):
        return ""
    asked = (request.get("model") or request.get("name")) if isinstance(request, dict) else None
    if not isinstance(asked, str) or same_model(asked, answered):
        return ""
    return f"{host_name} answered with model {answered!r}, not {asked!r}"


def connection_counts():
    """The shared session's upstream connections: in use (an answer being read) and idle (kept alive in the pool)."""
    if _session is None or _session.closed:
        return {"in_use": 0, "idle": 0}
    connector = _session.connector
    # aiohttp has no public count of these; both fields have been there through aiohttp 3.x.
    idle = sum(len(connections) for connections in connector._conns.values())
    return {"in_use": len(connector._acquired), "idle": idle}


async def _short_body(response):
    try:
        async with asyncio.timeout(2):
            raw = await response.content.read(2048)
    except (TimeoutError, aiohttp.ClientError):
        return ""
    text = raw[:300].decode("utf-8", "replace").strip()
    return f": {text}" if text else ""


def _close(response):
    if response is not None:
        response.close()


async def close_session():
    """Close the shared session (tests, shutdown)."""
    global _session
    if _session is not None and not _session.closed:
        await _session.close()
    _session = None
