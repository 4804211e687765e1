import re
from datetime import UTC, datetime

import pytest
from django.urls import reverse

from proxy.models import ApiKey, RequestLog

pytestmark = pytest.mark.django_db


def test_request_log_is_listed_read_only(admin_client):
    RequestLog.objects.create(
        request_id="abc123", endpoint="chat.completions", model="llama3.2:1b", host="box", outcome="ok", status=200,
        queued_at=datetime.now(UTC), ttft_ms=42.0, duration_ms=300.0, completion_tokens=16, tokens_per_s=55.5,
    )  # fmt: skip
    page = admin_client.get(reverse("admin:proxy_requestlog_changelist")).content.decode()
    assert "llama3.2:1b" in page and "55.5" in page and "42" in page
    assert admin_client.get(reverse("admin:proxy_requestlog_add")).status_code == 403


def key_form(**overrides):
    form = {"name": "open-webui", "enabled": "on", "allowed_models": "", "requests_per_minute": "",
            "max_concurrency": "", "expires_at_0": "", "expires_at_1": "", "notes": ""}  # fmt: skip
    return {**form, **overrides}


def shown_key(page):
    return re.search(r'<code class="new-key"[^>]*>([^<]+)</code>', page).group(1)


def test_a_new_key_is_shown_once_and_stored_as_a_hash(admin_client):
    response = admin_client.post(reverse("admin:proxy_apikey_add"), key_form(allowed_models="llama3.2:1b, qwen2.5"))
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    secret = shown_key(response.content.decode())
    key = ApiKey.objects.get(name="open-webui")
    assert secret.startswith("clood-") and key.key_hash == ApiKey.hash_key(secret) and key.prefix == secret[:12]
    assert key.allowed_models == ["llama3.2:1b", "qwen2.5"]
    for url in (reverse("admin:proxy_apikey_changelist"), reverse("admin:proxy_apikey_change", args=[key.pk])):
        page = admin_client.get(url).content.decode()
        assert secret not in page and f"{key.prefix}…" in page


def test_rolling_a_key_shows_a_new_secret_and_drops_the_old(admin_client):
    old = shown_key(admin_client.post(reverse("admin:proxy_apikey_add"), key_form()).content.decode())
    key = ApiKey.objects.get(name="open-webui")
    form = {"action": "roll_keys", "_selected_action": [key.pk]}
    new = shown_key(admin_client.post(reverse("admin:proxy_apikey_changelist"), form).content.decode())
    key.refresh_from_db()
    assert new != old and key.key_hash == ApiKey.hash_key(new)


def test_a_bad_model_name_is_refused_with_a_message(admin_client):
    response = admin_client.post(reverse("admin:proxy_apikey_add"), key_form(allowed_models="llama 3"))
    assert response.status_code == 200 and "is not a model name" in response.content.decode()
    assert not ApiKey.objects.exists()


def test_usage_per_key_is_shown(admin_client):
    key = ApiKey(name="aider")
    key.set_key()
    key.save()
    for i in range(3):
        RequestLog.objects.create(request_id=f"r{i}", endpoint="chat.completions", outcome="ok", status=200,
                                  queued_at=datetime.now(UTC), api_key=key, api_key_name="aider",
                                  completion_tokens=10)  # fmt: skip
    page = admin_client.get(reverse("admin:proxy_apikey_changelist")).content.decode()
    assert f'?api_key__id__exact={key.pk}">3</a>' in page and '<td class="field-tokens_24h">30</td>' in page
    rows = admin_client.get(reverse("admin:proxy_requestlog_changelist") + f"?api_key__id__exact={key.pk}")
    assert rows.status_code == 200 and rows.content.decode().count("aider") >= 3
