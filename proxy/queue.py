"""Admission: at most `max_concurrency` requests in flight per host, and one fair FIFO queue for the rest.

A request asks for a slot on any of its candidate hosts, in order of preference. It takes a free one at once unless
an earlier waiter could use that host (then it queues behind it: first come, first served). A freed slot goes to
the oldest waiter that can use it. The queue is bounded in length and in wait; a waiter whose request is cancelled
(its client went away) leaves the queue at once.
"""

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

from proxy.errors import ApiError


@dataclass
class Waiter:
    candidates: tuple  # host names, best first
    future: asyncio.Future
    since: float = field(default_factory=time.monotonic)


class Admission:
    def __init__(self):
        self.in_flight = {}  # host name -> requests being served
        self.limits = {}  # host name -> max_concurrency
        self.waiters = deque()

    def set_limit(self, host, limit):
        """Record a host's max_concurrency; a raised limit lets waiters in at once."""
        old = self.limits.get(host)
        self.limits[host] = max(1, limit)
        if old is not None and limit > old:
            for _ in range(limit - old):
                self._hand_over(host)

    def free_slots(self, host):
        return self.limits.get(host, 1) - self.in_flight.get(host, 0)

    @property
    def queued(self):
        return len(self.waiters)

    def try_acquire(self, candidates):
        """A free slot on the first candidate that has one and that no earlier waiter wants, else None."""
        wanted = {name for waiter in self.waiters for name in waiter.candidates}
        for host in candidates:
            if host not in wanted and self.free_slots(host) > 0:
                self.in_flight[host] = self.in_flight.get(host, 0) + 1
                return host
        return None

    async def acquire(self, candidates, *, max_queue, timeout, on_queued=None):
        """Wait for a slot on one of `candidates`; returns the host name. Raises ApiError(429) when it cannot."""
        host = self.try_acquire(candidates)
        if host is not None:
            return host
        if len(self.waiters) >= max_queue:
            raise ApiError(429, "All hosts for this model are busy and the queue is full.", retry_after=2,
                           code="queue_full")  # fmt: skip
        waiter = Waiter(tuple(candidates), asyncio.get_running_loop().create_future())
        self.waiters.append(waiter)
        if on_queued:
            on_queued(len(self.waiters))
        try:
            async with asyncio.timeout(timeout):
                return await waiter.future
        except TimeoutError:
            raise ApiError(429, f"No slot became free within {timeout:g} s.", retry_after=max(1, int(timeout / 4)),
                           code="queue_timeout") from None  # fmt: skip
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                self.release(waiter.future.result())  # a slot was handed over just as we left: pass it on
            raise
        finally:
            if waiter in self.waiters:
                self.waiters.remove(waiter)

    def release(self, host):
        self.in_flight[host] = max(0, self.in_flight.get(host, 0) - 1)
        self._hand_over(host)

    def _hand_over(self, host):
        if self.free_slots(host) <= 0:
            return
        for waiter in self.waiters:
            if host in waiter.candidates and not waiter.future.done():
                self.waiters.remove(waiter)
                self.in_flight[host] = self.in_flight.get(host, 0) + 1
                waiter.future.set_result(host)
                return
