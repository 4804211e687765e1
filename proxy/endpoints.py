"""The routed endpoints and how to read their request bodies: one table, one validation function.

Validation checks only what clood needs (the model, `stream`, the field that carries the prompt) and leaves
everything else to the host: unknown fields pass through untouched.
"""

import json
from dataclasses import dataclass

from hosts.names import model_name_problem, normalize_model_name
from proxy.errors import ApiError


@dataclass(frozen=True)
class Endpoint:
    name: str
    path: str  # the same path is used upstream
    flavour: str  # "openai" or "ollama": error shape and in-band error format
    backends: tuple  # host backends that serve it
    stream_default: bool | None  # None: this endpoint never streams
    required: str | None  # the field that carries the prompt
    admitted: bool = True  # takes a slot (generation) or not (metadata)


ENDPOINTS = {
    e.name: e
    for e in [
        Endpoint("chat.completions", "/v1/chat/completions", "openai", ("ollama", "openai"), False, "messages"),
        Endpoint("completions", "/v1/completions", "openai", ("ollama", "openai"), False, "prompt"),
        Endpoint("embeddings", "/v1/embeddings", "openai", ("ollama", "openai"), None, "input"),
        Endpoint("ollama.chat", "/api/chat", "ollama", ("ollama",), True, None),
        Endpoint("ollama.generate", "/api/generate", "ollama", ("ollama",), True, None),
        Endpoint("ollama.embed", "/api/embed", "ollama", ("ollama",), None, "input"),
        Endpoint("ollama.embeddings", "/api/embeddings", "ollama", ("ollama",), None, None),
        Endpoint("ollama.show", "/api/show", "ollama", ("ollama",), None, None, admitted=False),
    ]
}


@dataclass
class ParsedRequest:
    payload: dict
    model: str  # as the client wrote it
    model_key: str  # normalised
    stream: bool


def parse(endpoint, body):
    """Parse and check a request body. Raises ApiError(400) with the offending field."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "The request body is not valid UTF-8.", code="invalid_encoding") from None
    try:
        payload = json.loads(text)
    except RecursionError:
        raise ApiError(400, "The request body is nested too deeply.", code="invalid_json") from None
    except ValueError as exc:
        raise ApiError(400, f"The request body is not valid JSON ({exc.msg} at line {exc.lineno} column "
                            f"{exc.colno}).", code="invalid_json") from None  # fmt: skip
    if not isinstance(payload, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")

    model = payload.get("model", payload.get("name") if endpoint.name == "ollama.show" else None)
    if model is None:
        raise ApiError(400, "You must provide a model parameter.", param="model", code="missing_model")
    if not isinstance(model, str):
        raise ApiError(400, "model must be a string.", param="model", code="invalid_type")
    problem = model_name_problem(model)
    if problem:
        raise ApiError(400, f"Invalid model name: {problem}.", param="model", code="invalid_model")

    stream = payload.get("stream", endpoint.stream_default)
    if "stream" in payload and not isinstance(payload["stream"], bool) and payload["stream"] is not None:
        raise ApiError(400, "stream must be a boolean.", param="stream", code="invalid_type")
    if stream is None:
        stream = bool(endpoint.stream_default)

    required = endpoint.required
    if required and required not in payload:
        raise ApiError(400, f"You must provide {required}.", param=required, code="missing_field")
    if required == "messages":
        messages = payload["messages"]
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "messages must be a non-empty array.", param="messages", code="invalid_type")
        if not all(isinstance(m, dict) for m in messages):
            raise ApiError(400, "Each message must be an object.", param="messages", code="invalid_type")
    if endpoint.name == "ollama.chat" and not isinstance(payload.get("messages", []), list):
        raise ApiError(400, "messages must be an array.", param="messages", code="invalid_type")
    if required == "prompt" and not isinstance(payload["prompt"], str | list):
        raise ApiError(400, "prompt must be a string or an array.", param="prompt", code="invalid_type")
    if required == "input" and not isinstance(payload["input"], str | list):
        raise ApiError(400, "input must be a string or an array.", param="input", code="invalid_type")
    for field in ("max_tokens", "max_completion_tokens"):
        value = payload.get(field)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ApiError(400, f"{field} must be a positive integer.", param=field, code="invalid_value")
    return ParsedRequest(payload, model, normalize_model_name(model), bool(stream))


def upstream_body(body, parsed, remote_name):
    """The body to send to the host: the client's bytes, with the model renamed only when the host spells it
    differently (then re-encoded; every other field keeps its value)."""
    if parsed.model == remote_name:
        return body
    payload = dict(parsed.payload)
    payload["name" if "model" not in payload else "model"] = remote_name
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def prompt_preview(payload, limit):
    """A short, plain-text preview of the prompt for events (empty when previews are off)."""
    if limit <= 0:
        return ""
    text = payload.get("prompt") or payload.get("input") or ""
    messages = payload.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                text = message.get("content")
                break
    if isinstance(text, list):  # multimodal content parts or a list of inputs
        text = " ".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in text)
    text = str(text or "")
    return text if len(text) <= limit else text[: limit - 1] + "…"
