"""The routed endpoints and how to read their request bodies: one table, one validation function.

Validation checks only what clood needs (the model, `stream`, the field that carries the prompt), plus the OpenAI
fields a host would get wrong silently (token limits, `n`), and leaves everything else to the host: unknown fields
pass through untouched.
"""

import json
import math
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


# Hosts read token limits as 32-bit integers (llama.cpp's n_predict); a larger value can only be a mistake, and a
# host answers it with a parse error at best. Anything up to it passes through: the host caps it at the context.
MAX_TOKENS_LIMIT = 2**31 - 1


@dataclass
class ParsedRequest:
    payload: dict
    model: str  # as the client wrote it
    model_key: str  # normalised
    stream: bool


def parse(endpoint, body):
    """Parse and check a request body. Raises ApiError (400) naming the offending field."""
    payload = _json_object(body)
    model = _model(endpoint, payload)
    stream = _stream(endpoint, payload)
    _check_prompt(endpoint, payload)
    if endpoint.flavour == "openai" and endpoint.stream_default is not None:
        _check_generation_options(payload)
    if endpoint.flavour == "ollama":
        options = payload.get("options")
        if options is not None and not isinstance(options, dict):
            raise ApiError(400, "options must be an object.", param="options", code="invalid_type")
    return ParsedRequest(payload, model, normalize_model_name(model), stream)


def _json_object(body):
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "The request body is not valid UTF-8.", code="invalid_encoding") from None
    try:
        payload = json.loads(text, parse_constant=_not_json, parse_float=_finite_float)
    except RecursionError:
        raise ApiError(400, "The request body is nested too deeply.", code="invalid_json") from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"The request body is not valid JSON ({exc.msg} at line {exc.lineno} column "
                            f"{exc.colno}).", code="invalid_json") from None  # fmt: skip
    except ValueError:  # an integer longer than Python converts (sys.get_int_max_str_digits)
        raise ApiError(400, "The request body is not valid JSON (a number has too many digits).",
                       code="invalid_json") from None  # fmt: skip
    if not isinstance(payload, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
    return payload


def _not_json(constant):
    """Python's json reads NaN and Infinity; JSON has no such values, and hosts refuse them."""
    raise ApiError(400, f"The request body is not valid JSON ({constant} is not a JSON value).", code="invalid_json")


def _finite_float(text):
    value = float(text)
    if math.isinf(value):  # 1e999: re-encoded, it would reach the host as Infinity
        raise ApiError(400, f"The request body holds a number too large to use ({text[:40]}).", code="invalid_json")
    return value


def _model(endpoint, payload):
    model = payload.get("model", payload.get("name") if endpoint.name == "ollama.show" else None)
    if model is None:
        raise ApiError(400, "You must provide a model parameter.", param="model", code="missing_model")
    if not isinstance(model, str):
        raise ApiError(400, "model must be a string.", param="model", code="invalid_type")
    problem = model_name_problem(model)
    if problem:
        raise ApiError(400, f"Invalid model name: {problem}.", param="model", code="invalid_model")
    return model


def _stream(endpoint, payload):
    stream = payload.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise ApiError(400, "stream must be a boolean.", param="stream", code="invalid_type")
    if endpoint.stream_default is None:  # embeddings and show answer in one piece whatever the client asks
        return False
    return endpoint.stream_default if stream is None else stream


def _check_prompt(endpoint, payload):
    required = endpoint.required
    if required and required not in payload:
        raise ApiError(400, f"You must provide {required}.", param=required, code="missing_field")
    if required == "messages":
        _check_messages(payload["messages"], allow_empty=False)
    elif required:  # prompt or input
        if not isinstance(payload[required], str | list):
            raise ApiError(400, f"{required} must be a string or an array.", param=required, code="invalid_type")
    elif endpoint.name == "ollama.chat" and payload.get("messages") is not None:
        _check_messages(payload["messages"], allow_empty=True)  # Ollama loads the model on an empty chat
    elif endpoint.name in ("ollama.generate", "ollama.embeddings"):
        prompt = payload.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            raise ApiError(400, "prompt must be a string.", param="prompt", code="invalid_type")


def _check_generation_options(payload):
    """OpenAI's token limits and `n` (Ollama's own options are left to the host: num_predict -1 is valid there)."""
    for field in ("max_tokens", "max_completion_tokens"):
        value = payload.get(field)
        if value is not None and not _is_int(value, 1, MAX_TOKENS_LIMIT):
            raise ApiError(400, f"{field} must be an integer from 1 to {MAX_TOKENS_LIMIT}.", param=field,
                           code="invalid_value")  # fmt: skip
    n = payload.get("n")
    if n is not None and not _is_int(n, 1):
        raise ApiError(400, "n must be a positive integer.", param="n", code="invalid_value")
    if n is not None and n > 1:
        # Each request goes to one host, and an Ollama host answers with one choice whatever n says: a client
        # asking for several would silently get one.
        raise ApiError(400, "n greater than 1 is not supported: clood sends each request to one host, which may "
                            "answer with only one choice. Send n separate requests instead.", param="n",
                       code="unsupported_value")  # fmt: skip


def _check_messages(messages, *, allow_empty):
    if not isinstance(messages, list) or not (messages or allow_empty):
        what = "an array" if allow_empty else "a non-empty array"
        raise ApiError(400, f"messages must be {what}.", param="messages", code="invalid_type")
    if not all(isinstance(m, dict) for m in messages):
        raise ApiError(400, "Each message must be an object.", param="messages", code="invalid_type")


def _is_int(value, low, high=None):
    """True for a JSON integer (not a boolean, not 1.0) from `low` to `high`."""
    if not isinstance(value, int) or isinstance(value, bool):
        return False
    return value >= low and (high is None or value <= high)


def upstream_body(body, parsed, remote_name):
    """The body to send to the host: the client's bytes, with the model renamed only when the host spells it
    differently (then re-encoded; every other field keeps its value)."""
    if parsed.model == remote_name:
        return body
    payload = dict(parsed.payload)
    payload["name" if "model" not in payload else "model"] = remote_name
    try:
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:  # a lone surrogate escape ("\ud800") is valid JSON but has no UTF-8 form
        return json.dumps(payload, separators=(",", ":")).encode()


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
        text = " ".join(str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in text)
    text = str(text or "")
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.encode("utf-8", "replace").decode()  # events must encode: no lone surrogates
