"""Talking to a host's management API: version, model list, loaded models, model details.

Each check returns a `HostReport`; a failure is a value (`report.error`), never an exception, and its message never
carries the host's API key. Nothing here loads a model: Ollama is asked `/api/version`, `/api/tags`, `/api/ps` and
`/api/show`; OpenAI-compatible servers `/v1/models`.
"""

import asyncio
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
from django.conf import settings

from hosts.names import normalize_model_name


class CheckFailed(Exception):
    """A host answered, or failed to answer, in a way that makes its report unusable."""


@dataclass
class ModelReport:
    remote_name: str
    digest: str = ""
    size: int | None = None
    family: str = ""
    parameter_size: str = ""
    quantization: str = ""
    capabilities: list = field(default_factory=list)
    context_length: int | None = None
    details_digest: str = ""  # set when capabilities/context_length were fetched for this digest
    loaded: bool = False
    loaded_until: datetime | None = None
    size_vram: int | None = None

    @property
    def name(self):
        return normalize_model_name(self.remote_name)


@dataclass
class HostReport:
    ok: bool
    latency_ms: float | None = None
    version: str = ""
    models: list = field(default_factory=list)
    error: str = ""


@dataclass
class HostTarget:
    """What a check needs to know about a host; a plain value, so checks never touch the database."""

    name: str
    base_url: str
    backend: str
    api_key: str = ""
    static_models: list = field(default_factory=list)
    # normalised name -> (digest, capabilities, context_length) already known, so /api/show is asked once per digest
    known_details: dict = field(default_factory=dict)


def make_client():
    timeout = httpx.Timeout(
        settings.CLOOD_MONITOR_READ_TIMEOUT,
        connect=settings.CLOOD_MONITOR_CONNECT_TIMEOUT,
        pool=settings.CLOOD_MONITOR_CONNECT_TIMEOUT,
    )
    return httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False)


async def check_host(client, target):
    """Check one host within the per-host deadline. Never raises."""
    try:
        async with asyncio.timeout(settings.CLOOD_MONITOR_HOST_DEADLINE):
            if target.backend == "openai":
                return await _check_openai(client, target)
            return await _check_ollama(client, target)
    except TimeoutError:
        return HostReport(ok=False, error=f"no answer within {settings.CLOOD_MONITOR_HOST_DEADLINE:g} s")
    except CheckFailed as exc:
        return HostReport(ok=False, error=redact(str(exc), target))
    except httpx.HTTPError as exc:
        return HostReport(ok=False, error=redact(describe_http_error(exc), target))


def describe_http_error(exc):
    """A short, secret-free description of an httpx failure (never the exception's own text with URLs)."""
    kinds = [
        (httpx.ConnectTimeout, "connection timed out"),
        (httpx.ConnectError, "connection refused or host unreachable"),
        (httpx.ReadTimeout, "timed out waiting for an answer"),
        (httpx.RemoteProtocolError, "connection closed without a valid HTTP answer"),
        (httpx.TimeoutException, "timed out"),
        (httpx.NetworkError, "network error"),
    ]
    for kind, text in kinds:
        if isinstance(exc, kind):
            return text
    return type(exc).__name__


async def _get_json(client, target, method, path, body=None):
    """One management call: JSON in, JSON out, bounded in size. Returns (parsed, elapsed_ms)."""
    headers = {"Accept": "application/json"}
    if target.api_key:
        headers["Authorization"] = f"Bearer {target.api_key}"
    started = time.perf_counter()
    async with client.stream(method, target.base_url + path, json=body, headers=headers) as response:
        elapsed_ms = (time.perf_counter() - started) * 1000
        if response.status_code in (401, 403):
            raise CheckFailed(f"{path}: HTTP {response.status_code}: the host refused the API key")
        chunks, size = [], 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > settings.CLOOD_MONITOR_MAX_BODY:
                raise CheckFailed(f"{path}: answer larger than {settings.CLOOD_MONITOR_MAX_BODY} bytes, refused")
            chunks.append(chunk)
    raw = b"".join(chunks)
    if response.status_code != 200:
        raise CheckFailed(f"{path}: HTTP {response.status_code}{_error_detail(raw)}")
    try:
        return json.loads(raw), elapsed_ms
    except ValueError:
        kind = "an HTML page" if raw.lstrip()[:1] == b"<" else "invalid JSON"
        raise CheckFailed(f"{path}: answered {kind}, not JSON") from None


def _error_detail(raw):
    try:
        message = json.loads(raw).get("error")
    except (ValueError, AttributeError):
        return ""
    if isinstance(message, dict):
        message = message.get("message")
    return f": {str(message)[:200]}" if message else ""


def _expect(value, kind, where):
    if not isinstance(value, kind):
        raise CheckFailed(f"{where}: unexpected answer shape")
    return value


async def _check_ollama(client, target):
    version_body, latency_ms = await _get_json(client, target, "GET", "/api/version")
    version = _expect(version_body, dict, "/api/version").get("version", "")
    tags, _ = await _get_json(client, target, "GET", "/api/tags")
    ps, _ = await _get_json(client, target, "GET", "/api/ps")
    models = {}
    for entry in _expect(_expect(tags, dict, "/api/tags").get("models"), list, "/api/tags"):
        entry = _expect(entry, dict, "/api/tags")
        remote_name = _expect(entry.get("name") or entry.get("model"), str, "/api/tags")
        details = entry.get("details") if isinstance(entry.get("details"), dict) else {}
        report = ModelReport(
            remote_name=remote_name,
            digest=str(entry.get("digest") or ""),
            size=_int_or_none(entry.get("size")),
            family=str(details.get("family") or ""),
            parameter_size=str(details.get("parameter_size") or ""),
            quantization=str(details.get("quantization_level") or ""),
        )
        models[report.name] = report
    for entry in _expect(_expect(ps, dict, "/api/ps").get("models") or [], list, "/api/ps"):
        entry = _expect(entry, dict, "/api/ps")
        report = models.get(normalize_model_name(str(entry.get("name") or entry.get("model") or "")))
        if report is not None:
            report.loaded = True
            report.loaded_until = _parse_time(entry.get("expires_at"))
            report.size_vram = _int_or_none(entry.get("size_vram"))
    for report in models.values():
        await _fill_details(client, target, report)
    return HostReport(ok=True, latency_ms=latency_ms, version=str(version)[:64], models=list(models.values()))


async def _fill_details(client, target, report):
    """Capabilities and context length from /api/show, asked only when the digest is new to us."""
    known = target.known_details.get(report.name)
    if known and known[0] == report.digest:
        report.details_digest, report.capabilities, report.context_length = known
        return
    try:
        show, _ = await _get_json(client, target, "POST", "/api/show", {"model": report.remote_name})
    except CheckFailed:
        return  # details are nice to have; the model is still there (asked again next cycle)
    if not isinstance(show, dict):
        return
    capabilities = show.get("capabilities")
    report.capabilities = [str(c) for c in capabilities] if isinstance(capabilities, list) else []
    model_info = show.get("model_info") if isinstance(show.get("model_info"), dict) else {}
    for key, value in model_info.items():
        if key.endswith(".context_length"):
            report.context_length = _int_or_none(value)
    report.details_digest = report.digest


async def _check_openai(client, target):
    try:
        listing, latency_ms = await _get_json(client, target, "GET", "/v1/models")
    except CheckFailed as exc:
        # A server that cannot list models but answers is usable with its static list.
        if target.static_models and " HTTP 404" in str(exc):
            return HostReport(ok=True, models=[ModelReport(remote_name=n) for n in target.static_models])
        raise
    models = {}
    for entry in _expect(_expect(listing, dict, "/v1/models").get("data"), list, "/v1/models"):
        model_id = _expect(_expect(entry, dict, "/v1/models").get("id"), str, "/v1/models")
        models[normalize_model_name(model_id)] = ModelReport(remote_name=model_id, capabilities=[])
    for name in target.static_models:
        models.setdefault(normalize_model_name(name), ModelReport(remote_name=name))
    return HostReport(ok=True, latency_ms=latency_ms, models=list(models.values()))


def _int_or_none(value):
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _parse_time(value):
    if not isinstance(value, str):
        return None
    try:
        # Ollama writes nanoseconds; fromisoformat takes at most microseconds.
        head, dot, rest = value.partition(".")
        if dot:
            digits = "".join(ch for ch in rest if ch.isdigit())
            value = f"{head}.{digits[:6]}{rest[len(digits) :]}"
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def redact(text, target):
    """`text` without the host's API key, at most 500 characters: what may be shown of a host's answer."""
    if target.api_key:
        text = text.replace(target.api_key, "***")
    return text[:500]
