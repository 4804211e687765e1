from datetime import UTC, datetime

import pytest
from django.urls import reverse

from proxy.models import RequestLog

pytestmark = pytest.mark.django_db


def test_request_log_is_listed_read_only(admin_client):
    RequestLog.objects.create(
        request_id="abc123", endpoint="chat.completions", model="llama3.2:1b", host="box", outcome="ok", status=200,
        queued_at=datetime.now(UTC), ttft_ms=42.0, duration_ms=300.0, completion_tokens=16, tokens_per_s=55.5,
    )  # fmt: skip
    page = admin_client.get(reverse("admin:proxy_requestlog_changelist")).content.decode()
    assert "llama3.2:1b" in page and "55.5" in page and "42" in page
    assert admin_client.get(reverse("admin:proxy_requestlog_add")).status_code == 403
