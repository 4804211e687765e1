"""A simulated Ollama host: a real aiohttp server speaking Ollama's native API and its OpenAI-compatible `/v1` routes.

Tests start it as a fixture, `bench/` as a cheap upstream and `manage.py simhost` lets people try clood without
Ollama. Models, pacing, cold loads and failures come from a mutable `SimConfig`; nothing here needs Django.
This module owns the config, the server and the `/_sim/*` control endpoints; the request plumbing the routes share
(middleware, failures, pacing, body helpers) lives in `simulator_requests`, what answers say (reply text, token
counts, tool calls, embeddings) in `simulator_replies`, the models and the library with Ollama's model-store routes
(pull, delete, copy) in `simulator_store`, the other routes in `simulator_ollama` (`/`, `/api/*`) and
`simulator_openai` (`/v1/*`).
"""

import asyncio
import dataclasses
import random
import threading
import time
from dataclasses import dataclass, field

from aiohttp import web

from hosts.simulator_ollama import add_ollama_routes
from hosts.simulator_openai import add_openai_routes
from hosts.simulator_replies import EMBEDDING_DIMENSION, embedding_vector, reply_text
from hosts.simulator_requests import (
    BAD_UTF8,
    BUSY_MESSAGE,
    FAIL_MODES,
    GENERATION_PATHS,
    HOST,
    HUGE_BODY_BYTES,
    HUGE_LINE_BYTES,
    WRONG_MODEL,
    simulate,
    wait_forever,
)
from hosts.simulator_store import SimModel, add_store_routes, canonical_name, default_library, model_list

# Re-exported for code that imports them from here.
__all__ = [
    "BAD_UTF8",
    "BUSY_MESSAGE",
    "EMBEDDING_DIMENSION",
    "FAIL_MODES",
    "GENERATION_PATHS",
    "HUGE_BODY_BYTES",
    "HUGE_LINE_BYTES",
    "WRONG_MODEL",
    "SimConfig",
    "SimModel",
    "SimulatedHost",
    "build_app",
    "canonical_name",
    "default_library",
    "embedding_vector",
    "reply_text",
    "serve",
    "start_in_thread",
]


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
    fail_after_tokens: int = 3  # good tokens before a failure inside the answer (drop, drip, huge-line, bad-utf8)
    drip_rate: float = 1.0  # bytes a second in the `drip` failure
    fail_paths: list[str] | None = None  # path prefixes the failure applies to; None = every path
    fail_rate: float = 1.0  # the share of matching requests that fail (0.05 = one in twenty, at random)
    # The registry /api/pull fetches from: a name not in it fails as an unknown model fails on Ollama. Pulling one
    # that is here adds it to `models` (not loaded). Names, objects of SimModel fields, or SimModels.
    library: list[SimModel] = field(default_factory=default_library)
    # Seconds a pull takes to download, spread over its layers by size, a progress line at least every 0.1 s
    # (0 = at once). A pull dies half way with fail="drop" and fail_paths=["/api/pull"]: the host hangs up after
    # `fail_after_tokens` progress lines; fail="drip" sends the rest of the stream `drip_rate` bytes a second.
    pull_seconds: float = 0.0

    def __post_init__(self):
        self.models = model_list("models", self.models)
        self.library = model_list("library", self.library)
        paths = self.fail_paths
        if paths is not None and not (isinstance(paths, list | tuple) and all(isinstance(p, str) for p in paths)):
            raise ValueError("fail_paths must be a list of path prefixes (or null)")
        if self.fail not in (None, *FAIL_MODES):
            raise ValueError(f"fail must be one of {', '.join(FAIL_MODES)} (or null), not {self.fail!r}")
        for name in ("reply_tokens", "ttft", "tokens_per_second", "load_time", "fail_after_tokens", "pull_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, not {value!r}")
        rate = self.fail_rate
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
            raise ValueError(f"fail_rate must be a number from 0 to 1, not {rate!r}")
        rate = self.drip_rate
        if isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0:
            raise ValueError(f"drip_rate must be a number > 0, not {rate!r}")
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
        if not self.fail or not (self.fail_paths is None or any(path.startswith(p) for p in self.fail_paths)):
            return False
        return self.fail_rate >= 1 or random.random() < self.fail_rate


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
        await wait_forever()
    finally:
        for host in hosts:
            await host.close()


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
    app = web.Application(middlewares=[simulate], client_max_size=64 * 1024 * 1024)
    app[HOST] = host
    routes = app.router
    add_ollama_routes(app)
    add_store_routes(app)
    routes.add_get("/health", health)
    add_openai_routes(app)
    routes.add_get("/_sim/stats", control_stats)
    routes.add_get("/_sim/config", control_config)
    routes.add_post("/_sim/config", control_config)
    routes.add_post("/_sim/reset-stats", control_reset_stats)
    return app
