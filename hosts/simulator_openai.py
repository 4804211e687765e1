"""The simulated host's OpenAI-compatible routes (`/v1/*`), shaped as Ollama, llama.cpp and vLLM serve them."""

import base64
import json
import struct
import time
import uuid
from urllib.parse import unquote

from aiohttp import web

from hosts.simulator_replies import chosen_tool, count_words, embedding_vector, reply_text, token_count
from hosts.simulator_requests import (
    HOST,
    MODIFIED_AT,
    WORDS,
    Generation,
    Refused,
    answered_model,
    json_object,
    requested_model,
)

SSE = "text/event-stream"
DONE = b"data: [DONE]\n\n"


def add_openai_routes(app):
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model_id:.+}", retrieve_model)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)


def _sse(payload):
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def _model_card(host, model):
    # Ollama lists tagged names; an OpenAI-only server serves the name it was started with.
    model_id = model.tag_name if host.config.ollama_api else model.name
    owner = model.name.split("/")[0] if "/" in model.name else "library"
    return {"id": model_id, "object": "model", "created": int(MODIFIED_AT.timestamp()), "owned_by": owner}


async def list_models(request):
    host = request.app[HOST]
    return web.json_response({"object": "list", "data": [_model_card(host, m) for m in host.config.models]})


async def retrieve_model(request):
    host = request.app[HOST]
    model_id = unquote(request.match_info["model_id"])  # ids may hold "/" and ":", percent-encoded or not
    model = host.find_model(model_id)
    if model is None:
        raise Refused(404, f"model '{model_id}' not found", code="model_not_found")
    return web.json_response(_model_card(host, model))


def _limit(body):
    limit = body.get("max_completion_tokens")
    return limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else body.get("max_tokens")


def _wants_usage(body):
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _usage(prompt_tokens, completion_tokens):
    total = prompt_tokens + completion_tokens
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": total}


async def chat_completions(request):
    body = json_object(request)
    model = requested_model(request, body, needs="completion")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Refused(400, "messages must be a non-empty list")
    count, limited = token_count(_limit(body), request.app[HOST].config.reply_tokens, model.context_length)
    tool = chosen_tool(body)
    stream = body.get("stream") is True
    head = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion.chunk" if stream else "chat.completion",
        "created": int(time.time()),
        "model": answered_model(request, body),
        "system_fingerprint": "fp_simulated",
    }
    if tool:
        count = 1
        call = {
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": tool, "arguments": "{}"},
        }
        chunks = [_sse({**head, "choices": [_delta({"tool_calls": [{"index": 0, **call}]})]})]
        finish = "tool_calls"
    else:
        chunks = [_sse({**head, "choices": [_delta({"content": word})]}) for word in WORDS]
        finish = "length" if limited else "stop"
    opening = _sse({**head, "choices": [_delta({"role": "assistant", "content": ""})]})
    usage = _usage(count_words(messages), count)
    async with Generation(request, model, body.get("keep_alive")) as gen:
        await gen.produce(count, chunks if stream else None, SSE, opening)
        if stream:
            await gen.send(_sse({**head, "choices": [_delta({}, finish)]}))
            if _wants_usage(body):
                await gen.send(_sse({**head, "choices": [], "usage": usage}))
            await gen.send(DONE)
        else:
            if tool:
                message = {"role": "assistant", "content": None, "tool_calls": [call]}
            else:
                message = {"role": "assistant", "content": reply_text(count)}
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            await gen.answer(web.json_response({**head, "choices": [choice], "usage": usage}))
    return gen.response


def _delta(delta, finish_reason=None):
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


async def completions(request):
    body = json_object(request)
    model = requested_model(request, body, needs="completion")
    prompt = body.get("prompt")
    if not (isinstance(prompt, str) or (isinstance(prompt, list) and all(isinstance(p, str) for p in prompt))):
        raise Refused(400, "prompt must be a string or a list of strings")
    count, limited = token_count(_limit(body), request.app[HOST].config.reply_tokens, model.context_length)
    stream = body.get("stream") is True
    head = {
        "id": f"cmpl-{uuid.uuid4().hex[:24]}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": answered_model(request, body),
        "system_fingerprint": "fp_simulated",
    }
    finish = "length" if limited else "stop"
    usage = _usage(count_words(prompt), count)
    chunks = [_sse({**head, "choices": [_text_choice(word)]}) for word in WORDS] if stream else None
    async with Generation(request, model, body.get("keep_alive")) as gen:
        await gen.produce(count, chunks, SSE)
        if stream:
            await gen.send(_sse({**head, "choices": [_text_choice("", finish)]}))
            if _wants_usage(body):
                await gen.send(_sse({**head, "choices": [], "usage": usage}))
            await gen.send(DONE)
        else:
            choices = [_text_choice(reply_text(count), finish)]
            await gen.answer(web.json_response({**head, "choices": choices, "usage": usage}))
    return gen.response


def _text_choice(text, finish_reason=None):
    return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}


async def embeddings(request):
    body = json_object(request)
    model = requested_model(request, body)
    texts = _embedding_inputs(body.get("input"))
    as_base64 = body.get("encoding_format") == "base64"
    async with Generation(request, model, body.get("keep_alive")) as gen:
        await gen.load()
        data = []
        for index, text in enumerate(texts):
            vector = embedding_vector(text)
            if as_base64:  # the openai client asks for this by default: little-endian float32, base64-encoded
                vector = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": vector})
        prompt_tokens = count_words(texts)
        usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
        gen.response = web.json_response({"object": "list", "data": data, "model": body["model"], "usage": usage})
    return gen.response


def _embedding_inputs(value):
    """The texts to embed: a string, a list of strings, or token arrays (embedded by their spelling)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(item, int) for item in value):
            return [str(value)]
        if all(isinstance(item, str | list) for item in value):
            return [item if isinstance(item, str) else str(item) for item in value]
    raise Refused(400, "input must be a string, a list of strings, or token arrays")
