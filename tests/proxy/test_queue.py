"""Admission: slots per host, a fair FIFO queue, bounds, and cancellation."""

import asyncio

import pytest

from proxy.errors import ApiError
from proxy.queue import Admission


def admission(**limits):
    a = Admission()
    for host, limit in limits.items():
        a.set_limit(host, limit)
    return a


async def test_slots_are_limited_per_host():
    a = admission(x=2)
    assert a.try_acquire(["x"]) == "x"
    assert a.try_acquire(["x"]) == "x"
    assert a.try_acquire(["x"]) is None
    a.release("x")
    assert a.try_acquire(["x"]) == "x"


async def test_first_free_candidate_in_order():
    a = admission(x=1, y=1)
    assert a.try_acquire(["x", "y"]) == "x"
    assert a.try_acquire(["x", "y"]) == "y"


async def test_waiters_are_served_first_come_first_served():
    a = admission(x=1)
    await a.acquire(["x"], max_queue=10, timeout=5)
    order = []

    async def wait(tag):
        await a.acquire(["x"], max_queue=10, timeout=5)
        order.append(tag)

    tasks = [asyncio.create_task(wait(i)) for i in range(4)]
    await asyncio.sleep(0.01)
    # A newcomer does not jump the queue even when it asks at the moment a slot frees.
    a.release("x")
    assert a.try_acquire(["x"]) is None
    for _ in range(4):
        await asyncio.sleep(0.01)
        a.release("x")
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3]


async def test_full_queue_is_429_with_retry_after():
    a = admission(x=1)
    a.try_acquire(["x"])
    waiter = asyncio.create_task(a.acquire(["x"], max_queue=1, timeout=5))
    await asyncio.sleep(0.01)
    with pytest.raises(ApiError) as caught:
        await a.acquire(["x"], max_queue=1, timeout=5)
    assert caught.value.status == 429 and caught.value.retry_after
    waiter.cancel()


async def test_waiting_too_long_is_429():
    a = admission(x=1)
    a.try_acquire(["x"])
    with pytest.raises(ApiError) as caught:
        await a.acquire(["x"], max_queue=5, timeout=0.05)
    assert caught.value.status == 429 and caught.value.code == "queue_timeout"
    assert a.queued == 0


async def test_cancelled_waiter_leaves_the_queue_at_once():
    a = admission(x=1)
    a.try_acquire(["x"])
    waiter = asyncio.create_task(a.acquire(["x"], max_queue=5, timeout=5))
    await asyncio.sleep(0.01)
    assert a.queued == 1
    waiter.cancel()
    await asyncio.sleep(0)
    assert a.queued == 0
    a.release("x")
    assert a.in_flight["x"] == 0


async def test_slot_handed_to_a_cancelled_waiter_is_passed_on():
    a = admission(x=1)
    a.try_acquire(["x"])
    first = asyncio.create_task(a.acquire(["x"], max_queue=5, timeout=5))
    second = asyncio.create_task(a.acquire(["x"], max_queue=5, timeout=5))
    await asyncio.sleep(0.01)
    a.release("x")  # handed to `first`…
    first.cancel()  # …which leaves before it runs
    assert await asyncio.wait_for(second, 1) == "x"
    assert a.in_flight["x"] == 1


async def test_a_waiter_takes_any_of_its_candidates():
    a = admission(x=1, y=1)
    a.try_acquire(["x"])
    a.try_acquire(["y"])
    waiter = asyncio.create_task(a.acquire(["x", "y"], max_queue=5, timeout=5))
    await asyncio.sleep(0.01)
    a.release("y")
    assert await asyncio.wait_for(waiter, 1) == "y"


async def test_raising_the_limit_lets_waiters_in():
    a = admission(x=1)
    a.try_acquire(["x"])
    waiter = asyncio.create_task(a.acquire(["x"], max_queue=5, timeout=5))
    await asyncio.sleep(0.01)
    a.set_limit("x", 2)
    assert await asyncio.wait_for(waiter, 1) == "x"
