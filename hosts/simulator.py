"""A simulated Ollama host: a real aiohttp server speaking Ollama's native API and its OpenAI-compatible `/v1` routes.

Tests start it as a fixture, `bench/` as a cheap upstream and `manage.py simhost` lets people try clood without
Ollama. Models, pacing, cold loads and failures come from a mutable `SimConfig`; nothing here needs Django.
This module owns the config, the server, failures, the `/_sim/*` control endpoints and what the routes share; the
routes themselves live in `simulator_ollama` (`/`, `/api/*`) and `simulator_openai` (`/v1/*`).
"""

import asyncio
import dataclasses
import hashlib
import json
import math
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiohttp import web

WORDS = ("The ", "quick ", "brown ", "fox ", "jumps ", "over ", "the ", "lazy ", "dog. ")
EMBEDDING_DIMENSION = 8
HUGE_BODY_BYTES = 50 * 1024 * 1024
FAIL_MODES = ("error", "hang", "drop", "garbage", "html", "wrong-shape", "huge")
GENERATION_PATHS = ("/api/chat", "/api/generate", "/v1/chat/completions", "/v1/completions")
DEFAULT_KEEP_ALIVE = 300.0
MODIFIED_AT = datetime(2025, 1, 1, tzinfo=UTC)
# Ollama's own words, so clients can tell "busy" from "broken".
BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"
CRASH_MESSAGE = "llama runner process has terminated: exit status 2"
NDJSON = "application/x-ndjson"

_PADDING = b"x" * (256 * 1024)
_WRONG_SHAPES = {
    "/api/tags": {"models": "nope"},
    "/api/ps": {"models": "nope"},
    "/v1/models": {"object": "list", "data": "nope"},
}
_HTML_PAGE = "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>"
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


@dataclass
class SimModel:
    name: str
    digest: str = ""  # sha256 hex of the name when not given
    size: int = 1_300_000_000
    family: str = "llama"
    parameter_size: str = "1B"
    quantization: str = "Q4_K_M"
    capabilities: list[str] | None = None  # ["completion"], or ["embedding"] when the name contains "embed"
    context_length: int = 4096
    loaded: bool = False
    expires_at: float | None = None  # epoch seconds while loaded; None = loaded until told otherwise

    def __post_init__(self):
        self.digest = self.digest or hashlib.sha256(self.name.encode()).hexdigest()
        if self.capabilities is None:
            self.capabilities = ["embedding"] if "embed" in self.name.lower() else ["completion"]

    @property
    def tag_name(self):
        """The name as Ollama lists it: with its tag, `:latest` when none was given."""
        return self.name if ":" in self.name.rsplit("/", 1)[-1] else f"{self.name}:latest"


@dataclass
class SimConfig:
    models: list[SimModel] = field(default_factory=lambda: [SimModel(name="llama3.2:1b")])
    version: str = "0.6.5"
    reply_tokens: int = 16
    ttft: float = 0.0  # seconds before the first token
    tokens_per_second: float = 0  # 0 = no pacing
    load_time: float = 0.0  # extra delay when the model is not loaded
    api_key: str | None = None  # when set, /v1/* needs `Authorization: Bearer <key>`
    ollama_api: bool = True  # False = an OpenAI-only server (llama.cpp, vLLM): /api/* is 404
    fail: str | None = None  # one of FAIL_MODES
    fail_status: int = 500
    fail_after_tokens: int = 3
    fail_paths: list[str] | None = None  # path prefixes the failure applies to; None = every path

    def __post_init__(self):
        if not isinstance(self.models, list | tuple):
            raise ValueError("models must be a list")
        self.models = [m if isinstance(m, SimModel) else SimModel(**m) for m in self.models]
        paths = self.fail_paths
        if paths is not None and not (isinstance(paths, list | tuple) and all(isinstance(p, str) for p in paths)):
            raise ValueError("fail_paths must be a list of path prefixes (or null)")
        if self.fail not in (None, *FAIL_MODES):
            raise ValueError(f"fail must be one of {', '.join(FAIL_MODES)} (or null), not {self.fail!r}")
        for name in ("reply_tokens", "ttft", "tokens_per_second", "load_time", "fail_after_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, not {value!r}")
        if not isinstance(self.fail_status, int) or not 100 <= self.fail_status <= 599:
            raise ValueError(f"fail_status must be an HTTP status, not {self.fail_status!r}")

    def update(self, changes):
        """Merge `changes` (field name -> value; models as dicts or SimModels) into this live config, all or nothing."""
        if not isinstance(changes, dict):
            raise ValueError("the config changes must be a JSON object")
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown config fields: {', '.join(sorted(unknown))}")
        merged = dataclasses.replace(self, **changes)  # validates and builds SimModels
        for name in changes:
            setattr(self, name, getattr(merged, name))

    def as_json(self):
        return dataclasses.asdict(self)

    def fails(self, path):
        """Whether the configured failure applies to a request for `path`."""
        return bool(self.fail) and (self.fail_paths is None or any(path.startswith(p) for p in self.fail_paths))


class Refused(Exception):
    """A request the simulated host turns down; rendered by `error_response` in the shape of the path's API."""

    def __init__(self, status, message, code=None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class SimulatedHost:
    """One simulated host: its live `config` (read per request, so tests may change it), its counters, its server."""

    def __init__(self, config=None):
        self.config = config if config is not None else SimConfig()
        self.port = None
        self.closing = False
        self._runner = None
        self._loop = None
        self._thread = None
        self._handlers = set()  # handler tasks now running, cancelled on close
        self._loading = {}  # model name -> loop time its cold load completes
        self._in_use = {}  # model name -> requests holding it loaded
        self._in_flight = 0
        self.reset_stats()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def stats(self):
        """A snapshot of the counters, safe to read from another thread."""
        return {
            "requests": dict(self._requests),
            "in_flight": self._in_flight,
            "max_in_flight": self._max_in_flight,
            "disconnects": self._disconnects,
            "loads": self._loads,
            "last_request": self._last_request,
        }

    def reset_stats(self):
        self._requests = {}
        self._max_in_flight = self._in_flight
        self._disconnects = 0
        self._loads = 0
        self._last_request = None

    def find_model(self, name):
        wanted = canonical_name(name)
        return next((m for m in self.config.models if canonical_name(m.name) == wanted), None)

    def is_loaded(self, model):
        if not model.loaded:
            return False
        return self._in_use.get(model.name, 0) > 0 or model.expires_at is None or model.expires_at > time.time()

    async def acquire(self, model):
        """Hold `model` loaded for a request, loading it first when cold (`load_time`; a request arriving mid-load
        waits for the rest of it). Returns the seconds spent waiting for the load."""
        warm = self.is_loaded(model)
        self._in_use[model.name] = self._in_use.get(model.name, 0) + 1
        if warm:
            return 0.0
        loop = asyncio.get_running_loop()
        ready_at = self._loading.get(model.name, 0.0)
        if ready_at <= loop.time():
            ready_at = self._loading[model.name] = loop.time() + self.config.load_time
            self._loads += 1
        started = loop.time()
        await asyncio.sleep(max(0.0, ready_at - started))
        model.loaded = True
        return loop.time() - started

    def release(self, model, keep_alive):
        """A request is done with `model`: keep it loaded `keep_alive` seconds more (None = forever, 0 = unload)."""
        self._in_use[model.name] -= 1
        if not self._in_use[model.name]:
            del self._in_use[model.name]
        model.expires_at = None if keep_alive is None else time.time() + keep_alive

    async def start(self, port=0):
        """Listen on 127.0.0.1:`port` (0 = a free port) in the running event loop."""
        # handler_cancellation: a handler is cancelled as soon as its client goes away, so slow streams notice.
        runner = web.AppRunner(build_app(self), handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
        except OSError:
            await runner.cleanup()
            raise
        self.closing = False
        self._runner = runner
        self.port = runner.addresses[0][1]
        return self

    async def close(self):
        """Stop listening and end every request in progress (their clients see the connection close)."""
        if self._runner is None:
            return
        self.closing = True
        for task in list(self._handlers):
            task.cancel()
        await self._runner.cleanup()
        self._runner = None

    def stop(self):
        """Stop a host started by `start_in_thread`; stopping it again does nothing."""
        loop, thread = self._loop, self._thread
        if loop is None:
            return
        self._loop = self._thread = None
        try:
            asyncio.run_coroutine_threadsafe(self.close(), loop).result(timeout=30)
        finally:
            _stop_loop(loop, thread)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.stop()

    def _record(self, request, body):
        self._requests[request.path] = self._requests.get(request.path, 0) + 1
        self._last_request = {
            "method": request.method,
            "path": request.path,
            "headers": dict(request.headers),
            "json": body,
        }

    def _generation_started(self):
        self._in_flight += 1
        self._max_in_flight = max(self._max_in_flight, self._in_flight)

    def _generation_finished(self, client_went_away):
        self._in_flight -= 1
        if client_went_away:
            self._disconnects += 1


HOST = web.AppKey("host", SimulatedHost)
BODY = web.RequestKey("body", object)  # the parsed JSON body
BODY_ERROR = web.RequestKey("body_error", str)  # why the body is not JSON
DROP_AFTER = web.RequestKey("drop_after", int)  # the `drop` failure: tokens sent before hanging up


def start_in_thread(config=None, port=0):
    """Start a simulated host on 127.0.0.1:`port` (0 = a free port) in a daemon thread with its own event loop.

    Returns once it is listening; stop it with `host.stop()` (or use it as a context manager).
    """
    host = SimulatedHost(config)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="simulated-host", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(host.start(port), loop).result(timeout=30)
    except BaseException:
        _stop_loop(loop, thread)
        raise
    host._loop, host._thread = loop, thread
    return host


def _stop_loop(loop, thread):
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=30)
    loop.close()


async def serve(configs_with_ports, on_ready=None):
    """Run one simulated host per (config, port) pair in this event loop until cancelled.

    `on_ready(hosts)` is called once every host listens.
    """
    hosts = []
    try:
        for config, port in configs_with_ports:
            hosts.append(await SimulatedHost(config).start(port))
        if on_ready is not None:
            on_ready(hosts)
        await _wait_forever()
    finally:
        for host in hosts:
            await host.close()


# --- request plumbing shared by the Ollama and OpenAI routes -------------------------------------------------------


@web.middleware
async def simulate(request, handler):
    """Every request but `/_sim/*`: count it, then play the configured failure, refuse a bad key, or answer."""
    if request.path.startswith("/_sim/"):
        return await handler(request)
    host = request.app[HOST]
    task = asyncio.current_task()
    host._handlers.add(task)
    try:
        return await _answer(request, handler, host)
    finally:
        host._handlers.discard(task)


async def _answer(request, handler, host):
    config, path = host.config, request.path
    host._record(request, await _read_json(request))
    if not config.ollama_api and (path == "/" or path.startswith("/api/")):
        return web.json_response({"detail": "Not Found"}, status=404)
    if config.fails(path):
        if config.fail == "drop" and path in GENERATION_PATHS:
            request[DROP_AFTER] = config.fail_after_tokens  # the generation drops mid-answer
        else:
            return await play_failure(request, config)
    if config.api_key and path.startswith("/v1/"):
        if request.headers.get("Authorization") != f"Bearer {config.api_key}":
            return error_response(path, 401, "Incorrect API key provided.", code="invalid_api_key")
    try:
        return await handler(request)
    except Refused as refusal:
        return error_response(path, refusal.status, refusal.message, code=refusal.code)


async def _read_json(request):
    """Parse the body once, keeping the result (or the parse error) on the request for the handler."""
    raw = await request.read() if request.can_read_body else b""
    if not raw:
        return None
    try:
        request[BODY] = json.loads(raw)
    except ValueError as exc:
        request[BODY_ERROR] = f"invalid JSON body: {exc}"
        return None
    return request[BODY]


def error_response(path, status, message, code=None):
    """The error body of the path's API: OpenAI's `{"error": {...}}` under /v1, Ollama's `{"error": "..."}` else."""
    if path.startswith("/v1/"):
        kind = {400: "invalid_request_error", 401: "invalid_request_error", 404: "not_found_error"}.get(status)
        body = {"error": {"message": message, "type": kind or "api_error", "param": None, "code": code}}
    else:
        body = {"error": message}
    return web.json_response(body, status=status)


async def play_failure(request, config):
    """Answer as a broken host would, per `config.fail`."""
    mode = config.fail
    if mode == "error":
        message = {503: BUSY_MESSAGE, 500: CRASH_MESSAGE}.get(config.fail_status, f"HTTP {config.fail_status}")
        return error_response(request.path, config.fail_status, message)
    if mode == "hang":
        await _wait_forever()  # until the client gives up and aiohttp cancels this handler
    if mode == "drop":
        await drop_connection(request)
    if mode == "garbage":
        return web.Response(body=b'{"models": [{"name": "llama3.2', content_type="application/json")
    if mode == "html":
        return web.Response(text=_HTML_PAGE, content_type="text/html")
    if mode == "wrong-shape":
        return web.json_response(_WRONG_SHAPES.get(request.path, ["not", "the", "expected", "shape"]))
    return await _send_huge_body(request)


async def _send_huge_body(request):
    """~50 MB of valid JSON, written in chunks so the simulator's memory stays small."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    try:
        await response.write(b'{"models": [], "padding": "')
        for _ in range(HUGE_BODY_BYTES // len(_PADDING)):
            await response.write(_PADDING)
        await response.write(b'"}')
    except ConnectionError:
        pass  # the client stopped reading, as a careful client should
    return response


async def drop_connection(request):
    """End the TCP connection without (finishing) the answer; aiohttp then cancels this handler."""
    if request.transport is not None:
        request.transport.close()
    await _wait_forever()


async def _wait_forever():
    await asyncio.get_running_loop().create_future()


def json_object(request):
    """The request's JSON object, or Refused(400)."""
    if BODY_ERROR in request:
        raise Refused(400, request[BODY_ERROR])
    body = request.get(BODY)
    if not isinstance(body, dict):
        raise Refused(400, "the request body must be a JSON object")
    return body


def requested_model(request, body, needs=None):
    """The SimModel `body["model"]` names, or Refused (400 missing or lacking capability `needs`, 404 unknown)."""
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise Refused(400, "model is required")
    model = request.app[HOST].find_model(name)
    if model is None:
        raise Refused(404, f'model "{name}" not found, try pulling it first', code="model_not_found")
    if needs and needs not in model.capabilities:
        raise Refused(400, f'"{name}" does not support {"chat" if needs == "completion" else needs}')
    return model


class Generation:
    """One request that makes a model work: in-flight accounting, the cold load and time to first token, tokens at
    the configured pace, the `drop` failure, and noticing a client that went away (counted in `disconnects`).

    A vanished client shows up as CancelledError (aiohttp cancels the handler), a ConnectionError on write, or a
    closing transport seen between tokens; the last two end the request quietly.
    """

    def __init__(self, request, model, keep_alive=None):
        self.request = request
        self.host = request.app[HOST]
        self.config = self.host.config
        self.model = model
        self.keep_alive = keep_alive_seconds(keep_alive)
        self.drop_after = request.get(DROP_AFTER)
        self.response = None
        self.started = time.perf_counter()
        self.first_token_at = None
        self.load_seconds = 0.0
        self.holding = False
        self.dropped = False

    async def __aenter__(self):
        self.host._generation_started()
        return self

    async def __aexit__(self, kind, exc, traceback):
        client_gone = kind is not None and issubclass(kind, asyncio.CancelledError | ConnectionError)
        self.host._generation_finished(client_gone and not self.dropped and not self.host.closing)
        if self.holding:
            self.host.release(self.model, self.keep_alive)
        if kind is not None and issubclass(kind, ConnectionError):
            if self.response is None:
                self.response = web.Response(status=499, reason="Client Closed Request")  # never reaches anyone
            return True
        return False

    async def load(self):
        self.holding = True
        self.load_seconds = await self.host.acquire(self.model)

    async def produce(self, count, chunks=None, content_type=NDJSON, opening=b""):
        """Wait as a real host would, then make `count` tokens at the configured pace.

        With `chunks` the answer streams: headers and `opening` after the wait, then one chunk per token (cycling
        through `chunks`, pre-rendered once per request). Without, the caller answers once this returns.
        """
        await self.load()
        if self.config.ttft > 0:
            await asyncio.sleep(self.config.ttft)
        self.first_token_at = time.perf_counter()
        if chunks is not None:
            self.response = web.StreamResponse(headers={"Content-Type": content_type, "Cache-Control": "no-cache"})
            await self.response.prepare(self.request)
            if opening:
                await self.response.write(opening)
        loop = asyncio.get_running_loop()
        begin = loop.time()
        for index in range(count):
            if index == self.drop_after:
                await self._drop()
            tokens_per_second = self.config.tokens_per_second
            if tokens_per_second > 0 and index:
                delay = begin + index / tokens_per_second - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            transport = self.request.transport
            if transport is None or transport.is_closing():
                raise ConnectionResetError("the client went away")
            if chunks is not None:
                await self.response.write(chunks[index % len(chunks)])
        if self.drop_after is not None:
            await self._drop()

    async def send(self, data):
        await self.response.write(data)

    def durations(self):
        """Ollama's timing fields, in nanoseconds."""
        now = time.perf_counter()
        first = self.first_token_at or now
        return {
            "total_duration": _ns(now - self.started),
            "load_duration": _ns(self.load_seconds),
            "prompt_eval_duration": _ns(first - self.started - self.load_seconds),
            "eval_duration": _ns(now - first),
        }

    async def _drop(self):
        self.dropped = True
        await drop_connection(self.request)


def keep_alive_seconds(value):
    """Seconds to keep a model loaded after a request, from Ollama's `keep_alive` (seconds, or a duration like "5m"):
    None = forever (negative), DEFAULT_KEEP_ALIVE when absent or unreadable."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            unsigned = text.removeprefix("-")
            parts = _DURATION_PART.findall(unsigned)
            if "".join(number + unit for number, unit in parts) != unsigned:
                return DEFAULT_KEEP_ALIVE
            seconds = sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)
            seconds = -seconds if text.startswith("-") else seconds
    else:
        return DEFAULT_KEEP_ALIVE
    return None if seconds < 0 else seconds


def canonical_name(name):
    """Ollama's identity for a model name: case-insensitive, `:latest` when untagged, `library/` implied."""
    name = str(name or "").strip().lower()
    for prefix in ("registry.ollama.ai/", "library/"):
        name = name.removeprefix(prefix)
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def reply_text(count):
    """The text of a `count`-token reply: WORDS, cycling."""
    return "".join(WORDS[index % len(WORDS)] for index in range(count))


def token_count(limit, default):
    """(tokens to send, whether the request's limit decided it): a positive integer limit is the count."""
    if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
        return limit, True
    return default, False


def count_words(value):
    """A rough token count for usage: the words in every text of a prompt or a message list."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(count_words(item) for item in value)
    if isinstance(value, dict):
        return count_words(value.get("content")) + count_words(value.get("text"))
    return 0


def chosen_tool(body):
    """The function a tool-calling reply calls: the one `tool_choice` names, else the first tool; None = text."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if not isinstance(tools, list) or not tools or choice == "none":
        return None
    candidates = [choice, tools[0]] if isinstance(choice, dict) else [tools[0]]
    for candidate in candidates:
        function = candidate.get("function") if isinstance(candidate, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if isinstance(name, str) and name:
            return name
    return None


def embedding_vector(text):
    """A deterministic unit vector of EMBEDDING_DIMENSION floats for `text`."""
    digest = hashlib.sha256(text.encode()).digest()
    raw = [byte / 127.5 - 1 for byte in digest[:EMBEDDING_DIMENSION]]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [round(v / norm, 6) for v in raw]


def _ns(seconds):
    return max(0, int(seconds * 1e9))


# --- runtime control -----------------------------------------------------------------------------------------------


async def control_stats(request):
    return web.json_response(request.app[HOST].stats)


async def control_config(request):
    host = request.app[HOST]
    if request.method == "POST":
        try:
            host.config.update(await request.json())
        except (TypeError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
    return web.json_response(host.config.as_json())


async def control_reset_stats(request):
    host = request.app[HOST]
    host.reset_stats()
    return web.json_response(host.stats)


# --- the app -------------------------------------------------------------------------------------------------------


async def health(request):
    """llama.cpp's health check; an Ollama server has none."""
    if request.app[HOST].config.ollama_api:
        raise web.HTTPNotFound(text="404 page not found")
    return web.json_response({"status": "ok"})


def build_app(host):
    """The aiohttp application serving `host`."""
    # imported here: those modules build on this one
    from hosts.simulator_ollama import add_ollama_routes
    from hosts.simulator_openai import add_openai_routes

    app = web.Application(middlewares=[simulate], client_max_size=64 * 1024 * 1024)
    app[HOST] = host
    routes = app.router
    add_ollama_routes(app)
    routes.add_get("/health", health)
    add_openai_routes(app)
    routes.add_get("/_sim/stats", control_stats)
    routes.add_get("/_sim/config", control_config)
    routes.add_post("/_sim/config", control_config)
    routes.add_post("/_sim/reset-stats", control_reset_stats)
    return app
