"""The garden operations' work at the host (hosts/garden.py starts and tracks them): pull, delete, preload,
unload and benchmark over Ollama's API (benchmark also over OpenAI's), and discover's scan. Each runner takes the
operation and its progress, returns its result, and raises `Failed` with a message for the admin (never a secret)."""

import json
import logging
import time

import httpx
from django.conf import settings
from django.utils import timezone

from atc.events import apublish
from clood_site.db import in_db_thread
from hosts import discover, monitor
from hosts.backends import describe_http_error, redact
from hosts.models import GardenOperation, Host, HostModel

log = logging.getLogger(__name__)

Kind = GardenOperation.Kind

MAX_LINE = 64 * 1024  # a progress line longer than this is not Ollama's
BENCHMARK_PROMPT = (
    "Write a short paragraph about air traffic control: what controllers do, how they keep aircraft apart, "
    "and why clear radio phrasing matters."
)


class Failed(Exception):
    """An operation that went wrong at the host; the message is shown as it is (no secrets in it)."""


def _client(read_timeout):
    timeout = httpx.Timeout(read_timeout, connect=settings.CLOOD_MONITOR_CONNECT_TIMEOUT)
    return httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False)


def _headers(host):
    return {"Authorization": f"Bearer {host.api_key}"} if host.api_key else {}


async def _lines(response, host):
    """NDJSON objects from a streamed answer; a line that is too long, not JSON, or Ollama's in-band
    `{"error": …}` is the host's failure."""
    buffer = b""
    async for chunk in response.aiter_bytes():
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield _checked(_parse_line(line), host)
        if len(buffer) > MAX_LINE:
            raise Failed(f"the host sent a line longer than {MAX_LINE} bytes")
    if buffer.strip():
        yield _checked(_parse_line(buffer), host)


def _checked(item, host):
    if item.get("error"):
        raise Failed(redact(f"{host.name}: {item['error']}", host))
    return item


def _parse_line(line):
    try:
        item = json.loads(line)
    except ValueError:
        raise Failed(f"the host answered something that is not Ollama's progress: {line[:120]!r}") from None
    if not isinstance(item, dict):
        raise Failed("the host answered something that is not Ollama's progress")
    return item


async def _error_of(response, host):
    """The host's own error message from an error answer."""
    raw = (await response.aread())[:4096]
    try:
        message = json.loads(raw).get("error")
    except (ValueError, AttributeError):
        message = None
    if not message:
        kind = "an HTML page" if raw.lstrip()[:1] == b"<" else raw[:200].decode("utf-8", "replace")
        message = kind or "no message"
    return redact(f"{host.name} answered HTTP {response.status_code}: {message}", host)


async def _refresh(host):
    """Ask the monitor to check the host now, so inventory and loaded state (and ATC) catch up at once."""
    try:
        await monitor.check_hosts([host.name])
    except Exception:  # noqa: BLE001 - the next regular check catches up anyway
        log.warning("could not refresh %s after a garden operation", host.name, exc_info=True)


async def pull(op, progress):
    host = op.host
    layers = {}  # digest -> (completed, total)
    status = ""
    try:
        async with _client(settings.CLOOD_PULL_IDLE_TIMEOUT) as client:
            body = {"model": op.model, "stream": True}
            async with client.stream("POST", f"{host.base_url}/api/pull", json=body, headers=_headers(host)) as answer:
                if answer.status_code >= 400:
                    raise Failed(await _error_of(answer, host))
                async for item in _lines(answer, host):
                    status = str(item.get("status", ""))
                    digest, total = item.get("digest"), item.get("total")
                    if digest and isinstance(total, int) and total > 0:
                        layers[digest] = (int(item.get("completed") or 0), total)
                    done = sum(c for c, _ in layers.values())
                    size = sum(t for _, t in layers.values())
                    message = f"{status}: {_bytes(done)} of {_bytes(size)}" if size else status
                    await progress.update(message=message, completed=done if size else None, total=size or None)
    except httpx.HTTPError as exc:
        where = f" at {op.percent:.0f}%" if op.percent is not None else ""
        raise Failed(f"lost the connection to {host.name}{where}: {describe_http_error(exc)}") from None
    if status != "success":
        raise Failed(f"{host.name} stopped answering before the pull finished (last: {status or 'nothing'})")
    await _refresh(host)
    return {"bytes": sum(t for _, t in layers.values())}


async def delete(op, progress):
    host = op.host
    await progress.update(message="deleting")
    try:
        async with _client(settings.CLOOD_MONITOR_READ_TIMEOUT) as client:
            answer = await client.request(
                "DELETE", f"{host.base_url}/api/delete", json={"model": await _remote_name(op)}, headers=_headers(host)
            )
            if answer.status_code >= 400:
                raise Failed(await _error_of(answer, host))
    except httpx.HTTPError as exc:
        raise Failed(f"could not reach {host.name}: {describe_http_error(exc)}") from None
    await _refresh(host)
    return {}


async def preload(op, progress):
    return await _keep_alive(op, progress, settings.CLOOD_PRELOAD_KEEP_ALIVE, "loading into memory")


async def unload(op, progress):
    return await _keep_alive(op, progress, 0, "unloading")


async def _keep_alive(op, progress, keep_alive, doing):
    """Ollama loads a model (or with keep_alive 0 unloads it) when asked to generate from an empty prompt."""
    host = op.host
    await progress.update(message=doing)
    body = {"model": await _remote_name(op), "keep_alive": keep_alive}
    try:
        async with _client(settings.CLOOD_COLD_START_TIMEOUT) as client:
            answer = await client.post(f"{host.base_url}/api/generate", json=body, headers=_headers(host))
            if answer.status_code >= 400:
                raise Failed(await _error_of(answer, host))
            reply = _parse_line(answer.content)
    except httpx.HTTPError as exc:
        raise Failed(f"could not reach {host.name}: {describe_http_error(exc)}") from None
    await _refresh(host)
    load_ms = _ns_to_ms(reply.get("load_duration"))
    return {"load_ms": load_ms} if load_ms is not None else {}


async def benchmark(op, progress):
    """A fixed prompt, streamed: TTFT as clood sees it, the rest from Ollama's own timings (nanoseconds)."""
    host = op.host
    remote = await _remote_name(op)
    await progress.update(message="generating")
    runner = _benchmark_ollama if host.backend == Host.Backend.OLLAMA else _benchmark_openai
    try:
        async with _client(settings.CLOOD_COLD_START_TIMEOUT) as client:
            figures = await runner(client, host, remote, progress)
    except httpx.HTTPError as exc:
        raise Failed(f"could not reach {host.name}: {describe_http_error(exc)}") from None
    await in_db_thread(_save_benchmark)(host.pk, op.model, figures)
    await apublish("inventory_changed", host=host.name, benchmarked=[op.model],
                   models=await in_db_thread(monitor.inventory)(host))  # fmt: skip
    return figures


async def _benchmark_ollama(client, host, remote, progress):
    body = {"model": remote, "prompt": BENCHMARK_PROMPT, "stream": True,
            "options": {"num_predict": settings.CLOOD_BENCHMARK_TOKENS, "temperature": 0, "seed": 1}}  # fmt: skip
    started = time.perf_counter()
    ttft_ms, final, tokens = None, None, 0
    async with client.stream("POST", f"{host.base_url}/api/generate", json=body, headers=_headers(host)) as answer:
        if answer.status_code >= 400:
            raise Failed(await _error_of(answer, host))
        async for item in _lines(answer, host):
            if item.get("response") and ttft_ms is None:
                ttft_ms = (time.perf_counter() - started) * 1000
            if item.get("done"):
                final = item
            else:
                tokens += 1
                await progress.update(completed=tokens, total=settings.CLOOD_BENCHMARK_TOKENS,
                                      message=f"{tokens} tokens")  # fmt: skip
    if final is None:
        raise Failed(f"{host.name} stopped answering before the benchmark finished")
    return {
        "load_ms": _ns_to_ms(final.get("load_duration")),
        "ttft_ms": _round(ttft_ms),
        "prompt_tokens": final.get("prompt_eval_count"),
        "prompt_tps": _per_second(final.get("prompt_eval_count"), final.get("prompt_eval_duration")),
        "tokens": final.get("eval_count"),
        "gen_tps": _per_second(final.get("eval_count"), final.get("eval_duration")),
        "total_ms": _ns_to_ms(final.get("total_duration")),
    }


async def _benchmark_openai(client, host, remote, progress):
    """OpenAI-compatible servers give no timings: TTFT and generation speed as clood measures them."""
    body = {"model": remote, "messages": [{"role": "user", "content": BENCHMARK_PROMPT}], "stream": True,
            "max_tokens": settings.CLOOD_BENCHMARK_TOKENS, "temperature": 0,
            "stream_options": {"include_usage": True}}  # fmt: skip
    started = time.perf_counter()
    first = last = None
    chunks, usage = 0, None
    url = f"{host.base_url}/v1/chat/completions"
    async with client.stream("POST", url, json=body, headers=_headers(host)) as answer:
        if answer.status_code >= 400:
            raise Failed(await _error_of(answer, host))
        async for line in answer.aiter_lines():
            if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                continue
            item = _parse_line(line[5:].encode())
            if item.get("usage"):
                usage = item["usage"]
            if any((c.get("delta") or {}).get("content") for c in item.get("choices") or ()):
                now = time.perf_counter()
                first = first or now
                last = now
                chunks += 1
                await progress.update(completed=chunks, total=settings.CLOOD_BENCHMARK_TOKENS,
                                      message=f"{chunks} tokens")  # fmt: skip
    if first is None:
        raise Failed(f"{host.name} answered no tokens")
    tokens = (usage or {}).get("completion_tokens") or chunks
    generating = last - first
    return {
        "load_ms": None,
        "ttft_ms": _round((first - started) * 1000),
        "prompt_tokens": (usage or {}).get("prompt_tokens"),
        "prompt_tps": None,
        "tokens": tokens,
        "gen_tps": _round((tokens - 1) / generating) if generating > 0 and tokens > 1 else None,
        "total_ms": _round((last - started) * 1000),
    }


def _save_benchmark(host_id, model, figures):
    HostModel.objects.filter(host_id=host_id, name=model).update(
        bench_load_ms=figures["load_ms"], bench_ttft_ms=figures["ttft_ms"], bench_prompt_tps=figures["prompt_tps"],
        bench_gen_tps=figures["gen_tps"], bench_at=timezone.now(),
    )  # fmt: skip


async def _remote_name(op):
    """The host's own spelling of the model, from the inventory; the normalised name when it has none."""
    row = await in_db_thread(HostModel.objects.filter(host_id=op.host_id, name=op.model).first)()
    return row.remote_name if row is not None else op.model


async def discover_hosts(op, progress):
    targets = discover.parse_targets(
        op.model, op.result.get("ports"), max_addresses=settings.CLOOD_DISCOVER_MAX_ADDRESSES
    )
    total = targets.total

    async def report(done, _total, found):
        await progress.update(completed=done, total=total, message=f"{done} of {total} probed, {len(found)} found")

    found = await discover.scan(targets, concurrency=settings.CLOOD_DISCOVER_CONCURRENCY,
                                timeout=settings.CLOOD_DISCOVER_TIMEOUT, progress=report)  # fmt: skip
    registered = await in_db_thread(_registered_urls)()
    rows = [{**f.as_dict(), "registered": registered.get(f.base_url, "")} for f in found]
    op.message = f"{total} probed, {len(rows)} found"
    op.completed = total
    return {"found": rows}


def _registered_urls():
    return {url: name for name, url in Host.objects.values_list("name", "base_url")}


def _bytes(count):
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


def _ns_to_ms(value):
    return round(value / 1e6, 1) if isinstance(value, int | float) and value >= 0 else None


def _per_second(count, duration_ns):
    if not isinstance(count, int | float) or not isinstance(duration_ns, int | float) or duration_ns <= 0:
        return None
    return round(count / (duration_ns / 1e9), 1)


def _round(value):
    return round(value, 1) if value is not None else None


RUNNERS = {
    Kind.PULL: pull,
    Kind.DELETE: delete,
    Kind.PRELOAD: preload,
    Kind.UNLOAD: unload,
    Kind.BENCHMARK: benchmark,
    Kind.DISCOVER: discover_hosts,
}
