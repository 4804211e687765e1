"""The upstream relay: one shared httpx.AsyncClient, bytes relayed to the client exactly as the host sent them.

Nothing is sent to the client until the host's first body bytes arrive, so every failure before that point
(connect error, timeout, 404/409/429/5xx) can be retried on another host; `UpstreamError.retryable` says which.
After the first byte the relay only reports how the stream ended.
"""

import asyncio
from dataclasses import dataclass

import httpx
from django.conf import settings

from hosts.backends import describe_http_error

# Statuses that mean "try another host": busy (409, 429, 503), broken (5xx), or lost the model (404).
RETRY_STATUSES = {404, 408, 409, 429}
# Response headers passed on to the client; everything else (hop-by-hop, server, date…) is the relay's own.
PASSED_HEADERS = {b"content-type", b"content-length"}

_client = None
_client_loop = None


def upstream_client():
    """The process's shared upstream client (one per event loop, created on first use)."""
    global _client, _client_loop
    loop = asyncio.get_running_loop()
    if _client is None or _client_loop is not loop:
        limits = httpx.Limits(
            max_connections=settings.CLOOD_UPSTREAM_MAX_CONNECTIONS,
            max_keepalive_connections=settings.CLOOD_UPSTREAM_MAX_CONNECTIONS,
            keepalive_expiry=30,
        )
        timeout = httpx.Timeout(None, connect=settings.CLOOD_CONNECT_TIMEOUT)
        _client = httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False, follow_redirects=False)
        _client_loop = loop
    return _client


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


async def relay(host, method, path, body, sink, telemetry, *, first_byte_timeout, idle_timeout):
    """Send one request to `host` and relay the answer into `sink` (start/body/end). Raises UpstreamError
    for failures before the first byte; returns a RelayResult once anything was sent to the client."""
    client = upstream_client()
    request = client.build_request(method, host.base_url + path, content=body, headers=upstream_headers(host))
    response = None
    try:
        async with asyncio.timeout(first_byte_timeout):
            response = await client.send(request, stream=True)
            if response.status_code in RETRY_STATUSES or response.status_code >= 500:
                detail = await _short_body(response)
                raise UpstreamError(f"{host.name} answered HTTP {response.status_code}{detail}",
                                    status=response.status_code)  # fmt: skip
            chunks = response.aiter_raw()
            first = await anext(chunks, None)
    except TimeoutError:
        await _close(response)
        raise UpstreamError(f"{host.name} sent nothing within {first_byte_timeout:g} s", timeout=True) from None
    except httpx.HTTPError as exc:
        await _close(response)
        raise UpstreamError(f"{host.name}: {describe_http_error(exc)}") from None
    except BaseException:
        await _close(response)
        raise

    try:
        headers = [(k, v) for k, v in response.headers.raw if k.lower() in PASSED_HEADERS]
        await sink.start(response.status_code, headers)
        chunk = first
        while chunk is not None:
            telemetry.feed(chunk)
            await sink.body(chunk)
            async with asyncio.timeout(idle_timeout):
                chunk = await anext(chunks, None)
        telemetry.finish()
        return RelayResult(status=response.status_code)
    except TimeoutError:
        silent = f"{host.name} went silent for {idle_timeout:g} s"
        return RelayResult(response.status_code, complete=False, error=silent)
    except httpx.HTTPError as exc:
        return RelayResult(response.status_code, complete=False, error=f"{host.name}: {describe_http_error(exc)}")
    finally:
        await _close(response)


async def _short_body(response):
    try:
        async with asyncio.timeout(2):
            raw = b""
            async for chunk in response.aiter_raw():
                raw += chunk
                if len(raw) > 2048:
                    break
    except (TimeoutError, httpx.HTTPError):
        return ""
    text = raw[:300].decode("utf-8", "replace").strip()
    return f": {text}" if text else ""


async def _close(response):
    if response is not None:
        try:
            await response.aclose()
        except (httpx.HTTPError, OSError):
            pass
