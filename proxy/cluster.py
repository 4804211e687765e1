"""Slots, the queue and API-key limits shared by every clood process through Redis (REDIS_URL).

The rules are those of proxy/queue.py and proxy/keys.py (at most `max_concurrency` per host, first come first served,
requests per minute and at once per key); here they hold for the whole cluster. Each rule is one Lua script, so a
decision is atomic however many processes ask at once, and uses Redis's clock, so machines may disagree on the time.

- A slot is a lease: a member of the sorted set `slots:<host>` scored by its expiry. The process holding it renews
  it every second; a process that dies stops renewing, and its slots are free again after CLOOD_SLOT_LEASE_SECONDS.
- The queue is a sorted set in arrival order. A waiter takes a free host only when no waiter ahead of it can use that
  host; it retries when a release is announced (pub/sub `freed`) and at least every POLL_SECONDS. A waiter whose
  process stops refreshing it is dropped by the next script that looks.
- A key's requests at once are leases like slots; its requests per minute are a sorted set of start times.

While Redis is down (clood_site.shared) everything falls back to this process's own Admission and KeyLimits.
"""

import asyncio
import itertools
import json
import logging

from django.conf import settings

from clood_site import shared
from proxy.errors import ApiError

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25  # a waiter's longest sleep between two tries, should a `freed` announcement be missed
HEARTBEAT_SECONDS = 1.0

_NOW = "local t = redis.call('TIME'); local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"

# ARGV: prefix, lease id, lease ms, max queue, then host and limit pairs in order of preference.
# Returns {1, host} (a slot is taken), {0, position} (queued or still queued), {-1, "full"}.
ACQUIRE_SLOT = (
    _NOW
    + """
local P, me, ttl, maxq = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local queue, alive, wants = P .. 'queue', P .. 'queue:alive', P .. 'queue:wants'
for _, w in ipairs(redis.call('ZRANGEBYSCORE', alive, '-inf', now)) do
  redis.call('ZREM', queue, w); redis.call('ZREM', alive, w); redis.call('HDEL', wants, w)
end
local rank = redis.call('ZRANK', queue, me)
local ahead = {}
if rank == false then ahead = redis.call('ZRANGE', queue, 0, -1)
elseif rank > 0 then ahead = redis.call('ZRANGE', queue, 0, rank - 1) end
local wanted = {}
for _, w in ipairs(ahead) do
  local hosts = redis.call('HGET', wants, w)
  if hosts then for h in string.gmatch(hosts, '[^\\n]+') do wanted[h] = true end end
end
local names = {}
for i = 5, #ARGV, 2 do
  local host, limit = ARGV[i], tonumber(ARGV[i + 1])
  names[#names + 1] = host
  local slots = P .. 'slots:' .. host
  redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
  if not wanted[host] and redis.call('ZCARD', slots) < limit then
    redis.call('ZADD', slots, now + ttl, me)
    redis.call('PEXPIRE', slots, ttl * 3)
    if rank ~= false then
      redis.call('ZREM', queue, me); redis.call('ZREM', alive, me); redis.call('HDEL', wants, me)
    end
    return {1, host}
  end
end
if rank == false then
  if redis.call('ZCARD', queue) >= maxq then return {-1, 'full'} end
  redis.call('ZADD', queue, redis.call('INCR', P .. 'queue:seq'), me)
  redis.call('HSET', wants, me, table.concat(names, '\\n'))
  rank = redis.call('ZCARD', queue) - 1
end
redis.call('ZADD', alive, now + ttl, me)
return {0, tostring(rank + 1)}
"""
)

# ARGV: prefix, lease id, candidate hosts. Leaves the queue, and gives back a slot taken just as the waiter left.
LEAVE = """
local P, me = ARGV[1], ARGV[2]
redis.call('ZREM', P .. 'queue', me); redis.call('ZREM', P .. 'queue:alive', me)
redis.call('HDEL', P .. 'queue:wants', me)
for i = 3, #ARGV do
  if redis.call('ZREM', P .. 'slots:' .. ARGV[i], me) == 1 then redis.call('PUBLISH', P .. 'freed', ARGV[i]) end
end
return 0
"""

# ARGV: prefix, lease ms, number of (sorted set, member) pairs to renew, the pairs, then host names to count.
# Returns the queue's length followed by each host's slots in use.
HEARTBEAT = (
    _NOW
    + """
local P, ttl, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 4, 3 + 2 * n, 2 do
  local set = P .. ARGV[i]
  if redis.call('ZADD', set, 'XX', 'CH', now + ttl, ARGV[i + 1]) == 1 then redis.call('PEXPIRE', set, ttl * 3) end
end
local counts = {redis.call('ZCARD', P .. 'queue')}
for i = 4 + 2 * n, #ARGV do counts[#counts + 1] = redis.call('ZCOUNT', P .. 'slots:' .. ARGV[i], now, '+inf') end
return counts
"""
)

# ARGV: prefix, key id, lease id, lease ms, max at once ('' for none), per minute ('' for none).
# Returns {1, 0}, {-1, 0} (too many at once) or {-2, seconds to wait} (over the per-minute limit).
ACQUIRE_KEY = (
    _NOW
    + """
local P, id, me, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local active, recent = P .. 'key:' .. id .. ':active', P .. 'key:' .. id .. ':recent'
if ARGV[5] ~= '' then
  redis.call('ZREMRANGEBYSCORE', active, '-inf', now)
  if redis.call('ZCARD', active) >= tonumber(ARGV[5]) then return {-1, 0} end
end
if ARGV[6] ~= '' then
  redis.call('ZREMRANGEBYSCORE', recent, '-inf', now - 60000)
  if redis.call('ZCARD', recent) >= tonumber(ARGV[6]) then
    local oldest = redis.call('ZRANGE', recent, 0, 0, 'WITHSCORES')
    return {-2, math.floor((tonumber(oldest[2]) + 60000 - now) / 1000) + 1}
  end
  redis.call('ZADD', recent, now, me); redis.call('PEXPIRE', recent, 61000)
end
if ARGV[5] ~= '' then redis.call('ZADD', active, now + ttl, me); redis.call('PEXPIRE', active, ttl * 3) end
return {1, 0}
"""
)

_lease_numbers = itertools.count(1)
_scripts = {}  # (client id, script text) -> AsyncScript


def _new_lease():
    return f"{shared.PROCESS_ID}:{next(_lease_numbers)}"


async def _run(script, *args):
    connection = shared.client()
    runner = _scripts.get((id(connection), script))
    if runner is None:
        runner = _scripts[(id(connection), script)] = connection.register_script(script)
    return await runner(args=[settings.CLOOD_REDIS_PREFIX, *args])


def _lease_ms():
    return int(settings.CLOOD_SLOT_LEASE_SECONDS * 1000)


class Leases:
    """What this process holds in Redis (renewed every second), and what it last saw of the cluster."""

    def __init__(self):
        self.held = {}  # (sorted set name, member) -> True
        self.hosts = set()  # hosts whose slot counts are read back
        self.slots_seen = {}  # host -> slots in use across the cluster
        self.queue_seen = 0
        self._task = None

    def hold(self, set_name, member):
        self.held[(set_name, member)] = True
        self.start()

    def drop(self, set_name, member):
        self.held.pop((set_name, member), None)

    def start(self):
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._beat_forever(), name="clood-leases")

    async def _beat_forever(self):
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            if shared.available():
                await self.beat()
                shared.stop_if_cancelled()

    async def beat(self):
        pairs = list(self.held)
        hosts = sorted(self.hosts)
        try:
            counts = await _run(HEARTBEAT, _lease_ms(), len(pairs), *itertools.chain(*pairs), *hosts)
        except shared.redis_errors() as error:
            shared.went_down(error, "renewing slot leases")
            return
        self.queue_seen = int(counts[0])
        self.slots_seen = {host: int(count) for host, count in zip(hosts, counts[1:], strict=True)}


leases = Leases()


class SharedAdmission:
    """proxy.queue.Admission's interface, with slots and queue held in Redis; `local` serves while Redis is down."""

    def __init__(self, local):
        self.local = local
        self.limits = {}
        self.mine = {}  # host -> lease ids of slots this process holds in Redis
        self._freed = None  # asyncio.Event set when any process announces a freed slot
        self._listener = None

    @property
    def in_flight(self):
        """Slots in use per host: across the cluster (as seen within the last second) plus this process's own."""
        if not shared.available():
            return self.local.in_flight
        merged = dict(leases.slots_seen)
        for host, held in self.mine.items():
            merged[host] = max(merged.get(host, 0), len(held))
        for host, count in self.local.in_flight.items():
            merged[host] = merged.get(host, 0) + count
        return merged

    @property
    def queued(self):
        return leases.queue_seen if shared.available() else self.local.queued

    def set_limit(self, host, limit):
        self.limits[host] = max(1, limit)
        leases.hosts.add(host)
        self.local.set_limit(host, limit)

    async def acquire(self, candidates, *, max_queue, timeout, on_queued=None):
        if not shared.available():
            return await self.local.acquire(candidates, max_queue=max_queue, timeout=timeout, on_queued=on_queued)
        lease = _new_lease()
        pairs = [value for host in candidates for value in (host, self.limits.get(host, 1))]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        queued = False
        call = None
        try:
            while True:
                # Shielded: a cancelled request (its client left) does not wait inside redis-py for the answer; the
                # script's result, should it have taken a slot, is given back below once it arrives.
                call = asyncio.ensure_future(_run(ACQUIRE_SLOT, lease, _lease_ms(), max_queue, *pairs))
                try:
                    outcome, value = await asyncio.shield(call)
                except shared.redis_errors() as error:
                    shared.went_down(error, "admitting a request")
                    await self._leave(lease, candidates)
                    left = max(0.0, deadline - loop.time())
                    return await self.local.acquire(candidates, max_queue=max_queue, timeout=left,
                                                    on_queued=None if queued else on_queued)  # fmt: skip
                value = value.decode() if isinstance(value, bytes) else str(value)
                if outcome == 1:
                    self.mine.setdefault(value, []).append(lease)
                    leases.hold(f"slots:{value}", lease)
                    return value
                if outcome == -1:
                    raise ApiError(429, "All hosts for this model are busy and the queue is full.", retry_after=2,
                                   code="queue_full")  # fmt: skip
                if not queued:
                    queued = True
                    leases.hold("queue:alive", lease)
                    if on_queued:
                        on_queued(int(value))
                left = deadline - loop.time()
                if left <= 0:
                    raise ApiError(429, f"No slot became free within {timeout:g} s.",
                                   retry_after=max(1, int(timeout / 4)), code="queue_timeout")  # fmt: skip
                await self._wait_for_freed(min(left, POLL_SECONDS))
        except BaseException:
            # Cancelled (the client left) or gave up: leave the queue, and give back a slot granted meanwhile.
            if shared.available():
                if call is not None and not call.done():
                    call.add_done_callback(lambda _: _in_background(self._leave(lease, candidates)))
                else:
                    _in_background(self._leave(lease, candidates))
            raise
        finally:
            leases.drop("queue:alive", lease)

    def release(self, host):
        held = self.mine.get(host)
        if not held:
            self.local.release(host)
            return
        lease = held.pop()
        leases.drop(f"slots:{host}", lease)
        leases.slots_seen[host] = max(0, leases.slots_seen.get(host, 1) - 1)
        _in_background(self._leave(lease, [host]))

    async def _leave(self, lease, hosts):
        try:
            await _run(LEAVE, lease, *hosts)
        except shared.redis_errors() as error:  # the lease expires by itself
            shared.went_down(error, "giving back a slot")

    async def _wait_for_freed(self, seconds):
        self._listen()
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that arrives just as the
        # event is set, and a request whose client left would go on to take a slot.
        try:
            async with asyncio.timeout(seconds):
                await self._freed.wait()
        except TimeoutError:
            pass

    def _listen(self):
        loop = asyncio.get_running_loop()
        listener = self._listener
        if self._freed is None or listener is None or listener.done() or listener.get_loop() is not loop:
            self._freed = asyncio.Event()
            self._listener = loop.create_task(self._listen_forever(), name="clood-slots-freed")

    async def _listen_forever(self):
        while True:
            try:
                pubsub = shared.client().pubsub()
                await pubsub.subscribe(shared.key("freed"))
                try:
                    while True:
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                        shared.stop_if_cancelled()
                        if message is not None:
                            freed, self._freed = self._freed, asyncio.Event()
                            freed.set()
                finally:
                    await pubsub.aclose()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - waiters still poll; try again shortly
                shared.stop_if_cancelled()
                await asyncio.sleep(1.0)


_background = set()  # strong references to fire-and-forget Redis calls


def _in_background(coroutine):
    task = asyncio.get_running_loop().create_task(coroutine)
    _background.add(task)
    task.add_done_callback(_background.discard)


class SharedKeyLimits:
    """proxy.keys.KeyLimits for the cluster: `acquire` returns a token to give to `release`."""

    LOCAL = "local"  # the token of a request counted by this process alone (Redis was down)

    def __init__(self, local):
        self.local = local

    async def acquire(self, key):
        if not shared.available():
            self.local.acquire(key)
            return self.LOCAL
        lease = _new_lease()
        concurrency = "" if key.max_concurrency is None else key.max_concurrency
        per_minute = "" if key.requests_per_minute is None else key.requests_per_minute
        try:
            outcome, wait = await _run(ACQUIRE_KEY, key.id, lease, _lease_ms(), concurrency, per_minute)
        except shared.redis_errors() as error:
            shared.went_down(error, "checking an API key's limits")
            self.local.acquire(key)
            return self.LOCAL
        if shared.cancel_requested():  # the client left while redis-py answered anyway
            if outcome == 1 and key.max_concurrency is not None:
                _in_background(self._release(key, lease))  # the script counted it: give it back
            raise asyncio.CancelledError
        if outcome == -1:
            raise ApiError(429, f"The API key '{key.name}' already has {key.max_concurrency} requests running.",
                           code="concurrency_limit_exceeded", retry_after=1)  # fmt: skip
        if outcome == -2:
            raise ApiError(429, f"The API key '{key.name}' is over its limit of {key.requests_per_minute} requests "
                           "per minute.", code="rate_limit_exceeded", retry_after=max(1, int(wait)))  # fmt: skip
        if key.max_concurrency is None:
            return None
        leases.hold(f"key:{key.id}:active", lease)
        return lease

    def release(self, key, token):
        if token is self.LOCAL:
            self.local.release(key)
            return
        if token is None:
            return
        leases.drop(f"key:{key.id}:active", token)
        _in_background(self._release(key, token))

    async def _release(self, key, token):
        try:
            await shared.client().zrem(shared.key("key", key.id, "active"), token)
        except shared.redis_errors() as error:
            shared.went_down(error, "giving back an API key's slot")


class LiveBoard:
    """Each process's requests in flight and waiting, and its counters, shared once a second (with ATC's tick), so
    that every dashboard shows the whole cluster, not the process it is connected to."""

    def __init__(self):
        self.others = {}  # process id -> its view, as last read

    async def share(self, view):
        """Publish this process's `view` (proxy.state.live_view()) and read the others'; returns the merged view."""
        if not shared.available():
            self.others = {}
            return view
        mine = {"in_flight": view["in_flight"], "queued": view["queued"], "totals": view["totals"]}
        board = shared.key("live")
        try:
            connection = shared.client()
            async with connection.pipeline(transaction=False) as pipe:
                pipe.set(shared.key("live", shared.PROCESS_ID), json.dumps(mine), px=3000)
                pipe.sadd(board, shared.PROCESS_ID)
                pipe.smembers(board)
                *_, members = await pipe.execute()
            others = sorted(member.decode() for member in members if member.decode() != shared.PROCESS_ID)
            values = await connection.mget([shared.key("live", other) for other in others]) if others else []
        except shared.redis_errors() as error:
            shared.went_down(error, "sharing ATC's live view")
            return view
        gone = [other for other, value in zip(others, values, strict=True) if value is None]
        if gone:
            await connection.srem(board, *gone)
        self.others = {other: json.loads(value) for other, value in zip(others, values, strict=True) if value}
        return self.merged(view)

    def merged(self, view):
        """`view` with the other processes' requests and counters (as last read) added."""
        if not self.others or not shared.available():
            return view
        merged = dict(view)
        merged["in_flight"] = list(view["in_flight"])
        merged["queued"] = list(view["queued"])
        merged["totals"] = dict(view["totals"])
        merged["in_flight_tokens"] = dict(view["in_flight_tokens"])
        for other in self.others.values():
            merged["in_flight"] += other["in_flight"]
            merged["queued"] += other["queued"]
            for name, value in other["totals"].items():
                merged["totals"][name] = merged["totals"].get(name, 0) + value
            for flight in other["in_flight"]:
                tokens = merged["in_flight_tokens"]
                tokens[flight["host"]] = tokens.get(flight["host"], 0) + (flight.get("tokens") or 0)
        return merged


board = LiveBoard()
