"""The ATC websocket consumer, with channels' WebsocketCommunicator (as channels' own tests do)."""

import asyncio
import json

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser, User

from atc import consumers, events
from atc.consumers import AtcConsumer
from clood_site.asgi import application
from hosts import snapshot
from hosts.models import Host, HostModel

pytestmark = pytest.mark.django_db(transaction=True)


async def connect(user, path="/ws/atc/"):
    communicator = WebsocketCommunicator(AtcConsumer.as_asgi(), path)
    communicator.scope["user"] = user
    connected, _ = await communicator.connect()
    assert connected
    return communicator


@pytest.fixture
async def staff():
    return await User.objects.acreate(username="watcher", is_staff=True)


async def test_anonymous_is_refused(settings):
    settings.CLOOD_ATC_PUBLIC = False
    communicator = await connect(AnonymousUser())
    assert (await communicator.receive_output(2))["code"] == consumers.CLOSE_UNAUTHORIZED


async def test_public_setting_lets_anyone_watch(settings):
    settings.CLOOD_ATC_PUBLIC = True
    communicator = await connect(AnonymousUser())
    message = await communicator.receive_json_from(2)
    assert message["type"] == "snapshot" and message["data"]["public"] is True
    await communicator.disconnect()


async def test_the_public_view_shows_no_prompts_or_client_addresses_to_anonymous_viewers(settings, staff):
    settings.CLOOD_ATC_PUBLIC = True
    why = "the prompt asks for writing ('write my diary')"  # auto's reason may quote the prompt
    started = {"id": "r1", "model": "auto", "host": "box", "client": "10.0.0.7", "prompt": "my diary",
               "auto": {"tier": "writing", "reason": why},
               "decision": {"reason": "box has it", "auto": {"reason": why}}}  # fmt: skip
    before = events.last_seq()
    await events.apublish("request_started", **started)
    await events.apublish("catfight_started", id=1, prompt="which is faster?")  # a catfight's prompt is the show
    await events.flushed()

    anonymous = await connect(AnonymousUser())
    snapshot = (await anonymous.receive_json_from(2))["data"]["events"]
    watcher = await connect(staff)
    staff_snapshot = (await watcher.receive_json_from(2))["data"]["events"]
    await events.apublish("request_started", **{**started, "id": "r2"})  # live, in a batch
    await events.flushed()
    live = await receive_events(anonymous, 1)
    live_staff = await receive_events(watcher, 1)

    public = [e for e in snapshot + live if e["type"] == "request_started"]
    assert [(e["data"]["id"], e["data"]["prompt"], e["data"]["client"]) for e in public][-2:] == [
        ("r1", "", ""), ("r2", "", "")]  # fmt: skip
    assert "my diary" not in json.dumps(snapshot + live) and "10.0.0.7" not in json.dumps(snapshot + live)
    assert public[-1]["data"]["auto"] == {"tier": "writing", "reason": ""}  # the tier shows, the reason does not
    assert public[-1]["data"]["decision"]["reason"] == "box has it"
    assert [e["data"]["prompt"] for e in snapshot if e["type"] == "catfight_started"][-1] == "which is faster?"
    seen_by_staff = [e for e in staff_snapshot + live_staff if e["type"] == "request_started"][-2:]
    assert [(e["data"]["prompt"], e["data"]["client"]) for e in seen_by_staff] == [("my diary", "10.0.0.7")] * 2
    resuming = await connect(AnonymousUser(), f"/ws/atc/?since={before}")
    resumed = await resuming.receive_json_from(2)
    assert resumed["type"] == "resume" and "my diary" not in json.dumps(resumed)
    assert [e["data"]["prompt"] for e in resumed["events"] if e["type"] == "request_started"] == ["", ""]
    for communicator in (anonymous, watcher, resuming):
        await communicator.disconnect()


async def test_an_event_published_from_another_thread_reaches_the_page(staff):
    """An admin action or a sync_to_async call publishes from a worker thread: the waiting consumer is woken through
    its own loop (call_soon_threadsafe) and sends the event."""
    import threading

    communicator = await connect(staff)
    await communicator.receive_json_from(2)  # the snapshot
    await asyncio.sleep(0.3)  # the consumer waits in news()
    publisher = threading.Thread(target=events.publish, args=("host_status",), kwargs={"host": "box", "status": "x"})
    publisher.start()  # nothing on this loop hears of it: only the consumer's wake-up can
    received = await receive_events(communicator, 1)
    publisher.join()
    assert received[0]["type"] == "host_status" and received[0]["data"]["host"] == "box"
    await communicator.disconnect()


async def test_snapshot_has_hosts_models_and_counters(staff):
    host = await Host.objects.acreate(name="box", base_url="http://127.0.0.1:9", online=True, hardware_gpu="RTX 3090",
                                      api_key="sk-ws-canary-7")  # fmt: skip
    await HostModel.objects.acreate(host=host, name="llama3.2:1b", remote_name="llama3.2:1b", loaded=True, digest="a")
    other = await Host.objects.acreate(name="other", base_url="http://127.0.0.1:8", online=False)
    await HostModel.objects.acreate(host=other, name="llama3.2:1b", remote_name="llama3.2:1b", digest="b")
    await snapshot.refresh()
    await events.apublish("host_status", host="box", status="online")
    await asyncio.sleep(0.01)

    communicator = await connect(staff)
    message = await communicator.receive_json_from(2)
    assert message["type"] == "snapshot"
    data = message["data"]
    box = next(h for h in data["hosts"] if h["name"] == "box")
    assert box["status"] == "online" and box["hardware"]["gpu"] == "RTX 3090" and box["max_concurrency"] == 4
    assert box["models"][0]["loaded"] is True and box["models"][0]["digest_differs"] is True
    assert data["counters"]["hosts_online"] == 1 and data["counters"]["hosts_total"] == 2
    assert data["events"][-1]["type"] == "host_status" and message["seq"] == data["events"][-1]["seq"]
    assert "sk-ws-canary-7" not in str(message)
    await communicator.disconnect()


async def test_snapshot_lists_the_enabled_aliases(staff):
    from proxy import aliases
    from proxy.models import Alias

    await Alias.objects.acreate(name="fast", targets=["phi3:mini", "Llama3.2:1B"], description="quick answers")
    await Alias.objects.acreate(name="auto", targets=["fast", "deep"])
    await Alias.objects.acreate(name="deep", targets=["qwen3:32b"], enabled=False)
    aliases.invalidate()

    communicator = await connect(staff)
    message = await communicator.receive_json_from(2)
    assert message["data"]["aliases"] == [
        {"name": "auto", "key": "auto:latest", "auto": True, "description": "",
         "targets": ["fast:latest", "deep:latest"]},
        {"name": "fast", "key": "fast:latest", "auto": False, "description": "quick answers",
         "targets": ["phi3:mini", "llama3.2:1b"]},
    ]  # fmt: skip
    await communicator.disconnect()


async def receive_events(communicator, count):
    """Read frames until `count` events arrived (batches flattened, ticks left out)."""
    received = []
    while len(received) < count:
        frame = await communicator.receive_json_from(3)
        assert frame["type"] == "batch", frame["type"]
        received += [e for e in frame["events"] if e["type"] != "tick"]
    return received


async def test_live_events_arrive_in_order_in_batches(staff):
    communicator = await connect(staff)
    await communicator.receive_json_from(2)  # snapshot
    published = [await events.apublish("request_queued", id=str(i), model="m") for i in range(5)]
    received = await receive_events(communicator, 5)
    assert [e["seq"] for e in received] == [e["seq"] for e in published]
    assert [e["data"]["id"] for e in received] == ["0", "1", "2", "3", "4"]
    await communicator.disconnect()


async def test_resume_sends_only_what_was_missed(staff):
    first = await events.apublish("request_queued", id="a", model="m")
    missed = [await events.apublish("request_queued", id=x, model="m") for x in "bc"]
    await events.flushed()  # with REDIS_URL, they are kept once Redis gives them their seqs
    communicator = await connect(staff, f"/ws/atc/?since={first['seq']}")
    message = await communicator.receive_json_from(2)
    assert message["type"] == "resume"
    assert [e["seq"] for e in message["events"]] == [e["seq"] for e in missed]
    live = await events.apublish("request_queued", id="d", model="m")
    assert [e["seq"] for e in await receive_events(communicator, 1)] == [live["seq"]]  # b and c not again
    await communicator.disconnect()


async def test_resume_from_too_long_ago_gets_a_snapshot(staff, monkeypatch):
    monkeypatch.setattr(events, "recent", events.collections.deque(maxlen=3))
    monkeypatch.setattr(events, "_evicted_up_to", events._evicted_up_to)  # restored after the test
    for i in range(5):
        await events.apublish("request_queued", id=str(i), model="m")
    await events.flushed()
    communicator = await connect(staff, "/ws/atc/?since=1")
    assert (await communicator.receive_json_from(2))["type"] == "snapshot"
    await communicator.disconnect()


async def test_a_connection_that_falls_behind_the_buffer_starts_afresh(staff, monkeypatch):
    monkeypatch.setattr(events, "recent", events.collections.deque(maxlen=3))
    monkeypatch.setattr(events, "_evicted_up_to", events._evicted_up_to)  # restored after the test
    communicator = await connect(staff)
    await communicator.receive_json_from(2)
    for i in range(10):  # more than the buffer holds, within one batch window
        events.make_event("request_queued", {"id": str(i)})
    frame = await communicator.receive_json_from(3)
    assert frame["type"] == "snapshot" and frame["seq"] == events.last_seq()
    await communicator.disconnect()


async def test_a_client_that_stops_acknowledging_is_dropped(staff, monkeypatch):
    monkeypatch.setattr(consumers, "MAX_UNACKED_EVENTS", 5)
    communicator = await connect(staff)
    snapshot_message = await communicator.receive_json_from(2)
    await communicator.send_json_to({"type": "ack", "seq": snapshot_message["seq"]})
    await asyncio.sleep(0.05)
    for i in range(8):
        await events.apublish("request_queued", id=str(i), model="m")
    outputs = []
    while True:
        output = await communicator.receive_output(3)
        outputs.append(output)
        if output["type"] == "websocket.close":
            break
    assert outputs[-1]["code"] == consumers.CLOSE_TOO_SLOW


async def test_acknowledging_client_is_kept(staff, monkeypatch):
    monkeypatch.setattr(consumers, "MAX_UNACKED_EVENTS", 5)
    communicator = await connect(staff)
    await communicator.receive_json_from(2)
    for i in range(4):
        published = [await events.apublish("request_queued", id=f"{i}-{j}", model="m") for j in range(4)]
        received = await receive_events(communicator, 4)
        assert [e["seq"] for e in received] == [e["seq"] for e in published]
        await communicator.send_json_to({"type": "ack", "seq": received[-1]["seq"]})
        await asyncio.sleep(0.01)
    await communicator.disconnect()


async def test_ticks_reach_the_page(staff):
    communicator = await connect(staff)
    await communicator.receive_json_from(2)
    tick = await events.apublish("tick", counters={"in_flight": 0}, in_flight=[], hosts=[])
    frame = await communicator.receive_json_from(3)
    assert [e["seq"] for e in frame["events"]] == [tick["seq"]]
    await communicator.disconnect()


async def test_a_tick_between_events_neither_repeats_nor_skips_them(staff):
    # A tick carries the seq of the newest event before it, not one of its own: the events after it in the same
    # batch must still count as sent.
    communicator = await connect(staff)
    await communicator.receive_json_from(2)
    first = await events.apublish("request_queued", id="r1")
    await events.flushed()  # with REDIS_URL, the seq comes from Redis
    tick = await events.apublish("tick", counters={"in_flight": 0}, in_flight=[], hosts=[])
    assert tick["seq"] == first["seq"]
    second = await events.apublish("request_queued", id="r2")
    await events.flushed()
    received = []  # one batch with one process; with REDIS_URL the first event may come back in a batch of its own
    while not (any(e["type"] == "tick" for e in received) and second["seq"] in [e["seq"] for e in received]):
        received += (await communicator.receive_json_from(3))["events"]
    queued = [(e["type"], e["seq"]) for e in received if e["type"] != "tick"]
    assert queued == [("request_queued", first["seq"]), ("request_queued", second["seq"])]
    assert [e["seq"] for e in received if e["type"] == "tick"] == [first["seq"]]
    third = await events.apublish("request_queued", id="r3")
    frame = await communicator.receive_json_from(3)
    assert [(e["type"], e["data"].get("id")) for e in frame["events"]] == [("request_queued", "r3")]
    assert frame["events"][0]["seq"] == third["seq"]
    await communicator.disconnect()


async def test_foreign_origin_is_rejected(staff):
    communicator = WebsocketCommunicator(application, "/ws/atc/", headers=[(b"origin", b"http://evil.example"),
                                                                            (b"host", b"127.0.0.1")])  # fmt: skip
    connected, _ = await communicator.connect()
    assert not connected


async def test_unknown_socket_path_is_closed(staff):
    communicator = WebsocketCommunicator(application, "/ws/nope/", headers=[(b"origin", b"http://127.0.0.1"),
                                                                            (b"host", b"127.0.0.1")])  # fmt: skip
    connected, code = await communicator.connect()
    assert not connected or code == 4404
