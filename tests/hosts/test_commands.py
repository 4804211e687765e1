"""`manage.py hosts …` and `manage.py bootstrap`."""

import json
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from hosts.models import Host
from tests.conftest import closed_port_url

pytestmark = pytest.mark.django_db


def run(*args):
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_add_list_remove(monkeypatch):
    monkeypatch.setenv("BOX_KEY", "sk-cmd-canary-1234")
    run("hosts", "add", "box", "http://10.0.0.5:11434/", "--priority", "5", "--max-concurrency", "3")
    run("hosts", "add", "vllm", "http://10.0.0.6:8000", "--backend", "openai", "--api-key-env", "BOX_KEY")
    host = Host.objects.get(name="box")
    assert (host.base_url, host.priority, host.max_concurrency) == ("http://10.0.0.5:11434", 5, 3)
    assert Host.objects.get(name="vllm").api_key == "sk-cmd-canary-1234"

    listing = json.loads(run("hosts", "list", "--json"))
    assert [h["name"] for h in listing] == ["box", "vllm"]
    assert listing[1]["api_key_set"] is True
    text = run("hosts", "list")
    assert "box" in text and "unknown" in text
    assert "sk-cmd-canary-1234" not in text + json.dumps(listing)

    assert "removed box" in run("hosts", "remove", "box")
    assert list(Host.objects.values_list("name", flat=True)) == ["vllm"]


def test_add_again_updates_the_host():
    run("hosts", "add", "box", "http://127.0.0.1:11434")
    assert "updated box" in run("hosts", "add", "box", "http://127.0.0.1:11500", "--priority", "1")
    assert Host.objects.get().base_url == "http://127.0.0.1:11500"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["add", "box", "not-a-url"], "base_url"),
        (["add", "bad name", "http://127.0.0.1:1"], "name"),
        (["add", "box", "http://127.0.0.1:1", "--max-concurrency", "0"], "max_concurrency"),
        (["add", "box", "http://127.0.0.1:1", "--api-key-env", "NOT_SET_ANYWHERE_42"], "is not set"),
        (["remove", "nobody"], "no host named"),
        (["refresh", "nobody"], "no host named"),
    ],
)
def test_bad_input_is_a_clear_error(args, message):
    with pytest.raises(CommandError, match=message):
        run("hosts", *args)
    assert not Host.objects.exists()


def test_bad_backend_exits_non_zero():
    with pytest.raises(CommandError, match="invalid choice"):
        run("hosts", "add", "box", "http://127.0.0.1:1", "--backend", "nope")


def test_refresh(sim_host):
    sim = sim_host(models=["a:1b"])
    run("hosts", "add", "up", sim.url)
    assert "up: online, 1 models" in run("hosts", "refresh", "up")
    run("hosts", "add", "down", closed_port_url())
    with pytest.raises(CommandError, match="1 of 2 hosts failed"):
        run("hosts", "refresh")
    assert Host.objects.get(name="down").online is False


def test_bootstrap_generates_an_admin_password_once(settings):
    settings.CLOOD_ADMIN_PASSWORD = ""
    settings.CLOOD_DEFAULT_HOSTS = ["localhost=http://localhost:11434"]
    first = run("bootstrap")
    password = first.split("password: ")[1].split()[0]
    assert get_user_model().objects.get(username="admin").check_password(password)
    assert "registered default host localhost" in first

    second = run("bootstrap")
    assert "password" not in second and "registered" not in second
    assert Host.objects.count() == 1


def test_bootstrap_takes_credentials_and_hosts_from_settings(settings):
    settings.CLOOD_ADMIN_USER = "boss"
    settings.CLOOD_ADMIN_PASSWORD = "a-long-pass-phrase"
    settings.CLOOD_DEFAULT_HOSTS = ["one=http://127.0.0.1:11434", "two=http://127.0.0.1:11435"]
    out = run("bootstrap")
    assert "a-long-pass-phrase" not in out
    assert get_user_model().objects.get(username="boss").check_password("a-long-pass-phrase")
    assert list(Host.objects.values_list("name", flat=True)) == ["one", "two"]


@pytest.mark.parametrize(
    ("password", "why"),
    [("short1", "too short"), ("password123", "too common"), ("8675309123", "entirely numeric"),
     ("admin-01", "too similar to the username")],
)  # fmt: skip
def test_bootstrap_refuses_a_weak_admin_password_and_never_shows_it(settings, password, why):
    settings.CLOOD_ADMIN_PASSWORD = password
    with pytest.raises(CommandError) as refused:
        run("bootstrap")
    assert why in str(refused.value) and password not in str(refused.value)
    assert not get_user_model().objects.filter(username="admin").exists()


def test_bootstrap_still_starts_an_install_whose_admin_already_has_that_password(settings):
    get_user_model().objects.create_superuser(username="admin", email="", password="short1")  # from before the check
    settings.CLOOD_ADMIN_PASSWORD = "short1"
    assert "admin" not in run("bootstrap")  # nothing to set, nothing refused


def test_bootstrap_leaves_an_existing_registry_alone(settings):
    Host.objects.create(name="mine", base_url="http://127.0.0.1:1")
    settings.CLOOD_DEFAULT_HOSTS = ["localhost=http://localhost:11434"]
    run("bootstrap")
    assert list(Host.objects.values_list("name", flat=True)) == ["mine"]


def test_bootstrap_rejects_a_bad_default_host(settings):
    settings.CLOOD_DEFAULT_HOSTS = ["just-a-name"]
    with pytest.raises(CommandError, match="not name=url"):
        run("bootstrap")
