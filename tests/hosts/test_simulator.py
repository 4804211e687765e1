"""The simulated Ollama host over real HTTP, driven by the clients people use: ollama, openai, and plain httpx.

No database: these run with or without pytest-django (`-p no:django`).
"""

import asyncio
import base64
import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from hosts.simulator import (
    BAD_UTF8,
    BUSY_MESSAGE,
    EMBEDDING_DIMENSION,
    HUGE_BODY_BYTES,
    HUGE_LINE_BYTES,
    WRONG_MODEL,
    SimConfig,
    SimModel,
    embedding_vector,
    reply_text,
    serve,
    start_in_thread,
)
from tests.conftest import simulated_hosts

ROOT = Path(__file__).resolve().parents[2]
HELLO = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def sim():
    """Factory: `sim("a:1b", SimModel(...), **config)` starts a simulated host; all are stopped after the test."""
    with simulated_hosts() as start:
        yield lambda *models, **config: start(models or ("llama3.2:1b",), **config)


def openai_client(host, api_key="x"):
    return openai.OpenAI(base_url=host.url + "/v1", api_key=api_key, max_retries=0)


def wait_until(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the simulator"
        time.sleep(0.02)


def test_root_and_version_answer_like_ollama(sim):
    host = sim(version="0.9.0")
    assert httpx.get(host.url + "/").text == "Ollama is running"
    assert httpx.get(host.url + "/api/version").json() == {"version": "0.9.0"}


def test_tags_list_every_model_in_ollamas_shape(sim):
    host = sim(SimModel(name="llama3.2:1b", parameter_size="1.2B"), "nomic-embed-text")
    models = httpx.get(host.url + "/api/tags").json()["models"]
    assert [m["name"] for m in models] == ["llama3.2:1b", "nomic-embed-text:latest"]
    llama = models[0]
    assert llama["model"] == "llama3.2:1b" and llama["size"] > 0
    assert llama["digest"] == hashlib.sha256(b"llama3.2:1b").hexdigest()
    assert datetime.fromisoformat(llama["modified_at"]).tzinfo is not None
    assert llama["details"] == {
        "parent_model": "",
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "1.2B",
        "quantization_level": "Q4_K_M",
    }


def test_ps_lists_only_loaded_models(sim):
    host = sim(SimModel(name="a:1b", loaded=True), "b:1b")
    with ollama.Client(host=host.url) as client:
        running = client.ps().models
    assert [m.model for m in running] == ["a:1b"]
    assert running[0].expires_at > datetime.now(UTC) + timedelta(days=365)  # loaded=True: kept until told otherwise
    assert running[0].size_vram == running[0].size and running[0].digest


def test_show_reports_details_context_length_and_capabilities(sim):
    host = sim(SimModel(name="qwen2.5-coder:3b", family="qwen2", context_length=32768), "nomic-embed-text")
    with ollama.Client(host=host.url) as client:
        coder = client.show("qwen2.5-coder:3b")
        embedder = client.show("nomic-embed-text")
        with pytest.raises(ollama.ResponseError) as missing:
            client.show("missing:1b")
    assert coder.modelinfo["qwen2.context_length"] == 32768
    assert coder.capabilities == ["completion"] and coder.details.family == "qwen2"
    assert embedder.capabilities == ["embedding"]
    assert missing.value.status_code == 404 and missing.value.error == "model 'missing:1b' not found"


def test_ollama_chat_streams_one_chunk_per_token(sim):
    host = sim(reply_tokens=5)
    with ollama.Client(host=host.url) as client:
        chunks = list(client.chat(model="llama3.2:1b", messages=HELLO, stream=True))
    assert [c.message.content for c in chunks[:-1]] == ["The ", "quick ", "brown ", "fox ", "jumps "]
    assert not any(c.done for c in chunks[:-1])
    final = chunks[-1]
    assert final.done and final.done_reason == "stop" and final.message.content == ""
    assert final.eval_count == 5 and final.prompt_eval_count == 2
    assert final.total_duration > 0 and final.eval_duration >= 0 and final.load_duration >= 0
    assert host.stats["disconnects"] == 0


def test_ollama_chat_without_stream_honours_num_predict(sim):
    host = sim("llama3.2")
    with ollama.Client(host=host.url) as client:
        response = client.chat(
            model="library/llama3.2:latest", messages=HELLO, stream=False, options={"num_predict": 3}
        )
    assert response.message.content == reply_text(3) == "The quick brown "
    assert response.done and response.done_reason == "length" and response.eval_count == 3
    assert response.model == "library/llama3.2:latest"  # echoed as asked; matched the way Ollama matches names


def test_ollama_generate_streams_and_answers_once(sim):
    host = sim(reply_tokens=4)
    with ollama.Client(host=host.url) as client:
        chunks = list(client.generate(model="llama3.2:1b", prompt="Why is the sky blue?", stream=True))
        single = client.generate(model="llama3.2:1b", prompt="Why is the sky blue?")
    assert "".join(c.response for c in chunks) == reply_text(4)
    assert chunks[-1].done and chunks[-1].eval_count == 4 and chunks[-1].prompt_eval_count == 5
    assert single.response == reply_text(4) and single.done


def test_ollama_stream_is_ndjson(sim):
    host = sim(reply_tokens=2)
    response = httpx.post(host.url + "/api/chat", json={"model": "llama3.2:1b", "messages": HELLO})
    assert response.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [line["done"] for line in lines] == [False, False, True]
    assert set(lines[-1]) >= {
        "done_reason",
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
    }


def test_ollama_chat_with_tools_calls_the_first_tool(sim):
    host = sim()
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    with ollama.Client(host=host.url) as client:
        response = client.chat(model="llama3.2:1b", messages=HELLO, tools=tools, stream=False)
    assert [call.function.name for call in response.message.tool_calls] == ["get_weather"]
    assert response.message.tool_calls[0].function.arguments == {}


def test_ollama_embeddings_are_deterministic(sim):
    host = sim("nomic-embed-text")
    with ollama.Client(host=host.url) as client:
        one = client.embed(model="nomic-embed-text", input="hello")
        two = client.embed(model="nomic-embed-text", input=["hello", "world"])
        legacy = client.embeddings(model="nomic-embed-text", prompt="hello")
    assert len(one.embeddings) == 1 and len(one.embeddings[0]) == EMBEDDING_DIMENSION
    assert one.embeddings[0] == two.embeddings[0] == list(legacy.embedding) == embedding_vector("hello")
    assert two.embeddings[1] != two.embeddings[0]


def test_unknown_model_is_404_in_ollamas_words(sim):
    host = sim()
    with ollama.Client(host=host.url) as client, pytest.raises(ollama.ResponseError) as refused:
        client.chat(model="mistral:7b", messages=HELLO)
    assert refused.value.status_code == 404
    assert refused.value.error == 'model "mistral:7b" not found, try pulling it first'


def test_embedding_model_cannot_chat(sim):
    host = sim("nomic-embed-text")
    response = httpx.post(host.url + "/api/chat", json={"model": "nomic-embed-text", "messages": HELLO})
    assert response.status_code == 400 and "does not support chat" in response.json()["error"]


@pytest.mark.parametrize(
    ("path", "error_of"),
    [
        ("/api/chat", lambda body: body["error"]),
        ("/api/generate", lambda body: body["error"]),
        ("/api/embed", lambda body: body["error"]),
        ("/v1/chat/completions", lambda body: body["error"]["message"]),
        ("/v1/embeddings", lambda body: body["error"]["message"]),
    ],
)
def test_invalid_json_is_400_in_the_apis_shape(sim, path, error_of):
    host = sim()
    response = httpx.post(host.url + path, content=b'{"model": ', headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert "invalid JSON" in error_of(response.json())


def test_openai_chat_stream_with_usage(sim):
    host = sim(reply_tokens=4)
    with openai_client(host) as client:
        stream = client.chat.completions.create(
            model="llama3.2:1b", messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
        chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply_text(4)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == []
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (2, 4)
    assert {c.object for c in chunks} == {"chat.completion.chunk"} and len({c.id for c in chunks}) == 1


def test_openai_stream_is_server_sent_events_ending_with_done(sim):
    host = sim(reply_tokens=3)
    body = {"model": "llama3.2:1b", "messages": HELLO, "stream": True}
    response = httpx.post(host.url + "/v1/chat/completions", json=body)
    assert response.headers["content-type"] == "text/event-stream"
    events = [line for line in response.text.split("\n\n") if line]
    assert all(event.startswith("data: ") for event in events)
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(event.removeprefix("data: ")) for event in events[:-1]]
    assert len(payloads) == 5  # role, three tokens, finish; no usage chunk unless asked
    assert all("usage" not in p for p in payloads)


def test_openai_chat_without_stream_honours_max_tokens(sim):
    host = sim()
    with openai_client(host) as client:
        limited = client.chat.completions.create(model="llama3.2:1b", messages=HELLO, max_tokens=3)
        newer = client.chat.completions.create(model="llama3.2:1b", messages=HELLO, max_completion_tokens=2)
        full = client.chat.completions.create(model="llama3.2:1b", messages=HELLO)
    assert limited.object == "chat.completion"
    assert limited.choices[0].message.content == reply_text(3) and limited.choices[0].finish_reason == "length"
    assert limited.usage.completion_tokens == 3 and limited.usage.total_tokens == 5
    assert newer.choices[0].message.content == reply_text(2)
    assert full.choices[0].message.content == reply_text(16) and full.choices[0].finish_reason == "stop"


def test_a_huge_token_limit_stops_at_the_context_length(sim):
    host = sim(SimModel(name="llama3.2:1b", context_length=64))
    body = {"model": "llama3.2:1b", "messages": HELLO, "max_tokens": 10**20}
    answer = httpx.post(host.url + "/v1/chat/completions", json=body, timeout=10).json()
    assert answer["usage"]["completion_tokens"] == 64 and answer["choices"][0]["finish_reason"] == "length"
    ollama = {"model": "llama3.2:1b", "prompt": "x", "stream": False, "options": {"num_predict": 2**31 - 1}}
    assert httpx.post(host.url + "/api/generate", json=ollama, timeout=10).json()["eval_count"] == 64


@pytest.mark.parametrize("stream", [False, True])
def test_openai_tools_get_a_tool_call(sim, stream):
    host = sim()
    tools = [
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}},
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
    ]
    with openai_client(host) as client:
        response = client.chat.completions.create(model="llama3.2:1b", messages=HELLO, tools=tools, stream=stream)
        if stream:
            chunks = list(response)
            calls = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or []]
            finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        else:
            calls, finish = response.choices[0].message.tool_calls, [response.choices[0].finish_reason]
    assert [(call.function.name, call.function.arguments) for call in calls] == [("get_weather", "{}")]
    assert calls[0].id and calls[0].type == "function"
    assert finish == ["tool_calls"]


def test_openai_completions_stream_and_not(sim):
    host = sim(reply_tokens=3)
    with openai_client(host) as client:
        single = client.completions.create(model="llama3.2:1b", prompt="Once upon a time")
        chunks = list(
            client.completions.create(
                model="llama3.2:1b", prompt="Once", max_tokens=2, stream=True, stream_options={"include_usage": True}
            )
        )
    assert single.object == "text_completion" and single.choices[0].text == reply_text(3)
    assert single.usage.prompt_tokens == 4 and single.usage.completion_tokens == 3
    assert "".join(c.choices[0].text for c in chunks if c.choices) == reply_text(2)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].usage.completion_tokens == 2


def test_openai_embeddings_as_floats_and_base64(sim):
    host = sim("nomic-embed-text")
    with openai_client(host) as client:
        default = client.embeddings.create(model="nomic-embed-text", input=["hello", "world"])  # base64 on the wire
        floats = client.embeddings.create(model="nomic-embed-text", input="hello", encoding_format="float")
    assert [d.index for d in default.data] == [0, 1]
    assert default.data[0].embedding == pytest.approx(embedding_vector("hello"), abs=1e-6)
    assert floats.data[0].embedding == embedding_vector("hello")
    assert floats.model == "nomic-embed-text" and floats.usage.prompt_tokens == 1
    raw = httpx.post(
        host.url + "/v1/embeddings", json={"model": "nomic-embed-text", "input": "hi", "encoding_format": "base64"}
    ).json()["data"][0]["embedding"]
    assert list(struct.unpack("<8f", base64.b64decode(raw))) == pytest.approx(embedding_vector("hi"), abs=1e-6)


def test_openai_models_list_and_retrieve_names_with_colons_and_slashes(sim):
    host = sim("llama3.2:1b", "hf.co/bartowski/Llama-3.2-1B-GGUF:Q4_K_M")
    with openai_client(host) as client:
        listed = client.models.list()
        one = client.models.retrieve("llama3.2:1b")
        slashed = client.models.retrieve("hf.co/bartowski/Llama-3.2-1B-GGUF:Q4_K_M")
        with pytest.raises(openai.NotFoundError) as missing:
            client.models.retrieve("missing:1b")
    assert [m.id for m in listed.data] == ["llama3.2:1b", "hf.co/bartowski/Llama-3.2-1B-GGUF:Q4_K_M"]
    assert all(m.object == "model" and m.created and m.owned_by for m in listed.data)
    assert one.id == "llama3.2:1b" and slashed.id == "hf.co/bartowski/Llama-3.2-1B-GGUF:Q4_K_M"
    assert missing.value.status_code == 404
    # Unencoded slashes reach the same model.
    assert httpx.get(host.url + "/v1/models/hf.co/bartowski/Llama-3.2-1B-GGUF:Q4_K_M").status_code == 200


def test_openai_unknown_model_is_404_in_openai_shape(sim):
    host = sim()
    response = httpx.post(host.url + "/v1/chat/completions", json={"model": "nope:1b", "messages": HELLO})
    assert response.status_code == 404
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "nope:1b" in error["message"] and error["type"] == "not_found_error"


def test_api_key_is_required_on_v1_only(sim):
    host = sim(api_key="sk-right-key")
    with openai_client(host, api_key="sk-wrong-key") as wrong, pytest.raises(openai.AuthenticationError) as refused:
        wrong.models.list()
    assert refused.value.status_code == 401
    assert refused.value.body["code"] == "invalid_api_key" and "sk-wrong-key" not in str(refused.value.body)
    assert httpx.post(host.url + "/v1/chat/completions", json={"model": "llama3.2:1b"}).status_code == 401
    with openai_client(host, api_key="sk-right-key") as right:
        assert [m.id for m in right.models.list().data] == ["llama3.2:1b"]
    assert host.stats["last_request"]["headers"]["Authorization"] == "Bearer sk-right-key"
    assert httpx.get(host.url + "/api/tags").status_code == 200


def test_openai_only_server_has_no_ollama_api(sim):
    host = sim("served-model", ollama_api=False)
    assert httpx.get(host.url + "/api/tags").status_code == 404
    assert httpx.post(host.url + "/api/chat", json={"model": "served-model"}).status_code == 404
    assert httpx.get(host.url + "/health").json() == {"status": "ok"}
    with openai_client(host) as client:
        assert [m.id for m in client.models.list().data] == ["served-model"]  # no ":latest" added
        reply = client.chat.completions.create(model="served-model", messages=HELLO)
    assert reply.choices[0].message.content == reply_text(16)


# --- failure modes -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "message_of"),
    [
        ("/api/tags", lambda body: body["error"]),
        ("/v1/models", lambda body: body["error"]["message"]),
    ],
)
def test_error_mode_answers_its_status_in_the_apis_shape(sim, path, message_of):
    host = sim(fail="error")
    response = httpx.get(host.url + path)
    assert response.status_code == 500 and message_of(response.json())
    host.config.fail_status = 503
    response = httpx.get(host.url + path)
    assert response.status_code == 503 and message_of(response.json()) == BUSY_MESSAGE


def test_busy_host_looks_busy_to_the_ollama_client(sim):
    host = sim(fail="error", fail_status=503)
    with ollama.Client(host=host.url) as client, pytest.raises(ollama.ResponseError) as busy:
        client.chat(model="llama3.2:1b", messages=HELLO, stream=False)
    assert busy.value.status_code == 503 and "server busy" in busy.value.error


def test_hang_mode_reads_the_request_and_never_answers(sim):
    host = sim(fail="hang")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(host.url + "/api/chat", json={"model": "llama3.2:1b", "messages": HELLO}, timeout=0.5)
    assert host.stats["last_request"]["json"]["model"] == "llama3.2:1b"
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(host.url + "/api/tags", timeout=httpx.Timeout(5, read=0.3))
    host.stop()
    assert time.monotonic() - started < 3


@pytest.mark.parametrize(
    ("path", "body", "lines_before_drop"),
    [
        ("/api/chat", {"messages": HELLO}, 3),
        ("/api/generate", {"prompt": "hi"}, 3),
        ("/v1/chat/completions", {"messages": HELLO, "stream": True}, 4),  # the role chunk, then three tokens
        ("/v1/completions", {"prompt": "hi", "stream": True}, 3),
    ],
)
def test_drop_mode_cuts_a_stream_after_some_chunks(sim, path, body, lines_before_drop):
    host = sim(fail="drop", fail_after_tokens=3)
    received = []
    with pytest.raises(httpx.RemoteProtocolError):  # noqa: PT012 - the error comes while reading
        with httpx.stream("POST", host.url + path, json={"model": "llama3.2:1b", **body}) as response:
            assert response.status_code == 200
            received.extend(line for line in response.iter_lines() if line)
    assert len(received) == lines_before_drop
    assert host.stats["disconnects"] == 0  # the host hung up, not the client
    wait_until(lambda: host.stats["in_flight"] == 0)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/tags", None),
        ("POST", "/api/chat", {"model": "llama3.2:1b", "messages": HELLO, "stream": False}),
        ("POST", "/v1/embeddings", {"model": "llama3.2:1b", "input": "hi"}),
    ],
)
def test_drop_mode_closes_other_answers_without_a_word(sim, method, path, body):
    host = sim(fail="drop")
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.request(method, host.url + path, json=body)


def test_garbage_mode_is_json_in_name_only(sim):
    host = sim(fail="garbage")
    response = httpx.get(host.url + "/api/tags")
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/json")
    with pytest.raises(ValueError):
        response.json()


def test_html_mode_answers_a_web_page(sim):
    host = sim(fail="html")
    response = httpx.get(host.url + "/v1/models")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert response.text.lstrip().startswith("<!DOCTYPE html>")


def test_wrong_shape_mode_answers_valid_json_of_the_wrong_shape(sim):
    host = sim(fail="wrong-shape")
    assert httpx.get(host.url + "/api/tags").json() == {"models": "nope"}
    assert isinstance(httpx.get(host.url + "/v1/models").json()["data"], str)
    assert isinstance(httpx.get(host.url + "/api/version").json(), list)


def test_huge_mode_streams_about_50_mb_of_json(sim):
    host = sim(fail="huge")
    size, head, tail = 0, b"", b""
    with httpx.stream("GET", host.url + "/api/tags") as response:
        assert response.status_code == 200 and response.headers["content-type"] == "application/json"
        for chunk in response.iter_raw():
            head = head or chunk[:20]
            tail = (tail + chunk)[-2:]
            size += len(chunk)
    assert size >= HUGE_BODY_BYTES and head.startswith(b'{"models": []') and tail == b'"}'


def test_huge_mode_survives_a_client_that_stops_reading(sim):
    host = sim(fail="huge")
    with httpx.stream("GET", host.url + "/api/tags") as response:
        next(response.iter_raw())
    host.config.fail = None
    assert httpx.get(host.url + "/api/version").status_code == 200


def stream_lines(host, path, body):
    """The raw lines of a streamed answer, each as bytes."""
    with httpx.stream("POST", host.url + path, json={"model": "llama3.2:1b", **body}, timeout=30) as response:
        assert response.status_code == 200
        return response.read().split(b"\n")


def test_drip_mode_sends_the_rest_of_the_answer_a_byte_at_a_time(sim):
    host = sim(fail="drip", fail_after_tokens=1, drip_rate=200, reply_tokens=1)
    body = {"model": "llama3.2:1b", "messages": HELLO, "stream": True}
    with httpx.stream("POST", host.url + "/v1/chat/completions", json=body, timeout=30) as response:
        pieces = list(response.iter_raw())
    whole = b"".join(pieces)
    good = whole.index(b"\n\n", whole.index(b'"content":"The "')) + 2  # the role line and the first token
    assert whole.endswith(b"data: [DONE]\n\n") and whole.count(b"\n\n") == 4
    sent, dripped_pieces = 0, 0
    for piece in pieces:
        sent += len(piece)
        dripped_pieces += sent > good
    assert dripped_pieces > (len(whole) - good) / 4  # a byte a piece, give or take a slow reader
    assert host.stats["in_flight"] == 0


def test_drip_mode_from_the_start_drips_a_single_answer_too(sim):
    host = sim(fail="drip", fail_after_tokens=0, drip_rate=1000, reply_tokens=2)
    with httpx.stream("POST", host.url + "/api/generate", json=GENERATE, timeout=30) as response:
        assert response.status_code == 200  # the headers come at once
        pieces = list(response.iter_raw())
    assert json.loads(b"".join(pieces))["response"] == reply_text(2)
    assert len(pieces) > 100


def test_drip_mode_is_a_disconnect_when_the_client_gives_up(sim):
    host = sim(fail="drip", fail_after_tokens=0)
    body = {"model": "llama3.2:1b", "messages": HELLO, "stream": True}
    with httpx.stream("POST", host.url + "/v1/chat/completions", json=body) as response:
        next(response.iter_raw())
    wait_until(lambda: host.stats["disconnects"] == 1 and host.stats["in_flight"] == 0)


@pytest.mark.parametrize(
    ("path", "body", "done"),
    [
        ("/v1/chat/completions", {"messages": HELLO, "stream": True}, b"data: [DONE]"),
        ("/api/chat", {"messages": HELLO}, b'"done":true'),
    ],
)
def test_huge_line_mode_sends_one_100_mb_line_then_ends_normally(sim, path, body, done):
    host = sim(fail="huge-line", fail_after_tokens=2, reply_tokens=4)
    lengths, line, last = [], 0, b""
    with httpx.stream("POST", host.url + path, json={"model": "llama3.2:1b", **body}, timeout=60) as response:
        for chunk in response.iter_raw():
            *ends, rest = chunk.split(b"\n")
            for end in ends:
                lengths.append(line + len(end))
                line = 0
                last = end or last
            line += len(rest)
    huge = [length for length in lengths if length > HUGE_LINE_BYTES]
    assert len(huge) == 1 and huge[0] < HUGE_LINE_BYTES + 1000
    assert max(length for length in lengths if length < HUGE_LINE_BYTES) < 1000 and done in last


def test_bad_utf8_mode_breaks_one_token_of_an_otherwise_normal_stream(sim):
    host = sim(fail="bad-utf8", fail_after_tokens=1, reply_tokens=3)
    lines = [line for line in stream_lines(host, "/api/chat", {"messages": HELLO}) if line]
    broken = [line for line in lines if BAD_UTF8 in line]
    assert len(broken) == 1 and len(lines) == 4
    with pytest.raises(UnicodeDecodeError):
        broken[0].decode()
    assert json.loads(broken[0].decode(errors="replace"))["message"]["content"] == "\ufffd\ufffdquick "
    assert all(json.loads(line) for line in lines if line not in broken)


def test_bad_utf8_mode_breaks_a_single_answer_too(sim):
    host = sim(fail="bad-utf8")
    body = {"model": "llama3.2:1b", "messages": HELLO}
    raw = httpx.post(host.url + "/v1/chat/completions", json=body).content
    assert BAD_UTF8 + b"The quick" in raw
    assert json.loads(raw.decode(errors="replace"))["choices"][0]["message"]["content"].startswith("\ufffd")


def test_wrong_model_mode_names_another_model(sim):
    host = sim(fail="wrong-model")
    with openai_client(host) as client:
        reply = client.chat.completions.create(model="llama3.2:1b", messages=HELLO)
        chunks = list(client.completions.create(model="llama3.2:1b", prompt="hi", stream=True))
    with ollama.Client(host=host.url) as client:
        native = client.generate(model="llama3.2:1b", prompt="hi")
    assert reply.model == WRONG_MODEL and reply.choices[0].message.content == reply_text(16)
    assert {chunk.model for chunk in chunks} == {WRONG_MODEL}
    assert native.model == WRONG_MODEL


@pytest.mark.parametrize("fail", ["drip", "huge-line", "bad-utf8", "wrong-model"])
def test_answer_failures_leave_other_paths_alone(sim, fail):
    host = sim(fail=fail, fail_after_tokens=0)
    assert [m["name"] for m in httpx.get(host.url + "/api/tags", timeout=5).json()["models"]] == ["llama3.2:1b"]
    assert httpx.post(host.url + "/api/embed", json={"model": "llama3.2:1b", "input": "x"}, timeout=5).json()


def test_failure_applies_only_to_fail_paths(sim):
    host = sim(fail="error", fail_status=404, fail_paths=["/v1/models"])
    assert httpx.get(host.url + "/v1/models").status_code == 404
    assert httpx.get(host.url + "/v1/models/llama3.2:1b").status_code == 404  # a prefix
    assert httpx.get(host.url + "/api/tags").status_code == 200


def test_fail_rate_fails_that_share_of_requests_at_random(sim):
    host = sim(fail="error", fail_rate=0.5)
    statuses = {httpx.get(host.url + "/api/tags").status_code for _ in range(200)}
    assert statuses == {200, 500}  # both outcomes; each missing from 200 draws has odds of 2**-200
    host.config.fail_rate = 0
    assert all(httpx.get(host.url + "/api/tags").status_code == 200 for _ in range(50))


def test_config_changed_from_the_test_thread_applies_to_the_next_request(sim):
    host = sim()
    host.config.fail = "error"
    assert httpx.get(host.url + "/api/tags").status_code == 500
    host.config.fail = None
    host.config.models = [SimModel(name="other:7b")]
    assert [m["name"] for m in httpx.get(host.url + "/api/tags").json()["models"]] == ["other:7b"]


# --- model loading, pacing, concurrency, disconnects -----------------------------------------------------------------


def test_cold_model_loads_once_then_is_in_ps(sim):
    host = sim(load_time=0.3)
    with ollama.Client(host=host.url) as client:
        assert client.ps().models == []
        started = time.monotonic()
        cold = client.chat(model="llama3.2:1b", messages=HELLO, stream=False)
        assert time.monotonic() - started >= 0.3
        running = client.ps().models
        warm = client.chat(model="llama3.2:1b", messages=HELLO, stream=False)
    assert cold.load_duration >= 0.3e9 and warm.load_duration == 0
    assert [m.model for m in running] == ["llama3.2:1b"]
    ahead = running[0].expires_at - datetime.now(UTC)
    assert timedelta(minutes=4) < ahead <= timedelta(minutes=5)
    assert host.stats["loads"] == 1


def test_requests_arriving_during_a_load_share_it(sim):
    host = sim(load_time=0.3)
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda _: httpx.post(host.url + "/api/generate", json=GENERATE, timeout=5), range(3)))
    assert host.stats["loads"] == 1


GENERATE = {"model": "llama3.2:1b", "prompt": "hi", "stream": False}


@pytest.mark.parametrize(
    ("keep_alive", "expected"),
    [
        ("1h", timedelta(hours=1)),
        (90, timedelta(seconds=90)),
        ("-1", timedelta(days=365 * 100)),
    ],
)
def test_keep_alive_sets_when_the_model_unloads(sim, keep_alive, expected):
    host = sim()
    httpx.post(host.url + "/api/generate", json={**GENERATE, "keep_alive": keep_alive})
    expires_at = datetime.fromisoformat(httpx.get(host.url + "/api/ps").json()["models"][0]["expires_at"])
    assert expected - timedelta(seconds=5) < expires_at - datetime.now(UTC) < max(expected, timedelta(days=365 * 300))


def test_keep_alive_zero_unloads_after_the_request(sim):
    host = sim(SimModel(name="llama3.2:1b", loaded=True))
    httpx.post(host.url + "/api/generate", json={**GENERATE, "keep_alive": 0})
    assert httpx.get(host.url + "/api/ps").json() == {"models": []}


def test_empty_prompt_loads_or_unloads_like_ollama(sim):
    host = sim()
    loaded = httpx.post(host.url + "/api/generate", json={"model": "llama3.2:1b"}).json()
    assert loaded["done_reason"] == "load" and len(httpx.get(host.url + "/api/ps").json()["models"]) == 1
    unloaded = httpx.post(host.url + "/api/chat", json={"model": "llama3.2:1b", "messages": [], "keep_alive": 0})
    assert unloaded.json()["done_reason"] == "unload" and httpx.get(host.url + "/api/ps").json() == {"models": []}


def test_ttft_and_tokens_per_second_pace_the_stream(sim):
    host = sim(ttft=0.2, tokens_per_second=20, reply_tokens=5)
    started = time.monotonic()
    with httpx.stream("POST", host.url + "/api/generate", json={"model": "llama3.2:1b", "prompt": "hi"}) as response:
        lines = response.iter_lines()
        next(lines)
        first_token = time.monotonic() - started
        list(lines)
    assert first_token >= 0.2
    assert time.monotonic() - started >= 0.2 + 4 / 20


def test_max_in_flight_counts_concurrent_generations(sim):
    host = sim(tokens_per_second=20, reply_tokens=8)
    with ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(lambda _: httpx.post(host.url + "/api/generate", json=GENERATE, timeout=10), range(5)))
    assert all(a.json()["response"] == reply_text(8) for a in answers)
    stats = host.stats
    assert stats["max_in_flight"] == 5 and stats["in_flight"] == 0 and stats["requests"]["/api/generate"] == 5


def test_hundreds_of_slow_streams_at_once(sim):
    # Each stream lasts over 3 s, so all 300 overlap even when the machine is slow to open the connections.
    host = sim(ttft=3, tokens_per_second=10, reply_tokens=5)
    count = 300

    async def one_stream(client):
        body = {"model": "llama3.2:1b", "messages": HELLO, "stream": True}
        async with client.stream("POST", host.url + "/v1/chat/completions", json=body) as response:
            return [line async for line in response.aiter_lines() if line]

    async def all_streams():
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:
            return await asyncio.gather(*(one_stream(client) for _ in range(count)))

    streams = asyncio.run(all_streams())
    assert all(lines[-1] == "data: [DONE]" and len(lines) == 8 for lines in streams)
    assert host.stats["max_in_flight"] == count and host.stats["disconnects"] == 0


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/chat", {"messages": HELLO}),
        ("/v1/chat/completions", {"messages": HELLO, "stream": True}),
        ("/v1/completions", {"prompt": "hi", "stream": True}),
    ],
)
def test_client_leaving_mid_stream_is_a_disconnect(sim, path, body):
    host = sim(tokens_per_second=20, reply_tokens=200)
    with httpx.stream("POST", host.url + path, json={"model": "llama3.2:1b", **body}) as response:
        lines = response.iter_lines()
        next(lines), next(lines)
    wait_until(lambda: host.stats["disconnects"] == 1)
    wait_until(lambda: host.stats["in_flight"] == 0)


def test_client_giving_up_on_a_single_answer_is_a_disconnect(sim):
    host = sim(tokens_per_second=10, reply_tokens=100)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(host.url + "/api/generate", json=GENERATE, timeout=httpx.Timeout(5, read=0.3))
    wait_until(lambda: host.stats["disconnects"] == 1)
    assert host.stats["in_flight"] == 0


def test_client_leaving_during_a_cold_load_is_a_disconnect(sim):
    host = sim(load_time=5)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(host.url + "/api/generate", json=GENERATE, timeout=httpx.Timeout(5, read=0.3))
    wait_until(lambda: host.stats["disconnects"] == 1)
    assert host.stats["in_flight"] == 0


# --- control ---------------------------------------------------------------------------------------------------------


def test_control_endpoints_change_config_and_report_stats(sim):
    host = sim()
    changed = httpx.post(
        host.url + "/_sim/config", json={"models": [{"name": "x:1b", "loaded": True}], "reply_tokens": 2}
    )
    assert changed.status_code == 200 and changed.json()["reply_tokens"] == 2
    assert [m["name"] for m in httpx.get(host.url + "/api/ps").json()["models"]] == ["x:1b"]
    reply = httpx.post(host.url + "/api/generate", json={"model": "x:1b", "prompt": "hi there", "stream": False})
    assert reply.json()["response"] == reply_text(2)

    stats = httpx.get(host.url + "/_sim/stats").json()
    assert stats["requests"] == {"/api/ps": 1, "/api/generate": 1}  # control calls are not counted
    assert stats["max_in_flight"] == 1 and stats["in_flight"] == 0 and stats["disconnects"] == 0
    assert stats["last_request"]["path"] == "/api/generate"
    assert stats["last_request"]["json"] == {"model": "x:1b", "prompt": "hi there", "stream": False}
    assert stats["last_request"]["headers"]["Content-Type"] == "application/json"

    httpx.post(host.url + "/_sim/reset-stats")
    assert httpx.get(host.url + "/_sim/stats").json()["requests"] == {}
    assert host.stats["requests"] == {}


@pytest.mark.parametrize(
    "changes",
    [
        {"no_such_field": 1},
        {"fail": "explode"},
        {"models": [{"nom": "x"}]},
        {"models": "x:1b"},
        {"ttft": -1},
        {"fail_paths": "/api"},
        {"fail_rate": 1.5},
        {"drip_rate": 0},
        ["not", "an", "object"],
    ],
)
def test_control_refuses_bad_config_and_keeps_the_old(sim, changes):
    host = sim()
    response = httpx.post(host.url + "/_sim/config", json=changes)
    assert response.status_code == 400 and response.json()["error"]
    assert host.config.fail is None and host.config.ttft == 0
    assert [m.name for m in host.config.models] == ["llama3.2:1b"]


def test_serve_runs_hosts_in_the_current_event_loop():
    async def scenario():
        ready = asyncio.get_running_loop().create_future()
        configs = [(SimConfig(models=[SimModel(name="a:1b")]), 0), (SimConfig(version="1.2.3"), 0)]
        task = asyncio.create_task(serve(configs, on_ready=ready.set_result))
        hosts = await ready
        async with httpx.AsyncClient() as client:
            versions = [(await client.get(h.url + "/api/version")).json()["version"] for h in hosts]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with httpx.AsyncClient() as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(hosts[0].url + "/api/version")
        return versions

    assert asyncio.run(scenario()) == ["0.6.5", "1.2.3"]


def test_start_in_thread_reports_a_busy_port(sim):
    host = sim()
    with pytest.raises(OSError):
        start_in_thread(SimConfig(), port=host.port)


# --- the management command ----------------------------------------------------------------------------------------


def run_command(tmp_path, *args):
    env = {**os.environ, "CLOOD_VAR_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    command = [sys.executable, "manage.py", "simhost", *args]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_simhost_command_serves_hosts_until_interrupted(tmp_path):
    process = run_command(
        tmp_path, "--port", "0", "--count", "2", "--models", "a:1b,nomic-embed-text", "--loaded", "a:1b", "--ttft", "0"
    )
    try:
        lines = [process.stdout.readline() for _ in range(2)]
        urls = [line.split()[0] for line in lines]
        assert len(set(urls)) == 2 and all(url.startswith("http://127.0.0.1:") for url in urls)
        assert "a:1b (loaded)" in lines[0] and "nomic-embed-text" in lines[0]
        for url in urls:
            assert [m["name"] for m in httpx.get(url + "/api/ps").json()["models"]] == ["a:1b"]
        show = httpx.post(urls[0] + "/api/show", json={"model": "nomic-embed-text"}).json()
        assert show["capabilities"] == ["embedding"]
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(10)
        process.stdout.close()
        process.stderr.close()
    assert process.returncode == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--count", "0"], "--count"),
        (["--port", "70000"], "--port"),
        (["--models", " , "], "--models"),
        (["--loaded", "ghost:1b"], "ghost:1b"),
        (["--tps", "-1"], "--tps"),
        (["--fail", "explode"], "invalid choice"),
        (["--api-key-env", "CLOOD_TEST_SURELY_UNSET_VAR"], "CLOOD_TEST_SURELY_UNSET_VAR"),
    ],
)
def test_simhost_command_rejects_bad_arguments(tmp_path, args, message):
    process = run_command(tmp_path, "--port", "0", *args)
    _, errors = process.communicate(timeout=30)
    assert process.returncode != 0 and message in errors
