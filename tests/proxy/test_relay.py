"""The relay returns the host's bytes exactly, however the host splits or spaces them, and reads a copy."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from proxy.relay import model_note
from tests.conftest import wait_until

LONG = "x" * 300_000  # one 300 kB line: no line-length limit may end the stream
STREAM = (
    b": a comment line\n\n"
    b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant",'
    b'"content":""},"finish_reason":null}],"x_unknown":{"nested":[1,2.50,null]}}\n\n'
    b'data:{"id":"c1","choices":[{"index":0,"delta":{"reasoning":"hmm \\u00e9"},"finish_reason":null}]}\n\n'
    b'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"caf\xc3\xa9 \xe2\x9c\x93"},"finish_reason":null}]}\n\n'
    b'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"' + LONG.encode() + b'"},"finish_reason":null}]}\n\n'
    b'data: {"id":"c1","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"t","type":"function",'
    b'"function":{"name":"f","arguments":"{}"}}]},"finish_reason":"tool_calls"}]}\n\n'
    b'data: {"id":"c1","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":4,"total_tokens":11}}\n\n'
    b"data: [DONE]\n\n"
)
WHOLE = (
    b'{"id":"c2","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},'
    b'"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4},  "extra": true}'
)


class FixedHost(BaseHTTPRequestHandler):
    """An OpenAI-compatible host that answers with fixed bytes, split at awkward places."""

    protocol_version = "HTTP/1.0"

    def do_GET(self):  # noqa: N802
        body = json.dumps({"object": "list", "data": [{"id": "Fixed-Model", "object": "model"}]}).encode()
        self._send(200, "application/json", [body])

    def do_POST(self):  # noqa: N802
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if request.get("stream"):
            pieces = [STREAM[i : i + 7919] for i in range(0, len(STREAM), 7919)]  # splits lines mid-way
            self._send(200, "text/event-stream", pieces)
        else:
            self._send(200, "application/json", [WHOLE])

    def _send(self, status, content_type, pieces):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.end_headers()
        for piece in pieces:
            self.wfile.write(piece)
            self.wfile.flush()
            time.sleep(0.001)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def garden(clood_factory):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FixedHost)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    garden = clood_factory()
    garden.server.manage("hosts", "add", "fixed", f"http://127.0.0.1:{server.server_port}", "--backend", "openai")
    garden.refresh()
    yield garden
    server.shutdown()


def test_stream_is_relayed_byte_for_byte(garden):
    body = {"model": "fixed-model", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    response = httpx.post(garden.url + "/v1/chat/completions", json=body, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    assert response.content == STREAM
    row = garden.log_for(response.headers["x-clood-request-id"])
    assert row["outcome"] == "ok" and row["finish_reason"] == "tool_calls"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (7, 4)


def test_non_stream_is_relayed_byte_for_byte(garden):
    body = {"model": "Fixed-Model", "messages": [{"role": "user", "content": "x"}]}
    response = httpx.post(garden.url + "/v1/chat/completions", json=body, timeout=10)
    assert response.content == WHOLE
    row = garden.log_for(response.headers["x-clood-request-id"])
    assert (row["prompt_tokens"], row["completion_tokens"], row["finish_reason"]) == (3, 1, "stop")


def test_admin_edits_reach_routing_within_seconds(garden):
    body = {"model": "fixed-model", "messages": [{"role": "user", "content": "x"}]}
    assert httpx.post(garden.url + "/v1/chat/completions", json=body).status_code == 200
    port = garden.server.manage("hosts", "list", "--json").stdout
    url = json.loads(port)[0]["base_url"]
    garden.server.manage("hosts", "add", "fixed", url, "--backend", "openai", "--disabled")
    wait_until(lambda: httpx.post(garden.url + "/v1/chat/completions", json=body).status_code == 503, timeout=3,
               what="the disabled host to leave routing")  # fmt: skip
    garden.server.manage("hosts", "add", "fixed", url, "--backend", "openai")
    wait_until(lambda: httpx.post(garden.url + "/v1/chat/completions", json=body).status_code == 200, timeout=3,
               what="the enabled host to come back")  # fmt: skip


@pytest.mark.parametrize(
    ("body", "answered", "note"),
    [
        (b'{"model": "llama3.2:1b"}', "llama3.2:1b", ""),
        (b'{"model":"llama3.2"}', "llama3.2:latest", ""),  # one model, two spellings
        (b'{"model": "LLAMA3.2:1B", "stream": true}', "library/llama3.2:1b", ""),
        (b'{"name": "llama3.2:1b"}', "llama3.2:1b", ""),  # /api/show names it "name"
        (b'{"model": "llama3.2:1b"}', None, ""),  # the answer names no model
        (b'{"model": "llama3.2:1b"}', "qwen2.5:7b", "box answered with model 'qwen2.5:7b', not 'llama3.2:1b'"),
        (b'{"model": "llama3.2:1b"}', "llama3.2:3b", "box answered with model 'llama3.2:3b', not 'llama3.2:1b'"),
        (b"not json", "qwen2.5:7b", ""),
    ],
)
def test_an_answer_naming_another_model_gets_a_note(body, answered, note):
    assert model_note("box", body, answered) == note
