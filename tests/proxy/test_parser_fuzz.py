"""Property-based fuzz of the request parsers (proxy/endpoints.py) and of model-name identity (hosts/names.py).

Whatever a client sends, `parse` either accepts it or answers a 4xx ApiError that renders as JSON: it never raises
anything else (which would be a 500). Runs in-process; every example is derived from a fixed seed so CI is stable.
"""

import json
import re

import jsonschema
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hosts.names import MAX_NAME_LENGTH, model_name_problem, normalize_model_name
from proxy.endpoints import ENDPOINTS, ParsedRequest, parse, upstream_body
from proxy.errors import ApiError
from proxy.openapi import build_spec

# The profile for every test here: reproducible (derandomized, no example database) and small enough to be quick.
FUZZ = settings(
    derandomize=True, database=None, max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

ENDPOINT_NAMES = sorted(ENDPOINTS)
# What model_name_problem's message promises a name is made of.
DOCUMENTED_NAME = re.compile(r"[A-Za-z0-9_./:@+-]+")

# --- strategies ----------------------------------------------------------------------------------------------------

name_parts = st.sampled_from(
    ["llama3.2", "Qwen2.5-Coder", "library", "registry.ollama.ai", "hf.co", "bartowski", "x", "", ".", "..", "-", "@"]
)
tags = st.sampled_from(["", ":", ":1b", ":latest", ":LATEST", ":7b-instruct-q4_K_M", "@sha256:abc", "::"])
structured_names = st.builds(
    lambda parts, tag, upper: ("/".join(parts) + tag).upper() if upper else "/".join(parts) + tag,
    st.lists(name_parts, min_size=1, max_size=4),
    tags,
    st.booleans(),
)
# Any text at all, lone surrogates included: a JSON string may escape them (`"\ud800"`).
any_text = st.text(st.characters(exclude_categories=()), max_size=40)
model_names = st.one_of(structured_names, any_text, st.just("a" * (MAX_NAME_LENGTH + 1)))

json_numbers = st.integers() | st.floats(allow_nan=False, allow_infinity=False)
json_scalars = st.none() | st.booleans() | json_numbers | st.text(max_size=20)
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip
messages = st.one_of(
    st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system"]), "content": st.text(max_size=20)}),
             min_size=1, max_size=3),
    json_values,
)  # fmt: skip
wrong_or_right = {
    "stream": st.none() | st.booleans() | json_scalars,
    "max_tokens": st.none() | st.integers(-2, 2**70) | json_scalars,
    "max_completion_tokens": st.none() | st.integers(-2, 2**70) | json_scalars,
    "prompt": st.text(max_size=20) | json_values,
    "input": st.text(max_size=20) | st.lists(st.text(max_size=8), max_size=3) | json_values,
    "name": model_names | json_scalars,
    "messages": messages,
    "temperature": json_scalars,
    "n": st.integers(-1, 3) | json_scalars,
    "options": st.dictionaries(st.text(max_size=8), json_scalars, max_size=2) | json_scalars,
}
# A request that is valid, or one field away from it, or several.
near_valid_requests = st.fixed_dictionaries({"model": model_names | json_scalars}, optional=wrong_or_right)

# Bodies as raw text: a valid request with one value spelled as Python's json module reads it but JSON does not
# (NaN, Infinity), as a number Python will not convert (over 4300 digits), or as another edge of the grammar.
lexemes = st.sampled_from(["NaN", "-Infinity", "1e999", "-0", "1.0", "1E2", "true", "null", '"8"', "[]", "{}",
                           '"\\u0000"', '"\\ud800"', "[" * 50 + "]" * 50, '"' + "\\" * 3 + '"']) | st.text(
    "0123456789", min_size=1, max_size=30) | st.integers(4290, 4310).map(lambda digits: "9" * digits)  # fmt: skip
raw_bodies = st.builds(
    lambda field, lexeme: (
        '{"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}], "prompt": "p", "input": "i", '
        f'"{field}": {lexeme}}}'
    ).encode(),
    st.sampled_from(["max_tokens", "stream", "model", "messages", "prompt", "input", "temperature"]),
    lexemes,
)


# --- the contract --------------------------------------------------------------------------------------------------


def parse_or_error(endpoint, body):
    """parse's outcome, checked against its contract: a ParsedRequest, or an ApiError with a 4xx status."""
    try:
        parsed = parse(ENDPOINTS[endpoint], body)
    except ApiError as error:
        assert 400 <= error.status < 500, (error.status, error.message)
        assert isinstance(error.message, str) and error.message.strip()
        assert error.param is None or isinstance(error.param, str)
        return error
    assert isinstance(parsed, ParsedRequest)
    assert isinstance(parsed.model, str) and model_name_problem(parsed.model) is None
    assert parsed.model_key == normalize_model_name(parsed.model)
    assert isinstance(parsed.stream, bool)
    assert isinstance(parsed.payload, dict)
    return parsed


def assert_renders_as_json(error):
    for flavour in ("openai", "ollama"):
        status, headers, body = error.render(flavour)
        assert status == error.status
        assert (b"content-type", b"application/json") in headers
        rendered = json.loads(body.decode("utf-8"))
        if flavour == "openai":
            assert set(rendered["error"]) == {"message", "type", "param", "code"}
            assert rendered["error"]["message"] == error.message
        else:
            assert rendered == {"error": error.message}


# --- parse ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ENDPOINT_NAMES)
@FUZZ
@given(body=st.binary(max_size=300))
@example(body=b"")
@example(body=b"\xef\xbb\xbf{}")
@example(body=b"\xff\xfe{")
def test_parse_takes_any_bytes(endpoint, body):
    outcome = parse_or_error(endpoint, body)
    if isinstance(outcome, ApiError):
        assert_renders_as_json(outcome)


@pytest.mark.parametrize("endpoint", ENDPOINT_NAMES)
@FUZZ
@given(value=json_values)
def test_parse_takes_any_json_value(endpoint, value):
    outcome = parse_or_error(endpoint, json.dumps(value).encode())
    if isinstance(outcome, ApiError):
        assert_renders_as_json(outcome)
    else:
        assert outcome.payload == value


@pytest.mark.parametrize("endpoint", ENDPOINT_NAMES)
@FUZZ
@given(request=near_valid_requests, ascii_only=st.booleans())
def test_parse_takes_near_valid_requests(endpoint, request, ascii_only):
    outcome = parse_or_error(endpoint, json.dumps(request, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass"))
    if isinstance(outcome, ApiError):
        assert_renders_as_json(outcome)


@pytest.mark.parametrize("endpoint", ENDPOINT_NAMES)
@FUZZ
@given(body=raw_bodies)
def test_parse_takes_edges_of_the_json_grammar(endpoint, body):
    outcome = parse_or_error(endpoint, body)
    if isinstance(outcome, ApiError):
        assert_renders_as_json(outcome)


def _request_validator(endpoint):
    """A validator for the endpoint's request schema in clood's OpenAPI description (refs resolve in the document)."""
    spec = build_spec()
    pointer = "/paths/" + ENDPOINTS[endpoint].path.replace("/", "~1") + "/post/requestBody/content/application~1json"
    return jsonschema.Draft202012Validator({**spec, "$ref": "#" + pointer + "/schema"})


@pytest.mark.parametrize("endpoint", ENDPOINT_NAMES)
@FUZZ
@given(request=near_valid_requests)
def test_what_parse_accepts_the_openapi_description_accepts(endpoint, request):
    """The description is never stricter than clood: a client that follows it is not turned away by the parser."""
    outcome = parse_or_error(endpoint, json.dumps(request).encode())
    if isinstance(outcome, ParsedRequest):
        errors = [e.message for e in _request_validator(endpoint).iter_errors(request)]
        assert not errors, errors


@pytest.mark.parametrize("endpoint", ENDPOINT_NAMES)
@FUZZ
@given(request=near_valid_requests, remote_name=st.sampled_from(["llama3.2:1b", "library/llama3.2:1B", "x"]))
def test_the_upstream_body_is_the_request_with_the_hosts_model_name(endpoint, request, remote_name):
    body = json.dumps(request).encode()
    parsed = parse_or_error(endpoint, body)
    if isinstance(parsed, ParsedRequest):
        sent = json.loads(upstream_body(body, parsed, remote_name))
        model_field = "model" if "model" in request else "name"
        assert sent == {**request, model_field: remote_name}


@pytest.mark.parametrize(
    "body",
    [b"1" * 4301, b'{"model": "llama3.2:1b", "max_tokens": ' + b"9" * 4301 + b"}"],
    ids=["bare-integer", "max_tokens"],
)
def test_integer_past_the_digit_limit_is_a_400(body):
    error = parse_or_error("chat.completions", body)
    assert isinstance(error, ApiError) and error.code == "invalid_json"


def test_an_escaped_lone_surrogate_survives_a_model_rename():
    body = b'{"model": "LLAMA3.2:1b", "messages": [{"role": "user", "content": "\\ud800"}]}'
    parsed = parse_or_error("chat.completions", body)
    sent = json.loads(upstream_body(body, parsed, "llama3.2:1b"))
    assert sent["messages"][0]["content"] == "\ud800" and sent["model"] == "llama3.2:1b"


# --- model names ---------------------------------------------------------------------------------------------------


@FUZZ
@given(name=model_names)
def test_normalising_never_raises_and_is_idempotent(name):
    normalised = normalize_model_name(name)
    assert isinstance(normalised, str) and ":" in normalised
    assert normalize_model_name(normalised) == normalised


@FUZZ
@given(name=model_names | st.none() | st.integers() | st.binary(max_size=8) | st.lists(st.text(max_size=3)))
def test_model_name_problem_never_raises(name):
    problem = model_name_problem(name)
    assert problem is None or (isinstance(problem, str) and problem)


@FUZZ
@given(name=model_names)
def test_an_accepted_name_normalises_to_an_accepted_name(name):
    if model_name_problem(name) is None:
        assert model_name_problem(normalize_model_name(name)) is None
        assert normalize_model_name(name.upper()) == normalize_model_name(name)


@FUZZ
@given(name=model_names)
@example(name="llama3.2:1b\n")
def test_an_accepted_name_holds_only_the_documented_characters(name):
    if model_name_problem(name) is None:
        assert DOCUMENTED_NAME.fullmatch(name)


def test_normalising_a_doubled_registry_is_idempotent():
    once = normalize_model_name("registry.ollama.ai/registry.ollama.ai/library/llama3.2")
    assert normalize_model_name(once) == once
