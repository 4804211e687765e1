"""The public API as Channels ASGI consumers. One request's life reads top to bottom in `RelayConsumer.serve`:
parse → route → admit → relay (with failover) → record.

Each request runs in its own task so that the consumer keeps listening: when the client disconnects (at any
stage: queued, waiting for the host, streaming) the task is cancelled, which closes the upstream request and
frees the slot at once.
"""

import asyncio
import json
import logging
import secrets
import time
from datetime import UTC, datetime

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.http import AsyncHttpConsumer
from django.conf import settings

from atc.events import apublish, publish
from hosts import snapshot
from proxy import aliases, keys, metrics, records
from proxy.endpoints import ENDPOINTS, parse, prompt_preview, upstream_body
from proxy.errors import ApiError, in_band_error
from proxy.relay import UpstreamError, relay
from proxy.routing import choose_hosts
from proxy.state import Flight, admission, flights, stats, waiting
from proxy.telemetry import Telemetry

log = logging.getLogger(__name__)


class ApiConsumer(AsyncHttpConsumer):
    """Base for clood's API consumers: bounded body, per-request task, errors in the API's own shape."""

    flavour = "openai"
    # No per-request channel-layer channel: proxy consumers receive nothing from the layer.
    channel_layer_alias = None
    methods = ("POST",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.size = 0
        self.worker = None
        self.started = False
        self.key = None  # the client's KeyView, once authenticated
        self.staff = None  # or the staff user of one of clood's own pages

    async def dispatch(self, message):
        # AsyncConsumer.dispatch closes old DB connections around every message (a thread hop each time);
        # these consumers never touch the database, so skip it.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def http_request(self, message):
        # Slow and oversized requests are cut off by the server (clood_site/serve.py) before they get here; the size
        # check stays for bodies without a Content-Length (chunked).
        if self.worker is not None:
            return
        chunk = message.get("body", b"")
        self.size += len(chunk)
        if self.size > settings.CLOOD_MAX_BODY_BYTES:
            limit = settings.CLOOD_MAX_BODY_BYTES
            self.worker = asyncio.create_task(
                self.send_error(ApiError(413, f"The request body is larger than {limit} bytes.", code="too_large"))
            )
            return
        self.body.append(chunk)
        if not message.get("more_body"):
            self.worker = asyncio.create_task(self._run(b"".join(self.body)))

    async def http_disconnect(self, message):
        if self.worker is not None and not self.worker.done():
            self.worker.cancel()
            try:
                await self.worker
            except asyncio.CancelledError:
                pass
        raise StopConsumer()

    async def _run(self, body):
        try:
            await self.authenticate()
            if self.scope["method"] not in self.methods:
                raise ApiError(405, f"Method {self.scope['method']} is not allowed here.", code="method_not_allowed")
            await self.serve(body)
        except ApiError as error:
            await self.send_error(error)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("unexpected error serving %s", self.scope.get("path"))
            error = ApiError(500, "clood hit an internal error; it has been logged.", code="internal")
            self.record_internal_error(error)
            await self.send_error(error)

    def record_internal_error(self, error):
        """A bug, not the client's or a host's fault: subclasses that log requests log this one too."""

    async def authenticate(self):
        """/v1 and /api need a key when any exists (or CLOOD_REQUIRE_API_KEY); /status, /health, /ready never."""
        if self.scope["path"].startswith(("/v1/", "/api/")):
            self.key, self.staff = await keys.identify(self.scope)

    async def send_error(self, error):
        if self.started:
            return
        status, headers, body = error.render(self.flavour)
        if status == 401:
            headers = headers + [(b"www-authenticate", b'Bearer realm="clood"')]
        await self.send_response(status, body, headers=headers + self.extra_headers())

    async def send_json(self, obj, status=200):
        body = json.dumps(obj).encode()
        await self.send_response(status, body, headers=[(b"content-type", b"application/json")] + self.extra_headers())

    def extra_headers(self):
        return []

    async def serve(self, body):
        raise NotImplementedError


class RelayConsumer(ApiConsumer):
    """Generation and model endpoints that are routed to a host: chat, completions, embeddings, show."""

    def __init__(self, *args, endpoint, **kwargs):
        super().__init__(*args, **kwargs)
        self.endpoint = ENDPOINTS[endpoint]
        self.flavour = self.endpoint.flavour
        self.request_id = secrets.token_hex(8)
        self.decision = None
        self.route = None
        self.host_name = ""

    def extra_headers(self):
        headers = [(b"x-clood-request-id", self.request_id.encode())]
        decision = self.decision
        if decision is not None:
            headers.append((b"x-clood-decision", decision.id.encode()))
            if decision.candidates:
                headers.append((b"x-clood-model", decision.model.encode()))
            if decision.auto is not None:
                headers.append((b"x-clood-tier", decision.auto["tier"].encode()))
        if self.route is not None and self.route.alias is not None:
            headers.append((b"x-clood-alias", self.route.alias.name.encode()))
        if self.host_name:
            headers.append((b"x-clood-host", self.host_name.encode()))
        return headers

    def record_internal_error(self, error):
        self._record(outcome="failed", status=500, error=error.message, host=self.host_name)

    async def authenticate(self):
        self.queued_at = time.time()
        try:
            await super().authenticate()
        except ApiError as error:
            self._record(outcome="rejected", status=error.status, error=error.message)
            raise

    async def serve(self, body):
        try:
            self.parsed = parsed = parse(self.endpoint, body)
            keys.check_model(self.key, parsed.model, parsed.model_key)
            key_token = await keys.limits.acquire(self.key) if self.key is not None else None
        except ApiError as error:
            self._record(outcome="rejected", status=error.status, error=error.message)
            raise
        try:
            await self._route_and_relay(body, parsed)
        finally:
            if self.key is not None:
                keys.limits.release(self.key, key_token)

    async def _route_and_relay(self, body, parsed):
        self.prompt = prompt_preview(parsed.payload, settings.CLOOD_EVENT_PROMPT_CHARS)
        garden = await snapshot.ensure_fresh()

        def choose(model):
            return choose_hosts(model, garden, stats, admission.in_flight, strategy=settings.CLOOD_ROUTING_STRATEGY,
                                backends=self.endpoint.backends)  # fmt: skip

        # An alias becomes a chain of real models, each with its own decision; a plain model is a chain of one.
        self.route = aliases.resolve(parsed.model_key, parsed.payload, garden, await aliases.table(), choose)
        decisions = self.route.decisions()
        if not decisions:
            self.decision = self.route.first_decision()
            self._reject_unroutable(parsed, garden)
        for decision in decisions:
            for candidate in decision.candidates:
                admission.set_limit(candidate.host.name, candidate.host.max_concurrency)
        await self._serve_with_failover(body, parsed, decisions)

    def _reject_unroutable(self, parsed, garden):
        error = aliases.unroutable_error(self.route, parsed.model, garden)
        self._record(outcome="rejected", status=error.status, error=error.message)
        raise error

    async def _serve_with_failover(self, body, parsed, decisions):
        """Each decision's candidates in turn; when all of them fail, the next decision's (an alias's fallback)."""
        attempts = []
        self.queue_wait_ms = None  # the wait for the first slot
        for index, decision in enumerate(decisions):
            self.decision = decision
            result = await self._serve_decision(body, parsed, decision, attempts, last=index == len(decisions) - 1)
            if result is not None:
                return result
        self._fail_all(parsed, attempts, self.queue_wait_ms)

    async def _serve_decision(self, body, parsed, decision, attempts, *, last):
        """The decision's hosts, best first, until one answers: its result, or None when every one failed."""
        remaining = list(decision.candidates)
        while remaining:
            wait_started = time.monotonic()
            host_name = await self._admit([c.host.name for c in remaining], parsed)
            if self.queue_wait_ms is None:
                self.queue_wait_ms = (time.monotonic() - wait_started) * 1000
            candidate = next(c for c in remaining if c.host.name == host_name)
            remaining.remove(candidate)
            try:
                result = await self._attempt(candidate, body, parsed, attempts, self.queue_wait_ms)
            except UpstreamError as error:
                stats.upstream_failed(host_name)
                attempts.append({"host": host_name, "error": error.message, "status": error.status,
                                 **({"timeout": True} if error.timeout else {}),
                                 **({"model": decision.model} if decision.alias else {})})  # fmt: skip
                await apublish("request_failed", id=self.request_id, model=parsed.model, host=host_name,
                               error=error.message, status=error.status, attempt=len(attempts),
                               will_retry=bool(remaining) or not last)  # fmt: skip
                continue
            finally:
                self._release(host_name)
            return result
        return None

    async def _admit(self, hosts, parsed):
        if not self.endpoint.admitted:
            return hosts[0]

        def queued(position):
            waiting[self.request_id] = {"id": self.request_id, "model": parsed.model, "since_ts": time.time(),
                                        "candidates": list(hosts)}  # fmt: skip
            publish("request_queued", id=self.request_id, model=parsed.model, position=position, candidates=hosts)

        try:
            return await admission.acquire(
                hosts, max_queue=settings.CLOOD_QUEUE_MAX, timeout=settings.CLOOD_QUEUE_TIMEOUT, on_queued=queued
            )
        except ApiError as error:
            stats.totals["rejected"] += 1
            self._record(outcome="rejected", status=error.status, error=error.message)
            raise
        except asyncio.CancelledError:
            self._record(outcome="cancelled", status=499, error="the client went away while queued")
            raise
        finally:
            waiting.pop(self.request_id, None)

    def _release(self, host_name):
        if self.endpoint.admitted:
            admission.release(host_name)

    async def _attempt(self, candidate, body, parsed, attempts, queue_wait_ms):
        host = candidate.host
        cold = not candidate.loaded
        self.host_name = host.name
        stats.attempt_started(host.name)
        started = time.monotonic()
        started_at = time.time()
        decision = self.decision
        alias = {"alias": decision.alias, "alias_reason": decision.alias_reason} if decision.alias else {}
        if decision.auto is not None:
            alias["auto"] = decision.auto
        await apublish(
            "request_started", id=self.request_id, model=parsed.model, resolved_model=decision.model, **alias,
            host=host.name, endpoint=self.endpoint.name, stream=parsed.stream, cold=cold, attempt=len(attempts) + 1,
            decision=decision.as_dict(), client=self._client(), prompt=self.prompt,
        )  # fmt: skip
        fmt = ("sse" if self.flavour == "openai" else "ndjson") if parsed.stream else "json"
        telemetry = Telemetry(fmt, started)
        sink = _Sink(self, telemetry, parsed)
        first_byte = settings.CLOOD_COLD_START_TIMEOUT if cold else settings.CLOOD_FIRST_BYTE_TIMEOUT
        outbound = upstream_body(body, parsed, candidate.model.remote_name)
        flights[self.request_id] = Flight(
            id=self.request_id, model=parsed.model, host=host.name, endpoint=self.endpoint.name, stream=parsed.stream,
            cold=cold, client=self._client(), prompt=self.prompt, telemetry=telemetry,
        )  # fmt: skip
        try:
            result = await relay(
                host, "POST", self.endpoint.path, outbound, sink, telemetry,
                first_byte_timeout=first_byte, idle_timeout=settings.CLOOD_IDLE_TIMEOUT,
            )  # fmt: skip
        except asyncio.CancelledError:  # the client went away: the relay has closed the upstream request
            gone = "the client went away"
            publish("request_failed", id=self.request_id, model=parsed.model, host=host.name, error=gone, status=None,
                    attempt=len(attempts) + 1, will_retry=False)  # fmt: skip
            self._record(outcome="cancelled", status=499, error=gone, host=host.name, cold_start=cold,
                         attempts=attempts + [{"host": host.name}], started_at=_dt(started_at),
                         queue_wait_ms=queue_wait_ms, duration_ms=(time.monotonic() - started) * 1000)  # fmt: skip
            raise
        finally:
            flights.pop(self.request_id, None)
        error = result.error or (telemetry.error or "")
        if not result.complete:
            await self.send_body(in_band_error(self.flavour, result.error), more_body=True)
        await self.send_body(b"", more_body=False)
        finished = time.monotonic()
        ok = result.complete and result.status < 400 and not telemetry.error
        if result.complete and result.status < 500:
            stats.upstream_succeeded(host.name)
            if cold and result.status < 400:
                stats.host(host.name).warm[candidate.model.name] = finished
        else:
            stats.upstream_failed(host.name)
        tokens = telemetry.total_tokens
        tokens_per_s = telemetry.tokens_per_s(finished)
        stats.request_finished(host.name, ok=ok, tokens=tokens, ttft_ms=telemetry.ttft_ms, tokens_per_s=tokens_per_s,
                               model=candidate.model.name)  # fmt: skip
        duration_ms = (finished - started) * 1000
        event = "request_completed" if ok else "request_failed"
        await apublish(
            event, id=self.request_id, model=parsed.model, host=host.name, status=result.status,
            duration_ms=round(duration_ms, 1), ttft_ms=_round(telemetry.ttft_ms), tokens=tokens,
            tokens_per_s=_round(tokens_per_s), cold=cold, complete=result.complete, error=error,
            attempt=len(attempts) + 1, will_retry=False,
        )  # fmt: skip
        self._record(
            outcome="ok" if ok else ("incomplete" if not result.complete else "failed"),
            status=result.status, error=error, host=host.name, attempts=attempts + [{"host": host.name}],
            cold_start=cold, started_at=_dt(started_at), queue_wait_ms=queue_wait_ms,
            first_token_at=_dt(started_at + telemetry.ttft_ms / 1000) if telemetry.ttft_ms is not None else None,
            ttft_ms=telemetry.ttft_ms, duration_ms=duration_ms, prompt_tokens=telemetry.prompt_tokens,
            completion_tokens=tokens, tokens_per_s=tokens_per_s, finish_reason=telemetry.finish_reason or "",
        )  # fmt: skip
        return result

    def _fail_all(self, parsed, attempts, queue_wait_ms):
        self.host_name = ""
        stats.totals["requests"] += 1
        stats.totals["errors"] += 1
        tried = "; ".join(a["error"] for a in attempts)
        # Decided by every attempt, not the last one, so the answer does not depend on the order hosts were tried.
        if attempts and all(a.get("timeout") for a in attempts):
            status = 504
        elif attempts and all(a.get("status") in (409, 429, 503) for a in attempts):
            status = 503  # every host was busy: worth retrying soon
        else:
            status = 502
        asked = f"'{parsed.model}' ({', '.join(self.route.targets())})" if self.route.alias else f"'{parsed.model}'"
        error = ApiError(status, f"Every host for {asked} failed: {tried}", code="upstream_failed",
                         retry_after=5 if status == 503 else None)  # fmt: skip
        self._record(outcome="failed", status=status, error=error.message, attempts=attempts,
                     queue_wait_ms=queue_wait_ms)  # fmt: skip
        raise error

    def _client(self):
        client = self.scope.get("client")
        return f"{client[0]}" if client else ""

    def _record(self, *, outcome, status, error="", host="", attempts=(), **fields):
        parsed = getattr(self, "parsed", None)
        metrics.request_recorded(self.endpoint.name, self.decision, host, outcome, fields)
        records.add(
            request_id=self.request_id,
            decision_id=self.decision.id if self.decision else "",
            endpoint=self.endpoint.name,
            model=parsed.model if parsed else "",
            served_model=self.decision.model if self.decision is not None and host else "",
            host=host,
            client=self._client(),
            api_key_id=self.key.id if self.key else None,
            api_key_name=self.key.name if self.key else (f"staff:{self.staff.username}" if self.staff else ""),
            stream=parsed.stream if parsed else False,
            status=status,
            outcome=outcome,
            error=error[:2000],
            attempts=list(attempts),
            queued_at=_dt(getattr(self, "queued_at", time.time())),
            finished_at=datetime.now(UTC),
            **fields,
        )


class _Sink:
    """Where the relay writes: the client's response, started with clood's own headers."""

    def __init__(self, consumer, telemetry, parsed):
        self.consumer = consumer
        self.telemetry = telemetry
        self.parsed = parsed
        self.first_token_sent = False

    async def start(self, status, headers):
        consumer = self.consumer
        headers = list(headers) + consumer.extra_headers()
        if self.parsed.stream:
            headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
            headers += [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
        consumer.started = True
        await consumer.send_headers(status=status, headers=headers)

    async def body(self, chunk):
        await self.consumer.send_body(chunk, more_body=True)
        if not self.first_token_sent and self.telemetry.first_token_at is not None:
            self.first_token_sent = True
            consumer = self.consumer
            ttft_ms = _round(self.telemetry.ttft_ms)
            publish("request_first_token", id=consumer.request_id, host=consumer.host_name, ttft_ms=ttft_ms)


def _dt(timestamp):
    return datetime.fromtimestamp(timestamp, UTC)


def _round(value):
    return round(value, 1) if value is not None else None
