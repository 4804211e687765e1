"""The real `openai` and `ollama` clients against a running clood in front of simulated hosts."""

import json

import httpx
import ollama
import openai
import pytest

from hosts.simulator import SimModel

HOST_KEY = "sk-host-canary-31337"
CLIENT_KEY = "sk-client-canary-4242"


@pytest.fixture(scope="module")
def garden(clood_factory, sims):
    garden = clood_factory()
    garden.add(
        "box",
        sims(models=[SimModel(name="llama3.2:1b", loaded=True), SimModel(name="nomic-embed-text",
                                                                          capabilities=["embedding"])]),
    )  # fmt: skip
    garden.server.env["VLLM_TEST_KEY"] = HOST_KEY
    vllm = sims(models=["served/Model-7B"], ollama_api=False, api_key=HOST_KEY)
    garden.add("vllm", vllm, "--backend", "openai", "--api-key-env", "VLLM_TEST_KEY")
    garden.refresh()
    return garden


@pytest.fixture
def client(garden):
    return openai.OpenAI(base_url=garden.url + "/v1", api_key=CLIENT_KEY, max_retries=0)


@pytest.fixture
def direct(garden):
    return openai.OpenAI(base_url=garden.sims["box"].url + "/v1", api_key="x", max_retries=0)


MESSAGES = [{"role": "user", "content": "Say something"}]


def test_chat_non_stream_matches_the_host(client, direct):
    through = client.chat.completions.with_raw_response.create(model="llama3.2:1b", messages=MESSAGES)
    completion = through.parse()
    expected = direct.chat.completions.create(model="llama3.2:1b", messages=MESSAGES)
    assert completion.choices[0].message.content == expected.choices[0].message.content
    assert completion.usage.completion_tokens == expected.usage.completion_tokens
    assert through.headers["x-clood-host"] == "box"
    assert through.headers["x-clood-decision"]


def test_chat_stream_with_usage(client, direct):
    chunks = list(
        client.chat.completions.create(
            model="llama3.2:1b", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    expected = direct.chat.completions.create(model="llama3.2:1b", messages=MESSAGES)
    assert text == expected.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


async def test_async_client_stream(garden):
    client = openai.AsyncOpenAI(base_url=garden.url + "/v1", api_key=CLIENT_KEY, max_retries=0)
    stream = await client.chat.completions.create(model="llama3.2:1b", messages=MESSAGES, stream=True)
    parts = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    assert "".join(parts)
    completion = await client.chat.completions.create(model="llama3.2:1b", messages=MESSAGES)
    assert completion.choices[0].message.content == "".join(parts)
    await client.close()


def test_tools_come_back_as_tool_calls(client):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    completion = client.chat.completions.create(model="llama3.2:1b", messages=MESSAGES, tools=tools)
    assert completion.choices[0].finish_reason == "tool_calls"
    assert completion.choices[0].message.tool_calls[0].function.name == "get_weather"


def test_legacy_completions(client, direct):
    completion = client.completions.create(model="llama3.2:1b", prompt="Once upon a time")
    assert completion.choices[0].text == direct.completions.create(model="llama3.2:1b", prompt="x").choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(model="llama3.2:1b", prompt="x",
                                                                              stream=True) if c.choices)  # fmt: skip
    assert streamed == completion.choices[0].text


def test_embeddings(client):
    result = client.embeddings.create(model="nomic-embed-text", input=["one", "two"])
    assert len(result.data) == 2 and len(result.data[0].embedding) > 0


def test_models_list_and_retrieve(client):
    ids = {m.id for m in client.models.list()}
    assert {"llama3.2:1b", "nomic-embed-text:latest", "served/Model-7B"} <= ids
    assert client.models.retrieve("llama3.2:1b").id == "llama3.2:1b"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model:1b")


def test_openai_backend_gets_its_own_key_never_the_clients(client, garden):
    completion = client.chat.completions.create(model="served/model-7b", messages=MESSAGES)
    assert completion.choices[0].message.content
    seen = garden.sims["vllm"].stats["last_request"]
    assert seen["headers"].get("Authorization") == f"Bearer {HOST_KEY}"
    assert CLIENT_KEY not in json.dumps(seen)
    assert seen["json"]["model"] == "served/Model-7B"  # renamed to the host's own spelling


def test_request_fields_pass_through_untouched(client, garden):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    content = [
        {"type": "text", "text": "héllo ✓"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]
    client.chat.completions.create(
        model="library/llama3.2:1b",
        messages=[{"role": "user", "content": content}],
        temperature=0,
        tools=tools,
        extra_body={"reasoning": {"effort": "low"}, "some_future_field": [1, 2.5, None]},
    )  # fmt: skip
    body = garden.sims["box"].stats["last_request"]["json"]
    assert body["model"] == "llama3.2:1b"
    assert body["temperature"] == 0 and isinstance(body["temperature"], int)
    assert body["tools"] == tools
    assert body["reasoning"] == {"effort": "low"} and body["some_future_field"] == [1, 2.5, None]
    assert body["messages"][0]["content"][0]["text"] == "héllo ✓"


def test_unchanged_model_name_forwards_the_exact_bytes(garden):
    raw = b'{"model": "llama3.2:1b",   "messages": [{"role": "user", "content": "x"}], "zzz": 1e2}'
    response = httpx.post(garden.url + "/v1/chat/completions", content=raw,
                          headers={"content-type": "application/json"})  # fmt: skip
    assert response.status_code == 200
    assert garden.sims["box"].stats["last_request"]["json"] == json.loads(raw)


def test_ollama_client(garden):
    client = ollama.Client(host=garden.url)
    reply = client.chat(model="llama3.2:1b", messages=MESSAGES)
    assert reply.message.content and reply.done
    streamed = "".join(part.message.content for part in client.chat(model="llama3.2:1b", messages=MESSAGES,
                                                                     stream=True))  # fmt: skip
    assert streamed == reply.message.content
    generated = client.generate(model="llama3.2:1b", prompt="hi")
    assert generated.response and generated.eval_count
    assert len(client.embed(model="nomic-embed-text", input="hello").embeddings) == 1
    names = {m.model for m in client.list().models}
    assert names == {"llama3.2:1b", "nomic-embed-text:latest"}  # only Ollama hosts
    assert [m.model for m in client.ps().models] == ["llama3.2:1b"]
    assert client.show("llama3.2:1b").details.family


async def test_async_ollama_client_stream(garden):
    client = ollama.AsyncClient(host=garden.url)
    parts = [part.response async for part in await client.generate(model="llama3.2:1b", prompt="x", stream=True)]
    assert "".join(parts)


def test_ollama_version(garden):
    body = httpx.get(garden.url + "/api/version").json()
    assert body["version"] == garden.sims["box"].config.version


def test_unknown_model_is_404_in_each_shape(client, garden):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="qwen2.5-coder:3b", messages=MESSAGES)
    assert caught.value.body["code"] == "model_not_found"
    with pytest.raises(ollama.ResponseError) as caught:
        ollama.Client(host=garden.url).chat(model="qwen2.5-coder:3b", messages=MESSAGES)
    assert caught.value.status_code == 404


def test_request_log_row(client, garden):
    response = client.chat.completions.with_raw_response.create(model="llama3.2:1b", messages=MESSAGES, stream=True,
                                                                stream_options={"include_usage": True})  # fmt: skip
    list(response.parse())
    row = garden.log_for(response.headers["x-clood-request-id"])
    assert row["outcome"] == "ok" and row["host"] == "box" and row["stream"] == 1 and row["status"] == 200
    assert row["completion_tokens"] > 0 and row["ttft_ms"] is not None and row["duration_ms"] >= row["ttft_ms"]
    assert row["cold_start"] == 0 and row["finished_at"]


def test_status_health_ready(garden):
    status = garden.status()
    assert {"totals", "in_flight", "queued", "hosts"} <= set(status)
    box = garden.status("box")
    assert box["requests"] > 0 and box["slots_max"] == 4 and box["circuit"] == "closed"
    assert box["p50_ttft_ms"] is not None
    assert HOST_KEY not in json.dumps(status)
    assert httpx.get(garden.url + "/health").json() == {"status": "ok"}
    assert httpx.get(garden.url + "/ready").json()["ready"] is True
