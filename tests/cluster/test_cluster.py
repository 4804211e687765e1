"""Two real clood processes on one PostgreSQL database and one Redis behave as one clood (issue 7, DESIGN §7)."""

import asyncio
import json
import os
import signal

import aiohttp
import httpx
import openai
from playwright.sync_api import sync_playwright

from tests import canaries
from tests.cluster.conftest import eventually, status, wait_for_model

MODEL = "llama3.2:1b"


def register(process, sim, name="gpu", max_concurrency=2):
    process.manage("hosts", "add", name, sim.url, "--max-concurrency", str(max_concurrency))
    process.manage("hosts", "refresh")


def client(process, api_key="none", **kwargs):
    return openai.AsyncOpenAI(base_url=process.url + "/v1", api_key=api_key, max_retries=0, timeout=60, **kwargs)


async def ask(process, text, **kwargs):
    reply = await client(process, **kwargs).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": text}]
    )
    return reply.choices[0].message.content


async def request_id_of(process, text):
    """Ask, and return clood's id for the request."""
    raw = await client(process).chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": text}]
    )
    return raw.headers["x-clood-request-id"]


async def dashboard_events(session, process, until, timeout=30):
    """Connect to a process's ATC websocket; collect events (ticks aside) until `until(events)` is true."""
    collected = []
    async with session.ws_connect(process.url.replace("http", "ws") + "/ws/atc/", origin=process.url) as socket:
        first = json.loads((await socket.receive(timeout=10)).data)
        assert first["type"] == "snapshot"
        async with asyncio.timeout(timeout):
            while not until(collected):
                frame = json.loads((await socket.receive()).data)
                collected += [e for e in frame.get("events", []) if e["type"] != "tick"]
    return collected


async def test_a_dashboard_on_one_process_sees_every_process_requests_in_order_once(cluster, sim_host):
    sim = sim_host(ttft=0.05)
    a, b = cluster(2)
    register(a, sim)
    wait_for_model([a, b], MODEL)

    def all_completed(events):
        return sum(e["type"] == "request_completed" for e in events) >= 8

    async with aiohttp.ClientSession() as session:
        watcher = asyncio.create_task(dashboard_events(session, b, all_completed))
        await asyncio.sleep(1.0)  # the dashboard is connected
        sent = []
        for i in range(4):  # one at a time, alternating processes: a known order
            sent.append(await request_id_of(a, f"from a {i}"))
            sent.append(await request_id_of(b, f"from b {i}"))
        events = await watcher

    seqs = [e["seq"] for e in events]
    assert seqs == sorted(set(seqs)), "seqs must strictly increase: in order, no duplicates"
    requests = [e for e in events if e["type"].startswith("request_")]  # a host's status may well change twice
    assert len({(e["type"], e["data"]["id"], e["data"].get("attempt")) for e in requests}) == len(requests)
    completed = [e for e in events if e["type"] == "request_completed"]
    started = {e["data"]["id"]: e for e in events if e["type"] == "request_started"}
    assert len(completed) == 8 and all(e["data"]["id"] in started for e in completed)
    assert [e["data"]["id"] for e in completed] == sent
    # This dashboard is the public view, not logged in: it is not told prompts or client addresses.
    assert {(e["data"]["prompt"], e["data"]["client"]) for e in started.values()} == {("", "")}
    for event in completed:  # each request's start comes before its end
        assert started[event["data"]["id"]]["seq"] < event["seq"]


async def test_a_host_never_serves_more_than_its_slots_however_many_processes_route_to_it(cluster, sim_host):
    sim = sim_host(ttft=0.3, reply_tokens=10, tokens_per_second=20)  # about 0.8 s a request
    a, b = cluster(2)
    register(a, sim, max_concurrency=2)
    wait_for_model([a, b], MODEL)
    sim.reset_stats()

    answers = await asyncio.gather(*(ask(a if i % 2 else b, f"request {i}") for i in range(10)))

    assert all(answers)
    assert sim.stats["requests"].get("/v1/chat/completions") == 10
    # Each process alone would allow 2: without shared slots the host would see up to 4 at once.
    assert sim.stats["max_in_flight"] == 2
    eventually(lambda: all(h["slots_used"] == 0 for p in (a, b) for h in status(p)["hosts"]), what="slots freed")


async def test_a_process_killed_mid_request_gives_its_slot_back_when_its_lease_expires(cluster, sim_host):
    sim = sim_host(ttft=30)  # answers only after the process is gone
    a, b = cluster(2)
    register(a, sim, max_concurrency=1)
    wait_for_model([a, b], MODEL)
    stuck = asyncio.create_task(ask(a, "never answered"))
    await asyncio.to_thread(eventually, lambda: sim.stats["in_flight"] == 1, 10, "the request at the host")
    os.kill(a.process.pid, signal.SIGKILL)
    sim.config.update({"ttft": 0.0})
    try:
        await stuck
    except openai.APIConnectionError:
        pass
    # B can use the host once A's lease (3 s in these tests) runs out, though A never gave the slot back.
    assert await ask(b, "after a died")


async def test_api_key_limits_hold_across_processes(cluster, sim_host):
    sim = sim_host()
    a, b = cluster(2)
    register(a, sim)
    wait_for_model([a, b], MODEL)
    a.manage("apikeys", "create", "team", "--rpm", "3", "--key-env", "CLOOD_TEST_CLIENT_KEY")
    key = canaries.CLIENT_KEY

    def keys_loaded(process):
        return httpx.get(process.url + "/v1/models", timeout=5).status_code == 401

    eventually(lambda: keys_loaded(a) and keys_loaded(b), what="both processes require the key")
    assert await ask(a, "1", api_key=key)
    assert await ask(b, "2", api_key=key)
    assert await ask(a, "3", api_key=key)
    try:
        await ask(b, "4", api_key=key)
    except openai.RateLimitError as error:
        assert error.body["code"] == "rate_limit_exceeded"
        assert int(error.response.headers["retry-after"]) >= 1
    else:
        raise AssertionError("the fourth request in a minute, on the other process, must be refused")


def test_one_process_monitors_and_another_takes_over_when_it_dies(cluster, sim_host):
    sim = sim_host()
    processes = cluster(2, env={"CLOOD_MONITOR_INTERVAL": "1"})
    register(processes[0], sim)

    def monitors():
        return [p for p in processes if p.process.poll() is None and status(p)["cluster"]["monitoring_here"]]

    eventually(lambda: len(monitors()) == 1, what="one monitoring process")
    # It stays one: the other keeps checking the lock and finds it held.
    for _ in range(5):
        assert len(monitors()) == 1
    holder = monitors()[0]
    survivor = next(p for p in processes if p is not holder)
    os.kill(holder.process.pid, signal.SIGKILL)  # no chance to let go of the lock
    eventually(lambda: status(survivor)["cluster"]["monitoring_here"], what="the survivor takes over")

    sim.stop()  # the survivor's checks notice
    eventually(lambda: status(survivor)["hosts"][0]["status"] == "offline", what="the host marked offline")


def test_an_admin_edit_on_one_process_reaches_the_others_routing(cluster, sim_host):
    sim = sim_host()
    a, b = cluster(2)
    register(a, sim, max_concurrency=2)
    wait_for_model([a, b], MODEL)
    assert status(b)["hosts"][0]["slots_max"] == 2

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium")
        page = browser.new_page()
        page.goto(a.url + "/admin/hosts/host/")
        page.fill("#id_username", "admin")
        page.fill("#id_password", canaries.ADMIN_PASSWORD)
        page.click("input[type=submit]")
        page.click("text=gpu")
        page.fill("#id_max_concurrency", "5")
        page.uncheck("#id_enabled")
        page.click("input[name=_save]")
        page.wait_for_selector(".messagelist")
        browser.close()

    eventually(lambda: status(b)["hosts"][0]["slots_max"] == 5, timeout=10, what="the new limit on b")
    models = httpx.get(b.url + "/v1/models", timeout=5).json()["data"]
    assert MODEL not in [m["id"] for m in models]  # disabled on a: b no longer routes to it


async def test_requests_are_served_while_redis_is_down_and_sharing_resumes_when_it_is_back(
    cluster, sim_host, redis_server
):
    sim = sim_host()
    a, b = cluster(2)
    register(a, sim)
    wait_for_model([a, b], MODEL)
    assert httpx.get(a.url + "/ready").json()["redis"] == {"ok": True}

    redis_server.stop()
    for process in (a, b):  # served, with the limits of each process alone
        assert await ask(process, "while redis is down")
    for process in (a, b):
        ready = httpx.get(process.url + "/ready")
        assert ready.status_code == 200
        assert ready.json()["redis"]["ok"] is False and "Redis is unavailable" in ready.json()["warnings"][0]
        assert "Redis unavailable" in process.output()

    redis_server.start()  # same port, empty
    for process in (a, b):
        eventually(lambda p=process: httpx.get(p.url + "/ready").json()["redis"]["ok"], what="redis seen again")
        assert "Redis is back" in process.output()

    def one_completed(events):
        return any(e["type"] == "request_completed" for e in events)

    async with aiohttp.ClientSession() as session:
        watcher = asyncio.create_task(dashboard_events(session, b, one_completed))
        await asyncio.sleep(1.0)
        await ask(a, "after redis came back")
        events = await watcher
    assert [e["data"]["host"] for e in events if e["type"] == "request_completed"] == ["gpu"]
