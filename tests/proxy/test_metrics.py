"""GET /metrics: the Prometheus scrape of a real clood in front of simulated hosts, read with prometheus_client's own
parser."""

import asyncio

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import canaries
from tests.conftest import wait_until

GENERATION = ["/v1/chat/completions", "/api/chat", "/api/generate", "/v1/completions"]
REPLY_TOKENS = 8
SLOW = {"model": "slow:1b", "messages": [{"role": "user", "content": "x"}], "stream": True}


@pytest.fixture(scope="module")
def garden(clood_factory, sims):
    # Priority routing keeps the order fixed: "first" is tried first, "second" is the fallback.
    garden = clood_factory(env={"CLOOD_ROUTING_STRATEGY": "priority"})
    garden.add("first", sims(models=["llama3.2:1b", "counted:1b"], reply_tokens=REPLY_TOKENS), "--priority", "1")
    garden.add("second", sims(models=["llama3.2:1b"]), "--priority", "2")
    garden.add("slow", sims(models=["slow:1b"], tokens_per_second=5, reply_tokens=200), "--max-concurrency", "1")
    garden.refresh()
    return garden


@pytest.fixture(autouse=True)
def healthy(garden):
    for sim in garden.sims.values():
        sim.config.fail = None
        sim.config.fail_paths = None


class Scrape:
    """One scrape, parsed: every sample by name and labels."""

    def __init__(self, text):
        self.text = text
        self.samples = [s for family in text_string_to_metric_families(text) for s in family.samples]

    def value(self, name, **labels):
        """The sample's value, 0 when there is none (a counter that has not counted yet)."""
        return next((s.value for s in self.samples if s.name == name and s.labels == labels), 0)

    def label_values(self, label):
        return {s.labels[label] for s in self.samples if label in s.labels}


def scrape(garden):
    response = httpx.get(garden.url + "/metrics", timeout=5)
    assert response.status_code == 200, response.text
    return Scrape(response.text)


def chat(garden, model="llama3.2:1b"):
    return httpx.post(garden.url + "/v1/chat/completions", json={"model": model, "messages": [{"role": "user",
                      "content": "hi"}]}, timeout=30)  # fmt: skip


def requests_total(metrics, host, model="llama3.2:1b", outcome="ok", endpoint="chat.completions"):
    return metrics.value("clood_requests_total", host=host, model=model, endpoint=endpoint, outcome=outcome)


def test_metrics_are_prometheus_text_format_0_0_4(garden):
    response = httpx.get(garden.url + "/metrics", timeout=5)
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert {"clood_requests", "clood_ttft_seconds", "clood_tokens_per_second", "clood_request_duration_seconds",
            "clood_queue_length", "clood_in_flight", "clood_slots_in_use", "clood_slots_max", "clood_host_up",
            "clood_upstream_errors"} <= names  # fmt: skip


def test_successful_chats_are_counted_with_their_timings(garden):
    client = openai.OpenAI(base_url=garden.url + "/v1", api_key="unused")
    for _ in range(3):
        list(client.chat.completions.create(model="counted:1b", messages=[{"role": "user", "content": "hi"}],
                                            stream=True))  # fmt: skip
    metrics = scrape(garden)
    assert requests_total(metrics, "first", "counted:1b") == 3
    labels = {"host": "first", "model": "counted:1b"}
    assert metrics.value("clood_ttft_seconds_count", **labels) == 3
    assert metrics.value("clood_tokens_per_second_count", **labels) == 3
    assert metrics.value("clood_request_duration_seconds_count", **labels, endpoint="chat.completions") == 3
    assert metrics.value("clood_tokens_total", **labels) == 3 * REPLY_TOKENS
    assert metrics.value("clood_ttft_seconds_bucket", **labels, le="+Inf") == 3


def test_each_endpoint_is_counted_under_its_own_name(garden):
    before = scrape(garden)
    response = httpx.post(garden.url + "/api/generate", json={"model": "llama3.2:1b", "prompt": "hi"}, timeout=30)
    assert response.status_code == 200
    after = scrape(garden)
    assert requests_total(after, "first", endpoint="ollama.generate") == requests_total(
        before, "first", endpoint="ollama.generate") + 1  # fmt: skip
    assert requests_total(after, "first") == requests_total(before, "first")


def test_a_failed_attempt_is_an_upstream_error_and_the_fallback_is_counted(garden):
    first = garden.sims["first"]
    first.config.fail, first.config.fail_status, first.config.fail_paths = "error", 500, GENERATION
    before = scrape(garden)
    response = chat(garden)
    assert response.status_code == 200 and response.headers["x-clood-host"] == "second"
    after = scrape(garden)
    errors = "clood_upstream_errors_total"
    assert after.value(errors, host="first") == before.value(errors, host="first") + 1
    assert after.value(errors, host="second") == before.value(errors, host="second")
    assert requests_total(after, "second") == requests_total(before, "second") + 1
    assert requests_total(after, "first") == requests_total(before, "first")


def test_a_request_every_host_failed_is_counted_as_failed_without_a_host(garden):
    for name in ("first", "second"):
        sim = garden.sims[name]
        sim.config.fail, sim.config.fail_status, sim.config.fail_paths = "error", 500, GENERATION
    before = scrape(garden)
    assert chat(garden).status_code == 502
    after = scrape(garden)
    assert requests_total(after, "", outcome="failed") == requests_total(before, "", outcome="failed") + 1
    for name in ("first", "second"):
        errors = "clood_upstream_errors_total"
        assert after.value(errors, host=name) == before.value(errors, host=name) + 1


def test_an_unknown_model_adds_no_model_label(garden):
    before = scrape(garden)
    response = chat(garden, model="no-such-model:7b")
    assert response.status_code == 404
    after = scrape(garden)
    assert not any("no-such-model" in value for value in after.label_values("model"))
    assert requests_total(after, "", "", "rejected") == requests_total(before, "", "", "rejected") + 1


async def test_slots_in_flight_and_queue_show_requests_being_served(garden):
    def gauges(slots, in_flight, queued):
        def match():
            metrics = scrape(garden)
            return (metrics.value("clood_slots_in_use", host="slow"), metrics.value("clood_in_flight"),
                    metrics.value("clood_queue_length")) == (slots, in_flight, queued)  # fmt: skip

        return asyncio.to_thread(wait_until, match, 10, 0.05, f"slots {slots}, in flight {in_flight}, queue {queued}")

    assert scrape(garden).value("clood_slots_max", host="slow") == 1
    await gauges(0, 0, 0)
    async with httpx.AsyncClient(base_url=garden.url, timeout=30) as client:
        async with client.stream("POST", "/v1/chat/completions", json=SLOW) as holding:
            chunks = holding.aiter_bytes()  # kept: a dropped iterator closes the response
            await anext(chunks)  # the one slot is taken
            await gauges(1, 1, 0)
            waiting = asyncio.create_task(client.post("/v1/chat/completions", json=SLOW))
            await gauges(1, 1, 1)
            waiting.cancel()
    await gauges(0, 0, 0)


def test_every_online_host_is_up(garden):
    metrics = scrape(garden)
    assert {name: metrics.value("clood_host_up", host=name) for name in garden.sims} == {
        "first": 1, "second": 1, "slow": 1}  # fmt: skip


def test_metrics_hold_no_secret_and_no_address(garden):
    chat(garden)
    text = scrape(garden).text
    for secret in canaries.ALL:
        assert secret not in text
    for sim in garden.sims.values():
        assert sim.url.removeprefix("http://") not in text
    assert "127.0.0.1" not in text


def test_metrics_need_no_key_when_the_api_does(clood_factory):
    garden = clood_factory(env={"CLOOD_REQUIRE_API_KEY": "true"})
    assert httpx.get(garden.url + "/v1/models", timeout=5).status_code == 401
    assert httpx.get(garden.url + "/metrics", timeout=5).status_code == 200
    assert httpx.head(garden.url + "/metrics", timeout=5).status_code == 200
