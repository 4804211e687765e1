"""Broken hosts, each against a real clood: the client gets a clear error or a failover, the slot is freed, the
circuit opens when it should, and nothing leaks (tasks, upstream connections, open files); /health answers after.

"broken" (priority 1) is tried first and "healthy" (priority 2) is the fallback. Each test breaks "broken" its own
way; the circuit opens after THRESHOLD failures in a row, and a health check (`hosts refresh`) closes it again
before the next test.
"""

import asyncio
import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
import httpx
import ollama
import openai
import psutil
import pytest

from hosts.simulator import BAD_UTF8, HUGE_LINE_BYTES, WRONG_MODEL, reply_text, start_in_thread
from proxy.internals import internals_routes
from tests.conftest import wait_until

THRESHOLD = 2
GENERATION = ["/v1/chat/completions", "/v1/completions", "/api/chat", "/api/generate"]
CHAT = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}]}
REPLY = reply_text(16)  # what a healthy simulated host answers
MEMORY_BOUND = 60 * 1024 * 1024  # a 100 MB line must not cost clood anything like 100 MB
DEFAULT_PORTS = {"postgres": 5432, "postgresql": 5432, "redis": 6379}


@pytest.fixture(scope="module")
def garden(clood_factory, sims):
    garden = clood_factory(
        env={
            "CLOOD_ROUTING_STRATEGY": "priority",
            "CLOOD_CIRCUIT_THRESHOLD": str(THRESHOLD),
            "CLOOD_EXPOSE_INTERNALS": "true",
            "CLOOD_ATC_PUBLIC": "true",  # the wrong-model test reads the events from the ATC websocket
        }
    )
    garden.add("broken", sims(models=["llama3.2:1b"]), "--priority", "1")
    garden.add("healthy", sims(models=["llama3.2:1b"]), "--priority", "2")
    garden.refresh()
    garden.process = psutil.Process(garden.server.process.pid)
    garden.restarted = []
    yield garden
    for sim in garden.restarted:
        sim.stop()


@dataclass
class Counts:
    tasks: int
    idle_connections: int
    descriptors: int  # open fds but files: sockets, pipes, event fds


@pytest.fixture(autouse=True)
def baseline(garden):
    """Well-behaved hosts, closed circuits, and the counts each test must come back to (taken after a request, so
    that what clood starts once, such as the request log writer and its database files, is counted)."""
    for sim in garden.sims.values():
        sim.config.update({"fail": None, "fail_paths": None, "fail_after_tokens": 3, "drip_rate": 1.0})
    if garden.status("broken")["circuit"] != "closed":
        garden.server.manage("hosts", "refresh", "broken")
    # The check reaches routing with the next snapshot; the next routing decision closes the circuit.
    request_id = wait_until(lambda: served_by(garden, "broken"), timeout=10, what="the broken host to serve again")
    garden.log_for(request_id)
    assert_settled(garden, None)
    inside = internals(garden)
    return Counts(inside["tasks"], inside["upstream_connections"]["idle"], open_descriptors(garden))


# --- what the tests ask and check ----------------------------------------------------------------------------------


def open_descriptors(garden):
    """clood's open fds but its files and its connections to PostgreSQL and Redis. The files are its own database
    and log (a database connection per worker thread that ever wrote, so their number may grow), checked apart in
    `assert_settled`; on PostgreSQL those connections are sockets, and Redis's connection pool grows with the events
    published at once."""
    process = garden.process
    ports = service_ports(garden.server)
    services = [c for c in process.net_connections() if c.raddr and c.raddr.port in ports]
    return process.num_fds() - len(process.open_files()) - len(services)


def service_ports(server):
    """The ports of the PostgreSQL and Redis servers clood uses (none on SQLite with the in-memory layer)."""
    urls = [urlsplit(server.env.get(name, "")) for name in ("DATABASE_URL", "REDIS_URL")]
    return {url.port or DEFAULT_PORTS[url.scheme] for url in urls if url.scheme in DEFAULT_PORTS}


def internals(garden):
    return httpx.get(garden.url + "/_clood/internals", timeout=5).json()


def openai_client(garden):
    return openai.OpenAI(base_url=garden.url + "/v1", api_key="x", max_retries=0, timeout=30)


def ask(garden, **extra):
    """One chat completion through the openai client: (request id, the host that answered, the reply text)."""
    with openai_client(garden) as client:
        raw = client.chat.completions.with_raw_response.create(**CHAT, **extra)
        reply = raw.parse()
        if extra.get("stream"):
            text = "".join(chunk.choices[0].delta.content or "" for chunk in reply if chunk.choices)
        else:
            text = reply.choices[0].message.content
    return raw.headers["x-clood-request-id"], raw.headers["x-clood-host"], text


def served_by(garden, host):
    """The id of a request that `host` answered, or None when another did."""
    request_id, answered, _ = ask(garden)
    return request_id if answered == host else None


def ask_for_a_broken_stream(garden):
    """A streamed chat completion that ends in an error: (request id, the text before it, the client's error)."""
    received = []
    with openai_client(garden) as client:
        raw = client.chat.completions.with_raw_response.create(**CHAT, stream=True)
        with pytest.raises(openai.APIError) as error:  # noqa: PT012 - the error comes while reading
            for chunk in raw.parse():
                received.extend(choice.delta.content or "" for choice in chunk.choices)
    return raw.headers["x-clood-request-id"], "".join(received), error.value


def break_host(garden, fail, **config):
    garden.sims["broken"].config.update({"fail": fail, "fail_paths": GENERATION, **config})


def assert_failed_over(garden, request_id, why):
    """The request was served by the healthy host after the broken one failed for `why`."""
    row = garden.log_for(request_id)
    assert (row["outcome"], row["status"], row["host"]) == ("ok", 200, "healthy")
    assert [attempt["host"] for attempt in row["attempts"]] == ["broken", "healthy"]
    assert why in row["attempts"][0]["error"], row["attempts"]


def assert_broken_is_skipped(garden):
    """THRESHOLD failures in a row opened the broken host's circuit: the next request goes to the healthy one."""
    assert garden.status("broken")["circuit"] == "open"
    request_id, host, text = ask(garden)
    assert (host, text) == ("healthy", REPLY)
    assert garden.log_for(request_id)["attempts"] == [{"host": "healthy"}]


def assert_circuit_untouched(garden, errors_before):
    """An answer that is odd but whole is no failure: no error counted, the circuit stays closed."""
    status = garden.status("broken")
    assert (status["circuit"], status["errors"]) == ("closed", errors_before)


def assert_settled(garden, before):
    """Slots free, nothing in flight or queued, no upstream connection in use; with `before`, tasks and open
    descriptors back to where they were (new idle keep-alive connections aside) and no file open but clood's own;
    and clood healthy."""
    last = {}

    def settled():
        inside = internals(garden)
        descriptors, files = open_descriptors(garden), [f.path for f in garden.process.open_files()]
        last.update(inside, descriptors=descriptors, files=files)
        free = not any(inside["slots"].values()) and inside["upstream_connections"]["in_use"] == 0
        free = free and inside["flights"] == inside["queued"] == inside["waiting"] == 0
        if before is None:
            return free
        new_idle = max(0, inside["upstream_connections"]["idle"] - before.idle_connections)
        own_files = all(path.startswith(str(garden.server.var_dir)) for path in files)
        return free and inside["tasks"] <= before.tasks and descriptors <= before.descriptors + new_idle and own_files

    try:
        wait_until(settled, timeout=15, what="clood to let go of everything")
    except AssertionError:
        raise AssertionError(f"clood did not settle: now {last}, before {before}") from None
    assert httpx.get(garden.url + "/health", timeout=5).status_code == 200


def stop(garden, name):
    garden.sims[name].stop()


def restart(garden, name):
    """Start the host again on the same port, with the same config."""
    old = garden.sims[name]
    garden.sims[name] = start_in_thread(old.config, port=old.port)
    garden.restarted.append(garden.sims[name])


# --- the broken hosts ----------------------------------------------------------------------------------------------


def test_host_refusing_connections_is_failed_over(garden, baseline):
    stop(garden, "broken")  # clood still thinks it is online: the monitor has not looked since
    try:
        for _ in range(THRESHOLD):
            request_id, host, text = ask(garden)
            assert (host, text) == ("healthy", REPLY)
            assert_failed_over(garden, request_id, "connection refused")
        assert_broken_is_skipped(garden)
    finally:
        restart(garden, "broken")
    assert_settled(garden, baseline)


def test_host_that_accepts_and_never_answers_is_failed_over(garden, baseline):
    break_host(garden, "hang")
    for _ in range(THRESHOLD):
        request_id, host, text = ask(garden, stream=True)
        assert (host, text) == ("healthy", REPLY)
        assert_failed_over(garden, request_id, "sent nothing within 2 s")
    assert_broken_is_skipped(garden)
    assert_settled(garden, baseline)


def test_html_page_is_failed_over(garden, baseline):
    break_host(garden, "html")
    with ollama.Client(host=garden.url) as client:
        reply = client.chat(model="llama3.2:1b", messages=CHAT["messages"], stream=False)
    assert reply.message.content == REPLY
    request_id, host, text = ask(garden)
    assert (host, text) == ("healthy", REPLY)
    assert_failed_over(garden, request_id, "broken answered HTTP 200 with an HTML page")
    assert_broken_is_skipped(garden)
    assert_settled(garden, baseline)


def test_200_with_garbage_is_failed_over(garden, baseline):
    break_host(garden, "garbage")
    for stream in (False, True):
        request_id, host, text = ask(garden, stream=stream)
        assert (host, text) == ("healthy", REPLY)
        assert_failed_over(garden, request_id, "answered HTTP 200 with something that is not the API's JSON")
    assert_broken_is_skipped(garden)
    assert_settled(garden, baseline)


def test_stream_closed_mid_way_ends_with_an_in_band_error(garden, baseline):
    break_host(garden, "drop", fail_after_tokens=3)
    for _ in range(THRESHOLD):
        request_id, text, error = ask_for_a_broken_stream(garden)
        assert text == reply_text(3) and error.message.startswith("broken: ")
        row = garden.log_for(request_id)
        assert (row["outcome"], row["status"], row["host"]) == ("incomplete", 200, "broken")
        assert row["error"] == error.message and row["attempts"] == [{"host": "broken"}]
    assert_broken_is_skipped(garden)
    assert_settled(garden, baseline)


def test_host_dripping_before_its_first_line_is_failed_over(garden, baseline):
    broken = garden.sims["broken"]
    break_host(garden, "drip", fail_after_tokens=0)  # headers at once, then a byte a second
    disconnects = broken.stats["disconnects"]
    for stream, why in ((True, "sent no complete line within 2 s"), (False, "did not finish its answer within 2 s")):
        request_id, host, text = ask(garden, stream=stream)
        assert (host, text) == ("healthy", REPLY)
        assert_failed_over(garden, request_id, f"broken {why}")
    wait_until(lambda: broken.stats["in_flight"] == 0, what="the dripping answers to be hung up on")
    assert broken.stats["disconnects"] == disconnects + THRESHOLD  # clood hung up on it
    assert_broken_is_skipped(garden)
    assert_settled(garden, baseline)


def test_host_that_starts_dripping_mid_stream_is_cut_off(garden, baseline):
    broken = garden.sims["broken"]
    break_host(garden, "drip", fail_after_tokens=3)
    for _ in range(THRESHOLD):
        request_id, text, error = ask_for_a_broken_stream(garden)
        assert text == reply_text(3) and error.message == "broken sent no complete line within 2 s"
        row = garden.log_for(request_id)
        assert (row["outcome"], row["status"], row["host"], row["error"]) == (
            "incomplete",
            200,
            "broken",
            error.message,
        )
    wait_until(lambda: broken.stats["in_flight"] == 0, what="the dripping answers to be hung up on")
    assert_broken_is_skipped(garden)
    assert_settled(garden, baseline)


class StreamDigest:
    """What identifies a stream's bytes, holding at most a line's first MB: size, longest line, and a sha256 with each
    answer's own id and timestamps blanked (two answers to one request differ only there)."""

    HEAD = 1024 * 1024
    _OWN = re.compile(rb'"(id|created|created_at)":("[^"]*"|\d+)')

    def __init__(self):
        self.sha = hashlib.sha256()
        self.size = self.longest = self.line = 0
        self.head = b""  # the start of the current line, None once past HEAD bytes

    def feed(self, chunk):
        self.size += len(chunk)
        while chunk:
            end = chunk.find(b"\n") + 1 or len(chunk)
            self._part(chunk[:end])
            chunk = chunk[end:]

    def _part(self, part):
        """A piece of one line (ending with a newline when it ends the line)."""
        ends = part.endswith(b"\n")
        if self.head is None:
            self.sha.update(part)
        else:
            self.head += part
            if ends or len(self.head) >= self.HEAD:
                self.sha.update(self._OWN.sub(rb'"\1":_', self.head))
                self.head = None
        self.line += len(part)
        if ends:
            self.longest, self.line, self.head = max(self.longest, self.line), 0, b""

    def result(self):
        return self.size, self.longest, self.sha.hexdigest()


def read_stream(url, body, digest, headers):
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        headers.update(response.headers)
        for chunk in response.iter_raw():
            digest.feed(chunk)
    return digest.result()


def test_100_mb_line_is_relayed_exactly_and_costs_clood_no_memory(garden, baseline):
    broken = garden.sims["broken"]
    break_host(garden, "huge-line", fail_after_tokens=2)
    errors_before = garden.status("broken")["errors"]
    body = {**CHAT, "stream": True, "max_tokens": 4, "stream_options": {"include_usage": True}}
    resident = garden.process.memory_info().rss
    peak, reading = [resident], threading.Event()

    def watch_memory():
        while not reading.wait(0.05):
            peak.append(garden.process.memory_info().rss)

    watcher = threading.Thread(target=watch_memory, daemon=True)
    watcher.start()
    headers = {}
    try:
        through_clood = read_stream(garden.url, body, StreamDigest(), headers)
    finally:
        reading.set()
        watcher.join()
    direct = read_stream(broken.url, body, StreamDigest(), {})
    assert through_clood == direct
    assert direct[1] > HUGE_LINE_BYTES
    assert max(peak) - resident < MEMORY_BOUND, f"clood grew by {(max(peak) - resident) / 2**20:.0f} MB"
    row = garden.log_for(headers["x-clood-request-id"])
    assert (row["outcome"], row["host"], row["completion_tokens"]) == ("ok", "broken", 4)
    assert_circuit_untouched(garden, errors_before)
    assert_settled(garden, baseline)


def test_a_slow_reader_holds_the_host_back_instead_of_filling_clood_memory(garden, baseline):
    # Without flow control (clood_site/serve.py) daphne takes all the host sends and keeps what the client has not
    # read yet: here most of a 100 MB line within a second or two.
    break_host(garden, "huge-line", fail_after_tokens=2)
    body = json.dumps({**CHAT, "stream": True, "max_tokens": 4}).encode()
    host, port = garden.url.removeprefix("http://").split(":")
    resident, peak, read = garden.process.memory_info().rss, 0, 0
    with socket.socket() as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        client.connect((host, int(port)))
        client.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n" % len(body) + body)  # fmt: skip
        for _ in range(40):  # about 2.5 MB over 2 s: far slower than the host sends
            read += len(client.recv(64 * 1024))
            peak = max(peak, garden.process.memory_info().rss)
            time.sleep(0.05)
    assert read > 0
    assert peak - resident < MEMORY_BOUND // 2, f"clood grew by {(peak - resident) / 2**20:.0f} MB"
    assert_settled(garden, baseline)


def test_invalid_utf8_is_relayed_unchanged(garden, baseline):
    break_host(garden, "bad-utf8", fail_after_tokens=1)
    errors_before = garden.status("broken")["errors"]
    response = httpx.post(garden.url + "/v1/chat/completions", json={**CHAT, "stream": True}, timeout=30)
    assert response.status_code == 200 and b'"content":"' + BAD_UTF8 + b'quick "' in response.content
    row = garden.log_for(response.headers["x-clood-request-id"])
    assert (row["outcome"], row["host"], row["completion_tokens"]) == ("ok", "broken", 16)  # the broken token too

    single = httpx.post(garden.url + "/v1/chat/completions", json=CHAT, timeout=30)
    assert single.status_code == 200 and b'"content": "' + BAD_UTF8 + b"The quick" in single.content
    assert garden.log_for(single.headers["x-clood-request-id"])["outcome"] == "ok"

    with ollama.Client(host=garden.url) as client:
        chunks = list(client.chat(model="llama3.2:1b", messages=CHAT["messages"], stream=True))
    text = "".join(chunk.message.content for chunk in chunks)
    assert "\ufffd" in text and text.replace("\ufffd", "") == REPLY and chunks[-1].done
    assert_circuit_untouched(garden, errors_before)
    assert_settled(garden, baseline)


class Flapping:
    """Stops and restarts a simulated host every `period` seconds, from a thread, until stopped (leaving it up)."""

    def __init__(self, garden, name, period):
        self.garden, self.name, self.period = garden, name, period
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._flap, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc_info):
        self.done.set()
        self.thread.join()

    def _flap(self):
        while not self.done.wait(self.period):
            stop(self.garden, self.name)
            time.sleep(self.period)
            restart(self.garden, self.name)


def test_flapping_host_never_fails_a_client(garden, baseline):
    answered = []

    def circuit_opened():
        request_id, host, text = ask(garden)
        assert text == REPLY
        answered.append(host)
        return garden.status("broken")["circuit"] == "open"

    with Flapping(garden, "broken", period=1.0):
        wait_until(circuit_opened, timeout=30, interval=0.05, what="the flapping host's circuit to open")
    assert {"broken", "healthy"} <= set(answered)  # it served while up; its fallback while down
    assert_broken_is_skipped(garden)  # up again, but skipped until a health check says it is well
    garden.server.manage("hosts", "refresh", "broken")
    wait_until(lambda: served_by(garden, "broken"), timeout=10, what="the host to be used again after a good check")
    assert_settled(garden, baseline)


async def recent_events(garden):
    """The recent events in the ATC websocket's snapshot (CLOOD_ATC_PUBLIC is on in this garden)."""
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(garden.url.replace("http", "ws") + "/ws/atc/", origin=garden.url) as socket:
            snapshot = await socket.receive_json(timeout=10)
    return snapshot["data"]["events"]


def test_answer_naming_another_model_is_relayed_and_noted(garden, baseline):
    break_host(garden, "wrong-model")
    errors_before = garden.status("broken")["errors"]
    note = f"broken answered with model '{WRONG_MODEL}', not 'llama3.2:1b'"
    with openai_client(garden) as client:
        single = client.chat.completions.with_raw_response.create(**CHAT)
        streamed = client.chat.completions.with_raw_response.create(**CHAT, stream=True)
        chunks = list(streamed.parse())
    assert single.parse().model == WRONG_MODEL and single.parse().choices[0].message.content == REPLY
    assert {chunk.model for chunk in chunks} == {WRONG_MODEL}
    native = httpx.post(garden.url + "/api/chat", json={**CHAT, "stream": False}, timeout=30)
    assert native.json()["model"] == WRONG_MODEL
    request_ids = [r.headers["x-clood-request-id"] for r in (single, streamed, native)]
    for request_id in request_ids:
        row = garden.log_for(request_id)
        assert (row["outcome"], row["status"], row["host"], row["error"]) == ("ok", 200, "broken", note)
    events = asyncio.run(recent_events(garden))
    completed = {e["data"]["id"]: e["data"] for e in events if e["type"] == "request_completed"}
    assert all(completed[request_id]["error"] == note for request_id in request_ids)
    assert_circuit_untouched(garden, errors_before)  # THRESHOLD+1 odd answers: still not a failure
    assert_settled(garden, baseline)


# --- the internals endpoint ----------------------------------------------------------------------------------------


def test_internals_show_counts_and_host_names_only(garden, baseline):
    inside = internals(garden)
    assert set(inside) == {"tasks", "upstream_connections", "slots", "queued", "waiting", "flights"}
    text = json.dumps(inside)
    assert "http" not in text and all(str(sim.port) not in text for sim in garden.sims.values())
    assert set(inside["slots"]) <= {"broken", "healthy"}


def test_internals_are_routed_only_when_turned_on(settings):
    settings.CLOOD_EXPOSE_INTERNALS = False
    assert internals_routes() == []
    settings.CLOOD_EXPOSE_INTERNALS = True
    assert [str(route.pattern) for route in internals_routes()] == ["_clood/internals"]
