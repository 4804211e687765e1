"""The simulated host's model store: the models it lists and the library `/api/pull` fetches from (`SimModel`,
`default_library`), and Ollama's store routes: pull with progress, delete, copy."""

import asyncio
import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass

from aiohttp import web

from hosts.simulator_requests import FAULT, HOST, NDJSON, Refused, drop_connection, json_object, ndjson_line

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


def add_store_routes(app):
    app.router.add_post("/api/pull", pull)
    app.router.add_delete("/api/delete", delete)
    app.router.add_post("/api/copy", copy)


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


def default_library():
    """What the simulated registry offers to `/api/pull`: a few real models with their real sizes and details."""
    return [
        SimModel("llama3.2:1b", size=1_321_098_329, parameter_size="1.2B", context_length=131072),
        SimModel("llama3.2:3b", size=2_019_393_189, parameter_size="3.2B", context_length=131072),
        SimModel("qwen2.5-coder:7b", size=4_683_087_332, family="qwen2", parameter_size="7.6B", context_length=32768),
        SimModel(
            "nomic-embed-text",
            size=274_302_450,
            family="nomic-bert",
            parameter_size="137M",
            quantization="F16",
            context_length=2048,
        ),
        SimModel("mistral:7b", size=4_113_301_824, parameter_size="7.2B", context_length=32768),
        SimModel("deepseek-r1:1.5b", size=1_117_322_599, family="qwen2", parameter_size="1.8B", context_length=131072),
    ]


def model_list(field_name, items):
    """`items` as SimModels (each a SimModel, a name, or an object of SimModel fields); ValueError says which is bad."""
    if not isinstance(items, list | tuple):
        raise ValueError(f"{field_name} must be a list of models (names or objects)")
    known = {f.name for f in dataclasses.fields(SimModel)}
    models = []
    for index, item in enumerate(items):
        if isinstance(item, str):
            item = {"name": item}
        if isinstance(item, dict):
            unknown = sorted(set(item) - known)
            if unknown:
                raise ValueError(f"{field_name}[{index}] has unknown fields: {', '.join(unknown)}")
            item = SimModel(**item) if isinstance(item.get("name"), str) and item["name"].strip() else None
        if not isinstance(item, SimModel):
            raise ValueError(f"{field_name}[{index}] must be a model name or an object with a non-empty name")
        if isinstance(item.size, bool) or not isinstance(item.size, int) or item.size <= 0:
            raise ValueError(f"{field_name}[{index}].size must be a whole number of bytes > 0, not {item.size!r}")
        models.append(item)
    return models


def canonical_name(name):
    """Ollama's identity for a model name: case-insensitive, `:latest` when untagged, `library/` implied."""
    name = str(name or "").strip().lower()
    for prefix in ("registry.ollama.ai/", "library/"):
        name = name.removeprefix(prefix)
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


# --- changes to the models a host lists ----------------------------------------------------------------------------


def find_in_library(host, name):
    wanted = canonical_name(name)
    return next((m for m in host.config.library if canonical_name(m.name) == wanted), None)


def add_pulled(host, entry):
    """A pull of library `entry` finished: list it (not loaded), or bring the copy already here up to date."""
    present = host.find_model(entry.name)
    fields = {"digest", "size", "family", "parameter_size", "quantization", "capabilities", "context_length"}
    if present is None:
        present = dataclasses.replace(entry, loaded=False, expires_at=None)
        host.config.models.append(present)
    else:
        for name in fields:
            setattr(present, name, getattr(entry, name))
    present.capabilities = list(entry.capabilities)  # its own list, not the library's


def delete_model(host, name):
    """Remove the model `name` (listed and running); False when there is none."""
    model = host.find_model(name)
    if model is None:
        return False
    host.config.models.remove(model)
    return True


def copy_model(host, source, destination):
    """List `source` again as `destination` (same digest, not loaded), replacing one of that name; False when
    `source` is missing."""
    model = host.find_model(source)
    if model is None:
        return False
    name = destination.strip()
    for prefix in ("registry.ollama.ai/", "library/"):
        name = name[len(prefix) :] if name.lower().startswith(prefix) else name
    copy = dataclasses.replace(model, name=name, loaded=False, expires_at=None)
    existing = host.find_model(name)
    if existing is None:
        host.config.models.append(copy)
    else:
        host.config.models[host.config.models.index(existing)] = copy
    return True


# --- the routes ----------------------------------------------------------------------------------------------------


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
        entry = find_in_library(host, name)
        if entry is None:
            return await progress.fail(UNKNOWN_MODEL_MESSAGE)
        present = host.find_model(name)
        fetched = present is not None and present.digest == entry.digest
        await _download(progress, layers(entry), 0.0 if fetched else host.config.pull_seconds, fetched)
        await progress.send({"status": "verifying sha256 digest"})
        await progress.send({"status": "writing manifest"})
        add_pulled(host, entry)
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
            await self._write(ndjson_line(line))

    async def fail(self, message):
        """End with Ollama's error: a line in the stream once it has begun, else status 500."""
        if self.response is not None:
            await self._write(ndjson_line({"error": message}))
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
    if not delete_model(request.app[HOST], name):
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
    if not copy_model(request.app[HOST], source, destination):
        raise Refused(404, f"model {_quoted(source)} not found")
    return web.Response()
