"""The OpenAPI 3.1 description of clood's own API (docs/openapi.md), built in one place and served at GET /openapi.json.

Request schemas say what clood itself checks (proxy/endpoints.py) and allow every other field: unknown fields pass
through to the host untouched. Response schemas are the shapes clients get, loose where hosts add fields.
"""

import copy
from dataclasses import dataclass

from hosts.names import MAX_NAME_LENGTH
from proxy.catalog import CLOOD_VERSION
from proxy.consumers import ApiConsumer
from proxy.endpoints import ENDPOINTS, MAX_TOKENS_LIMIT

EXAMPLE_MODEL = "llama3.2:1b"
EXAMPLE_EMBEDDING_MODEL = "nomic-embed-text:latest"


def _schema(spelling):
    """A schema from a short spelling: "string", "integer?" (or null), "Model" (a component), [item], or as is."""
    if isinstance(spelling, list):
        return {"type": "array", "items": _schema(spelling[0])}
    if not isinstance(spelling, str):
        return spelling
    if spelling[0].isupper():
        return {"$ref": f"#/components/schemas/{spelling}"}
    if spelling.endswith("?"):
        return {"type": [spelling[:-1], "null"]}
    return {"type": spelling}


def _obj(required=(), **properties):
    """An object with these properties that may carry any others (hosts add fields; clients send extra ones)."""
    schema = {"type": "object", "properties": {name: _schema(s) for name, s in properties.items()}}
    schema["additionalProperties"] = True
    if required:
        schema["required"] = list(required)
    return schema


STRING_OR_ARRAY = {"type": ["string", "array"]}
NON_EMPTY_OBJECTS = {"type": "array", "minItems": 1, "items": {"type": "object"}}
TOKEN_LIMIT = {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_TOKENS_LIMIT}
# OpenAI's generation options that clood checks (a host would get them wrong silently); Ollama's are the host's.
OPENAI_OPTIONS = {
    "max_tokens": TOKEN_LIMIT,
    "max_completion_tokens": TOKEN_LIMIT,
    "n": {"type": ["integer", "null"], "minimum": 1, "maximum": 1, "description": "One request, one host, one choice"},
}
OLLAMA_OPTIONS = {"options": "object?"}


def _request(required=("model",), **properties):
    """A request body: the model and `stream`, which parse() checks on every endpoint, plus the endpoint's own."""
    stream = {"type": ["boolean", "null"], "description": "Default: true on Ollama's /api/chat and /api/generate"}
    return _obj(required, model="ModelName", stream=stream, **properties)


@dataclass(frozen=True)
class Relayed:
    summary: str
    request: dict  # the body's schema
    example: dict  # a body that works against a garden serving EXAMPLE_MODEL and EXAMPLE_EMBEDDING_MODEL
    response: str  # the component of a JSON answer
    stream_type: str | None = None  # the content type of a streamed answer; None: never streams


_ASK = {"role": "user", "content": "Why is the sky blue?"}
# /api/show reads `name` only when there is no `model`.
_MODEL_OR_NAME = {
    "anyOf": [{"required": ["model"]}, {"required": ["name"], "properties": {"name": _schema("ModelName")}}]
}

# Every endpoint of proxy/endpoints.py's ENDPOINTS, by name.
RELAYED = {
    "chat.completions": Relayed(
        "OpenAI chat completion",
        _request(("model", "messages"), messages=NON_EMPTY_OBJECTS, **OPENAI_OPTIONS),
        {"model": EXAMPLE_MODEL, "messages": [_ASK], "max_tokens": 8},
        "ChatCompletion",
        "text/event-stream",
    ),
    "completions": Relayed(
        "OpenAI (legacy) text completion",
        _request(("model", "prompt"), prompt=STRING_OR_ARRAY, **OPENAI_OPTIONS),
        {"model": EXAMPLE_MODEL, "prompt": "Once upon a time", "max_tokens": 8},
        "Completion",
        "text/event-stream",
    ),
    "embeddings": Relayed(
        "OpenAI embeddings",
        _request(("model", "input"), input=STRING_OR_ARRAY),
        {"model": EXAMPLE_EMBEDDING_MODEL, "input": ["a sentence to embed"]},
        "Embeddings",
    ),
    "ollama.chat": Relayed(
        "Ollama chat; without messages it only loads the model",
        _request(messages={"type": ["array", "null"], "items": {"type": "object"}}, **OLLAMA_OPTIONS),
        {"model": EXAMPLE_MODEL, "messages": [_ASK], "stream": False},
        "OllamaChat",
        "application/x-ndjson",
    ),
    "ollama.generate": Relayed(
        "Ollama generate; without a prompt it only loads the model",
        _request(prompt="string?", **OLLAMA_OPTIONS),
        {"model": EXAMPLE_MODEL, "prompt": "Why is the sky blue?", "stream": False},
        "OllamaGenerate",
        "application/x-ndjson",
    ),
    "ollama.embed": Relayed(
        "Ollama embeddings (batch)",
        _request(("model", "input"), input=STRING_OR_ARRAY, **OLLAMA_OPTIONS),
        {"model": EXAMPLE_EMBEDDING_MODEL, "input": ["a sentence to embed"]},
        "OllamaEmbed",
    ),
    "ollama.embeddings": Relayed(
        "Ollama embeddings (legacy, one prompt)",
        _request(prompt="string?", **OLLAMA_OPTIONS),
        {"model": EXAMPLE_EMBEDDING_MODEL, "prompt": "a sentence to embed"},
        "OllamaEmbedding",
    ),
    "ollama.show": Relayed(
        "Ollama model details, from a host that has the model; the model may be given as `name`",
        {**_request(required=(), **OLLAMA_OPTIONS), **_MODEL_OR_NAME},
        {"model": EXAMPLE_MODEL},
        "OllamaShow",
    ),
}

_DETAILS = _obj(format="string", family="string?", families={"type": ["array", "null"]},
                parameter_size="string?", quantization_level="string?")  # fmt: skip
_OLLAMA_MODEL = _obj(("name", "model", "size", "digest", "details"), name="string", model="string",
                     modified_at="string", size="integer", digest="string?", details=_DETAILS)  # fmt: skip
_HOST_STATUS = _obj(
    ("name", "backend", "status", "models", "slots_used", "slots_max", "circuit"),
    name="string", backend="string", status="string", latency_ms="number?", version="string?", models="integer",
    loaded=["string"], requests="integer", errors="integer", tokens="integer", tokens_per_s="number?",
    p50_ttft_ms="number?", slots_used="integer", slots_max="integer?", circuit="string",
)  # fmt: skip
_CATFIGHT_ENTRY = _obj(
    ("id", "model", "host", "status"),
    id="integer", model="string", host="string", status={"enum": ["pending", "running", "completed", "failed"]},
    output="string", error="string", rank="integer?", tokens_per_s="number?", ttft_ms="number?",
    judge_score="number?",
)  # fmt: skip
_USAGE = _obj(prompt_tokens="integer", completion_tokens="integer", total_tokens="integer")

# fmt: off
SCHEMAS = {
    "ModelName": {
        "type": "string", "minLength": 1, "maxLength": MAX_NAME_LENGTH,
        "pattern": "^[A-Za-z0-9_./:@+-]+$", "not": {"pattern": "\\.\\.|//"},
        "description": "An Ollama-style name, `[namespace/]model[:tag]`; `llama3.2` means `library/llama3.2:latest`.",
        "examples": [EXAMPLE_MODEL],
    },
    "OpenAIError": _obj(("error",), error=_obj(("message",), message="string", type="string", param="string?",
                                               code={"type": ["string", "integer", "null"]})),
    "OllamaError": _obj(("error",), error="string"),
    "ChatCompletion": _obj(
        ("id", "object", "created", "model", "choices"),
        id="string", object={"const": "chat.completion"}, created="integer", model="string", usage=_USAGE,
        choices=[_obj(("index", "message"), index="integer", finish_reason="string?",
                      message=_obj(("role",), role="string", content="string?"))],
    ),
    "ChatCompletionChunk": _obj(
        ("id", "object", "choices"),
        id="string", object={"const": "chat.completion.chunk"}, created="integer", model="string", usage=_USAGE,
        choices=[_obj(("index", "delta"), index="integer", delta="object", finish_reason="string?")],
    ),
    "Completion": _obj(
        ("id", "object", "created", "model", "choices"),
        id="string", object={"const": "text_completion"}, created="integer", model="string", usage=_USAGE,
        choices=[_obj(("text", "index"), text="string", index="integer", finish_reason="string?")],
    ),
    "CompletionChunk": _obj(
        ("id", "object", "choices"),
        id="string", object={"const": "text_completion"}, created="integer", model="string", usage=_USAGE,
        choices=[_obj(("text", "index"), text="string", index="integer", finish_reason="string?")],
    ),
    "Embeddings": _obj(
        ("object", "data"),
        object={"const": "list"}, model="string", usage=_USAGE,
        data=[_obj(("index", "embedding"), index="integer",
                   embedding={"oneOf": [_schema(["number"]), {"type": "string", "description": "base64"}]})],
    ),
    "Model": _obj(("id", "object", "created", "owned_by"), id="string", object={"const": "model"},
                  created="integer", owned_by="string", clood=_obj(hosts=["string"], loaded_on=["string"])),
    "ModelList": _obj(("object", "data"), object={"const": "list"}, data=["Model"]),
    "OllamaChat": _obj(("model", "created_at", "done"), model="string", created_at="string", done="boolean",
                       done_reason="string", message=_obj(role="string", content="string")),
    "OllamaGenerate": _obj(("model", "created_at", "done"), model="string", created_at="string", done="boolean",
                           done_reason="string", response="string"),
    "OllamaEmbed": _obj(("embeddings",), model="string", embeddings=[["number"]]),
    "OllamaEmbedding": _obj(("embedding",), embedding=["number"]),
    "OllamaShow": _obj(details=_DETAILS, model_info="object", capabilities=["string"], modelfile="string",
                       template="string"),
    "OllamaModelList": _obj(("models",), models=[_OLLAMA_MODEL]),
    "OllamaRunningList": _obj(("models",), models=[
        {"allOf": [_OLLAMA_MODEL, _obj(expires_at="string?", size_vram="integer", host="string")]}]),
    "OllamaVersion": _obj(("version",), version="string", clood="string"),
    "Status": _obj(
        ("clood", "uptime_s", "strategy", "totals", "in_flight", "queued", "hosts"),
        clood="string", uptime_s="number", strategy="string", in_flight="integer", queued="integer",
        totals={"type": "object", "additionalProperties": {"type": "integer"}}, hosts=[_HOST_STATUS],
    ),
    "Health": _obj(("status",), status={"const": "ok"}),
    "Ready": _obj(("ready", "usable_hosts"), ready="boolean", usable_hosts=["string"], reason="string"),
    "Catfight": _obj(
        ("id", "status", "prompt", "rank_by", "entries"),
        id="integer", status={"enum": ["running", "completed"]}, prompt="string", system="string", params="object",
        rank_by="string", created_at="string", started_at="string?", finished_at="string?", judge="object?",
        winner="integer?", summary="string", entries=[_CATFIGHT_ENTRY],
    ),
    "CatfightStart": _obj(
        ("contestants",),
        prompt={"type": "string", "pattern": "\\S"}, challenge_set="integer?",
        contestants={"type": "array", "minItems": 2, "maxItems": 12,
                     "items": _obj(("model", "host"), model="ModelName", host="string")},
        system="string?", temperature="number?", seed="integer?",
        max_tokens={"type": ["integer", "null"], "minimum": 1},
        rank_by={"enum": ["fastest", "tokens_per_s", "judge", None]}, parallel_same_host="boolean?",
        judge={"oneOf": [{"type": "null"}, _obj(("model",), model="ModelName", host="string?", rubric="string?")]},
    ),
}
# fmt: on


def _json(schema):
    return {"application/json": {"schema": _schema(schema)}}


def _error(description, flavour):
    return {"description": description, "content": _json("OpenAIError" if flavour == "openai" else "OllamaError")}


# /v1, /api and /catfights need a key once one exists (or a staff login from clood's own pages, with X-CSRFToken).
SECURED_TAGS = ("OpenAI", "Ollama", "Catfights")
_SECURED = [{"bearer": []}, {}]
_NO_KEY = ("401", "A key is needed (`Authorization: Bearer <key>`) and this one is missing or not valid")
_RELAY_ERRORS = [
    ("400", "Bad JSON or a bad field (`param` names it); or the host refused the request"),
    ("403", "The API key may not use this model"),
    ("404", "No host has this model"),
    ("413", "The body is larger than CLOOD_MAX_BODY_BYTES"),
    ("429", "The queue is full, or the API key is over its limit (see Retry-After)"),
    ("4XX", "Another client error from the host, relayed as it came"),
    ("502", "Every host for the model failed"),
    ("503", "No usable host has the model right now, or every host is busy (see Retry-After)"),
    ("504", "Every host for the model timed out"),
]


def _operation(operation_id, summary, tag, ok, errors=(), status="200", **fields):
    """One operation: its answer (content by media type) and its errors in the shape of its API."""
    flavour = "ollama" if tag == "Ollama" else "openai"
    responses = {status: {"description": summary, "content": ok}}
    if tag in SECURED_TAGS:
        errors = [*errors, _NO_KEY]
        fields["security"] = _SECURED
    for status, description in errors:
        responses[status] = _error(description, flavour)
    return {"operationId": operation_id, "summary": summary, "tags": [tag], **fields, "responses": responses}


NDJSON = (
    "The host's stream, relayed as it comes: one JSON object per line shaped like {}, `done` false until the last. "
    'A failure after the first line ends it with a line {{"error": "…"}}.'
)


def _sse_event(chunk):
    """One event of an OpenAI stream, relayed as it came: a JSON chunk, an in-band error, or the final [DONE]."""
    json_data = {
        "contentMediaType": "application/json",
        "contentSchema": {"anyOf": [_schema(chunk), _schema("OpenAIError")]},
    }
    return _obj(("data",), data={"anyOf": [{"const": "[DONE]"}, {"type": "string", **json_data}]})


def _relayed(name):
    endpoint, relayed = ENDPOINTS[name], RELAYED[name]
    ok = _json(relayed.response)
    if relayed.stream_type == "text/event-stream":
        ok[relayed.stream_type] = {"schema": _sse_event(relayed.response + "Chunk")}
    elif relayed.stream_type:
        ok[relayed.stream_type] = {"schema": {"type": "string", "description": NDJSON.format(relayed.response)}}
    body = {"application/json": {"schema": relayed.request, "example": relayed.example}}
    tag = "OpenAI" if endpoint.flavour == "openai" else "Ollama"
    return {"post": _operation(name, relayed.summary, tag, ok, _RELAY_ERRORS,
                               requestBody={"required": True, "content": body})}  # fmt: skip


def _answer(operation_id, summary, schema, tag, errors=(), parameters=()):
    """A GET that clood answers itself."""
    fields = {"parameters": list(parameters)} if parameters else {}
    return {"get": _operation(operation_id, summary, tag, _json(schema), errors, **fields)}


def _path_parameter(name, schema):
    return {"name": name, "in": "path", "required": True, "schema": schema}


_CATFIGHT = {"errors": [("404", "There is no such catfight")],
             "parameters": [_path_parameter("catfight_id", {"type": "integer", "minimum": 0})]}  # fmt: skip
_CATFIGHT_EXAMPLE = {
    "prompt": "Say hello",
    "contestants": [{"model": EXAMPLE_MODEL, "host": "alpha"}, {"model": EXAMPLE_MODEL, "host": "beta"}],
    "max_tokens": 8,
}


def _catfight_paths():
    """The catfight JSON API (docs/catfight-api.md): Django views under /catfights."""
    started = _json({"oneOf": [_schema("Catfight"), _obj(("catfights",), catfights=["Catfight"])]})
    body = {"application/json": {"schema": _schema("CatfightStart"), "example": _CATFIGHT_EXAMPLE}}
    start = _operation("catfights.start", "Start a catfight (or one per prompt of a challenge set)", "Catfights",
                       started, [("400", "A bad field (`param` names it)")], status="201",
                       requestBody={"required": True, "content": body})  # fmt: skip
    summaries = _obj(("catfights",), catfights=[_obj(("id", "prompt", "status"), id="integer")])
    limit = {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer"}}
    markdown = _answer("catfights.export_md", "The catfight as Markdown (an attachment)", {}, "Catfights", **_CATFIGHT)
    markdown["get"]["responses"]["200"]["content"] = {"text/markdown": {"schema": {"type": "string"}}}
    rows = _obj(("rows",), rows=[_obj(("model", "host", "runs", "wins"))])
    sets = _obj(("challenge_sets",), challenge_sets=[_obj(("id", "name", "prompts"))])
    return {
        "/catfights": {"post": start, **_answer("catfights.list", "Recent catfights, newest first", summaries,
                                                "Catfights", [("400", "limit is not a number")], [limit])},
        "/catfights/leaderboard": _answer("catfights.leaderboard", "Wins and speed by model and host", rows,
                                          "Catfights"),
        "/catfights/challenge-sets": _answer("catfights.challenge_sets", "Saved prompt sets", sets, "Catfights"),
        "/catfights/{catfight_id}": _answer("catfights.detail", "One catfight (poll it while it runs)", "Catfight",
                                            "Catfights", **_CATFIGHT),
        "/catfights/{catfight_id}/export.json": _answer("catfights.export_json", "The catfight as an attachment",
                                                        "Catfight", "Catfights", **_CATFIGHT),
        "/catfights/{catfight_id}/export.md": markdown,
    }  # fmt: skip


def build_spec():
    """The whole description, as a new dict on every call (callers may change it)."""
    model_id = _path_parameter("model_id", _schema("ModelName"))
    ready = _answer("ready", "At least one host is usable", "Ready", "clood", [])
    ready["get"]["responses"]["503"] = {"description": "No host is usable", "content": _json("Ready")}
    paths = {
        **{ENDPOINTS[name].path: _relayed(name) for name in RELAYED},
        "/v1/models": _answer("models", "Every model an online host serves", "ModelList", "OpenAI"),
        "/v1/models/{model_id}": _answer("model", "One model", "Model", "OpenAI",
                                         [("400", "Not a valid model name"), ("404", "No online host has this model")],
                                         [model_id]),
        "/api/tags": _answer("ollama.tags", "Every model an online Ollama host has", "OllamaModelList", "Ollama"),
        "/api/ps": _answer("ollama.ps", "Models loaded in memory, and on which host", "OllamaRunningList", "Ollama"),
        "/api/version": _answer("ollama.version", "The oldest Ollama version in the garden", "OllamaVersion",
                                "Ollama"),
        "/status": _answer("status", "Hosts, slots, queue and counters", "Status", "clood"),
        "/health": _answer("health", "The process is up", "Health", "clood"),
        "/ready": ready,
        "/metrics": {"get": _operation("metrics", "Prometheus metrics (docs/metrics.md)", "clood",
                                       {"text/plain": {"schema": {"type": "string"}}})},
        "/openapi.json": _answer("openapi", "This description", "object", "clood"),
        **_catfight_paths(),
    }  # fmt: skip
    spec = {
        "openapi": "3.1.0",
        "info": {
            "title": "clood",
            "version": CLOOD_VERSION,
            "description": "One OpenAI- and Ollama-compatible endpoint in front of many LLM hosts. Errors under /v1 "
            'are `{"error": {message, type, param, code}}`, under /api `{"error": "…"}`; any other /v1/* or /api/* '
            "path answers 404 in that shape.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "A clood API key"}},
        },
    }
    return copy.deepcopy(spec)


class OpenApiConsumer(ApiConsumer):
    """GET /openapi.json: the description above."""

    methods = ("GET", "HEAD")

    async def serve(self, body):
        await self.send_json(build_spec())
