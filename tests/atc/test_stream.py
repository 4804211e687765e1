"""The Redis event stream's background tasks end when cancelled, whatever redis-py does with the cancellation."""

import asyncio
import secrets

import pytest

from atc import stream
from clood_site import shared

REDIS_URL = "redis://127.0.0.1:6379/0"  # the machine's Redis, in both passes of the suite


@pytest.fixture
def redis(settings):
    settings.REDIS_URL = REDIS_URL
    settings.CLOOD_REDIS_PREFIX = f"test-stream-{secrets.token_hex(4)}:"
    shared._down_since = None
    yield
    stream._outbox.clear()
    stream._mine.clear()


def swallowing_publish(entered):
    """A publish call that answers even though its task was cancelled meanwhile, as redis-py does when it turns the
    cancelled read into a connection error and retries the command."""

    async def publish(args):
        entered.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            pass  # swallowed, and the command "retried"
        return 1

    return lambda: publish


async def test_a_sender_cancelled_while_redis_answers_anyway_still_ends(redis, monkeypatch):
    entered = asyncio.Event()
    monkeypatch.setattr(stream, "_publish_script", swallowing_publish(entered))
    stream.send({"type": "test", "ts": 0, "data": {}})
    sender = stream._tasks[asyncio.get_running_loop()]["send"]
    async with asyncio.timeout(10):
        await entered.wait()
    sender.cancel()

    async with asyncio.timeout(10):  # a hang, not a speed check: before the fix it waited for more events forever
        await asyncio.gather(sender, return_exceptions=True)
    assert sender.cancelled()


async def test_stop_if_cancelled_raises_only_once_the_task_is_asked_to_stop():
    shared.stop_if_cancelled()  # not cancelled: nothing happens
    swallowed = asyncio.Event()

    async def loop_that_swallows():
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            swallowed.set()
        shared.stop_if_cancelled()
        return "carried on"

    task = asyncio.create_task(loop_that_swallows())
    await asyncio.sleep(0)
    task.cancel()
    result = await asyncio.gather(task, return_exceptions=True)
    assert swallowed.is_set()
    assert isinstance(result[0], asyncio.CancelledError)
