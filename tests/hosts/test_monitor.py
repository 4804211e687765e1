"""The monitor against simulated hosts over real HTTP: health, inventory, faults, events."""

import asyncio
import logging

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer

from hosts.backends import HostReport
from hosts.models import Host, HostModel
from hosts.monitor import check_hosts, record_report
from hosts.simulator import SimModel
from tests.conftest import closed_port_url

pytestmark = pytest.mark.django_db


def make_host(name, url, **fields):
    return Host.objects.create(name=name, base_url=url, **fields)


def check(*names):
    return dict(async_to_sync(check_hosts)(list(names) if names else None))


def test_online_host_records_health_and_inventory(sim_host):
    sim = sim_host(
        models=[
            SimModel(name="llama3.2:1b", loaded=True, family="llama", parameter_size="1.2B", context_length=131072),
            SimModel(name="nomic-embed-text", capabilities=["embedding"], family="nomic-bert"),
        ]
    )
    make_host("box", sim.url)

    assert check()["box"].ok
    host = Host.objects.get(name="box")
    assert host.online is True
    assert host.latency_ms is not None and host.latency_ms >= 0
    assert host.version == sim.config.version
    assert host.last_error == ""
    rows = {row.name: row for row in host.models.all()}
    assert set(rows) == {"llama3.2:1b", "nomic-embed-text:latest"}
    llama = rows["llama3.2:1b"]
    assert llama.loaded and llama.loaded_until is not None and llama.size_vram
    assert llama.family == "llama" and llama.parameter_size == "1.2B"
    assert llama.context_length == 131072
    assert llama.digest and llama.size
    assert rows["nomic-embed-text:latest"].capabilities == ["embedding"]
    assert not rows["nomic-embed-text:latest"].loaded


def test_show_is_asked_once_per_digest(sim_host):
    sim = sim_host(models=["a:1b", "b:1b"])
    make_host("box", sim.url)
    check()
    check()
    assert sim.stats["requests"].get("/api/show") == 2

    sim.config.models = [SimModel(name="a:1b", digest="f" * 64), SimModel(name="b:1b")]
    check()
    assert sim.stats["requests"].get("/api/show") == 3
    assert HostModel.objects.get(name="a:1b").digest == "f" * 64


def test_health_checks_never_generate(sim_host):
    sim = sim_host(models=["a:1b"])
    make_host("box", sim.url)
    check()
    generation = {"/api/chat", "/api/generate", "/api/embed", "/v1/chat/completions", "/v1/completions"}
    assert not generation & set(sim.stats["requests"])


def test_unreachable_host_goes_offline_and_opens_circuit(settings):
    settings.CLOOD_CIRCUIT_THRESHOLD = 2
    make_host("dead", closed_port_url())

    report = check()["dead"]
    assert not report.ok
    host = Host.objects.get(name="dead")
    assert host.online is False
    assert "connection refused" in host.last_error
    assert host.consecutive_failures == 1 and host.circuit == "closed"

    check()
    host.refresh_from_db()
    assert host.consecutive_failures == 2 and host.circuit == "open"
    assert not host.is_usable()


@pytest.mark.parametrize(
    ("fail", "message"),
    [
        ("error", "HTTP 500"),
        ("html", "HTML page"),
        ("garbage", "invalid JSON"),
        ("wrong-shape", "unexpected answer shape"),
        ("huge", "larger than"),
    ],
)
def test_broken_host_is_offline_with_a_clear_error(sim_host, fail, message):
    sim = sim_host(fail=fail)
    make_host("broken", sim.url)
    good = sim_host(models=["a:1b"])
    make_host("good", good.url)

    results = check()
    assert not results["broken"].ok
    assert message in Host.objects.get(name="broken").last_error
    assert Host.objects.get(name="good").online is True


def test_hanging_host_does_not_delay_the_others(sim_host, settings):
    settings.CLOOD_MONITOR_HOST_DEADLINE = 1.5
    settings.CLOOD_MONITOR_READ_TIMEOUT = 10
    make_host("hang", sim_host(fail="hang").url)
    make_host("good", sim_host().url)

    check()
    hang, good = Host.objects.get(name="hang"), Host.objects.get(name="good")
    assert hang.online is False and "no answer within" in hang.last_error
    assert good.online is True
    # The good host's result was written as soon as it was known, not after the hanging one gave up.
    assert (hang.last_checked_at - good.last_checked_at).total_seconds() > 1.0


def test_flapping_host_records_each_transition(sim_host):
    sim = sim_host()
    make_host("flappy", sim.url)
    states = []
    for fail in [None, "error", None, "error"]:
        sim.config.fail = fail
        check()
        states.append(Host.objects.get(name="flappy").online)
    assert states == [True, False, True, False]
    assert Host.objects.get(name="flappy").consecutive_failures == 1


def test_offline_host_keeps_its_inventory_but_nothing_is_loaded(sim_host):
    sim = sim_host(models=[SimModel(name="a:1b", loaded=True)])
    make_host("box", sim.url)
    check()
    sim.config.fail = "error"
    check()
    row = HostModel.objects.get(name="a:1b")
    assert row.loaded is False and row.loaded_until is None


def test_removed_models_leave_the_inventory(sim_host):
    sim = sim_host(models=["a:1b", "b:1b"])
    make_host("box", sim.url)
    check()
    sim.config.models = [SimModel(name="b:1b")]
    check()
    assert list(HostModel.objects.values_list("name", flat=True)) == ["b:1b"]


def test_result_for_a_removed_host_is_dropped():
    host = make_host("gone", "http://127.0.0.1:9")
    host_id = host.pk
    host.delete()
    assert record_report(host_id, HostReport(ok=True, latency_ms=1.0)) == []
    assert not Host.objects.exists()


def test_admin_edit_during_a_check_is_kept(sim_host):
    host = make_host("box", sim_host().url, priority=5)
    Host.objects.filter(pk=host.pk).update(priority=1, hardware_gpu="RTX 4090")
    record_report(host.pk, HostReport(ok=True, latency_ms=3.0, version="0.6.5"))
    host.refresh_from_db()
    assert (host.priority, host.hardware_gpu, host.online) == (1, "RTX 4090", True)


def test_latency_is_smoothed(settings):
    settings.CLOOD_LATENCY_SMOOTHING = 0.5
    host = make_host("box", "http://127.0.0.1:9")
    record_report(host.pk, HostReport(ok=True, latency_ms=10.0))
    record_report(host.pk, HostReport(ok=True, latency_ms=30.0))
    host.refresh_from_db()
    assert host.latency_ms == pytest.approx(20.0)


def test_disabled_hosts_are_not_checked(sim_host):
    sim = sim_host()
    make_host("off", sim.url, enabled=False)
    assert check() == {}
    assert not sim.stats["requests"]


def test_openai_backend_lists_models_with_its_key(sim_host):
    sim = sim_host(models=["served-model"], api_key="sk-host-canary-5150", ollama_api=False)
    make_host("vllm", sim.url, backend="openai", api_key="sk-host-canary-5150")
    assert check()["vllm"].ok
    assert list(HostModel.objects.values_list("remote_name", flat=True)) == ["served-model"]
    assert sim.stats["last_request"]["headers"].get("Authorization") == "Bearer sk-host-canary-5150"


def test_openai_backend_with_wrong_key_reports_401_without_the_key(sim_host, caplog):
    caplog.set_level(logging.DEBUG)
    sim = sim_host(models=["served-model"], api_key="the-right-key", ollama_api=False)
    make_host("vllm", sim.url, backend="openai", api_key="sk-canary-wrong-key-9431")

    report = check()["vllm"]
    host = Host.objects.get(name="vllm")
    assert not report.ok
    assert "401" in host.last_error and "refused the API key" in host.last_error
    assert "sk-canary-wrong-key-9431" not in host.last_error + report.error + caplog.text


def test_openai_backend_static_models_when_it_cannot_list(sim_host):
    sim = sim_host(models=["x"], fail="error", fail_status=404, fail_paths=["/v1/models"], ollama_api=False)
    make_host("llamacpp", sim.url, backend="openai", static_models="my-gguf\nother-model")
    assert check()["llamacpp"].ok
    assert set(HostModel.objects.values_list("remote_name", flat=True)) == {"my-gguf", "other-model"}


@pytest.mark.django_db(transaction=True)
async def test_monitor_events_reach_the_atc_group(sim_host):
    sim = sim_host(models=[SimModel(name="a:1b", loaded=True)])
    await Host.objects.acreate(name="box", base_url=sim.url, api_key="sk-event-canary-1999")
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add("atc", channel)

    await check_hosts()
    received = [await asyncio.wait_for(layer.receive(channel), 5) for _ in range(2)]
    events = {m["event"]["type"]: m["event"] for m in received}
    assert events["host_status"]["data"]["host"] == "box"
    assert events["host_status"]["data"]["online"] is True
    assert events["host_status"]["data"]["transition"] is True
    assert events["inventory_changed"]["data"]["added"] == ["a:1b"]
    assert events["inventory_changed"]["data"]["loaded"] == ["a:1b"]
    assert all({"type", "ts", "seq", "data"} <= set(m["event"]) for m in received)
    assert "sk-event-canary-1999" not in repr(received)


@pytest.mark.django_db(transaction=True)
async def test_host_removed_while_being_checked(sim_host, settings):
    settings.CLOOD_MONITOR_HOST_DEADLINE = 1.0
    sim = sim_host(fail="hang")
    host = await Host.objects.acreate(name="vanishing", base_url=sim.url)
    task = asyncio.create_task(check_hosts())
    await asyncio.sleep(0.3)
    await sync_to_async(host.delete)()
    results = await task
    assert results[0][0] == "vanishing"
    assert not await Host.objects.filter(name="vanishing").aexists()
