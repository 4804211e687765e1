"""The simulated host's Ollama-native routes (`/`, `/api/*`), answering as Ollama does: models and generation.
The model store's routes (pull, delete, copy) are in `simulator_store`."""

import time
from datetime import UTC, datetime

from aiohttp import web

from hosts.simulator_replies import (
    EMBEDDING_DIMENSION,
    chosen_tool,
    count_words,
    embedding_vector,
    reply_text,
    token_count,
)
from hosts.simulator_requests import (
    HOST,
    MODIFIED_AT,
    WORDS,
    Generation,
    Refused,
    answered_model,
    json_object,
    keep_alive_seconds,
    ndjson_line,
    requested_model,
)
from hosts.simulator_store import UNKNOWN_MODEL_MESSAGE, layers  # noqa: F401 -- re-exported; they lived here

# Ollama shows a model kept forever (keep_alive < 0) as expiring after Go's longest duration, ~292 years.
FOREVER_SECONDS = 292 * 365 * 24 * 3600


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
    chunks = [ndjson_line({**head, **(tool_call or piece(word)), "done": False}) for word in WORDS] if stream else None
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
            await gen.send(ndjson_line({**head, **piece(""), **summary}))
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
