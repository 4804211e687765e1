"""Request events reach the ATC channel-layer group, in order, with the routing decision and no secrets."""

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import HttpCommunicator

from clood_site.asgi import application
from hosts import snapshot
from hosts.models import Host, HostModel
from hosts.simulator import SimModel
from proxy.relay import close_session

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
async def close_upstream_session():
    yield
    await close_session()


HOST_KEY = "sk-event-canary-8080"


async def garden_with_one_host(sim):
    host = await Host.objects.acreate(name="box", base_url=sim.url, online=True, api_key=HOST_KEY)
    await HostModel.objects.acreate(host=host, name="llama3.2:1b", remote_name="llama3.2:1b", loaded=True)
    await snapshot.refresh()


async def listen():
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add("atc", channel)
    return layer, channel


async def drain(layer, channel, until):
    events = []
    while not events or events[-1]["type"] != until:
        message = await asyncio.wait_for(layer.receive(channel), 5)
        events.append(message["event"])
    return events


async def post(path, body):
    communicator = HttpCommunicator(application, "POST", path, body=json.dumps(body).encode(),
                                    headers=[(b"content-type", b"application/json")])  # fmt: skip
    return await communicator.get_response(timeout=10)


async def test_a_streamed_request_publishes_started_first_token_completed(sim_host):
    await garden_with_one_host(sim_host(models=[SimModel(name="llama3.2:1b", loaded=True)]))
    layer, channel = await listen()
    body = {"model": "llama3.2:1b", "stream": True, "messages": [{"role": "user", "content": "<b>tell me</b>"}]}
    response = await post("/v1/chat/completions", body)
    assert response["status"] == 200

    events = await drain(layer, channel, until="request_completed")
    types = [e["type"] for e in events]
    assert types == ["request_started", "request_first_token", "request_completed"]
    started, first, completed = events
    assert started["data"]["host"] == "box" and started["data"]["cold"] is False
    assert started["data"]["prompt"] == "<b>tell me</b>"
    decision = started["data"]["decision"]
    assert decision["candidates"][0]["host"] == "box" and "has it loaded" in decision["reason"]
    assert first["data"]["ttft_ms"] is not None
    assert completed["data"]["tokens"] > 0 and completed["data"]["complete"] is True
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    assert HOST_KEY not in json.dumps(events)


async def test_prompts_can_be_hidden_from_events(sim_host, settings):
    settings.CLOOD_EVENT_PROMPT_CHARS = 0
    await garden_with_one_host(sim_host(models=[SimModel(name="llama3.2:1b", loaded=True)]))
    layer, channel = await listen()
    await post("/v1/chat/completions", {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "secret"}]})
    events = await drain(layer, channel, until="request_completed")
    assert "secret" not in json.dumps(events)


async def test_a_failed_attempt_publishes_request_failed_with_will_retry(sim_host):
    broken = sim_host(models=["llama3.2:1b"], fail="error", fail_status=500)
    good = sim_host(models=["llama3.2:1b"])
    for name, sim, priority in [("broken", broken, 1), ("good", good, 2)]:
        host = await Host.objects.acreate(name=name, base_url=sim.url, online=True, priority=priority)
        await HostModel.objects.acreate(host=host, name="llama3.2:1b", remote_name="llama3.2:1b", loaded=True)
    await snapshot.refresh()
    layer, channel = await listen()
    response = await post(
        "/v1/chat/completions", {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "x"}]}
    )
    assert response["status"] == 200
    events = await drain(layer, channel, until="request_completed")
    failed = next(e for e in events if e["type"] == "request_failed")
    assert failed["data"]["host"] == "broken" and failed["data"]["will_retry"] is True
    assert events[-1]["data"]["host"] == "good" and events[-1]["data"]["attempt"] == 2


async def test_a_catfight_publishes_started_entries_and_completed(sim_host):
    from proxy import catfight

    sim = sim_host(models=[SimModel(name="llama3.2:1b", loaded=True), SimModel(name="qwen2.5-coder:3b")])
    host = await Host.objects.acreate(name="box", base_url=sim.url, online=True)
    for name in ("llama3.2:1b", "qwen2.5-coder:3b"):
        await HostModel.objects.acreate(host=host, name=name, remote_name=name, loaded=name == "llama3.2:1b")
    await snapshot.refresh()
    spec = await sync_to_async(catfight.parse_spec)(
        {"prompt": "hi", "contestants": [{"model": "llama3.2:1b", "host": "box"},
                                         {"model": "qwen2.5-coder:3b", "host": "box"}]}
    )  # fmt: skip
    (fight,) = await sync_to_async(catfight.create)(spec)
    layer, channel = await listen()
    await catfight.run(fight.pk)
    events = await drain(layer, channel, until="catfight_completed")
    kinds = [(e["type"], e["data"].get("phase")) for e in events]
    assert kinds[0] == ("catfight_started", None) and kinds[-1] == ("catfight_completed", None)
    for phase in ("started", "first_token", "completed"):
        assert kinds.count(("catfight_entry", phase)) == 2
    completed = events[-1]["data"]
    assert completed["winner"]["host"] == "box" and [r["rank"] for r in completed["ranking"]] == [1, 2]
