"""API keys against a real clood: 401 without a valid key once one exists, per-key models and limits, usage in the
request log; the limiter's arithmetic; the keys command."""

import threading
from datetime import timedelta

import httpx
import ollama
import openai
import pytest

from hosts.simulator import SimModel
from proxy.errors import ApiError
from proxy.keys import KeyLimits, KeyView
from tests.canaries import CLIENT_KEY, WRONG_CLIENT_KEY
from tests.conftest import wait_until
from tests.test_server import log_in

CHAT = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def garden(clood_factory, sims):
    garden = clood_factory()
    garden.add("box", sims(models=[SimModel(name="llama3.2:1b", loaded=True), "qwen2.5:7b"], ttft=0.0))
    garden.refresh()
    return garden


def make_key(garden, name, *args, secret=None):
    """A key made with the command: the printed secret, or `secret` imported through --key-env."""
    if secret is not None:
        garden.server.env["CLOOD_TEST_IMPORTED_KEY"] = secret
        garden.server.manage("apikeys", "create", name, "--key-env", "CLOOD_TEST_IMPORTED_KEY", *args)
        return secret
    return garden.server.manage("apikeys", "create", name, *args).stdout.strip()


def chat(garden, key=None, **body):
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(garden.url + "/v1/chat/completions", json={**CHAT, **body}, headers=headers, timeout=10)


def test_without_keys_every_client_is_served(clood_factory, sims):
    garden = clood_factory()
    garden.add("box", sims(models=["llama3.2:1b"]))
    garden.refresh()
    client = openai.OpenAI(base_url=garden.url + "/v1", api_key="sk-anything", max_retries=0)
    assert client.chat.completions.create(**CHAT).choices[0].message.content
    assert chat(garden).status_code == 200


def test_once_a_key_exists_requests_without_it_get_401_in_openais_shape(garden):
    make_key(garden, "ci", secret=CLIENT_KEY)
    wait_until(lambda: chat(garden).status_code == 401, what="the new key to take effect")
    response = chat(garden)
    assert response.json() == {
        "error": {
            "message": "This clood needs an API key: send it as 'Authorization: Bearer <key>'.",
            "type": "authentication_error",
            "param": None,
            "code": "missing_api_key",
        }
    }
    assert response.headers["www-authenticate"].startswith("Bearer")
    wrong = chat(garden, WRONG_CLIENT_KEY)
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert WRONG_CLIENT_KEY not in wrong.text
    assert chat(garden, CLIENT_KEY).status_code == 200
    assert httpx.get(garden.url + "/health").status_code == 200  # health, status and ready stay open
    assert httpx.get(garden.url + "/status").status_code == 200


def test_real_clients_use_the_key(garden):
    make_key(garden, "clients", secret=CLIENT_KEY + "-2")
    wait_until(lambda: chat(garden, CLIENT_KEY + "-2").status_code == 200, what="the key to work")
    client = openai.OpenAI(base_url=garden.url + "/v1", api_key=CLIENT_KEY + "-2", max_retries=0)
    assert client.chat.completions.create(**CHAT).choices[0].message.content
    with pytest.raises(openai.AuthenticationError) as refused:
        openai.OpenAI(base_url=garden.url + "/v1", api_key=WRONG_CLIENT_KEY, max_retries=0).models.list()
    assert refused.value.status_code == 401
    allowed = ollama.Client(host=garden.url, headers={"Authorization": f"Bearer {CLIENT_KEY}-2"})
    assert allowed.chat(model="llama3.2:1b", messages=CHAT["messages"])["message"]["content"]
    with pytest.raises(ollama.ResponseError) as ollama_refused:
        ollama.Client(host=garden.url).list()
    assert ollama_refused.value.status_code == 401 and "API key" in ollama_refused.value.error


def test_a_key_limited_to_models_sees_and_uses_only_those(garden):
    secret = make_key(garden, "only-llama", "--models", "llama3.2:1b")
    assert secret.startswith("clood-") and len(secret) > 40
    wait_until(lambda: chat(garden, secret).status_code == 200, what="the key to work")
    refused = chat(garden, secret, model="qwen2.5:7b")
    assert refused.status_code == 403
    assert refused.json()["error"] == {
        "message": "The API key 'only-llama' may not use the model 'qwen2.5:7b'.",
        "type": "permission_error",
        "param": "model",
        "code": "model_not_allowed",
    }
    listed = httpx.get(garden.url + "/v1/models", headers={"authorization": f"Bearer {secret}"}).json()
    assert [m["id"] for m in listed["data"]] == ["llama3.2:1b"]
    tags = httpx.get(garden.url + "/api/tags", headers={"authorization": f"Bearer {secret}"}).json()
    assert [m["name"] for m in tags["models"]] == ["llama3.2:1b"]
    everything = httpx.get(garden.url + "/v1/models", headers={"authorization": f"Bearer {CLIENT_KEY}"}).json()
    assert len(everything["data"]) == 2


def test_requests_per_minute_limit_answers_429_with_retry_after(garden):
    secret = make_key(garden, "rpm-2", "--rpm", "2")
    wait_until(lambda: chat(garden, secret).status_code == 200, what="the key to work")
    assert chat(garden, secret).status_code == 200
    over = chat(garden, secret)
    assert over.status_code == 429 and over.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(over.headers["retry-after"]) <= 61
    assert chat(garden, CLIENT_KEY).status_code == 200  # other keys are not affected


def test_max_concurrency_limit_counts_requests_in_flight(garden):
    secret = make_key(garden, "one-at-a-time", "--max-concurrency", "1")
    wait_until(lambda: chat(garden, secret).status_code == 200, what="the key to work")
    garden.sims["box"].config.ttft = 1.5
    try:
        first = {}
        slow = threading.Thread(target=lambda: first.update(response=chat(garden, secret)))
        slow.start()
        wait_until(lambda: garden.status("box")["slots_used"] == 1, what="the first request to be in flight")
        second = chat(garden, secret)
        assert second.status_code == 429 and second.json()["error"]["code"] == "concurrency_limit_exceeded"
        slow.join()
        assert first["response"].status_code == 200
    finally:
        garden.sims["box"].config.ttft = 0.0
    assert chat(garden, secret).status_code == 200  # released


def test_disabled_and_expired_keys_are_refused(garden):
    disabled = make_key(garden, "soon-disabled")
    expired = make_key(garden, "expired", "--expires-days", "-1")
    wait_until(lambda: chat(garden, disabled).status_code == 200, what="the key to work")
    garden.server.manage("apikeys", "disable", "soon-disabled")
    wait_until(lambda: chat(garden, disabled).status_code == 401, what="the disabled key to be refused")
    assert "disabled" in chat(garden, disabled).json()["error"]["message"]
    refused = chat(garden, expired)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "expired_api_key"


def test_usage_is_in_the_request_log_and_last_used(garden):
    secret = make_key(garden, "logged")
    wait_until(lambda: chat(garden, secret).status_code == 200, what="the key to work")
    response = chat(garden, secret)
    row = garden.log_for(response.headers["x-clood-request-id"])
    assert row["api_key_name"] == "logged" and row["api_key_id"]
    refused = chat(garden, WRONG_CLIENT_KEY)
    row = garden.log_for(refused.headers["x-clood-request-id"])
    assert row["outcome"] == "rejected" and row["status"] == 401 and row["api_key_name"] == ""
    listing = garden.server.manage("apikeys", "list", "--json").stdout
    assert '"last_used_at": null' not in listing.split('"name": "logged"')[1].split("}")[0]
    assert secret not in listing


def test_require_api_key_refuses_everyone_when_no_key_exists(clood_factory, sims):
    garden = clood_factory(env={"CLOOD_REQUIRE_API_KEY": "true"})
    garden.add("box", sims(models=["llama3.2:1b"]))
    garden.refresh()
    assert chat(garden, "sk-anything-at-all").status_code == 401
    response = httpx.post(garden.url + "/api/chat", json=CHAT)
    assert response.status_code == 401 and "API key" in response.json()["error"]  # Ollama's shape
    assert httpx.get(garden.url + "/ready").status_code == 200


def test_keys_command_refuses_bad_input(garden):
    for args, message in [
        (["create", "ci"], "exists already"),
        (["create", "x1", "--models", "bad name"], "not a model name"),
        (["create", "x2", "--rpm", "0"], "at least 1"),
        (["create", "x3", "--key-env", "CLOOD_NO_SUCH_VARIABLE"], "not set"),
        (["disable", "nobody"], "no key named"),
    ]:
        result = garden.server.manage("apikeys", *args, check=False)
        assert result.returncode != 0 and message in result.stderr, (args, result.stderr)


# --- the limiter, with the clock passed in -------------------------------------------------------------------------


def key(**limits):
    fields = dict(id=1, name="k", prefix="clood-abc", allowed_models=frozenset(), requests_per_minute=None,
                  max_concurrency=None, enabled=True, expires_at=None)  # fmt: skip
    return KeyView(**{**fields, **limits})


def test_rpm_window_slides():
    limits, k = KeyLimits(), key(requests_per_minute=2)
    limits.acquire(k, now=0.0)
    limits.acquire(k, now=10.0)
    with pytest.raises(ApiError) as over:
        limits.acquire(k, now=30.0)
    assert over.value.status == 429 and over.value.retry_after == 31
    limits.acquire(k, now=60.5)  # the first one has left the window


def test_concurrency_is_released():
    limits, k = KeyLimits(), key(max_concurrency=1)
    limits.acquire(k)
    with pytest.raises(ApiError):
        limits.acquire(k)
    limits.release(k)
    limits.acquire(k)
    assert limits.active == {1: 1}


def test_key_view_allows_only_its_models():
    assert key().allows("anything:latest")
    limited = key(allowed_models=frozenset({"llama3.2:1b"}))
    assert limited.allows("llama3.2:1b") and not limited.allows("qwen2.5:7b")


def test_expiry_in_the_past_is_expired():
    from django.utils import timezone

    from proxy.models import ApiKey

    assert ApiKey(expires_at=timezone.now() - timedelta(seconds=1)).is_expired()
    assert not ApiKey(expires_at=None).is_expired()


def test_clood_pages_use_the_staff_session_with_the_csrf_header(garden):
    make_key(garden, "exists", secret=CLIENT_KEY + "-3")
    wait_until(lambda: chat(garden).status_code == 401, what="keys to be required")
    browser = log_in(garden.url)  # session and CSRF cookies, as a logged-in page has them
    token = browser.cookies["csrftoken"]
    assert browser.post("/v1/chat/completions", json=CHAT).status_code == 401  # cookies alone: another site could
    assert browser.post("/v1/chat/completions", json=CHAT, headers={"x-csrftoken": "x" * 32}).status_code == 401
    served = browser.post("/v1/chat/completions", json=CHAT, headers={"x-csrftoken": token})
    assert served.status_code == 200
    assert garden.log_for(served.headers["x-clood-request-id"])["api_key_name"] == "staff:admin"
    assert browser.get("/catfights", headers={"x-csrftoken": token}).status_code == 200


def test_catfight_api_needs_a_key_too(garden):
    make_key(garden, "catfighter", secret=CLIENT_KEY + "-4")
    wait_until(lambda: chat(garden).status_code == 401, what="keys to be required")
    refused = httpx.get(garden.url + "/catfights")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "missing_api_key"
    assert httpx.post(garden.url + "/catfights", json={"prompt": "x", "models": ["llama3.2:1b"]}).status_code == 401
    headers = {"authorization": f"Bearer {CLIENT_KEY}-4"}
    assert httpx.get(garden.url + "/catfights", headers=headers).json()["catfights"] == []
