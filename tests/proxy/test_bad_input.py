"""Bad input: each case gets the right status and an error body in the API's own shape, nothing reaches a host that
should not, and clood stays healthy. Also clients that send slowly or hang up at every stage of a request.

Disconnects covered elsewhere: mid-stream on the OpenAI API and during a non-streamed answer in
tests/proxy/test_failover.py (test_client_disconnect_cancels_*); the queue's own bookkeeping in
tests/proxy/test_queue.py.
"""

import json
import socket
import time

import httpx
import pytest

from hosts.simulator import SimModel
from tests.conftest import wait_until

OK_CHAT = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}]}
SLOW_STREAM = {"model": "slow:1b", "messages": [{"role": "user", "content": "x"}], "stream": True}
READ_TIMEOUT = 2  # the test clood's CLOOD_REQUEST_READ_TIMEOUT


@pytest.fixture(scope="module")
def garden(clood_factory, sims):
    patient = {"CLOOD_FIRST_BYTE_TIMEOUT": "30", "CLOOD_COLD_START_TIMEOUT": "30"}
    garden = clood_factory(env={"CLOOD_REQUEST_READ_TIMEOUT": str(READ_TIMEOUT), **patient})
    garden.add("box", sims(models=["llama3.2:1b", "nomic-embed-text"]))
    # One slot, and an answer that takes 100 s unless max_tokens says otherwise: a request that is not cancelled
    # keeps it busy.
    garden.add("slow", sims(models=["slow:1b"], tokens_per_second=20, reply_tokens=2000), "--max-concurrency", "1")
    # Thinks for a minute before its first token.
    garden.add("sleepy", sims(models=[SimModel(name="sleepy:1b", loaded=True)], ttft=60), "--max-concurrency", "1")
    garden.refresh()
    return garden


def post(garden, path, content, content_type="application/json"):
    return httpx.post(garden.url + path, content=content, headers={"content-type": content_type}, timeout=10)


def chat_with(**fields):
    return json.dumps({**OK_CHAT, **fields}).encode()


def nested(depth):
    return b"[" * depth + b"]" * depth


def host_requests(garden, path):
    """How many requests for `path` the hosts have received."""
    return sum(sim.stats["requests"].get(path, 0) for sim in garden.sims.values())


# --- the table -----------------------------------------------------------------------------------------------------

CHAT, COMPLETIONS, EMBEDDINGS = "/v1/chat/completions", "/v1/completions", "/v1/embeddings"

# fmt: off
OPENAI_CASES = [
    # (method, path, body, status, code, param)
    # not JSON, or not a JSON object
    ("POST", CHAT, b"{not json", 400, "invalid_json", None),
    ("POST", CHAT, b"", 400, "invalid_json", None),
    ("POST", CHAT, b"[1, 2]", 400, "invalid_json", None),
    ("POST", CHAT, b'"just a string"', 400, "invalid_json", None),
    ("POST", CHAT, b"null", 400, "invalid_json", None),
    ("POST", CHAT, chat_with() + b"{}", 400, "invalid_json", None),
    ("POST", CHAT, b'{"model": "llama3.2:1b", "messages": [{"role": "user", "content": "a\x00b"}]}', 400,
     "invalid_json", None),  # a raw NUL byte: JSON strings may not hold control characters
    ("POST", COMPLETIONS, b"{'model': 'llama3.2:1b'}", 400, "invalid_json", None),
    ("POST", EMBEDDINGS, b'{"model": "nomic-embed-text", "input": ', 400, "invalid_json", None),
    # what Python's json reads but JSON does not have, or a number no host can use
    ("POST", CHAT, chat_with(temperature=float("nan")), 400, "invalid_json", None),
    ("POST", COMPLETIONS, b'{"model": "llama3.2:1b", "prompt": "x", "top_p": -Infinity}', 400, "invalid_json", None),
    ("POST", CHAT, b'{"model": "llama3.2:1b", "messages": [{}], "temperature": 1e999}', 400, "invalid_json", None),
    ("POST", CHAT, b'{"model": "llama3.2:1b", "messages": [{}], "max_tokens": ' + b"9" * 4301 + b"}", 400,
     "invalid_json", None),
    # nested deeper than any JSON parser should follow
    ("POST", CHAT, nested(100_000), 400, "invalid_json", None),
    ("POST", CHAT, b'{"model": "llama3.2:1b", "messages": [{"role": "user", "content": ' + nested(100_000) + b"}]}",
     400, "invalid_json", None),
    # not UTF-8
    ("POST", CHAT, b'{"model": "llama3.2:1b", "messages": [{}], "x": "\xff\xfe"}', 400, "invalid_encoding", None),
    ("POST", EMBEDDINGS, '{"model": "nomic-embed-text", "input": "café"}'.encode("latin-1"), 400,
     "invalid_encoding", None),
    ("POST", CHAT, b'{"model": "llama3.2:1b", "messages": [{"content": "\xed\xa0\x80"}]}', 400, "invalid_encoding",
     None),  # a UTF-16 surrogate encoded as UTF-8
    # the model: missing, of the wrong type, unknown
    ("POST", CHAT, b'{"messages": [{"role": "user", "content": "x"}]}', 400, "missing_model", "model"),
    ("POST", CHAT, b'{"model": null, "messages": [{}]}', 400, "missing_model", "model"),
    ("POST", CHAT, b'{"model": 42, "messages": [{}]}', 400, "invalid_type", "model"),
    ("POST", CHAT, b'{"model": ["llama3.2:1b"], "messages": [{}]}', 400, "invalid_type", "model"),
    ("POST", COMPLETIONS, b'{"model": {}, "prompt": "x"}', 400, "invalid_type", "model"),
    ("POST", EMBEDDINGS, b'{"input": "x"}', 400, "missing_model", "model"),
    ("POST", CHAT, b'{"model": "qwen2.5-coder:3b", "messages": [{}]}', 404, "model_not_found", "model"),
    ("POST", COMPLETIONS, b'{"model": "llama3.2:3b", "prompt": "x"}', 404, "model_not_found", "model"),
    ("POST", EMBEDDINGS, b'{"model": "nope-embed", "input": "x"}', 404, "model_not_found", "model"),
    # model names that try to be paths, headers or look-alikes
    ("POST", CHAT, b'{"model": "", "messages": [{}]}', 400, "invalid_model", "model"),
    ("POST", CHAT, b'{"model": "../../etc/passwd", "messages": [{}]}', 400, "invalid_model", "model"),
    ("POST", CHAT, b'{"model": "library/../llama3.2:1b", "messages": [{}]}', 400, "invalid_model", "model"),
    ("POST", CHAT, b'{"model": "%2e%2e/x", "messages": [{}]}', 400, "invalid_model", "model"),
    ("POST", CHAT, b'{"model": "llama 3", "messages": [{}]}', 400, "invalid_model", "model"),
    ("POST", CHAT, chat_with(model="llаma3.2:1b"), 400, "invalid_model", "model"),  # Cyrillic а
    ("POST", CHAT, chat_with(model="ｌｌａｍａ3.2:1b"), 400, "invalid_model", "model"),  # fullwidth
    ("POST", CHAT, chat_with(model="llama3.2\u200b:1b"), 400, "invalid_model", "model"),  # zero-width space
    ("POST", CHAT, chat_with(model="llama3.2:1b\u0000"), 400, "invalid_model", "model"),
    ("POST", CHAT, chat_with(model="llama3.2:1b\r\nX-Injected: 1"), 400, "invalid_model", "model"),
    ("POST", CHAT, chat_with(model="llama3.2:1b%0d%0aX-Injected:%201"), 400, "invalid_model", "model"),
    ("POST", CHAT, chat_with(model="llama3.2:1b\n"), 400, "invalid_model", "model"),
    ("POST", EMBEDDINGS, json.dumps({"model": "x" * 300, "input": "x"}).encode(), 400, "invalid_model", "model"),
    # the prompt's field: missing or of the wrong type
    ("POST", CHAT, b'{"model": "llama3.2:1b"}', 400, "missing_field", "messages"),
    ("POST", CHAT, b'{"model": "llama3.2:1b", "messages": []}', 400, "invalid_type", "messages"),
    ("POST", CHAT, b'{"model": "llama3.2:1b", "messages": null}', 400, "invalid_type", "messages"),
    ("POST", CHAT, b'{"model": "llama3.2:1b", "messages": "hi"}', 400, "invalid_type", "messages"),
    ("POST", CHAT, b'{"model": "llama3.2:1b", "messages": ["hi"]}', 400, "invalid_type", "messages"),
    ("POST", CHAT, chat_with(stream="yes"), 400, "invalid_type", "stream"),
    ("POST", COMPLETIONS, b'{"model": "llama3.2:1b"}', 400, "missing_field", "prompt"),
    ("POST", COMPLETIONS, b'{"model": "llama3.2:1b", "prompt": 7}', 400, "invalid_type", "prompt"),
    ("POST", EMBEDDINGS, b'{"model": "nomic-embed-text", "input": {"a": 1}}', 400, "invalid_type", "input"),
    ("POST", EMBEDDINGS, b'{"model": "nomic-embed-text", "input": "x", "stream": 1}', 400, "invalid_type", "stream"),
    # token limits: a positive integer up to 2**31 - 1
    ("POST", CHAT, chat_with(max_tokens=-5), 400, "invalid_value", "max_tokens"),
    ("POST", CHAT, chat_with(max_tokens=0), 400, "invalid_value", "max_tokens"),
    ("POST", CHAT, chat_with(max_tokens=1.5), 400, "invalid_value", "max_tokens"),
    ("POST", CHAT, chat_with(max_tokens="10"), 400, "invalid_value", "max_tokens"),
    ("POST", CHAT, chat_with(max_tokens=True), 400, "invalid_value", "max_tokens"),
    ("POST", CHAT, chat_with(max_tokens=2**31), 400, "invalid_value", "max_tokens"),
    ("POST", CHAT, chat_with(max_tokens=10**30), 400, "invalid_value", "max_tokens"),
    ("POST", CHAT, chat_with(max_completion_tokens=-1), 400, "invalid_value", "max_completion_tokens"),
    ("POST", COMPLETIONS, b'{"model": "llama3.2:1b", "prompt": "x", "max_tokens": 0}', 400, "invalid_value",
     "max_tokens"),
    # n: one choice per request
    ("POST", CHAT, chat_with(n=2), 400, "unsupported_value", "n"),
    ("POST", COMPLETIONS, b'{"model": "llama3.2:1b", "prompt": "x", "n": 5}', 400, "unsupported_value", "n"),
    ("POST", CHAT, chat_with(n=0), 400, "invalid_value", "n"),
    ("POST", CHAT, chat_with(n=-1), 400, "invalid_value", "n"),
    ("POST", CHAT, chat_with(n="2"), 400, "invalid_value", "n"),
    ("POST", CHAT, chat_with(n=1.0), 400, "invalid_value", "n"),
    # routes and methods
    ("POST", "/v1/nope", b"{}", 404, "not_found", None),
    ("GET", CHAT, b"", 405, "method_not_allowed", None),
    ("POST", "/v1/models", b"", 405, "method_not_allowed", None),
    ("GET", "/v1/models/nope:1b", b"", 404, "model_not_found", "model"),
    ("GET", "/v1/models/..%2F..%2Fetc%2Fpasswd", b"", 400, "invalid_model", "model"),
    ("GET", "/v1/models/%2e%2e", b"", 400, "invalid_model", "model"),
    ("GET", "/v1/models/llama3.2:1b%20", b"", 400, "invalid_model", "model"),
    ("GET", "/v1/models/ll%D0%B0ma3.2:1b", b"", 400, "invalid_model", "model"),
    ("GET", "/v1/models/llama3.2:1b%0d%0aX-Injected:%201", b"", 404, "not_found", None),
]

OLLAMA_CASES = [
    # (path, body, status, message fragment)
    ("/api/chat", b"{oops", 400, "not valid JSON"),
    ("/api/chat", b"[]", 400, "must be a JSON object"),
    ("/api/chat", b'{"model": "llama3.2:1b", "messages": ' + nested(100_000) + b"}", 400, "nested too deeply"),
    ("/api/chat", b'{"messages": []}', 400, "You must provide a model parameter"),
    ("/api/chat", b'{"model": "nope:1b", "messages": []}', 404, "'nope:1b' does not exist"),
    ("/api/chat", b'{"model": "../llama3.2:1b", "messages": []}', 400, "Invalid model name"),
    ("/api/chat", b'{"model": "llama3.2:1b", "messages": "hi"}', 400, "messages must be an array"),
    ("/api/chat", b'{"model": "llama3.2:1b", "messages": [1]}', 400, "Each message must be an object"),
    ("/api/chat", b'{"model": "llama3.2:1b", "options": 5}', 400, "options must be an object"),
    ("/api/generate", b'{"model": "llama3.2:1b", "stream": 1}', 400, "stream must be a boolean"),
    ("/api/generate", b'{"model": "llama3.2:1b", "prompt": 5}', 400, "prompt must be a string"),
    ("/api/generate", b'{"model": "llama3.2:1b", "prompt": "\xc3"}', 400, "not valid UTF-8"),
    ("/api/generate", b'{"model": "llama3.2:1b", "prompt": "a\x00b"}', 400, "not valid JSON"),
    ("/api/generate", b'{"model": "llama3.2:1b", "options": {"temperature": NaN}}', 400, "NaN is not a JSON value"),
    ("/api/generate", b'{"model": "llama3.2:1b\\u0000", "prompt": "x"}', 400, "Invalid model name"),
    ("/api/embed", b'{"model": "nomic-embed-text"}', 400, "You must provide input"),
    ("/api/embed", b'{"model": "nomic-embed-text", "input": 5}', 400, "input must be a string or an array"),
    ("/api/embeddings", b'{"model": "nomic-embed-text", "prompt": ["x"]}', 400, "prompt must be a string"),
    ("/api/embeddings", b'{"model": "nope-embed", "prompt": "x"}', 404, "'nope-embed' does not exist"),
    ("/api/show", b"{}", 400, "You must provide a model parameter"),
    ("/api/show", b'{"name": "../../etc/passwd"}', 400, "Invalid model name"),
    ("/api/show", b'{"name": 7}', 400, "model must be a string"),
    ("/api/show", b'{"model": "nope:1b"}', 404, "'nope:1b' does not exist"),
    ("/api/nope", b"{}", 404, "Unknown endpoint"),
]
# fmt: on


@pytest.mark.parametrize(("method", "path", "body", "status", "code", "param"), OPENAI_CASES)
def test_openai_bad_input(garden, method, path, body, status, code, param):
    before = host_requests(garden, path)
    response = httpx.request(method, garden.url + path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert "x-injected" not in response.headers
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["code"], error["param"]) == (code, param), error
    assert error["type"] == ("not_found_error" if status == 404 else "invalid_request_error")
    assert host_requests(garden, path) == before  # refused by clood, never sent on
    assert httpx.get(garden.url + "/health").status_code == 200


OLLAMA_METHOD_CASES = [
    ("GET", "/api/chat"), ("GET", "/api/generate"), ("GET", "/api/embed"), ("GET", "/api/embeddings"),
    ("GET", "/api/show"), ("POST", "/api/tags"), ("POST", "/api/ps"), ("POST", "/api/version"),
    ("DELETE", "/api/chat"), ("PUT", "/api/generate"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path"), OLLAMA_METHOD_CASES)
def test_ollama_wrong_method_is_405_in_its_shape(garden, method, path):
    before = host_requests(garden, path)
    response = httpx.request(method, garden.url + path, content=b"{}")
    assert response.status_code == 405
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert isinstance(error, str) and method in error, error
    assert host_requests(garden, path) == before
    assert httpx.get(garden.url + "/health").status_code == 200


@pytest.mark.parametrize(
    "path", ["/status", "/health", "/ready", "/metrics", "/openapi.json", "/v1/models/llama3.2:1b"]
)
def test_clood_s_own_get_endpoints_refuse_other_methods(garden, path):
    response = httpx.post(garden.url + path, content=b"{}")
    assert response.status_code == 405
    error = response.json()["error"]
    assert error["code"] == "method_not_allowed" and error["type"] == "invalid_request_error", error
    assert httpx.get(garden.url + "/health").status_code == 200


@pytest.mark.parametrize(("path", "body", "status", "fragment"), OLLAMA_CASES)
def test_ollama_bad_input(garden, path, body, status, fragment):
    before = host_requests(garden, path)
    response = post(garden, path, body)
    assert response.status_code == status
    error = response.json()["error"]
    assert isinstance(error, str) and fragment in error, error
    assert host_requests(garden, path) == before
    assert httpx.get(garden.url + "/health").status_code == 200


# --- what must pass ------------------------------------------------------------------------------------------------


def test_unknown_fields_pass_through(garden):
    response = httpx.post(garden.url + CHAT, json={**OK_CHAT, "n": 1, "whatever": {"x": [1]}, "deep": [[[[1]]]]})
    assert response.status_code == 200
    sent = garden.sims["box"].stats["last_request"]["json"]
    assert (sent["n"], sent["whatever"], sent["deep"]) == (1, {"x": [1]}, [[[[1]]]])


def test_fields_ollama_does_not_know_pass_through_on_its_api(garden):
    body = {**OK_CHAT, "stream": False, "max_tokens": -1, "n": 3}
    assert httpx.post(garden.url + "/api/chat", json=body).status_code == 200
    sent = garden.sims["box"].stats["last_request"]["json"]
    assert (sent["max_tokens"], sent["n"]) == (-1, 3)


def test_nesting_a_parser_can_follow_passes_through(garden):
    body = b'{"model": "llama3.2:1b", "messages": [{"role": "user", "content": "x"}], "deep": ' + nested(500) + b"}"
    assert post(garden, CHAT, body).status_code == 200
    deep, depth = garden.sims["box"].stats["last_request"]["json"]["deep"], 1
    while deep:
        deep, depth = deep[0], depth + 1
    assert depth == 500


def test_escaped_null_character_in_content_passes_through(garden):
    response = post(garden, CHAT, b'{"model": "llama3.2:1b", "messages": [{"role": "user", "content": "a\\u0000b"}]}')
    assert response.status_code == 200
    assert garden.sims["box"].stats["last_request"]["json"]["messages"][0]["content"] == "a\x00b"


def test_lone_surrogate_escape_survives_a_renamed_model(garden):
    # The host spells the model differently, so clood re-encodes the body; "\ud800" has no UTF-8 form.
    body = b'{"model": "LLAMA3.2:1b", "messages": [{"role": "user", "content": "\\ud800"}]}'
    response = post(garden, CHAT, body)
    assert response.status_code == 200, response.text
    sent = garden.sims["box"].stats["last_request"]["json"]
    assert (sent["model"], sent["messages"][0]["content"]) == ("llama3.2:1b", "\ud800")


def test_content_parts_of_any_shape_pass_through(garden):
    parts = [{"type": "text", "text": 5}, {"type": "image_url", "image_url": {"url": "data:,"}}, 7, None]
    response = httpx.post(garden.url + CHAT, json={**OK_CHAT, "messages": [{"role": "user", "content": parts}]})
    assert response.status_code == 200, response.text
    assert garden.sims["box"].stats["last_request"]["json"]["messages"][0]["content"] == parts


def test_ten_thousand_messages_are_relayed_whole(garden):
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}"} for i in range(10_000)]
    response = httpx.post(garden.url + CHAT, json={"model": "llama3.2:1b", "messages": messages}, timeout=30)
    assert response.status_code == 200
    assert garden.sims["box"].stats["last_request"]["json"]["messages"] == messages


def test_huge_field_under_the_limit_passes(garden):
    content = "x" * 900_000  # the test clood's limit is 1 MiB
    response = httpx.post(garden.url + CHAT, json={**OK_CHAT, "messages": [{"role": "user", "content": content}]})
    assert response.status_code == 200
    assert garden.sims["box"].stats["last_request"]["json"]["messages"][0]["content"] == content


@pytest.mark.parametrize("path", [CHAT, "/api/chat"])
def test_body_over_the_limit_is_413(garden, path):
    before = host_requests(garden, path)
    body = b'{"model": "llama3.2:1b", "messages": [{"role": "user", "content": "' + b"x" * (2 * 1024 * 1024) + b'"}]}'
    response = post(garden, path, body)
    assert response.status_code == 413
    error = response.json()["error"]
    if path == CHAT:
        assert (error["code"], error["type"]) == ("too_large", "invalid_request_error")
    else:
        assert error == "The request body is larger than 1048576 bytes."
    assert host_requests(garden, path) == before
    assert httpx.post(garden.url + path, json={**OK_CHAT, "stream": False}).status_code == 200


def test_n_of_one_passes(garden):
    assert httpx.post(garden.url + COMPLETIONS, json={"model": "llama3.2:1b", "prompt": "x", "n": 1}).status_code == 200
    assert garden.sims["box"].stats["last_request"]["json"]["n"] == 1


def test_largest_max_tokens_reaches_the_host(garden):
    # Any limit up to 2**31 - 1 is the host's to cap; the simulated host would really make that many tokens.
    with connect(garden) as sock:
        sock.sendall(raw_post(CHAT, json.dumps({**SLOW_STREAM, "max_tokens": 2**31 - 1}).encode()))
        head, _ = read_head(sock)
        assert head.startswith(b"http/1.1 200")
        assert garden.sims["slow"].stats["last_request"]["json"]["max_tokens"] == 2**31 - 1
    wait_until(lambda: garden.status("slow")["slots_used"] == 0, 10, 0.05, "the slot to be freed")


def test_embeddings_answer_in_one_piece_even_when_asked_to_stream(garden):
    response = httpx.post(garden.url + EMBEDDINGS, json={"model": "nomic-embed-text", "input": "x", "stream": True})
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/json")
    assert response.json()["data"][0]["embedding"]
    assert garden.log_for(response.headers["x-clood-request-id"])["stream"] == 0


def test_huge_headers_do_not_hurt(garden):
    try:
        response = httpx.post(garden.url + CHAT, json=OK_CHAT, headers={"x-big": "a" * 200_000})
        assert response.status_code in (200, 400, 413, 431)
    except httpx.RemoteProtocolError:
        pass  # the server may just close such a connection
    assert httpx.post(garden.url + CHAT, json=OK_CHAT).status_code == 200


def test_rejections_are_logged(garden):
    response = post(garden, CHAT, b'{"model": "nope:1b", "messages": [{}]}')
    row = garden.log_for(response.headers["x-clood-request-id"])
    assert row["outcome"] == "rejected" and row["status"] == 404 and row["model"] == "nope:1b"


# --- raw HTTP: header tricks ----------------------------------------------------------------------------------------


def connect(garden):
    host, port = garden.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def raw_post(path, body, headers=b""):
    return (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + headers +
            b"Content-Length: %d\r\n\r\n" % len(body) + body)  # fmt: skip


def read_head(sock):
    """The response's status line and headers (lower-cased), and whatever body bytes came with them."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head.lower(), rest


def read_all(sock, timeout):
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        pass
    return data


OK_BODY = json.dumps(OK_CHAT).encode()
REQUEST_LINE = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
LENGTH = b"Content-Length: %d\r\n" % len(OK_BODY)

# fmt: off
HEADER_TRICKS = [
    # (name, request bytes, status the client gets)
    ("bare LF line endings (the request line never ends)",
     REQUEST_LINE.replace(b"\r\n", b"\n") + LENGTH.replace(b"\r", b"") + b"\n" + OK_BODY, 408),
    ("header line without a colon", REQUEST_LINE + b"X-Forwarded-For evil\r\n" + LENGTH + b"\r\n" + OK_BODY, 400),
    ("CR inside a header value", REQUEST_LINE + b"X-Forwarded-For: evil\rSet-Cookie: a=b\r\n" + LENGTH + b"\r\n" +
     OK_BODY, 400),
    ("NUL inside a header value", REQUEST_LINE + b"X-Forwarded-For: evil\x00\r\n" + LENGTH + b"\r\n" + OK_BODY, 400),
    ("space inside a header name", REQUEST_LINE + b"X Injected: 1\r\n" + LENGTH + b"\r\n" + OK_BODY, 400),
    ("two Content-Lengths", REQUEST_LINE + b"Content-Length: 5\r\n" + LENGTH + b"\r\n" + OK_BODY, 400),
    ("Content-Length and chunked", REQUEST_LINE + b"Transfer-Encoding: chunked\r\n" + LENGTH + b"\r\n" + OK_BODY,
     400),
    ("folded line carrying a header", REQUEST_LINE + b"X-A: evil\r\n Set-Cookie: a=b\r\n" + LENGTH + b"\r\n" + OK_BODY,
     200),
    ("CRLF in the path", REQUEST_LINE.replace(b"completions", b"completions%0d%0aSet-Cookie:%20a=b") + LENGTH +
     b"\r\n" + OK_BODY, 404),
]
# fmt: on


@pytest.mark.parametrize(("request_bytes", "status"), [c[1:] for c in HEADER_TRICKS], ids=[c[0] for c in HEADER_TRICKS])
def test_header_tricks_are_refused_or_harmless(garden, request_bytes, status):
    before = host_requests(garden, CHAT)
    with connect(garden) as sock:
        sock.sendall(request_bytes)
        answer = read_all(sock, timeout=READ_TIMEOUT + 8)
    head, _, body = answer.partition(b"\r\n\r\n")
    head = head.lower()
    assert head.startswith(b"http/1.1 %d" % status), answer[:200]
    if status in (400, 408):  # refused by the server itself, still in the API's error shape
        error = json.loads(body)["error"]
        assert error["type"] == "invalid_request_error" and error["message"].startswith("The request")
    assert b"set-cookie" not in head and b"x-injected" not in head
    assert host_requests(garden, CHAT) == before + (status == 200)
    assert httpx.get(garden.url + "/health").status_code == 200


def test_malformed_http_on_the_ollama_api_is_refused_in_its_shape(garden):
    with connect(garden) as sock:
        sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: x\r\nX-Forwarded-For evil\r\n" + LENGTH + b"\r\n" + OK_BODY)
        answer = read_all(sock, timeout=10)
    assert answer.startswith(b"HTTP/1.1 400")
    assert answer_json(answer) == {"error": "The request is not valid HTTP/1.1."}
    assert httpx.get(garden.url + "/health").status_code == 200


# --- slow clients --------------------------------------------------------------------------------------------------


def dribble(sock, data, seconds):
    """Send `data` a byte a second for `seconds` (or until clood closes the connection); what clood answered."""
    sock.settimeout(1)
    for index in range(seconds):
        try:
            sock.sendall(data[index : index + 1])
            answer = sock.recv(65536)
            if answer:
                return answer
        except TimeoutError:
            continue
        except OSError:  # closed by clood: read what it said before
            break
    sock.settimeout(5)
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def answer_json(answer):
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])


def test_slow_body_gets_408_in_openais_shape_and_others_are_served_meanwhile(garden):
    with connect(garden) as slow:
        slow.sendall(raw_post(CHAT, OK_BODY)[: -len(OK_BODY)])
        assert httpx.get(garden.url + "/health").status_code == 200
        assert httpx.post(garden.url + CHAT, json=OK_CHAT).status_code == 200
        answer = dribble(slow, OK_BODY, READ_TIMEOUT + 5)
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout")
    assert answer_json(answer)["error"] == {
        "message": f"The request did not arrive within {READ_TIMEOUT} s.", "type": "invalid_request_error",
        "param": None, "code": "request_timeout",
    }  # fmt: skip
    assert httpx.post(garden.url + CHAT, json=OK_CHAT).status_code == 200


def test_slow_headers_get_408_in_ollamas_shape(garden):
    request = raw_post("/api/chat", OK_BODY)
    first_line = request.index(b"\r\n") + 2
    with connect(garden) as slow:
        slow.sendall(request[:first_line])
        answer = dribble(slow, request[first_line:], READ_TIMEOUT + 5)
    assert answer.startswith(b"HTTP/1.1 408")
    assert answer_json(answer) == {"error": f"The request did not arrive within {READ_TIMEOUT} s."}
    assert httpx.get(garden.url + "/health").status_code == 200


@pytest.mark.parametrize(("path", "shape"), [("/api/chat", "ollama"), (CHAT, "openai")])
def test_a_request_line_sent_a_byte_a_second_gets_408(garden, path, shape):
    """Twisted makes a request only once its first line is whole: the deadline runs from the first byte anyway. (The
    answer is in the shape of the API the line so far names, so the path goes first.)"""
    request = raw_post(path, OK_BODY)
    with connect(garden) as slow:
        slow.sendall(request[: len("POST ") + len(path)])
        answer = dribble(slow, request[len("POST ") + len(path) :], READ_TIMEOUT + 5)
    assert answer.startswith(b"HTTP/1.1 408")
    message = f"The request did not arrive within {READ_TIMEOUT} s."
    assert answer_json(answer) == ({"error": message} if shape == "ollama" else {"error": {
        "message": message, "type": "invalid_request_error", "param": None, "code": "request_timeout"}})  # fmt: skip
    assert httpx.get(garden.url + "/health").status_code == 200


def test_an_idle_keep_alive_connection_is_not_timed_out(garden):
    """The deadline starts with a request's first byte, not with the wait for it: a client that keeps its
    connection open between requests (as every HTTP client pool does) is served when it asks."""
    with httpx.Client(base_url=garden.url) as client:  # one pooled connection, kept alive
        first = client.post(CHAT, json=OK_CHAT)
        time.sleep(READ_TIMEOUT + 1)  # idle, longer than the deadline
        second = client.post(CHAT, json=OK_CHAT)
        assert first.status_code == second.status_code == 200
        assert first.extensions["network_stream"] is second.extensions["network_stream"]  # the same connection


def test_a_request_pipelined_behind_a_long_stream_is_not_timed_out(garden):
    """Bytes that come while a response is being sent wait for it (Twisted buffers them): the read deadline must
    neither cut the stream short nor refuse the next request, however long the stream takes."""
    stream = raw_post(CHAT, json.dumps({**SLOW_STREAM, "max_tokens": 80}).encode())  # 80 tokens at 20/s: 4 s
    after = raw_post("/api/chat", json.dumps({**OK_CHAT, "stream": False}).encode(), headers=b"Connection: close\r\n")
    with connect(garden) as sock:
        sock.sendall(stream)
        head, first_bytes = read_head(sock)  # the stream is under way...
        sock.sendall(after)  # ...when the next request comes
        answer = first_bytes + read_all(sock, timeout=READ_TIMEOUT + 10)
    assert head.startswith(b"http/1.1 200")
    assert b" 408 " not in answer and b"request_timeout" not in answer
    assert answer.count(b"HTTP/1.1 200") == 1, answer[-300:]  # the second answer, after the whole stream
    assert b"data: [DONE]" in answer and b'"done": true' in answer


def test_blank_lines_between_requests_start_no_clock(garden):
    with connect(garden) as sock:
        sock.sendall(b"\r\n")  # what some clients send after a body: Twisted skips it
        time.sleep(READ_TIMEOUT + 1)
        sock.sendall(raw_post(CHAT, OK_BODY, headers=b"Connection: close\r\n"))
        answer = read_all(sock, timeout=10)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


def test_a_huge_content_length_is_413_before_the_body_is_read(garden):
    with connect(garden) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000000\r\n\r\n{")
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413")
    assert answer_json(answer)["error"]["code"] == "too_large"
    assert httpx.get(garden.url + "/health").status_code == 200


# --- clients that hang up ------------------------------------------------------------------------------------------


def nothing_left_running(garden, host):
    """clood holds no slot and the host generates nothing (a request left running would take 100 s)."""
    wait_until(lambda: garden.status()["in_flight"] == 0 and garden.status()["queued"] == 0, 15, 0.05, "clood idle")
    wait_until(lambda: garden.sims[host].stats["in_flight"] == 0, 15, 0.05, f"{host} idle")


def served(garden, model="slow:1b"):
    body = {"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
    return httpx.post(garden.url + CHAT, json=body, timeout=30).status_code == 200


STREAM_REQUEST = raw_post(CHAT, json.dumps(SLOW_STREAM).encode())
HANG_UP_POINTS = {
    "mid-headers": STREAM_REQUEST[: STREAM_REQUEST.index(b"Content-Type") + 7],
    "mid-body": STREAM_REQUEST[:-5],
    "after the body": STREAM_REQUEST,  # before routing, or wherever clood has got to by then
}


@pytest.mark.parametrize("sent", HANG_UP_POINTS.values(), ids=HANG_UP_POINTS.keys())
def test_client_that_hangs_up_early(garden, sent):
    before = host_requests(garden, CHAT)
    with connect(garden) as sock:
        sock.sendall(sent)
    nothing_left_running(garden, "slow")
    if sent != STREAM_REQUEST:  # the application never started: the host saw nothing
        assert host_requests(garden, CHAT) == before
    assert served(garden)
    assert httpx.get(garden.url + "/health").status_code == 200


def cancelled_rows(garden, **match):
    return [r for r in garden.request_logs() if r["status"] == 499 and all(r[k] == v for k, v in match.items())]


def test_client_that_hangs_up_while_queued(garden):
    slow = garden.sims["slow"]
    before_rows = len(cancelled_rows(garden, error="the client went away while queued"))
    with connect(garden) as holder:
        holder.sendall(STREAM_REQUEST)
        assert read_head(holder)[0].startswith(b"http/1.1 200")  # holds the one slot
        reached = slow.stats["requests"].get(CHAT, 0)
        with connect(garden) as queued:
            queued.sendall(STREAM_REQUEST)
            wait_until(lambda: garden.status()["queued"] == 1, 10, 0.05, "the second request to queue")
        wait_until(lambda: garden.status()["queued"] == 0, 10, 0.05, "the queue to empty")
        assert slow.stats["requests"].get(CHAT, 0) == reached  # the queued request never reached the host
    wait_until(lambda: len(cancelled_rows(garden, error="the client went away while queued")) > before_rows, 10,
               0.1, "the queued request's log row")  # fmt: skip
    nothing_left_running(garden, "slow")
    assert served(garden)
    assert httpx.get(garden.url + "/health").status_code == 200


def test_client_that_hangs_up_while_waiting_for_the_first_byte(garden):
    sleepy = garden.sims["sleepy"]
    before = sleepy.stats["disconnects"]
    body = json.dumps({"model": "sleepy:1b", "messages": [{"role": "user", "content": "x"}]}).encode()
    with connect(garden) as sock:
        sock.sendall(raw_post(CHAT, body))
        wait_until(lambda: sleepy.stats["in_flight"] == 1, 10, 0.05, "the host to start thinking")
    wait_until(lambda: sleepy.stats["disconnects"] == before + 1, 10, 0.05, "the host to see the disconnect")
    wait_until(lambda: garden.status("sleepy")["slots_used"] == 0, 10, 0.05, "the slot to be freed")
    row = wait_until(lambda: cancelled_rows(garden, host="sleepy"), 10, 0.1, "the log row")[-1]
    assert (row["outcome"], row["status"], row["error"]) == ("cancelled", 499, "the client went away")
    sleepy.config.ttft = 0
    try:
        assert served(garden, "sleepy:1b")
    finally:
        sleepy.config.ttft = 60
    assert httpx.get(garden.url + "/health").status_code == 200


def test_client_that_hangs_up_mid_stream_on_the_ollama_api(garden):
    slow = garden.sims["slow"]
    before = slow.stats["disconnects"]
    body = json.dumps({"model": "slow:1b", "messages": [{"role": "user", "content": "x"}]}).encode()  # streams
    with connect(garden) as sock:
        sock.sendall(raw_post("/api/chat", body))
        head, first = read_head(sock)
        while b"\n" not in first:  # one NDJSON line, then hang up
            first += sock.recv(65536)
    request_id = next(line.split(b": ")[1] for line in head.split(b"\r\n") if line.startswith(b"x-clood-request-id"))
    wait_until(lambda: slow.stats["disconnects"] == before + 1, 10, 0.05, "the host to see the disconnect")
    nothing_left_running(garden, "slow")
    row = garden.log_for(request_id.decode())
    assert (row["outcome"], row["status"], row["host"]) == ("cancelled", 499, "slow")
    assert served(garden)
    assert httpx.get(garden.url + "/health").status_code == 200
