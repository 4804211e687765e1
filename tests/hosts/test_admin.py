"""Admin flows through the real admin views: register, edit, list, actions, inventory, model overview."""

import pytest
from asgiref.sync import async_to_sync
from django.urls import reverse

from hosts.models import Host
from hosts.monitor import check_hosts
from hosts.simulator import SimModel
from tests.conftest import closed_port_url

pytestmark = pytest.mark.django_db

CANARY = "sk-admin-canary-7f3a9e"


def host_form(**overrides):
    form = {
        "name": "gpu-box",
        "base_url": "http://127.0.0.1:11434",
        "backend": "ollama",
        "enabled": "on",
        "priority": "10",
        "max_concurrency": "2",
        "new_api_key": "",
        "static_models": "",
        "hardware_cpu": "Ryzen 9",
        "hardware_gpu": "RTX 4090",
        "hardware_memory": "64 GB",
        "notes": "",
        "models-TOTAL_FORMS": "0",
        "models-INITIAL_FORMS": "0",
        "models-MIN_NUM_FORMS": "0",
        "models-MAX_NUM_FORMS": "0",
    }
    form.update(overrides)
    return form


def add_host(admin_client, **overrides):
    return admin_client.post(reverse("admin:hosts_host_add"), host_form(**overrides))


def run_action(admin_client, action, *hosts):
    form = {"action": action, "_selected_action": [h.pk for h in hosts]}
    return admin_client.post(reverse("admin:hosts_host_changelist"), form, follow=True)


def test_lan_names_are_valid_urls(admin_client):
    assert add_host(admin_client, base_url="http://gpu-box:11434").status_code == 302
    assert Host.objects.get().base_url == "http://gpu-box:11434"


def test_register_a_host(admin_client):
    response = add_host(admin_client, new_api_key=CANARY, base_url="http://127.0.0.1:11434/")
    assert response.status_code == 302, response.content.decode()[:2000]
    host = Host.objects.get(name="gpu-box")
    assert host.base_url == "http://127.0.0.1:11434"
    assert (host.priority, host.max_concurrency, host.hardware_gpu) == (10, 2, "RTX 4090")
    assert host.api_key == CANARY


def test_api_key_is_write_only(admin_client):
    add_host(admin_client, new_api_key=CANARY)
    host = Host.objects.get(name="gpu-box")
    change_url = reverse("admin:hosts_host_change", args=[host.pk])

    page = admin_client.get(change_url).content.decode()
    assert CANARY not in page
    assert "set (hidden)" in page

    admin_client.post(change_url, host_form(priority="3"))  # blank key on edit keeps the old one
    host.refresh_from_db()
    assert host.priority == 3 and host.api_key == CANARY

    for url in [reverse("admin:hosts_host_changelist"), reverse("admin:hosts_host_history", args=[host.pk])]:
        assert CANARY not in admin_client.get(url).content.decode()

    admin_client.post(change_url, host_form(clear_api_key="on"))
    host.refresh_from_db()
    assert host.api_key == ""


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("base_url", "ftp://example.com", "Enter a valid URL"),
        ("base_url", "not a url", "Enter a valid URL"),
        ("base_url", "http://host:99999", "Enter a valid URL"),
        ("base_url", "http://bad host:1", "Enter a valid URL"),
        ("base_url", "http://host:11434/?x=1", "no query string"),
        ("base_url", "http://admin:sk-url-secret@host:11434", "cannot carry a user name or password"),
        ("name", "has spaces", "Enter a valid “slug”"),
        ("max_concurrency", "0", "greater than or equal to 1"),
    ],
)
def test_invalid_host_is_refused_with_a_message(admin_client, field, value, message):
    response = add_host(admin_client, **{field: value})
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not Host.objects.exists()


def test_duplicate_name_is_refused(admin_client):
    add_host(admin_client)
    response = add_host(admin_client, base_url="http://127.0.0.1:11435")
    assert "Host with this Name already exists." in response.content.decode()
    assert Host.objects.count() == 1


def test_host_list_shows_health_at_a_glance(admin_client, sim_host):
    sim = sim_host(models=[SimModel(name="llama3.2:1b", loaded=True), SimModel(name="qwen2.5-coder:3b")])
    Host.objects.create(name="up", base_url=sim.url)
    Host.objects.create(name="down", base_url=closed_port_url())
    async_to_sync(check_hosts)()

    page = admin_client.get(reverse("admin:hosts_host_changelist")).content.decode()
    assert ">online<" in page and ">offline<" in page
    assert " ms</td>" in page
    assert sim.config.version in page
    assert "llama3.2:1b" in page  # loaded now
    assert "connection refused" in page


def test_refresh_now_reports_each_host(admin_client, sim_host):
    up = Host.objects.create(name="up", base_url=sim_host(models=["a:1b", "b:1b"]).url)
    down = Host.objects.create(name="down", base_url=closed_port_url())
    response = run_action(admin_client, "refresh_now", up, down)
    page = response.content.decode()
    assert "Host up: online" in page and "2 models" in page
    assert "Host down: offline — connection refused" in page
    assert Host.objects.get(name="up").online is True
    assert Host.objects.get(name="up").models.count() == 2


def test_test_connection_saves_nothing(admin_client, sim_host):
    host = Host.objects.create(name="up", base_url=sim_host(models=["a:1b"]).url)
    response = run_action(admin_client, "test_connection", host)
    assert "Host up: reachable in" in response.content.decode()
    host.refresh_from_db()
    assert host.online is None and not host.models.exists()


def test_test_connection_with_a_wrong_key_hides_the_key(admin_client, sim_host):
    sim = sim_host(models=["m"], api_key="right", ollama_api=False)
    host = Host.objects.create(name="vllm", base_url=sim.url, backend="openai", api_key=CANARY)
    response = run_action(admin_client, "test_connection", host)
    page = response.content.decode()
    assert "Host vllm: failed" in page and "401" in page
    assert CANARY not in page


def test_host_page_shows_inventory_read_only(admin_client, sim_host):
    sim = sim_host(models=[SimModel(name="llama3.2:1b", loaded=True, quantization="Q8_0", context_length=8192)])
    host = Host.objects.create(name="box", base_url=sim.url)
    async_to_sync(check_hosts)()
    page = admin_client.get(reverse("admin:hosts_host_change", args=[host.pk])).content.decode()
    for text in ["llama3.2:1b", "Q8_0", "8192", "Inventory (read-only"]:
        assert text in page
    assert 'name="models-0-remote_name"' not in page  # read-only: no inputs


def test_model_overview_flags_digest_differences(admin_client, sim_host):
    one = sim_host(models=[SimModel(name="llama3.2:1b", digest="a" * 64), SimModel(name="shared:7b")])
    two = sim_host(models=[SimModel(name="llama3.2:1b", digest="b" * 64), SimModel(name="shared:7b")])
    Host.objects.create(name="one", base_url=one.url)
    Host.objects.create(name="two", base_url=two.url)
    async_to_sync(check_hosts)()

    page = admin_client.get(reverse("admin:hosts_hostmodel_changelist")).content.decode()
    llama_row = page[page.index('data-model="llama3.2:1b"') :].split("</tr>")[0]
    shared_row = page[page.index('data-model="shared:7b"') :].split("</tr>")[0]
    assert "digest differs" in llama_row and ">one<" in llama_row and ">two<" in llama_row
    assert "digest differs" not in shared_row


def test_admin_requires_login(client):
    response = client.get(reverse("admin:hosts_host_changelist"))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
