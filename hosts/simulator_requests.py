"""Request plumbing shared by the simulated host's Ollama and OpenAI routes.

The middleware that counts each request and plays the configured failure (`SimConfig.fail`), the `Generation` that
paces a model's tokens, and the helpers that read a request's body and model. `hosts.simulator` builds on this module.
"""

import asyncio
import hashlib
import json
import math
import re
import time
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

# The SimulatedHost an app serves; typed loosely because hosts.simulator, where it is defined, imports this module.
HOST = web.AppKey("host", object)
BODY = web.RequestKey("body", object)  # the parsed JSON body
BODY_ERROR = web.RequestKey("body_error", str)  # why the body is not JSON
DROP_AFTER = web.RequestKey("drop_after", int)  # the `drop` failure: tokens sent before hanging up


class Refused(Exception):
    """A request the simulated host turns down; rendered by `error_response` in the shape of the path's API."""

    def __init__(self, status, message, code=None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


# --- the middleware and failures -----------------------------------------------------------------------------------


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
        await wait_forever()  # until the client gives up and aiohttp cancels this handler
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
    await wait_forever()


async def wait_forever():
    await asyncio.get_running_loop().create_future()


# --- a request's body and model ------------------------------------------------------------------------------------


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


# --- generation ----------------------------------------------------------------------------------------------------


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


# --- values the routes read and reply with -------------------------------------------------------------------------


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
