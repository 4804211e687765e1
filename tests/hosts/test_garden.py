"""Garden operations from the admin (hosts/garden.py) against simulated hosts over real HTTP: pull, delete, copy,
preload, unload, benchmark and discover, with their progress, failures and refusals."""

import asyncio

import pytest
from asgiref.sync import async_to_sync
from django.urls import reverse

from hosts.models import GardenOperation, Host, HostModel
from hosts.monitor import check_hosts
from hosts.simulator import SimModel

pytestmark = pytest.mark.django_db(transaction=True)


def register(sim, name="box", backend="ollama"):
    host = Host.objects.create(name=name, base_url=sim.url, backend=backend)
    async_to_sync(check_hosts)([name])
    return host


def operate(admin_client, row, kind):
    return admin_client.post(reverse("admin:hosts_hostmodel_operate", args=[row.pk, kind]))


def test_benchmark_keeps_figures_per_host_and_model(admin_client, sim_host):
    sim = sim_host(models=["llama3.2:1b"], tokens_per_second=400, ttft=0.05, load_time=0.1)
    host = register(sim)
    row = HostModel.objects.get(host=host)
    response = operate(admin_client, row, "benchmark")
    assert response.status_code == 302
    op = GardenOperation.objects.get(kind="benchmark")
    assert op.status == "succeeded", op.error
    row.refresh_from_db()
    assert row.bench_at is not None and row.bench_ttft_ms >= 50 and row.bench_gen_tps > 0
    # From Ollama's nanosecond timings: the model was not loaded (0.1 s to load), and is paced at 400 tokens/s.
    assert row.bench_load_ms >= 100 and row.bench_prompt_tps > 0 and 200 <= row.bench_gen_tps <= 800
    assert op.result["load_ms"] == row.bench_load_ms and op.result["gen_tps"] == row.bench_gen_tps


def test_preload_and_unload_change_loaded_state(admin_client, sim_host):
    sim = sim_host(models=["llama3.2:1b"])
    host = register(sim)
    row = HostModel.objects.get(host=host)
    assert not row.loaded
    operate(admin_client, row, "preload")
    row.refresh_from_db()
    assert row.loaded, GardenOperation.objects.get().error
    operate(admin_client, row, "unload")
    row.refresh_from_db()
    assert not row.loaded


def test_discover_finds_simulated_hosts_on_loopback(admin_client, sim_host):
    one, two = sim_host(models=["llama3.2:1b"]), sim_host(models=["qwen2.5-coder:7b", "mistral:7b"])
    ports = f"{one.port}, {two.port}"
    response = admin_client.post(reverse("admin:hosts_host_discover"), {"subnet": "127.0.0.1", "ports": ports})
    assert response.status_code == 302, response.content.decode()[:2000]
    op = GardenOperation.objects.get(kind="discover")
    assert op.status == "succeeded", op.error
    assert sorted(f["base_url"] for f in op.result["found"]) == sorted([one.url, two.url])  # only what listens
    page = admin_client.get(response["Location"]).content.decode()
    assert "Import the ticked hosts" in page
    response = admin_client.post(response["Location"], {"import": "1", "base_url": [one.url]})
    assert Host.objects.filter(base_url=one.url).exists()


def test_benchmark_of_an_openai_backend_measures_ttft_and_speed(admin_client, sim_host):
    sim = sim_host(models=["served-model"], ollama_api=False, tokens_per_second=300, reply_tokens=40)
    host = register(sim, name="vllm", backend="openai")
    row = HostModel.objects.get(host=host)
    operate(admin_client, row, "benchmark")
    op = GardenOperation.objects.get(kind="benchmark")
    assert op.status == "succeeded", op.error
    assert op.result["ttft_ms"] > 0 and op.result["gen_tps"] > 0 and op.result["load_ms"] is None
    assert sim.stats["last_request"]["path"] == "/v1/chat/completions"


@pytest.mark.parametrize("kind", ["preload", "unload", "delete"])
def test_ollama_only_operations_are_refused_on_openai_backends(admin_client, sim_host, kind):
    sim = sim_host(models=["served-model"], ollama_api=False)
    row = HostModel.objects.get(host=register(sim, name="vllm", backend="openai"))
    response = admin_client.post(reverse("admin:hosts_hostmodel_operate", args=[row.pk, kind]), follow=True)
    assert "OpenAI-compatible server" in response.content.decode()
    assert not GardenOperation.objects.exists()


def test_delete_asks_for_confirmation_first(admin_client, sim_host):
    sim = sim_host(models=["llama3.2:1b"])
    row = HostModel.objects.get(host=register(sim))
    page = admin_client.get(reverse("admin:hosts_hostmodel_operate", args=[row.pk, "delete"])).content.decode()
    assert "Yes, delete it from box" in page
    assert not GardenOperation.objects.exists()
    assert admin_client.get(reverse("admin:hosts_hostmodel_operate", args=[row.pk, "benchmark"])).status_code == 405


def test_unknown_operation_is_refused(admin_client, sim_host):
    sim = sim_host(models=["llama3.2:1b"])
    row = HostModel.objects.get(host=register(sim))
    assert admin_client.post(reverse("admin:hosts_hostmodel_operate", args=[row.pk, "discover"])).status_code == 403


def test_operations_need_the_change_host_permission(client, sim_host, django_user_model):
    sim = sim_host(models=["llama3.2:1b"])
    row = HostModel.objects.get(host=register(sim))
    viewer = django_user_model.objects.create_user("viewer", password="pw-not-used-1234", is_staff=True)
    client.force_login(viewer)
    assert client.post(reverse("admin:hosts_hostmodel_operate", args=[row.pk, "preload"])).status_code == 403
    assert client.get(reverse("admin:hosts_host_discover")).status_code == 403
    assert not GardenOperation.objects.exists()


@pytest.mark.parametrize(
    "subnet, ports, message",
    [
        ("8.8.8.0/24", "11434", "not a private"),
        ("10.0.0.0/16", "11434", "at most 1024"),
        ("0.0.0.0/0", "11434", "not a private network"),
        ("169.254.0.1", "11434", ""),
        ("fd00::1", "11434", "IPv6"),
        ("not-an-address", "11434", ""),
        ("127.0.0.1", "0", "port"),
        ("127.0.0.1", "11434, http", "port"),
    ],
)
def test_discover_refuses_what_it_must_not_scan(admin_client, subnet, ports, message):
    response = admin_client.post(reverse("admin:hosts_host_discover"), {"subnet": subnet, "ports": ports})
    assert response.status_code == 200  # the form again, with the reason
    page = response.content.decode()
    assert "errornote" in page or "errorlist" in page
    assert message.lower() in page.lower()
    assert not GardenOperation.objects.exists()


def test_discover_page_offers_the_servers_own_subnet(admin_client):
    page = admin_client.get(reverse("admin:hosts_host_discover")).content.decode()
    assert 'name="subnet"' in page and "11434" in page


def test_discover_marks_registered_hosts_and_finds_openai_servers(admin_client, sim_host):
    ollama, vllm = sim_host(models=["llama3.2:1b"]), sim_host(models=["served-model"], ollama_api=False)
    Host.objects.create(name="known", base_url=ollama.url)
    ports = f"{ollama.port},{vllm.port}"
    response = admin_client.post(reverse("admin:hosts_host_discover"), {"subnet": "127.0.0.1/32", "ports": ports})
    op = GardenOperation.objects.get(kind="discover")
    found = {f["base_url"]: f for f in op.result["found"]}
    assert found[ollama.url]["registered"] == "known" and found[ollama.url]["backend"] == "ollama"
    assert found[vllm.url]["registered"] == "" and found[vllm.url]["backend"] == "openai"
    assert op.completed == op.total == 2 and op.percent == 100
    admin_client.post(response["Location"], {"import": "1", "base_url": [ollama.url, vllm.url]})
    assert Host.objects.filter(base_url=ollama.url).count() == 1  # not registered twice
    imported = Host.objects.get(base_url=vllm.url)
    assert imported.backend == "openai" and imported.online  # checked at once


def test_a_second_pull_of_the_same_model_is_refused_while_the_first_runs(sim_host):
    from hosts import garden

    sim = sim_host(models=["llama3.2:1b"])
    host = register(sim)
    first = GardenOperation.objects.create(kind="pull", host=host, host_name="box", model="llama3.2:3b")
    with pytest.raises(garden.Refused, match=rf"already being pulled onto box \(operation #{first.pk}\)"):
        garden._create("pull", host, "llama3.2:3b", "admin")
    started, refused = garden.start_pulls([host], "llama3.2:3B", "admin")  # the same model, spelled otherwise
    assert started == [] and "already being pulled" in refused[0]
    assert GardenOperation.objects.count() == 1


def test_an_operation_left_by_a_stopped_process_does_not_block_forever(sim_host):
    from datetime import timedelta

    from django.utils import timezone

    from hosts import garden

    sim = sim_host(models=["llama3.2:1b"])
    host = register(sim)
    old = timezone.now() - timedelta(seconds=garden.STALE_AFTER + 5)
    stale = GardenOperation.objects.create(kind="delete", host=host, host_name="box", model="llama3.2:1b",
                                           updated_at=old)  # fmt: skip
    garden._create("delete", host, "llama3.2:1b", "admin")
    stale.refresh_from_db()
    assert stale.status == "failed" and "stopped" in stale.error


def test_the_monitor_marks_a_killed_process_s_operations_failed_without_a_page_being_shown(sim_host, settings):
    from datetime import timedelta

    from django.utils import timezone

    from hosts import garden, monitor

    host = register(sim_host(models=["llama3.2:1b"]))
    old = timezone.now() - timedelta(seconds=garden.STALE_AFTER + 5)
    killed = GardenOperation.objects.create(kind="pull", host=host, host_name="box", model="phi3:mini",
                                            status="queued", started_at=old, updated_at=old)  # fmt: skip

    async def one_cycle():
        cycle = asyncio.create_task(monitor.run_forever(interval=60))
        try:
            while (await GardenOperation.objects.aget(pk=killed.pk)).status == "queued":
                await asyncio.sleep(0.05)
        finally:
            cycle.cancel()

    async_to_sync(asyncio.wait_for)(one_cycle(), 20)
    killed.refresh_from_db()
    assert killed.status == "failed" and killed.error == "the clood process running it stopped"


def test_pull_refuses_names_that_are_not_model_names(admin_client, sim_host):
    sim = sim_host(models=["llama3.2:1b"])
    host = register(sim)
    response = admin_client.post(
        reverse("admin:hosts_host_changelist"),
        {"action": "pull_model", "_selected_action": [host.pk], "apply": "1", "model": "../etc/passwd"},
    )
    assert response.status_code == 200 and "is not a model name" in response.content.decode()
    assert not GardenOperation.objects.exists()


def test_benchmark_figures_show_in_the_inventory_pages(admin_client, sim_host):
    sim = sim_host(models=["llama3.2:1b"], tokens_per_second=500)
    host = register(sim)
    operate(admin_client, HostModel.objects.get(host=host), "benchmark")
    overview = admin_client.get(reverse("admin:hosts_hostmodel_changelist")).content.decode()
    host_page = admin_client.get(reverse("admin:hosts_host_change", args=[host.pk])).content.decode()
    for page in (overview, host_page):
        assert "tok/s" in page and "TTFT" in page


def test_a_new_digest_clears_the_benchmark(sim_host):
    sim = sim_host(models=[SimModel(name="llama3.2:1b", digest="a" * 64)])
    host = register(sim)
    HostModel.objects.filter(host=host).update(bench_ttft_ms=80.0, bench_gen_tps=40.0, bench_at="2026-11-25T10:00Z")
    async_to_sync(check_hosts)(["box"])
    assert HostModel.objects.get(host=host).bench_ttft_ms == 80.0  # an ordinary check keeps it
    sim.config.models = [SimModel(name="llama3.2:1b", digest="b" * 64)]
    async_to_sync(check_hosts)(["box"])
    row = HostModel.objects.get(host=host)
    assert row.bench_ttft_ms is None and row.bench_at is None


def pull_via_admin(admin_client, hosts, model):
    return admin_client.post(
        reverse("admin:hosts_host_changelist"),
        {"action": "pull_model", "_selected_action": [h.pk for h in hosts], "apply": "1", "model": model},
    )


def test_pull_onto_two_hosts_downloads_and_lists_the_model(admin_client, sim_host):
    one, two = sim_host(models=["llama3.2:1b"], pull_seconds=0.3), sim_host(models=[], pull_seconds=0.3)
    hosts = [register(one, "one"), register(two, "two")]
    response = pull_via_admin(admin_client, hosts, "llama3.2:3b")
    assert response.status_code == 302 and "id__in=" in response["Location"]
    ops = list(GardenOperation.objects.filter(kind="pull").order_by("host_name"))
    assert [(op.host_name, op.model, op.status) for op in ops] == [
        ("one", "llama3.2:3b", "succeeded"),
        ("two", "llama3.2:3b", "succeeded"),
    ], [op.error for op in ops]
    for op in ops:
        assert op.total and op.completed == op.total and op.result["bytes"] == op.total
        assert HostModel.objects.filter(host__name=op.host_name, name="llama3.2:3b", loaded=False).exists()
    page = admin_client.get(response["Location"]).content.decode()
    assert page.count('data-field="bar"') == 2 and "succeeded" in page


def test_pull_of_a_model_the_library_does_not_have_shows_the_hosts_error(admin_client, sim_host):
    host = register(sim_host(models=["llama3.2:1b"]))
    pull_via_admin(admin_client, [host], "no-such-model:13b")
    op = GardenOperation.objects.get(kind="pull")
    assert op.status == "failed" and "file does not exist" in op.error and "box" in op.error
    assert not HostModel.objects.filter(name="no-such-model:13b").exists()


def test_a_host_dying_mid_pull_fails_the_pull_and_the_next_one_works(admin_client, sim_host):
    sim = sim_host(models=[], pull_seconds=0.5, fail="drop", fail_paths=["/api/pull"], fail_after_tokens=4)
    host = register(sim)
    pull_via_admin(admin_client, [host], "llama3.2:3b")
    failed = GardenOperation.objects.get(kind="pull")
    assert failed.status == "failed", failed.error
    assert "box" in failed.error and (
        "lost the connection" in failed.error or "before the pull finished" in failed.error
    )
    assert failed.percent is None or failed.percent < 100
    sim.config.fail = None
    pull_via_admin(admin_client, [host], "llama3.2:3b")
    again = GardenOperation.objects.exclude(pk=failed.pk).get(kind="pull")
    assert again.status == "succeeded", again.error
    assert HostModel.objects.filter(host=host, name="llama3.2:3b").exists()


def test_a_host_that_stalls_mid_pull_fails_the_pull_after_the_idle_timeout(admin_client, sim_host, settings):
    settings.CLOOD_PULL_IDLE_TIMEOUT = 0.5
    # Three progress lines, then a byte every 2 s: the connection is open, the pull goes nowhere.
    sim = sim_host(models=[], pull_seconds=0.5, fail="drip", drip_rate=0.5, fail_paths=["/api/pull"],
                   fail_after_tokens=3)  # fmt: skip
    host = register(sim)
    pull_via_admin(admin_client, [host], "llama3.2:3b")
    stalled = GardenOperation.objects.get(kind="pull")
    assert stalled.status == "failed", stalled.error
    assert stalled.error.startswith("lost the connection to box") and "timed out" in stalled.error, stalled.error
    assert not HostModel.objects.filter(host=host, name="llama3.2:3b").exists()


def test_a_pull_to_a_host_that_is_gone_fails_with_a_clear_error(admin_client, sim_host):
    sim = sim_host(models=["llama3.2:1b"])
    host = register(sim)
    sim.stop()
    pull_via_admin(admin_client, [host], "llama3.2:3b")
    op = GardenOperation.objects.get(kind="pull")
    assert op.status == "failed" and "connection refused" in op.error


def test_pull_onto_an_openai_backend_is_refused_and_the_ollama_host_still_pulls(admin_client, sim_host):
    ollama, vllm = sim_host(models=[]), sim_host(models=["served-model"], ollama_api=False)
    hosts = [register(ollama, "box"), register(vllm, "vllm", backend="openai")]
    response = pull_via_admin(admin_client, hosts, "llama3.2:1b")
    assert GardenOperation.objects.get().host_name == "box"
    messages = [str(m) for m in response.wsgi_request._messages]
    assert any("vllm is an OpenAI-compatible server" in m for m in messages)


def test_copy_pulls_every_model_the_target_lacks_one_at_a_time(admin_client, sim_host):
    source = sim_host(models=["llama3.2:1b", "qwen2.5-coder:7b", "nomic-embed-text"])
    target = sim_host(models=["llama3.2:1b"])
    src, dst = register(source, "src"), register(target, "dst")
    response = admin_client.post(
        reverse("admin:hosts_host_changelist"),
        {"action": "copy_models", "_selected_action": [dst.pk], "apply": "1", "source": src.pk},
    )
    assert response.status_code == 302
    ops = list(GardenOperation.objects.order_by("pk"))
    assert [(op.model, op.host_name, op.status) for op in ops] == [
        ("nomic-embed-text:latest", "dst", "succeeded"),
        ("qwen2.5-coder:7b", "dst", "succeeded"),
    ]
    assert ops[0].finished_at <= ops[1].started_at  # one after another
    assert set(HostModel.objects.filter(host=dst).values_list("name", flat=True)) == {
        "llama3.2:1b", "qwen2.5-coder:7b", "nomic-embed-text:latest"}  # fmt: skip


def test_a_copy_keeps_its_queued_pulls_from_looking_stale_and_a_killed_copy_s_go_stale(
    admin_client, sim_host, monkeypatch
):
    from hosts import garden

    monkeypatch.setattr(garden, "HEARTBEAT", 0.1)
    source = sim_host(models=["llama3.2:1b", "qwen2.5-coder:7b"])
    target = sim_host(models=[], pull_seconds=0.8)
    src, dst = register(source, "src"), register(target, "dst")
    seen_waiting = []
    original_run = garden.run

    async def run(pk):
        row = await GardenOperation.objects.aget(pk=pk)
        seen_waiting.append((row.status, (row.updated_at - row.started_at).total_seconds()))
        await original_run(pk)

    monkeypatch.setattr(garden, "run", run)
    admin_client.post(
        reverse("admin:hosts_host_changelist"),
        {"action": "copy_models", "_selected_action": [dst.pk], "apply": "1", "source": src.pk},
    )
    assert [status for status, _ in seen_waiting] == ["queued", "queued"]
    assert seen_waiting[0][1] < 0.1  # the first starts at once...
    assert seen_waiting[1][1] >= 0.1  # ...the second was touched while it waited for the first's pull
    assert set(GardenOperation.objects.values_list("status", flat=True)) == {"succeeded"}

    # A process killed mid-copy leaves queued pulls nobody touches: an operations page marks them failed.
    from datetime import timedelta

    from django.utils import timezone

    old = timezone.now() - timedelta(seconds=garden.STALE_AFTER + 5)
    left = GardenOperation.objects.create(kind="pull", host=dst, host_name="dst", model="phi3:mini",
                                          status="queued", started_at=old, updated_at=old)  # fmt: skip
    assert "the clood process running it stopped" in admin_client.get("/admin/hosts/gardenoperation/").content.decode()
    left.refresh_from_db()
    assert left.status == "failed"


def test_copy_onto_a_host_that_has_everything_says_so(admin_client, sim_host):
    src, dst = register(sim_host(models=["llama3.2:1b"]), "src"), register(sim_host(models=["llama3.2:1b"]), "dst")
    response = admin_client.post(
        reverse("admin:hosts_host_changelist"),
        {"action": "copy_models", "_selected_action": [dst.pk], "apply": "1", "source": src.pk},
    )
    assert "already has every model src has" in response.content.decode()
    assert not GardenOperation.objects.exists()


def test_delete_removes_the_model_from_the_host_and_the_inventory(admin_client, sim_host):
    sim = sim_host(models=["llama3.2:1b", "mistral:7b"])
    host = register(sim)
    row = HostModel.objects.get(host=host, name="mistral:7b")
    operate(admin_client, row, "delete")
    op = GardenOperation.objects.get(kind="delete")
    assert op.status == "succeeded", op.error
    assert [m.name for m in sim.config.models] == ["llama3.2:1b"]
    assert list(HostModel.objects.filter(host=host).values_list("name", flat=True)) == ["llama3.2:1b"]


def test_delete_of_a_model_the_host_no_longer_has_shows_the_hosts_404(admin_client, sim_host):
    sim = sim_host(models=["llama3.2:1b", "mistral:7b"])
    host = register(sim)
    row = HostModel.objects.get(host=host, name="mistral:7b")
    sim.config.models = [m for m in sim.config.models if m.name != "mistral:7b"]  # gone behind clood's back
    operate(admin_client, row, "delete")
    op = GardenOperation.objects.get(kind="delete")
    assert op.status == "failed" and "404" in op.error and "not found" in op.error


def test_a_running_operation_whose_process_was_killed_is_shown_failed(admin_client, sim_host, monkeypatch):
    from datetime import timedelta

    from django.utils import timezone

    from atc import events
    from hosts import garden

    published = []
    original = events.publish

    def spy(event_type, /, **data):
        published.append((event_type, data))
        return original(event_type, **data)

    monkeypatch.setattr(events, "publish", spy)

    sim = sim_host(models=["llama3.2:1b"])
    host = register(sim)
    old = timezone.now() - timedelta(seconds=garden.STALE_AFTER + 5)
    killed = GardenOperation.objects.create(kind="benchmark", host=host, host_name="box", model="llama3.2:1b",
                                            status="running", updated_at=old)  # fmt: skip
    alive = GardenOperation.objects.create(kind="preload", host=host, host_name="box", model="llama3.2:1b",
                                           status="running")  # fmt: skip

    page = admin_client.get("/admin/hosts/gardenoperation/")

    assert page.status_code == 200
    assert "the clood process running it stopped" in page.content.decode()
    killed.refresh_from_db()
    alive.refresh_from_db()
    assert killed.status == "failed" and killed.finished_at is not None
    assert alive.status == "running"  # its heartbeat is recent: another process may well be running it
    assert [(event_type, data["id"], data["status"]) for event_type, data in published] == [
        ("operation_finished", killed.pk, "failed")
    ]  # ATC's host card drops its bar
    admin_client.get("/admin/hosts/gardenoperation/")
    assert len(published) == 1  # once
