"""The simulated host's Ollama-native routes (`/`, `/api/*`), answering as Ollama does: models, generation, and
the model store (pull, delete, copy)."""

import asyncio
import hashlib
import json
import math
import re
import time
from datetime import UTC, datetime

from aiohttp import web

from hosts.simulator_requests import (
    EMBEDDING_DIMENSION,
    FAULT,
    HOST,
    MODIFIED_AT,
    NDJSON,
    WORDS,
    Generation,
    Refused,
    answered_model,
    chosen_tool,
    count_words,
    drop_connection,
    embedding_vector,
    json_object,
    keep_alive_seconds,
    reply_text,
    requested_model,
    token_count,
)

# Ollama shows a model kept forever (keep_alive < 0) as expiring after Go's longest duration, ~292 years.
FOREVER_SECONDS = 292 * 365 * 24 * 3600
# Ollama's words when the registry has no such model, and for a name it cannot parse.
UNKNOWN_MODEL_MESSAGE = "pull model manifest: file does not exist"
INVALID_NAME_MESSAGE = "invalid model name"
PULL_TICK = 0.1  # seconds between a paced pull's progress lines, at most
PULL_STEPS = 4  # progress lines after the first for the weights, at least
# The blobs besides the weights in a model's manifest, in Ollama's order, with typical sizes in bytes.
SMALL_LAYERS = {"template": 1_429, "license": 7_711, "params": 96, "config": 485}
# [host[:port]/][namespace/]model[:tag], as Ollama's model.ParseName accepts them.
_PART = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}"
_MODEL_NAME = re.compile(rf"(?:{_PART}(?::\d+)?/)?(?:{_PART}/)?{_PART}(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,79}})?")


def add_ollama_routes(app):
    app.router.add_get("/", root)
    app.router.add_get("/api/version", version)
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/ps", ps)
    app.router.add_post("/api/show", show)
    app.router.add_post("/api/chat", chat)
    app.router.add_post("/api/generate", generate)
    app.router.add_post("/api/embed", embed)
    app.router.add_post("/api/embeddings", embeddings_legacy)
    app.router.add_post("/api/pull", pull)
    app.router.add_delete("/api/delete", delete)
    app.router.add_post("/api/copy", copy)


def _ndjson(payload):
    return json.dumps(payload, separators=(",", ":")).encode() + b"\n"


def rfc3339(moment):
    """A time as Ollama writes it: RFC 3339 with the local offset."""
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone().isoformat(timespec="microseconds")


def _details(model):
    return {
        "parent_model": "",
        "format": "gguf",
        "family": model.family,
        "families": [model.family],
        "parameter_size": model.parameter_size,
        "quantization_level": model.quantization,
    }


def _listing(model):
    return {"name": model.tag_name, "model": model.tag_name, "size": model.size, "digest": model.digest}


async def root(request):
    return web.Response(text="Ollama is running")


async def version(request):
    return web.json_response({"version": request.app[HOST].config.version})


async def tags(request):
    models = request.app[HOST].config.models
    listing = [{**_listing(m), "modified_at": rfc3339(MODIFIED_AT), "details": _details(m)} for m in models]
    return web.json_response({"models": listing})


async def ps(request):
    host = request.app[HOST]
    running = []
    for model in host.config.models:
        if host.is_loaded(model):
            expires_at = time.time() + FOREVER_SECONDS if model.expires_at is None else model.expires_at
            running.append(
                {
                    **_listing(model),
                    "details": _details(model),
                    "expires_at": rfc3339(expires_at),
                    "size_vram": model.size,
                }
            )
    return web.json_response({"models": running})


async def show(request):
    body = json_object(request)
    name = body.get("model") or body.get("name")
    model = request.app[HOST].find_model(name) if isinstance(name, str) else None
    if model is None:
        raise Refused(404, f"model '{name}' not found")
    model_info = {
        "general.architecture": model.family,
        "general.basename": model.name.split(":")[0],
        f"{model.family}.context_length": model.context_length,
        f"{model.family}.embedding_length": EMBEDDING_DIMENSION,
    }
    return web.json_response(
        {
            "license": "",
            "modelfile": f"# Modelfile of a simulated model\nFROM {model.tag_name}\n",
            "parameters": "",
            "template": "{{ .Prompt }}",
            "details": _details(model),
            "model_info": model_info,
            "capabilities": list(model.capabilities),
            "modified_at": rfc3339(MODIFIED_AT),
        }
    )


async def chat(request):
    body = json_object(request)
    model = requested_model(request, body, needs="completion")
    messages = body.get("messages") or []
    if not isinstance(messages, list):
        raise Refused(400, "messages must be a list")

    def message(text):
        return {"message": {"role": "assistant", "content": text}}

    tool = chosen_tool(body)
    if tool:
        calls = [{"function": {"name": tool, "arguments": {}}}]
        call = {"message": {"role": "assistant", "content": "", "tool_calls": calls}}
        return await _ollama_reply(request, body, model, count_words(messages), message, tool_call=call)
    return await _ollama_reply(request, body, model, count_words(messages), message, empty=not messages)


async def generate(request):
    body = json_object(request)
    model = requested_model(request, body, needs="completion")
    prompt = body.get("prompt") or ""
    if not isinstance(prompt, str):
        raise Refused(400, "prompt must be a string")
    prompt_tokens = count_words(prompt) + count_words(body.get("system"))
    return await _ollama_reply(request, body, model, prompt_tokens, lambda text: {"response": text}, empty=not prompt)


async def _ollama_reply(request, body, model, prompt_tokens, piece, empty=False, tool_call=None):
    """Answer /api/chat or /api/generate: NDJSON chunks, one per token, then the `done` summary; or one object.

    An empty prompt only loads (or, with keep_alive 0, unloads) the model, as Ollama does.
    """
    host = request.app[HOST]
    head = {"model": answered_model(request, body), "created_at": rfc3339(datetime.now(UTC))}
    if empty:
        keep_alive = keep_alive_seconds(body.get("keep_alive"))
        if keep_alive == 0:
            model.expires_at = time.time()
        else:
            await host.acquire(model)
            host.release(model, keep_alive)
        reason = "unload" if keep_alive == 0 else "load"
        return web.json_response({**head, **piece(""), "done": True, "done_reason": reason})
    options = body.get("options") if isinstance(body.get("options"), dict) else {}
    count, limited = token_count(options.get("num_predict"), host.config.reply_tokens, model.context_length)
    count = 1 if tool_call else count
    stream = body.get("stream", True) is not False
    chunks = [_ndjson({**head, **(tool_call or piece(word)), "done": False}) for word in WORDS] if stream else None
    async with Generation(request, model, body.get("keep_alive")) as gen:
        await gen.produce(count, chunks)
        summary = {
            "done": True,
            "done_reason": "length" if limited and not tool_call else "stop",
            **gen.durations(),
            "prompt_eval_count": prompt_tokens,
            "eval_count": count,
        }
        if stream:
            await gen.send(_ndjson({**head, **piece(""), **summary}))
        else:
            await gen.answer(web.json_response({**head, **(tool_call or piece(reply_text(count))), **summary}))
    return gen.response


async def embed(request):
    body = json_object(request)
    model = requested_model(request, body)
    texts = body.get("input")
    texts = [texts] if isinstance(texts, str) else texts
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise Refused(400, "input must be a string or a list of strings")
    async with Generation(request, model, body.get("keep_alive")) as gen:
        await gen.load()
        durations = gen.durations()
        gen.response = web.json_response(
            {
                "model": body["model"],
                "embeddings": [embedding_vector(t) for t in texts],
                "total_duration": durations["total_duration"],
                "load_duration": durations["load_duration"],
                "prompt_eval_count": count_words(texts),
            }
        )
    return gen.response


async def embeddings_legacy(request):
    body = json_object(request)
    model = requested_model(request, body)
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise Refused(400, "prompt must be a string")
    async with Generation(request, model, body.get("keep_alive")) as gen:
        await gen.load()
        gen.response = web.json_response({"embedding": embedding_vector(prompt)})
    return gen.response


# --- the model store -----------------------------------------------------------------------------------------------


def valid_model_name(name):
    return isinstance(name, str) and _MODEL_NAME.fullmatch(name.strip()) is not None


def _quoted(value):
    """A value as Go's %q writes it in Ollama's messages."""
    return json.dumps(value, ensure_ascii=False)


def layers(model):
    """The blobs a pull of `model` fetches, as (digest, size): the weights, then SMALL_LAYERS; sizes add to its
    size. Digests follow from the model's digest, so a changed model has new layers."""
    sizes = {"model": max(1, model.size - sum(SMALL_LAYERS.values())), **SMALL_LAYERS}
    return [("sha256:" + hashlib.sha256(f"{model.digest}:{kind}".encode()).hexdigest(), n) for kind, n in sizes.items()]


async def pull(request):
    """Fetch a model from `config.library`: NDJSON progress lines, as Ollama streams them, or one line at the end
    with `"stream": false`. A model already here with the library's digest is only checked, each layer at once."""
    host = request.app[HOST]
    body = json_object(request)
    name = body.get("model") or body.get("name")
    if not valid_model_name(name):
        raise Refused(400, INVALID_NAME_MESSAGE)
    progress = PullProgress(request, stream=body.get("stream", True) is not False)
    try:
        await progress.send({"status": "pulling manifest"})
        entry = host.find_in_library(name)
        if entry is None:
            return await progress.fail(UNKNOWN_MODEL_MESSAGE)
        present = host.find_model(name)
        fetched = present is not None and present.digest == entry.digest
        await _download(progress, layers(entry), 0.0 if fetched else host.config.pull_seconds, fetched)
        await progress.send({"status": "verifying sha256 digest"})
        await progress.send({"status": "writing manifest"})
        host.add_pulled(entry)
        await progress.send({"status": "success"})
        return await progress.finish()
    except ConnectionError:
        return web.Response(status=499, reason="Client Closed Request")  # never reaches anyone


async def _download(progress, blobs, seconds, fetched):
    """Progress lines for each blob, `seconds` spread over them by size; a blob already here shows complete at once.
    As in Ollama, `completed` is left out while it is 0."""
    loop = asyncio.get_running_loop()
    begin, total_bytes, done_bytes = loop.time(), sum(size for _, size in blobs), 0
    for index, (digest, size) in enumerate(blobs):
        line = {"status": f"pulling {digest[7:19]}", "digest": digest, "total": size}
        if fetched:
            await progress.send({**line, "completed": size})
            continue
        await progress.send(line)
        steps = max(1 if index else PULL_STEPS, math.ceil(seconds * size / total_bytes / PULL_TICK))
        for step in range(1, steps + 1):
            ends_at = begin + seconds * (done_bytes + size * step / steps) / total_bytes
            await asyncio.sleep(max(0.0, ends_at - loop.time()))
            await progress.send({**line, "completed": size * step // steps})
        done_bytes += size


class PullProgress:
    """A pull's answer: progress lines streamed as NDJSON, or (not streamed) the last one as the single answer.

    Plays the request's fault: `drop` hangs up before line `after_tokens`, `drip` sends from there on a byte at a
    time. A client gone between lines shows up as ConnectionResetError.
    """

    def __init__(self, request, stream):
        self.request = request
        self.stream = stream
        self.fault = request.get(FAULT)
        self.response = None
        self.last = None
        self.sent = 0

    async def send(self, line):
        fault = self.fault
        if fault is not None and fault.mode == "drop" and self.sent == fault.after_tokens:
            if self.stream:
                await self._prepare()
            await drop_connection(self.request)
        transport = self.request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client went away")
        self.sent += 1
        self.last = line
        if self.stream:
            await self._prepare()
            await self._write(_ndjson(line))

    async def fail(self, message):
        """End with Ollama's error: a line in the stream once it has begun, else status 500."""
        if self.response is not None:
            await self._write(_ndjson({"error": message}))
            return self.response
        return web.json_response({"error": message}, status=500)

    async def finish(self):
        """The answer once the last line is sent: the stream, or that line alone (dripping if the fault says so)."""
        if self.stream:
            return self.response
        if self.fault is None or self.fault.mode != "drip":
            return web.json_response(self.last)
        self.response = web.StreamResponse(headers={"Content-Type": "application/json; charset=utf-8"})
        await self.response.prepare(self.request)
        await self._write(json.dumps(self.last).encode())
        return self.response

    async def _prepare(self):
        if self.response is None:
            self.response = web.StreamResponse(headers={"Content-Type": NDJSON})
            await self.response.prepare(self.request)

    async def _write(self, data):
        fault = self.fault
        if fault is None or fault.mode != "drip" or self.sent <= fault.after_tokens:
            await self.response.write(data)
            return
        for offset in range(len(data)):
            await self.response.write(data[offset : offset + 1])
            await asyncio.sleep(1 / fault.drip_rate)


async def delete(request):
    """Remove a model: 200 with an empty body, or Ollama's 404."""
    body = json_object(request)
    name = body.get("model") or body.get("name")
    if not valid_model_name(name):
        raise Refused(400, f"name {_quoted(name or '')} is invalid")
    if not request.app[HOST].delete_model(name):
        raise Refused(404, f"model '{name}' not found")
    return web.Response()


async def copy(request):
    """List a model under a second name: 200 with an empty body, or Ollama's 404 when the source is missing."""
    body = json_object(request)
    source, destination = body.get("source"), body.get("destination")
    if not valid_model_name(source):
        raise Refused(400, f"source {_quoted(source or '')} is invalid")
    if not valid_model_name(destination):
        raise Refused(400, f"destination {_quoted(destination or '')} is invalid")
    if not request.app[HOST].copy_model(source, destination):
        raise Refused(404, f"model {_quoted(source)} not found")
    return web.Response()
