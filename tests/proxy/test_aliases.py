"""Aliases and tiers: the classifier's table, resolution on hand-built snapshots, the admin, and real clients against a
running clood whose aliases point at models on simulated hosts."""

import asyncio
import json

import httpx
import ollama
import openai
import pytest
from channels.layers import get_channel_layer
from channels.testing import HttpCommunicator
from django.urls import reverse

from clood_site.asgi import application
from hosts import snapshot
from hosts.models import Host, HostModel
from hosts.names import normalize_model_name
from hosts.snapshot import Snapshot
from proxy import aliases
from proxy.aliases import AliasTable, AliasView, resolve
from proxy.classify import DEEP_PROMPT_CHARS, classify
from proxy.models import Alias
from proxy.relay import close_session
from proxy.routing import choose_hosts
from proxy.stats import LiveStats
from tests.conftest import wait_until
from tests.proxy.test_routing import host

# --- the classifier -------------------------------------------------------------------------------------------------


def user(text):
    return {"messages": [{"role": "user", "content": text}]}


@pytest.mark.parametrize(
    ("payload", "tier", "why"),
    [
        (user("```python\nprint('hi')\n```\nwhat does this print?"), "code", "code block"),
        (user("def add(a, b):\n    return a - b\nwhat is wrong?"), "code", "Python function"),
        (user("#include <stdio.h>\nint main() { return 0; }"), "code", "include"),
        (user('Traceback (most recent call last):\n  File "x.py", line 1\nValueError: bad'), "code", "stack trace"),
        (user("How do I reverse a list in Python?"), "code", "asks about code"),
        (user("Write a bash script that backs up my home directory"), "code", "asks about code"),
        (user("SELECT name FROM users WHERE id = 1 is slow, why?"), "code", "SQL"),
        (user("function greet(name) { return 'hi ' + name }"), "code", "JavaScript"),
        (user("Write a poem about the sea"), "writing", "writing"),
        (user("Can you draft an email to my landlord about the broken heater?"), "writing", "draft an email"),
        (user("Rewrite this paragraph to sound more formal: we ain't coming."), "writing", "Rewrite"),
        (user("Summarise this article for me: cats are great."), "writing", "Summarise"),
        (user("Why is the sky blue?"), "deep", "reasoning ('Why')"),
        (user("Prove that the square root of 2 is irrational."), "deep", "Prove"),
        (user("Compare PostgreSQL and MySQL for a small team"), "deep", "Compare"),
        (user("Explain step by step how a bill becomes law"), "deep", "step by step"),
        (user("tell me about cats. " * 100), "deep", f"> {DEEP_PROMPT_CHARS}"),
        (user("What is the capital of France?"), "fast", "simple"),
        (user("hi"), "fast", "simple"),
        (user("Translate 'good morning' to Spanish"), "fast", "simple"),
        (user(""), "fast", "empty"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "What colour is this?"}]}]}, "fast", ""),
        ({"prompt": "Why do cats purr?"}, "deep", "Why"),
        (
            {
                "messages": [
                    {"role": "user", "content": "```x```"},
                    {"role": "assistant", "content": "ok"},
                    {"role": "user", "content": "thanks! what is 2+2?"},
                ]
            },
            "fast",
            "simple",
        ),  # fmt: skip
    ],
)
def test_classifier(payload, tier, why):
    got, reason = classify(payload)
    assert got == tier, reason
    assert why in reason


# --- resolution on hand-built snapshots ------------------------------------------------------------------------------


def table(*specs):
    """AliasTable from (name, [targets], enabled) tuples."""
    by_key = {}
    for name, targets, *enabled in specs:
        key = normalize_model_name(name)
        by_key[key] = AliasView(name, key, tuple(normalize_model_name(t) for t in targets), "",
                                enabled[0] if enabled else True, None)  # fmt: skip
    return AliasTable(by_key=by_key, loaded_at=1.0)


def route_for(name, hosts, alias_table, payload=None):
    garden = Snapshot(hosts=tuple(hosts))

    def choose(model):
        return choose_hosts(model, garden, LiveStats(), {})

    return resolve(normalize_model_name(name), payload or user("hi"), garden, alias_table, choose)


def test_an_alias_is_served_by_its_first_target_with_a_usable_host():
    hosts = [host("down", models=("big:7b",), online=False), host("up", models=("small:1b", "tiny:1b"))]
    route = route_for("fast", hosts, table(("fast", ["missing:1b", "big:7b", "small:1b", "tiny:1b"])))
    first, fallback = route.decisions()
    assert (first.model, fallback.model) == ("small:1b", "tiny:1b")
    assert first.alias == "fast"
    assert first.alias_reason == ("fast → small:1b: first in the chain held by a usable host; skipped missing:1b "
                                  "(no host has it), big:7b (no usable host); fallbacks: tiny:1b")  # fmt: skip
    assert "after every host of small:1b failed" in fallback.alias_reason


def test_a_real_model_wins_over_an_alias_of_the_same_name():
    route = route_for("fast", [host("h", models=("fast:latest", "small:1b"))], table(("fast", ["small:1b"])))
    assert route.alias is None and route.decisions()[0].model == "fast:latest"


def test_a_disabled_alias_is_no_alias():
    route = route_for("fast", [host("h", models=("small:1b",))], table(("fast", ["small:1b"], False)))
    assert route.alias is None and route.decisions() == []


def test_auto_picks_the_classified_tier_then_falls_back_in_its_order():
    hosts = [host("h", models=("coder:7b", "small:1b")), host("off", models=("poet:7b",), online=False)]
    tiers = table(("auto", ["fast", "code", "writing"]), ("fast", ["small:1b"]), ("code", ["coder:7b"]),
                  ("writing", ["poet:7b"]))  # fmt: skip
    code = route_for("auto", hosts, tiers, user("```\nx = 1\n```")).decisions()[0]
    assert code.model == "coder:7b"
    assert code.auto == {"tier": "code", "classified": "code", "reason": "the prompt contains a code block"}
    assert code.alias_reason.startswith("auto → code → coder:7b: first in the chain")
    writing = route_for("auto", hosts, tiers, user("Write a poem about dogs")).decisions()[0]
    assert writing.model == "small:1b" and writing.auto["tier"] == "fast"
    assert "writing has no usable host, so fast" in writing.auto["reason"]
    deep = route_for("auto", hosts, tiers, user("Why?")).decisions()[0]  # deep is not one of auto's tiers
    assert deep.auto["tier"] == "fast" and "deep is not one of auto's tiers" in deep.auto["reason"]


# --- the admin -------------------------------------------------------------------------------------------------------


def alias_form(**overrides):
    return {"name": "fast", "enabled": "on", "targets": "qwen2.5-coder:7b\nllama3.2:3b", "description": "", **overrides}


@pytest.mark.django_db
def test_an_alias_is_made_in_the_admin_and_listed_with_what_serves_it(admin_client):
    box = Host.objects.create(name="box", base_url="http://box", online=True)
    HostModel.objects.create(host=box, name="llama3.2:3b", remote_name="llama3.2:3b")
    response = admin_client.post(reverse("admin:proxy_alias_add"), alias_form())
    assert response.status_code == 302, response.content.decode()
    alias = Alias.objects.get()
    assert alias.targets == ["qwen2.5-coder:7b", "llama3.2:3b"] and alias.name_key == "fast:latest"
    page = admin_client.get(reverse("admin:proxy_alias_changelist")).content.decode()
    assert "qwen2.5-coder:7b → llama3.2:3b" in page
    assert '<td class="field-serving_now">llama3.2:3b</td>' in page


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("form", "message"),
    [
        (alias_form(targets=""), "This field is required"),
        (alias_form(targets="llama 3"), "is not a model name"),
        (alias_form(targets="fast:latest\nllama3.2:3b"), "may not list itself"),
        (alias_form(targets="llama3.2\nllama3.2:latest"), "listed more than once"),
        (alias_form(name="bad name!"), "cannot be an alias name"),
        (alias_form(name="FAST:latest"), "There is already an alias"),
        (alias_form(name="smart", targets="fast"), "only auto may list aliases"),
    ],
)
def test_bad_aliases_are_refused_with_a_message(admin_client, form, message):
    Alias.objects.create(name="fast", targets=["llama3.2:3b"])
    response = admin_client.post(reverse("admin:proxy_alias_add"), form)
    assert response.status_code == 200 and message in response.content.decode()
    assert Alias.objects.count() == 1


@pytest.mark.django_db
def test_auto_may_list_tier_aliases_but_a_tier_may_not_then_be_listed_by_another_alias(admin_client):
    Alias.objects.create(name="fast", targets=["llama3.2:3b"])
    assert (
        admin_client.post(reverse("admin:proxy_alias_add"), alias_form(name="auto", targets="fast")).status_code == 302
    )
    Alias.objects.create(name="group", targets=["mistral:7b"])
    response = admin_client.post(reverse("admin:proxy_alias_add"), alias_form(name="mistral:7b", targets="x:1b"))
    assert "The alias group lists mistral:7b as a model" in response.content.decode()


# --- events (in this process, as tests/proxy/test_events.py) ---------------------------------------------------------


@pytest.fixture
async def close_upstream_session():
    yield
    await close_session()


async def drain(layer, channel, until):
    events = []
    while not events or events[-1]["type"] != until:
        events.append((await asyncio.wait_for(layer.receive(channel), 5))["event"])
    return events


@pytest.mark.django_db(transaction=True)
async def test_events_say_which_model_an_alias_resolved_to_and_why(sim_host, close_upstream_session):
    sim = sim_host(models=["qwen2.5-coder:7b", "llama3.2:3b"])
    box = await Host.objects.acreate(name="box", base_url=sim.url, online=True)
    for name in ("qwen2.5-coder:7b", "llama3.2:3b"):
        await HostModel.objects.acreate(host=box, name=name, remote_name=name, loaded=True)
    await Alias.objects.acreate(name="code", targets=["mistral:7b", "qwen2.5-coder:7b", "llama3.2:3b"])
    await Alias.objects.acreate(name="fast", targets=["llama3.2:3b"])
    await Alias.objects.acreate(name="auto", targets=["fast", "code"])
    await snapshot.refresh()
    await aliases.refresh()
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add("atc", channel)

    body = {"model": "auto", "messages": [{"role": "user", "content": "```\nprint(1)\n```"}]}
    communicator = HttpCommunicator(application, "POST", "/v1/chat/completions", body=json.dumps(body).encode(),
                                    headers=[(b"content-type", b"application/json")])  # fmt: skip
    response = await communicator.get_response(timeout=10)
    assert response["status"] == 200
    headers = dict(response["headers"])
    assert headers[b"x-clood-alias"] == b"auto" and headers[b"x-clood-tier"] == b"code"
    assert headers[b"x-clood-model"] == b"qwen2.5-coder:7b"
    assert json.loads(response["body"])["model"] == "qwen2.5-coder:7b"  # the host's answer, relayed as it is
    started = (await drain(layer, channel, until="request_completed"))[0]["data"]
    assert started["model"] == "auto" and started["resolved_model"] == "qwen2.5-coder:7b"
    assert started["alias"] == "auto"
    assert started["alias_reason"] == ("auto → code → qwen2.5-coder:7b: first in the chain held by a usable host; "
                                       "skipped mistral:7b (no host has it); fallbacks: llama3.2:3b")  # fmt: skip
    assert started["auto"] == {"tier": "code", "classified": "code", "reason": "the prompt contains a code block"}
    assert started["decision"]["alias"] == "auto" and started["decision"]["resolved_model"] == "qwen2.5-coder:7b"


# --- real clients against a running clood ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def garden(clood_factory, sims):
    garden = clood_factory(env={"CLOOD_ROUTING_STRATEGY": "priority"})
    garden.add("coder", sims(models=["qwen2.5-coder:7b"]), "--priority", "1")
    garden.add("small", sims(models=["llama3.2:3b", "llama3.2:1b"]), "--priority", "2")
    garden.add("big", sims(models=["qwen2.5:14b"]), "--priority", "3")
    garden.add("off", sims(models=["mistral:7b"]), "--priority", "4")
    garden.refresh()
    garden.add("off", garden.sims["off"], "--disabled")  # keeps its inventory: mistral:7b has no usable host
    garden.server.manage("aliases", "set", "fast", "llama3.2:3b", "--description", "quick answers")
    more = [  # in one process: each manage.py run costs seconds
        ("code", ["mistral:7b", "qwen2.5-coder:7b", "llama3.2:3b"], True),
        ("deep", ["qwen2.5:14b", "llama3.2:3b"], True),
        ("writing", ["mistral:7b"], True),
        ("auto", ["fast", "code", "deep", "writing"], True),
        ("ghost", ["nothing-here:1b", "llama3.2:1b"], True),
        ("nowhere", ["nothing-here:1b", "nothing-either:2b"], True),
        ("stale", ["mistral:7b"], True),
        ("retired", ["llama3.2:1b"], False),
    ]
    script = (
        f"from proxy.models import Alias\nfor n, t, e in {more!r}: Alias.objects.create(name=n, targets=t, enabled=e)"
    )
    garden.server.manage("shell", "-c", script)
    garden.refresh()
    wait_until(lambda: len(garden.status()["aliases"]) == 9, what="the aliases to reach clood")
    return garden


@pytest.fixture
def client(garden):
    return openai.OpenAI(base_url=garden.url + "/v1", api_key="sk-any", max_retries=0)


MESSAGES = [{"role": "user", "content": "hi"}]


def chat(garden, model, content="hi", **body):
    return httpx.post(garden.url + "/v1/chat/completions", timeout=30,
                      json={"model": model, "messages": [{"role": "user", "content": content}], **body})  # fmt: skip


def test_an_alias_is_served_by_its_first_target(client):
    response = client.chat.completions.with_raw_response.create(model="fast", messages=MESSAGES)
    assert response.parse().model == "llama3.2:3b"
    assert response.headers["x-clood-alias"] == "fast" and response.headers["x-clood-model"] == "llama3.2:3b"
    assert response.headers["x-clood-host"] == "small" and "x-clood-tier" not in response.headers


def test_a_target_without_a_usable_host_is_skipped(garden):
    response = chat(garden, "code")  # mistral:7b is on a disabled host
    assert response.status_code == 200 and response.headers["x-clood-model"] == "qwen2.5-coder:7b"
    row = garden.log_for(response.headers["x-clood-request-id"])
    assert row["model"] == "code" and row["served_model"] == "qwen2.5-coder:7b" and row["host"] == "coder"


def test_a_target_no_host_has_is_skipped(garden):
    response = chat(garden, "ghost", stream=True)
    assert response.status_code == 200 and response.headers["x-clood-model"] == "llama3.2:1b"
    assert "data: [DONE]" in response.text


def test_when_every_host_of_a_target_fails_the_next_target_serves(garden):
    big = garden.sims["big"]
    big.config.fail, big.config.fail_status = "error", 500
    try:
        response = chat(garden, "deep")
    finally:
        big.config.fail = None
    assert response.status_code == 200, response.text
    assert response.headers["x-clood-model"] == "llama3.2:3b" and response.headers["x-clood-host"] == "small"
    row = garden.log_for(response.headers["x-clood-request-id"])
    assert row["attempts"][0] == {"host": "big", "model": "qwen2.5:14b", "error": row["attempts"][0]["error"],
                                  "status": 500}  # fmt: skip
    assert row["attempts"][1] == {"host": "small"} and row["served_model"] == "llama3.2:3b"


def test_the_ollama_client_uses_an_alias(garden):
    answer = ollama.Client(host=garden.url).chat(model="fast", messages=MESSAGES)
    assert answer["message"]["content"] and answer["model"] == "llama3.2:3b"


def test_unservable_and_disabled_aliases_are_unknown_models(client, garden):
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="nowhere", messages=MESSAGES)
    assert "'nowhere' is an alias of nothing-here:1b, nothing-either:2b" in missing.value.message
    unusable = chat(garden, "stale")
    assert unusable.status_code == 503 and "alias 'stale' (mistral:7b)" in unusable.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError) as disabled:
        client.chat.completions.create(model="retired", messages=MESSAGES)
    assert "'retired' does not exist on any host" in disabled.value.message


def test_auto_picks_a_tier_by_the_prompt(garden):
    code = chat(garden, "auto", "```python\nprint(1)\n```")
    assert code.headers["x-clood-tier"] == "code" and code.headers["x-clood-model"] == "qwen2.5-coder:7b"
    deep = chat(garden, "auto", "Why is the sky blue?")
    assert deep.headers["x-clood-tier"] == "deep" and deep.headers["x-clood-model"] == "qwen2.5:14b"
    simple = chat(garden, "auto", "What is the capital of France?")
    assert simple.headers["x-clood-tier"] == "fast" and simple.headers["x-clood-model"] == "llama3.2:3b"
    writing = chat(garden, "auto", "Write a poem about the sea")  # writing's only model has no usable host
    assert writing.headers["x-clood-tier"] == "fast" and writing.headers["x-clood-alias"] == "auto"


def test_model_lists_show_servable_aliases_and_the_clients_parse_them(client, garden):
    models = {m.id: m for m in client.models.list()}
    assert {"fast", "code", "deep", "auto", "ghost"} <= set(models)
    assert not {"nowhere", "stale", "retired", "writing"} & set(models)
    assert models["code"].clood == {"alias": True, "targets": ["mistral:7b", "qwen2.5-coder:7b", "llama3.2:3b"],
                                    "resolves_to": "qwen2.5-coder:7b", "description": ""}  # fmt: skip
    assert client.models.retrieve("fast").clood["resolves_to"] == "llama3.2:3b"
    assert models["llama3.2:3b"].id == "llama3.2:3b"  # real models are still there
    tags = {m.model: m for m in ollama.Client(host=garden.url).list().models}
    assert tags["fast:latest"].details.family == "alias" and tags["fast:latest"].size > 0
    assert "llama3.2:3b" in tags and "retired:latest" not in tags


def test_status_lists_aliases_with_what_they_resolve_to(garden):
    by_name = {a["name"]: a for a in garden.status()["aliases"]}
    assert by_name["code"]["resolves_to"] == "qwen2.5-coder:7b" and by_name["code"]["enabled"] is True
    assert by_name["fast"]["description"] == "quick answers"
    assert by_name["retired"] == {"name": "retired", "targets": ["llama3.2:1b"], "enabled": False, "description": "",
                                  "shadowed_by_model": False, "resolves_to": None}  # fmt: skip
    assert by_name["auto"]["resolves_to"] is None
    assert by_name["auto"]["tiers"] == {"fast": "llama3.2:3b", "code": "qwen2.5-coder:7b", "deep": "qwen2.5:14b",
                                        "writing": None}  # fmt: skip


def test_a_key_allowed_an_alias_may_use_it_and_what_it_resolves_to(clood_factory, sims):
    garden = clood_factory()
    garden.add("box", sims(models=["llama3.2:3b", "qwen2.5:7b"]))
    garden.refresh()
    garden.server.manage("aliases", "set", "fast", "llama3.2:3b")
    secret = garden.server.manage("apikeys", "create", "only-fast", "--models", "fast").stdout.strip()
    headers = {"authorization": f"Bearer {secret}"}

    def ask(model):
        return httpx.post(garden.url + "/v1/chat/completions", headers=headers, timeout=30,
                          json={"model": model, "messages": MESSAGES})  # fmt: skip

    wait_until(lambda: ask("fast").status_code == 200, what="the key and the alias to reach clood")
    assert ask("fast").headers["x-clood-model"] == "llama3.2:3b"
    assert ask("qwen2.5:7b").status_code == 403
    assert ask("llama3.2:3b").status_code == 403  # the alias, not its target by name
    listed = httpx.get(garden.url + "/v1/models", headers=headers).json()
    assert [m["id"] for m in listed["data"]] == ["fast"]


@pytest.mark.django_db(transaction=True)
async def test_the_atc_pages_hear_of_each_alias_change_once(settings):
    """With one process, the admin's announcement and the server's reload see one change: one aliases_changed."""
    from asgiref.sync import sync_to_async

    from atc import events

    settings.REDIS_URL = None

    def changes():
        return [k.event["data"]["aliases"] for k in events.recent if k.event["type"] == "aliases_changed"]

    before = len(changes())
    await aliases.refresh()  # the first table: what the pages' snapshots show already
    assert len(changes()) == before

    import time

    began = time.monotonic()
    before_the_change = await sync_to_async(aliases.load)()  # a reload whose query ran just before the change...
    await Alias.objects.acreate(name="fast", targets=["llama3.2:1b"])
    await sync_to_async(aliases.announce)()  # as the admin does, once the change is committed
    await aliases._notice(before_the_change, began)  # ...and finishes after its announcement: no news, not undone
    await aliases.refresh()  # the server's reload: nothing new
    assert [[a["name"] for a in listing] for listing in changes()[before:]] == [["fast"]]

    await Alias.objects.filter(name="fast").aupdate(targets=["llama3.2:3b"])  # as manage.py aliases set, elsewhere
    await aliases.refresh()
    assert [listing[0]["targets"] for listing in changes()[before:]] == [["llama3.2:1b"], ["llama3.2:3b"]]
