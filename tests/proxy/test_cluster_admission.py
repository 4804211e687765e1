"""Slots, queue and key limits held in Redis (proxy/cluster.py), against the machine's Redis (127.0.0.1:6379).

Two SharedAdmission objects stand for two processes: they share nothing but Redis. The end-to-end version, with two
real clood processes, is tests/cluster/.
"""

import asyncio
import secrets
from types import SimpleNamespace

import pytest
from redis import Redis

from clood_site import shared
from proxy import cluster
from proxy.cluster import SharedAdmission, SharedKeyLimits
from proxy.errors import ApiError
from proxy.keys import KeyLimits
from proxy.queue import Admission

REDIS_URL = "redis://127.0.0.1:6379/0"  # the machine's Redis, in both passes of the suite


@pytest.fixture(autouse=True)
def redis(settings):
    settings.REDIS_URL = REDIS_URL
    settings.CLOOD_REDIS_PREFIX = f"test-admission-{secrets.token_hex(4)}:"
    settings.CLOOD_SLOT_LEASE_SECONDS = 1.0
    shared._down_since = None
    yield
    client = Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=settings.CLOOD_REDIS_PREFIX + "*"))
    if keys:
        client.delete(*keys)
    client.close()


def process(limit=1):
    admission = SharedAdmission(Admission())
    admission.set_limit("x", limit)
    return admission


async def acquire(admission, timeout=5, on_queued=None):
    return await admission.acquire(["x"], max_queue=10, timeout=timeout, on_queued=on_queued)


async def test_a_slot_taken_by_one_process_is_taken_for_all():
    a, b = process(), process()
    assert await acquire(a) == "x"
    with pytest.raises(ApiError) as refused:
        await acquire(b, timeout=0.3)
    assert refused.value.code == "queue_timeout"
    a.release("x")
    assert await acquire(b) == "x"
    b.release("x")


async def test_the_queue_is_first_come_first_served_across_processes():
    a, b = process(), process()
    await acquire(a)
    order = []

    async def wait(admission, name):
        await acquire(admission)
        order.append(name)
        admission.release("x")

    first = asyncio.create_task(wait(b, "b, queued first"))
    await asyncio.sleep(0.2)
    second = asyncio.create_task(wait(a, "a, queued second"))
    await asyncio.sleep(0.2)
    a.release("x")
    await asyncio.gather(first, second)
    assert order == ["b, queued first", "a, queued second"]


async def test_a_newcomer_does_not_jump_the_queue_when_a_slot_frees():
    a, b = process(), process()
    await acquire(a)
    positions = []
    waiter = asyncio.create_task(acquire(b, on_queued=positions.append))
    await asyncio.sleep(0.2)
    assert positions == [1]
    a.release("x")
    with pytest.raises(ApiError):  # the freed slot is b's; a newcomer on a waits behind it
        await acquire(a, timeout=0.1)
    assert await waiter == "x"
    b.release("x")


async def test_a_full_queue_is_refused_with_queue_full():
    a = process()
    await acquire(a)
    waiters = [asyncio.create_task(a.acquire(["x"], max_queue=2, timeout=5)) for _ in range(2)]
    await asyncio.sleep(0.2)
    with pytest.raises(ApiError) as refused:
        await a.acquire(["x"], max_queue=2, timeout=5)
    assert refused.value.code == "queue_full" and refused.value.status == 429
    for waiter in waiters:
        waiter.cancel()
    a.release("x")


async def test_a_slot_whose_process_stopped_renewing_it_expires():
    a, b = process(), process()
    await acquire(a)
    a.mine.clear()  # as if a's process had died: nothing renews or releases its lease
    cluster.leases.held.clear()
    assert await acquire(b, timeout=5) == "x"  # after CLOOD_SLOT_LEASE_SECONDS (1 s here)
    b.release("x")


async def test_a_held_slot_is_renewed_past_its_lease():
    a, b = process(), process()
    await acquire(a)
    with pytest.raises(ApiError):
        await acquire(b, timeout=2.5)  # more than two lease times: a's heartbeat keeps it
    a.release("x")


async def test_a_cancelled_waiter_leaves_the_queue():
    a, b = process(), process()
    await acquire(a)
    waiter = asyncio.create_task(acquire(b))
    await asyncio.sleep(0.2)
    waiter.cancel()
    await asyncio.sleep(0.1)
    a.release("x")
    assert await acquire(a, timeout=1) == "x"  # nobody ahead any more
    a.release("x")


async def test_without_redis_each_process_falls_back_to_its_own_slots(settings, caplog):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    a = process()
    assert await acquire(a) == "x"
    assert shared.status()["ok"] is False
    assert "Redis unavailable" in caplog.text
    assert a.local.in_flight == {"x": 1}
    a.release("x")
    assert a.local.in_flight == {"x": 0}
    shared._down_since = None


def key(**limits):
    return SimpleNamespace(**{"id": 7, "name": "team", "max_concurrency": None, "requests_per_minute": None, **limits})


async def test_requests_per_minute_count_across_processes():
    a, b = SharedKeyLimits(KeyLimits()), SharedKeyLimits(KeyLimits())
    team = key(requests_per_minute=2)
    await a.acquire(team)
    await b.acquire(team)
    with pytest.raises(ApiError) as refused:
        await a.acquire(team)
    assert refused.value.code == "rate_limit_exceeded" and 1 <= refused.value.retry_after <= 61


async def test_requests_at_once_count_across_processes():
    a, b = SharedKeyLimits(KeyLimits()), SharedKeyLimits(KeyLimits())
    team = key(max_concurrency=1)
    token = await a.acquire(team)
    with pytest.raises(ApiError) as refused:
        await b.acquire(team)
    assert refused.value.code == "concurrency_limit_exceeded"
    a.release(team, token)
    await asyncio.sleep(0.1)  # the release is sent in the background
    b.release(team, await b.acquire(team))


async def test_a_request_cancelled_while_redis_answers_anyway_gives_its_key_slot_back(monkeypatch):
    limits = SharedKeyLimits(KeyLimits())
    team = key(max_concurrency=1)
    counted = asyncio.Event()
    real_run = cluster._run

    async def run_then_swallow_the_cancel(script, *args):
        """The script runs for real; the cancel that arrives meanwhile is swallowed, as redis-py does when it turns
        a cancelled read into a connection error and retries the command."""
        answer = await real_run(script, *args)
        counted.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            pass
        return answer

    monkeypatch.setattr(cluster, "_run", run_then_swallow_the_cancel)
    request = asyncio.create_task(limits.acquire(team))
    await counted.wait()
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    monkeypatch.setattr(cluster, "_run", real_run)

    for _ in range(50):  # the slot is given back in the background
        if not await shared.client().zcard(shared.key("key", team.id, "active")):
            break
        await asyncio.sleep(0.05)
    token = await limits.acquire(team)  # the one request at once is free again
    limits.release(team, token)
