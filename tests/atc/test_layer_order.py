"""Events reach the channel-layer group in the order they were published, even when each group_send takes several
Redis round trips (channels-redis), so sends in flight could overtake one another."""

import asyncio
import secrets

import pytest
from channels.layers import get_channel_layer

from atc import events

REDIS_URL = "redis://127.0.0.1:6379/0"  # the machine's Redis, in both passes of the suite
BURST = 90  # under the layers' default channel capacity (100), which drops what a slow receiver has not taken


@pytest.fixture
def redis_layer(settings):
    settings.REDIS_URL = None  # one process: events get their seq here and go straight to the layer
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "prefix": f"test-order-{secrets.token_hex(4)}"},
        }
    }
    layer = get_channel_layer()
    yield layer


@pytest.mark.parametrize("layer_name", ["redis", "in-memory"])
async def test_a_burst_of_events_reaches_the_group_in_seq_order(layer_name, request):
    layer = request.getfixturevalue("redis_layer") if layer_name == "redis" else get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(events.GROUP, channel)
    try:
        published = [await events.apublish("request_queued", request_id=f"r{i}", n=i) for i in range(BURST)]
        received = [(await asyncio.wait_for(layer.receive(channel), 10))["event"] for _ in range(BURST)]
    finally:
        await layer.group_discard(events.GROUP, channel)
        if layer_name == "redis":
            await layer.flush()
    assert [e["data"]["n"] for e in received] == list(range(BURST))
    assert [e["seq"] for e in received] == [e["seq"] for e in published]
    assert [e["seq"] for e in received] == sorted({e["seq"] for e in received})


async def test_a_layer_slower_than_the_events_skips_some_for_the_group_and_keeps_them_all(
    redis_layer, monkeypatch, caplog
):
    monkeypatch.setattr(events, "MAX_BACKLOG", 5)
    channel = await redis_layer.new_channel()
    await redis_layer.group_add(events.GROUP, channel)
    try:
        published = [await events.apublish("request_queued", n=i) for i in range(20)]  # no await lets a send run
        received = [(await asyncio.wait_for(redis_layer.receive(channel), 10))["event"] for _ in range(5)]
        assert "some skip the 'atc' group" in caplog.text
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(redis_layer.receive(channel), 0.5)
        later = await events.apublish("request_queued", n=20)  # the backlog is gone: the group gets events again
        assert (await asyncio.wait_for(redis_layer.receive(channel), 10))["event"]["seq"] == later["seq"]
    finally:
        await redis_layer.group_discard(events.GROUP, channel)
        await redis_layer.flush()
    assert [e["data"]["n"] for e in received] == [0, 1, 2, 3, 4]
    assert [e["seq"] for e in events.events_after(published[0]["seq"] - 1)][:20] == [e["seq"] for e in published]
