"""Request plumbing shared by the simulated host's Ollama and OpenAI routes.

The middleware that counts each request and plays the configured failure (`SimConfig.fail`), the `Generation` that
paces a model's tokens (and plays the failures that happen inside an answer), and the helpers that read a request's
body and model. `hosts.simulator` builds on this module.
"""

import asyncio
import json
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from aiohttp import web

WORDS = ("The ", "quick ", "brown ", "fox ", "jumps ", "over ", "the ", "lazy ", "dog. ")
HUGE_BODY_BYTES = 50 * 1024 * 1024
HUGE_LINE_BYTES = 100 * 1024 * 1024
# Failures that happen inside a generation's answer; on other paths the host answers normally (`drop` hangs up).
ANSWER_FAULTS = ("drop", "drip", "huge-line", "bad-utf8", "wrong-model")
FAIL_MODES = ("error", "hang", "garbage", "html", "wrong-shape", "huge", *ANSWER_FAULTS)
GENERATION_PATHS = ("/api/chat", "/api/generate", "/v1/chat/completions", "/v1/completions")
# The failures each streaming path plays inside its answer (a pull's progress lines count as its tokens).
STREAM_FAULTS = {**dict.fromkeys(GENERATION_PATHS, ANSWER_FAULTS), "/api/pull": ("drop", "drip")}
WRONG_MODEL = "impostor:7b"  # the model a `wrong-model` answer names
BAD_UTF8 = b"\xff\xfe"  # never valid in UTF-8
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
FAULT = web.RequestKey("fault", object)  # the Fault a generation plays in its answer


@dataclass(frozen=True)
class Fault:
    """A failure inside a generation's answer, fixed when the request arrives (the config may change meanwhile).

    After `after_tokens` good tokens: `drop` hangs up; `drip` sends the rest one byte at a time, `drip_rate` bytes a
    second (from the very start, headers aside, when `after_tokens` is 0); `huge-line` puts HUGE_LINE_BYTES of "x" in
    the next token's text (one ~100 MB line, then the normal end); `bad-utf8` puts BAD_UTF8 in it. `wrong-model`
    names WRONG_MODEL as the answer's model. A single (non-streamed) answer drips, grows or breaks as a whole.
    A pull plays `drop` and `drip` the same way, its progress lines counting as tokens.
    """

    mode: str
    after_tokens: int
    drip_rate: float


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
        if config.fail in STREAM_FAULTS.get(path, ()):
            # played by Generation, or by the pull's progress stream
            request[FAULT] = Fault(config.fail, config.fail_after_tokens, config.drip_rate)
        elif config.fail not in ANSWER_FAULTS or config.fail == "drop":
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


def answered_model(request, body):
    """The model name an answer carries: the one asked for, unless the request plays `wrong-model`."""
    fault = request.get(FAULT)
    return WRONG_MODEL if fault is not None and fault.mode == "wrong-model" else body["model"]


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
    the configured pace, the failures inside an answer (`Fault`), and noticing a client that went away (counted in
    `disconnects`).

    A vanished client shows up as CancelledError (aiohttp cancels the handler), a ConnectionError on write, or a
    closing transport seen between tokens; the last two end the request quietly.
    """

    def __init__(self, request, model, keep_alive=None):
        self.request = request
        self.host = request.app[HOST]
        self.config = self.host.config
        self.model = model
        self.keep_alive = keep_alive_seconds(keep_alive)
        self.fault = request.get(FAULT)
        self.drop_after = self.fault.after_tokens if self.fault and self.fault.mode == "drop" else None
        self.dripping = False
        self.response = None
        self.started = time.perf_counter()
        self.first_token_at = None
        self.pace = 0.0  # tokens_per_second when the tokens began
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
        self.pace = self.config.tokens_per_second
        if chunks is not None:
            self.response = web.StreamResponse(headers={"Content-Type": content_type, "Cache-Control": "no-cache"})
            await self.response.prepare(self.request)
            self._fault_begins(0)  # a drip from the start takes the opening line too
            if opening:
                await self._write(opening)
        loop = asyncio.get_running_loop()
        begin = loop.time()
        for index in range(count):
            if index == self.drop_after:
                await self._drop()
            broken_text = self._fault_begins(index)
            tokens_per_second = self.config.tokens_per_second
            if tokens_per_second > 0 and index:
                delay = begin + index / tokens_per_second - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            transport = self.request.transport
            if transport is None or transport.is_closing():
                raise ConnectionResetError("the client went away")
            if chunks is not None:
                await self._write(chunks[index % len(chunks)], broken_text)
        self._fault_begins(count)  # a drip after the last token takes the end of the answer
        if self.drop_after is not None:
            await self._drop()

    async def send(self, data):
        await self._write(data)

    async def answer(self, response):
        """Answer with `response`, a single (non-streamed) body, playing the request's fault on it if any."""
        fault = self.fault
        if fault is None or fault.mode not in ("drip", "huge-line", "bad-utf8"):
            self.response = response
            return
        self.response = web.StreamResponse(status=response.status, headers={"Content-Type": response.content_type})
        await self.response.prepare(self.request)
        self.dripping = fault.mode == "drip"
        await self._write(response.body, broken_text=None if self.dripping else WORDS[0])

    def _fault_begins(self, index):
        """Token `index` is next: the drip starts there, and that token's text is the one broken."""
        fault = self.fault
        if fault is None or index != fault.after_tokens:
            return None
        if fault.mode == "drip":
            self.dripping = True
        return WORDS[index % len(WORDS)] if fault.mode in ("huge-line", "bad-utf8") else None

    async def _write(self, data, broken_text=None):
        """Write `data`, a byte at a time while dripping. With `broken_text` (a token's text, found after a quote),
        the fault's bytes go in front of that text: BAD_UTF8, or HUGE_LINE_BYTES of padding written piece by piece."""
        at = data.find(b'"' + broken_text.encode()) + 1 if broken_text else 0
        if at:
            await self.response.write(data[:at])
            if self.fault.mode == "bad-utf8":
                await self.response.write(BAD_UTF8)
            else:
                for _ in range(HUGE_LINE_BYTES // len(_PADDING)):
                    await self.response.write(_PADDING)
            data = data[at:]
        if not self.dripping:
            await self.response.write(data)
            return
        for offset in range(len(data)):
            await self.response.write(data[offset : offset + 1])
            await asyncio.sleep(1 / self.fault.drip_rate)

    def durations(self):
        """Ollama's timing fields, in nanoseconds, as the pacing played them: load_duration the wait for a cold load,
        prompt_eval_duration the time to first token after it (`ttft`), eval_duration the tokens' time.

        The first token goes out as `ttft` ends and the rest one interval apart, so the measured time covers one
        interval fewer than there are tokens; eval_duration counts that interval too, making
        eval_count / eval_duration the configured tokens_per_second, as a benchmark reads it.
        """
        now = time.perf_counter()
        first = self.first_token_at or now
        eval_seconds = now - first
        if self.first_token_at is not None and self.pace > 0:
            eval_seconds += 1 / self.pace
        prompt_seconds = first - self.started - self.load_seconds
        total = max(now - self.started, self.load_seconds + prompt_seconds + eval_seconds)
        return {
            "total_duration": _ns(total),
            "load_duration": _ns(self.load_seconds),
            "prompt_eval_duration": max(1, _ns(prompt_seconds)),
            "eval_duration": max(1, _ns(eval_seconds)),
        }

    async def _drop(self):
        self.dropped = True
        await drop_connection(self.request)


# --- values the routes read and write ------------------------------------------------------------------------------


def ndjson_line(payload):
    """`payload` as one line of an NDJSON stream."""
    return json.dumps(payload, separators=(",", ":")).encode() + b"\n"


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


def _ns(seconds):
    return max(0, int(seconds * 1e9))
