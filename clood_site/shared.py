"""The Redis connection that several clood processes share (REDIS_URL), and whether it is up right now.

Everything that must hold across processes (slots and queue, key limits, ATC events, the monitor lock) asks
`client()` for a connection and reports failures with `went_down()`. While Redis is down each of those falls back
to this process alone; one log line says so, `/ready` carries a warning, and a watchdog brings the shared mode back
as soon as Redis answers again. Without REDIS_URL, `enabled()` is false and nothing here runs.

A redis-py asyncio client belongs to one event loop, so there is one per loop (daphne runs one; tests run many).
"""

import asyncio
import logging
import os
import secrets
import time

from django.conf import settings

log = logging.getLogger(__name__)

# Timeouts short enough that a vanished Redis costs a request milliseconds, not the client's patience.
SOCKET_TIMEOUT = 0.5
WATCH_INTERVAL = 1.0

# This process, as the other processes see it: in lease ids, queue entries, the monitor lock.
PROCESS_ID = f"{os.uname().nodename}:{os.getpid()}:{secrets.token_hex(3)}"

_clients = {}  # event loop -> redis.asyncio.Redis
_down_since = None  # time.time() when Redis was last seen failing, None while it is up
_last_error = ""
_watchdog = None


def enabled():
    return bool(settings.REDIS_URL)


def key(*parts):
    """A Redis key in clood's namespace (CLOOD_REDIS_PREFIX), so several gardens or test runs can share one Redis."""
    return settings.CLOOD_REDIS_PREFIX + ":".join(str(part) for part in parts)


def available():
    """Shared mode is on: REDIS_URL is set and Redis answered last time."""
    return enabled() and _down_since is None


def client():
    import redis.asyncio as redis  # only imported when REDIS_URL is set

    loop = asyncio.get_running_loop()
    connection = _clients.get(loop)
    if connection is None:
        for old in [old for old in _clients if old.is_closed()]:
            del _clients[old]
        connection = redis.Redis.from_url(
            settings.REDIS_URL,
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=SOCKET_TIMEOUT,
            health_check_interval=10,
        )
        _clients[loop] = connection
    return connection


def went_down(error, what):
    """Record that a Redis call failed: log once per outage, and start watching for Redis to come back.

    redis-py may turn a cancellation of the waiting task into a connection error of its own: then this re-raises
    the cancellation instead (a request whose client left must not carry on as if Redis were down)."""
    global _down_since, _last_error, _watchdog
    if _has_loop() and cancel_requested():
        raise asyncio.CancelledError from error
    _last_error = f"{type(error).__name__}: {error}"[:200]
    if _down_since is None:
        _down_since = time.time()
        log.warning(
            "Redis unavailable (%s, while %s): slots, queue and key limits now hold per process, ATC events stay "
            "in this process, every process monitors hosts; requests are still served. Retrying every %g s.",
            _last_error, what, WATCH_INTERVAL,
        )  # fmt: skip
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    if _watchdog is None or _watchdog.done() or _watchdog.get_loop() is not loop:
        _watchdog = loop.create_task(_watch(), name="clood-redis-watchdog")


def cancel_requested():
    """The running task has been asked to stop.

    redis-py may turn the cancellation of a command's read into a connection error, retry the command and return
    its answer: the task then carries on as if it had never been cancelled, and a loop around Redis calls would
    run on (and keep its event loop from closing). Code that awaits Redis asks this after the call."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def stop_if_cancelled():
    """Raise CancelledError when the running task has been asked to stop (see cancel_requested)."""
    if cancel_requested():
        raise asyncio.CancelledError


def _has_loop():
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def _watch():
    global _down_since
    while _down_since is not None:
        stop_if_cancelled()
        await asyncio.sleep(WATCH_INTERVAL)
        try:
            await client().ping()
        except Exception:  # noqa: BLE001, S112 - any failure means still down
            continue
        log.warning("Redis is back after %.0f s: slots, queue, key limits and ATC events are shared again",
                    time.time() - _down_since)  # fmt: skip
        _down_since = None


def status():
    """For /ready and /status: None without REDIS_URL, else whether it is up and, when not, since when and why."""
    if not enabled():
        return None
    if _down_since is None:
        return {"ok": True}
    return {"ok": False, "down_for_s": round(time.time() - _down_since, 1), "error": _last_error}


REDIS_ERRORS = (ConnectionError, TimeoutError, OSError)


def redis_errors():
    """The exceptions that mean "Redis did not answer" (redis-py's own plus the socket ones)."""
    import redis.exceptions

    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.BusyLoadingError,
            redis.exceptions.ReadOnlyError, *REDIS_ERRORS)  # fmt: skip
