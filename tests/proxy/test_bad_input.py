"""Bad input: each case gets the right status and an error body in the API's own shape, and clood stays healthy."""

import socket

import httpx
import pytest

OK_CHAT = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def garden(clood_factory, sims):
    garden = clood_factory()
    garden.add("box", sims(models=["llama3.2:1b"]))
    garden.refresh()
    return garden


def post(garden, path, content, content_type="application/json"):
    return httpx.post(garden.url + path, content=content, headers={"content-type": content_type}, timeout=10)


CASES = [
    # (path, raw body, status, code or message fragment)
    ("/v1/chat/completions", b"{not json", 400, "invalid_json"),
    ("/v1/chat/completions", b"", 400, "invalid_json"),
    ("/v1/chat/completions", b"[1, 2]", 400, "invalid_json"),
    ("/v1/chat/completions", b'"just a string"', 400, "invalid_json"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}]}', 400, "missing_model"),
    ("/v1/chat/completions", b'{"model": 42, "messages": []}', 400, "invalid_type"),
    ("/v1/chat/completions", b'{"model": "llama3.2:1b"}', 400, "missing_field"),
    ("/v1/chat/completions", b'{"model": "llama3.2:1b", "messages": []}', 400, "invalid_type"),
    ("/v1/chat/completions", b'{"model": "llama3.2:1b", "messages": "hi"}', 400, "invalid_type"),
    ("/v1/chat/completions", b'{"model": "llama3.2:1b", "messages": ["hi"]}', 400, "invalid_type"),
    ("/v1/chat/completions", b'{"model": "llama3.2:1b", "messages": [{}], "stream": "yes"}', 400, "invalid_type"),
    ("/v1/chat/completions", b'{"model": "llama3.2:1b", "messages": [{}], "max_tokens": -5}', 400, "invalid_value"),
    ("/v1/chat/completions", b'{"model": "../../etc/passwd", "messages": [{}]}', 400, "invalid_model"),
    ("/v1/chat/completions", b'{"model": "%2e%2e/x", "messages": [{}]}', 400, "invalid_model"),
    ("/v1/chat/completions", b'{"model": "llama 3", "messages": [{}]}', 400, "invalid_model"),
    ("/v1/chat/completions", '{"model": "llаma3.2", "messages": [{}]}'.encode(), 400, "invalid_model"),
    ("/v1/chat/completions", b'{"model": "qwen2.5-coder:3b", "messages": [{}]}', 404, "model_not_found"),
    ("/v1/chat/completions", b'{"model": "llama3.2:1b", "messages": [{}], "x": "\xff\xfe"}', 400, "invalid_encoding"),
    ("/v1/chat/completions", b"[" * 100000 + b"]" * 100000, 400, "invalid_json"),
    ("/v1/completions", b'{"model": "llama3.2:1b"}', 400, "missing_field"),
    ("/v1/completions", b'{"model": "llama3.2:1b", "prompt": 7}', 400, "invalid_type"),
    ("/v1/embeddings", b'{"model": "llama3.2:1b", "input": {"a": 1}}', 400, "invalid_type"),
    ("/v1/nope", b"{}", 404, "not_found"),
]

OLLAMA_CASES = [
    ("/api/chat", b"{oops", 400, "not valid JSON"),
    ("/api/chat", b'{"messages": []}', 400, "model parameter"),
    ("/api/chat", b'{"model": "nope:1b", "messages": []}', 404, "does not exist"),
    ("/api/generate", b'{"model": "llama3.2:1b", "stream": 1}', 400, "stream must be a boolean"),
    ("/api/embed", b'{"model": "llama3.2:1b"}', 400, "input"),
    ("/api/nope", b"{}", 404, "Unknown endpoint"),
]


@pytest.mark.parametrize(("path", "body", "status", "code"), CASES)
def test_openai_bad_input(garden, path, body, status, code):
    response = post(garden, path, body)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code, error
    assert response.headers["content-type"] == "application/json"
    assert httpx.get(garden.url + "/health").status_code == 200


@pytest.mark.parametrize(("path", "body", "status", "fragment"), OLLAMA_CASES)
def test_ollama_bad_input(garden, path, body, status, fragment):
    response = post(garden, path, body)
    assert response.status_code == status
    assert fragment in response.json()["error"]
    assert httpx.get(garden.url + "/health").status_code == 200


def test_body_over_the_limit_is_413(garden):
    body = b'{"model": "llama3.2:1b", "messages": [{"role": "user", "content": "' + b"x" * (2 * 1024 * 1024) + b'"}]}'
    response = post(garden, "/v1/chat/completions", body)
    assert response.status_code == 413 and response.json()["error"]["code"] == "too_large"
    assert post(garden, "/v1/chat/completions", b'{"model": "llama3.2:1b", "messages": [{"role": "user", '
                b'"content": "x"}]}').status_code == 200  # fmt: skip


def test_wrong_method_is_405_in_shape(garden):
    response = httpx.get(garden.url + "/v1/chat/completions")
    assert response.status_code == 405 and response.json()["error"]["code"] == "method_not_allowed"
    assert httpx.post(garden.url + "/v1/models").status_code == 405


def test_huge_headers_do_not_hurt(garden):
    try:
        response = httpx.post(garden.url + "/v1/chat/completions", json=OK_CHAT, headers={"x-big": "a" * 200_000})
        assert response.status_code in (200, 400, 413, 431)
    except httpx.RemoteProtocolError:
        pass  # the server may just close such a connection
    assert httpx.post(garden.url + "/v1/chat/completions", json=OK_CHAT).status_code == 200


def test_unknown_fields_pass_through(garden):
    response = httpx.post(garden.url + "/v1/chat/completions", json={**OK_CHAT, "n": 1, "whatever": {"x": [1]}})
    assert response.status_code == 200
    assert garden.sims["box"].stats["last_request"]["json"]["whatever"] == {"x": [1]}


def test_client_that_hangs_up_mid_body(garden):
    host, port = garden.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"model\": ")  # fmt: skip
    assert httpx.post(garden.url + "/v1/chat/completions", json=OK_CHAT).status_code == 200


def test_rejections_are_logged(garden):
    response = post(garden, "/v1/chat/completions", b'{"model": "nope:1b", "messages": [{}]}')
    row = garden.log_for(response.headers["x-clood-request-id"])
    assert row["outcome"] == "rejected" and row["status"] == 404 and row["model"] == "nope:1b"
