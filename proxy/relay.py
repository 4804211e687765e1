"""The upstream relay: one shared aiohttp ClientSession, bytes relayed to the client exactly as the host sent them.

Nothing is sent to the client until the host's first body bytes arrive, so every failure before that point
(connect error, timeout, 404/409/429/5xx) can be retried on another host; `UpstreamError.retryable` says which.
After the first byte the relay only reports how the stream ended.

Why aiohttp and not httpx here: measured with bench/proxy_bench.py, httpx's connection pool does work per request
that grows with the number of pooled connections (a readability check of every idle connection), which made 1,000
concurrent streams collapse; aiohttp's pool does not. The monitor's management calls still use httpx.
"""

import asyncio
from dataclasses import dataclass

import aiohttp
from django.conf import settings

# Statuses that mean "try another host": busy (409, 429, 503), broken (5xx), or lost the model (404).
RETRY_STATUSES = {404, 408, 409, 429}
# Response headers passed on to the client; everything else (hop-by-hop, server, date…) is the relay's own.
PASSED_HEADERS = {b"content-type", b"content-length"}

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
    for failures before the first byte; returns a RelayResult once anything was sent to the client."""
    session = upstream_session()
    response = None
    try:
        async with asyncio.timeout(first_byte_timeout):
            response = await session.request(method, host.base_url + path, data=body, headers=upstream_headers(host))
            if response.status in RETRY_STATUSES or response.status >= 500:
                detail = await _short_body(response)
                raise UpstreamError(f"{host.name} answered HTTP {response.status}{detail}", status=response.status)
            first = await response.content.readany()
    except TimeoutError:
        _close(response)
        raise UpstreamError(f"{host.name} sent nothing within {first_byte_timeout:g} s", timeout=True) from None
    except aiohttp.ClientError as exc:
        _close(response)
        raise UpstreamError(f"{host.name}: {describe_client_error(exc)}") from None
    except BaseException:
        _close(response)
        raise

    try:
        headers = [(k, v) for k, v in response.raw_headers if k.lower() in PASSED_HEADERS]
        await sink.start(response.status, headers)
        chunk = first
        while chunk:
            telemetry.feed(chunk)
            await sink.body(chunk)
            async with asyncio.timeout(idle_timeout):
                chunk = await response.content.readany()
        telemetry.finish()
        response.release()
        return RelayResult(status=response.status)
    except TimeoutError:
        silent = f"{host.name} went silent for {idle_timeout:g} s"
        _close(response)
        return RelayResult(response.status, complete=False, error=silent)
    except aiohttp.ClientError as exc:
        _close(response)
        return RelayResult(response.status, complete=False, error=f"{host.name}: {describe_client_error(exc)}")
    except BaseException:
        _close(response)
        raise


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
