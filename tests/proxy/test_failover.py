"""Routing, failover, in-band errors, queueing and disconnects, over real HTTP against simulated hosts."""

import asyncio
import json

import httpx
import openai
import pytest

from hosts.simulator import SimModel
from tests.conftest import wait_until

GENERATION = ["/v1/chat/completions", "/api/chat", "/api/generate", "/v1/completions"]
CHAT = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def garden(clood_factory, sims):
    # Priority routing keeps the order fixed whatever the timings: "first" is tried first, "second" is the fallback.
    garden = clood_factory(env={"CLOOD_ROUTING_STRATEGY": "priority"})
    garden.add("first", sims(models=["llama3.2:1b"]), "--priority", "1")
    garden.add("second", sims(models=["llama3.2:1b"]), "--priority", "2")
    garden.add("slow", sims(models=["slow:1b"], tokens_per_second=20, reply_tokens=200), "--max-concurrency", "1")
    garden.refresh()
    return garden


@pytest.fixture(autouse=True)
def healthy(garden):
    """Every test starts with well-behaved hosts."""
    for sim in garden.sims.values():
        sim.config.fail = None
        sim.config.fail_paths = None
    yield


def new_client(garden):
    return httpx.AsyncClient(base_url=garden.url, timeout=30)


def chat(garden, body=None, path="/v1/chat/completions"):
    return httpx.post(garden.url + path, json=body or CHAT, timeout=30)


def test_priority_strategy_picks_the_best_priority(garden):
    assert chat(garden).headers["x-clood-host"] == "first"


@pytest.mark.parametrize(
    ("status", "reason"),
    [(500, "broken"), (503, "busy"), (429, "rate limited"), (409, "conflict"), (502, "bad gateway")],
)
def test_failover_on_error_status(garden, status, reason):
    first = garden.sims["first"]
    first.config.fail, first.config.fail_status, first.config.fail_paths = "error", status, GENERATION
    response = chat(garden)
    assert response.status_code == 200, response.text
    assert response.headers["x-clood-host"] == "second"
    row = garden.log_for(response.headers["x-clood-request-id"])
    assert row["attempts"][0]["host"] == "first" and row["attempts"][0]["status"] == status
    assert row["attempts"][1] == {"host": "second"}


def test_failover_on_timeout_before_first_byte(garden):
    first = garden.sims["first"]
    first.config.fail, first.config.fail_paths = "hang", GENERATION
    response = chat(garden)
    assert response.status_code == 200 and response.headers["x-clood-host"] == "second"
    row = garden.log_for(response.headers["x-clood-request-id"])
    assert "sent nothing within" in row["attempts"][0]["error"]


def test_failover_on_connection_refused(garden, sims):
    gone = sims(models=[SimModel(name="llama3.2:1b", loaded=True)])  # warm: it wins the routing
    garden.add("gone", gone, "--priority", "0")
    garden.refresh()
    try:
        gone.stop()  # clood still thinks it is online: the monitor has not looked yet
        response = chat(garden)
        assert response.status_code == 200 and response.headers["x-clood-host"] == "first"
        row = garden.log_for(response.headers["x-clood-request-id"])
        assert row["attempts"][0]["host"] == "gone" and "refused" in row["attempts"][0]["error"]
    finally:
        garden.server.manage("hosts", "remove", "gone")
        garden.refresh()


def test_every_host_failing_is_a_clear_502(garden):
    for name in ("first", "second"):
        sim = garden.sims[name]
        sim.config.fail, sim.config.fail_status, sim.config.fail_paths = "error", 500, GENERATION
    response = chat(garden)
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "upstream_failed" and "first" in error["message"] and "second" in error["message"]
    ollama_response = chat(garden, {**CHAT, "stream": False}, path="/api/chat")
    assert ollama_response.status_code == 502 and isinstance(ollama_response.json()["error"], str)


def test_all_busy_is_503_with_retry_after(garden):
    for name in ("first", "second"):
        sim = garden.sims[name]
        sim.config.fail, sim.config.fail_status, sim.config.fail_paths = "error", 503, GENERATION
    response = chat(garden)
    assert response.status_code == 503 and response.headers["retry-after"]


@pytest.mark.parametrize("busy_one", ["first", "second"])
def test_busy_and_broken_hosts_together_are_502_whichever_is_tried_last(garden, busy_one):
    for name in ("first", "second"):
        sim = garden.sims[name]
        sim.config.fail, sim.config.fail_status, sim.config.fail_paths = "error", 500, GENERATION
    garden.sims[busy_one].config.fail_status = 503
    response = chat(garden)
    assert response.status_code == 502 and "retry-after" not in response.headers
    assert [a["host"] for a in garden.log_for(response.headers["x-clood-request-id"])["attempts"]] == [
        "first", "second"
    ]  # fmt: skip


def test_mid_stream_failure_is_an_in_band_error(garden):
    first = garden.sims["first"]
    first.config.fail, first.config.fail_paths, first.config.fail_after_tokens = "drop", GENERATION, 3
    with httpx.stream("POST", garden.url + "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
        lines = [line for line in response.iter_lines() if line]
        request_id = response.headers["x-clood-request-id"]
    assert response.status_code == 200
    error = json.loads(lines[-1].removeprefix("data: "))["error"]
    assert error["code"] == "stream_interrupted"
    assert sum(1 for line in lines if '"content"' in line) >= 3
    row = garden.log_for(request_id)
    assert row["outcome"] == "incomplete" and row["host"] == "first"

    client = openai.OpenAI(base_url=garden.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(**CHAT, stream=True))


def test_mid_stream_failure_on_ollama_api_is_an_ndjson_error_line(garden):
    first = garden.sims["first"]
    first.config.fail, first.config.fail_paths = "drop", GENERATION
    with httpx.stream("POST", garden.url + "/api/chat", json=CHAT) as response:
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert "error" in lines[-1] and isinstance(lines[-1]["error"], str)
    assert lines[0]["message"]["content"]


async def test_client_disconnect_cancels_the_upstream_request(garden):
    slow = garden.sims["slow"]
    before = slow.stats["disconnects"]
    body = {"model": "slow:1b", "messages": [{"role": "user", "content": "x"}], "stream": True}
    async with httpx.AsyncClient(base_url=garden.url, timeout=10) as client:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            request_id = response.headers["x-clood-request-id"]
            async for _ in response.aiter_bytes():
                break  # one chunk, then hang up
    await asyncio.to_thread(wait_until, lambda: slow.stats["disconnects"] > before, 5, 0.05, "upstream to close")
    await asyncio.to_thread(wait_until, lambda: garden.status("slow")["slots_used"] == 0, 5, 0.05, "slot freed")
    row = await asyncio.to_thread(garden.log_for, request_id)
    assert (row["outcome"], row["status"], row["host"]) == ("cancelled", 499, "slow")


async def test_queued_request_leaves_the_queue_when_its_client_goes(garden):
    body = {"model": "slow:1b", "messages": [{"role": "user", "content": "x"}], "stream": True}
    async with httpx.AsyncClient(base_url=garden.url, timeout=10) as client, new_client(garden) as other:
        async with client.stream("POST", "/v1/chat/completions", json=body) as holding:
            chunks = holding.aiter_bytes()  # kept: a dropped iterator closes the response
            await anext(chunks)  # the one slot is taken
            waiting = asyncio.create_task(other.post("/v1/chat/completions", json=body))
            await asyncio.to_thread(wait_until, lambda: garden.status()["queued"] == 1, 5, 0.05, "queued")
            waiting.cancel()
            await asyncio.to_thread(wait_until, lambda: garden.status()["queued"] == 0, 5, 0.05, "queue empty")


async def test_queue_overflow_is_429_with_retry_after(garden):
    body = {"model": "slow:1b", "messages": [{"role": "user", "content": "x"}], "stream": True}
    async with httpx.AsyncClient(base_url=garden.url, timeout=30) as client, new_client(garden) as other:
        async with client.stream("POST", "/v1/chat/completions", json=body) as holding:
            chunks = holding.aiter_bytes()
            await anext(chunks)
            waiting = [asyncio.create_task(other.post("/v1/chat/completions", json=body)) for _ in range(2)]
            await asyncio.to_thread(wait_until, lambda: garden.status()["queued"] == 2, 5, 0.05, "two queued")
            overflow = await client.post("/v1/chat/completions", json=body)
            assert overflow.status_code == 429
            assert overflow.headers["retry-after"]
            assert overflow.json()["error"]["code"] == "queue_full"
            for task in waiting:
                task.cancel()


def test_queued_requests_are_served_when_a_slot_frees(garden):
    body = {"model": "slow:1b", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5}

    async def both():
        async with httpx.AsyncClient(base_url=garden.url, timeout=30) as client:
            return await asyncio.gather(*(client.post("/v1/chat/completions", json=body) for _ in range(2)))

    responses = asyncio.run(both())
    assert [r.status_code for r in responses] == [200, 200]
    assert garden.sims["slow"].stats["max_in_flight"] == 1


def test_warm_host_is_preferred_over_cold(clood_factory, sims):
    garden = clood_factory()
    garden.add("cold", sims(models=["llama3.2:1b"]), "--priority", "1")
    garden.add("warm", sims(models=[SimModel(name="llama3.2:1b", loaded=True)]), "--priority", "9")
    garden.refresh()
    response = chat(garden)
    assert response.headers["x-clood-host"] == "warm"
    assert garden.log_for(response.headers["x-clood-request-id"])["cold_start"] == 0


def test_cold_start_is_marked(clood_factory, sims):
    garden = clood_factory()
    garden.add("cold", sims(models=["llama3.2:1b"], load_time=0.3))
    garden.refresh()
    response = chat(garden)
    assert response.status_code == 200
    assert garden.log_for(response.headers["x-clood-request-id"])["cold_start"] == 1
    # clood now knows it loaded the model there: the next request is warm.
    assert garden.log_for(chat(garden).headers["x-clood-request-id"])["cold_start"] == 0


def test_client_disconnect_cancels_a_non_streamed_request_too(garden):
    slow = garden.sims["slow"]
    before = slow.stats["disconnects"]
    body = {"model": "slow:1b", "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(garden.url + "/v1/chat/completions", json=body, timeout=httpx.Timeout(5, read=0.5))
    wait_until(lambda: slow.stats["disconnects"] > before, 5, 0.05, "upstream to close")
    wait_until(lambda: garden.status("slow")["slots_used"] == 0, 5, 0.05, "slot freed")
