"""The history page and its CSV: figures from hand-made RequestLog rows, period filtering, bad input, access."""

import csv
import io
import secrets
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from atc.history import NO_HOST, BadQuery, parse_window, percentile, summarize
from proxy.models import RequestLog

pytestmark = pytest.mark.django_db


def log(**fields):
    """One RequestLog row: a completed chat request on alpha five minutes ago unless told otherwise."""
    values = {
        "request_id": secrets.token_hex(8),
        "endpoint": "chat.completions",
        "model": "llama3.2:1b",
        "host": "alpha",
        "outcome": "ok",
        "status": 200,
        "queued_at": timezone.now() - timedelta(minutes=5),
        **fields,
    }
    return RequestLog.objects.create(**values)


def everything():
    return summarize(parse_window({"period": "all"}).rows())


def read_csv(response):
    return list(csv.reader(io.StringIO(response.content.decode())))


@pytest.mark.parametrize(
    ("values", "pct", "expected"),
    [
        ([10, 20, 30, 40], 50, 25),
        ([10, 20, 30, 40], 95, 38.5),
        ([40, 10, 30, 20], 0, 10),
        ([40, 10, 30, 20], 100, 40),
        ([7], 95, 7),
    ],
)
def test_percentile_interpolates_between_ranks(values, pct, expected):
    assert percentile(values, pct) == pytest.approx(expected)


def test_percentile_of_nothing_is_none():
    assert percentile([], 50) is None


def test_host_figures_add_up():
    for ttft, tokens, speed in [(100, 10, 20.0), (200, 20, 30.0), (300, 30, 40.0), (400, 40, 50.0)]:
        log(ttft_ms=ttft, completion_tokens=tokens, tokens_per_s=speed)
    log(outcome="incomplete", ttft_ms=500, completion_tokens=3, tokens_per_s=None, cold_start=True)
    log(outcome="failed", status=502, host="beta", model="qwen2.5-coder:3b")

    summary = everything()

    alpha, beta = summary.by_host
    assert (alpha.name, alpha.requests, alpha.errors, alpha.tokens) == ("alpha", 5, 1, 103)
    assert alpha.p50_ttft_ms == pytest.approx(300)
    assert alpha.p95_ttft_ms == pytest.approx(480)  # between 400 and 500
    assert alpha.mean_tokens_per_s == pytest.approx(35.0)
    assert (alpha.cold, alpha.warm) == (1, 4)
    assert alpha.related_names() == ["llama3.2:1b"]
    assert (beta.name, beta.requests, beta.errors) == ("beta", 1, 1)
    assert (beta.p50_ttft_ms, beta.mean_tokens_per_s) == (None, None)
    assert (summary.total.requests, summary.total.errors, summary.total.tokens) == (6, 2, 103)


def test_model_figures_list_the_hosts_that_served_them():
    log(host="alpha", ttft_ms=100)
    log(host="beta", ttft_ms=300, cold_start=True)
    log(host="beta", model="qwen2.5-coder:3b")

    llama, qwen = everything().by_model

    assert (llama.name, llama.requests, llama.p50_ttft_ms, llama.cold, llama.warm) == ("llama3.2:1b", 2, 200, 1, 1)
    assert llama.related_names() == ["alpha", "beta"]
    assert (qwen.name, qwen.related_names()) == ("qwen2.5-coder:3b", ["beta"])


def test_a_long_list_of_related_names_is_shortened_for_the_table():
    for host in ("gamma", "alpha", "beta"):
        log(host=host)

    (llama,) = everything().by_model

    assert llama.related_preview() == "alpha, beta +1"


def test_unrouted_requests_are_errors_without_a_cold_or_warm_start():
    log(host="", outcome="rejected", status=404, model="nope:1b")

    summary = everything()

    (nowhere,) = summary.by_host
    assert (nowhere.name, nowhere.requests, nowhere.errors, nowhere.cold, nowhere.warm) == (NO_HOST, 1, 1, 0, 0)
    assert summary.by_model[0].related_names() == []


def test_requests_are_counted_per_hour_of_the_day():
    day = timezone.now() - timedelta(days=2)
    for hour, outcome in [(9, "ok"), (9, "ok"), (9, "failed"), (14, "ok"), (23, "cancelled")]:
        log(queued_at=day.replace(hour=hour, minute=15), outcome=outcome)

    summary = everything()

    assert summary.requests_per_hour[9] == 3
    assert summary.requests_per_hour[14] == 1
    assert summary.errors_per_hour[9] == 1
    assert summary.errors_per_hour[23] == 1
    assert sum(summary.requests_per_hour) == 5
    assert summary.busiest_hours() == [(9, 3), (14, 1), (23, 1)]


def test_hours_of_the_day_are_in_the_site_time_zone(settings):
    settings.TIME_ZONE = "Asia/Kolkata"  # UTC+5:30
    log(queued_at=datetime(2025, 3, 10, 20, 45, tzinfo=UTC))

    assert everything().requests_per_hour[2] == 1


@pytest.mark.parametrize(("period", "expected"), [("1h", 1), ("24h", 2), ("7d", 3), ("30d", 4), ("all", 5)])
def test_period_picks_the_requests_queued_within_it(period, expected):
    now = timezone.now()
    for age in [timedelta(minutes=30), timedelta(hours=5), timedelta(days=3), timedelta(days=20), timedelta(days=90)]:
        log(queued_at=now - age)

    assert everything().total.requests == 5
    assert summarize(parse_window({"period": period}).rows()).total.requests == expected


def test_since_and_until_are_inclusive_dates():
    for day in (9, 10, 11, 12):
        log(queued_at=datetime(2025, 3, day, 12, tzinfo=UTC))

    window = parse_window({"since": "2025-03-10", "until": "2025-03-11"})

    assert window.period == "custom"
    assert summarize(window.rows()).total.requests == 2


def test_default_period_is_the_last_24_hours():
    now = timezone.now()
    window = parse_window({}, now=now)
    assert (window.period, window.since, window.until) == ("24h", now - timedelta(hours=24), None)


@pytest.mark.parametrize(
    "query",
    [
        {"period": "5y"},
        {"since": "yesterday"},
        {"until": "2025-13-01"},
        {"since": "2025-03-12", "until": "2025-03-10"},
        {"until": "9999-12-31"},
        {"since": "0001-01-01T00:00+05:00"},
    ],
)
def test_bad_query_values_are_refused(query):
    with pytest.raises(BadQuery):
        parse_window(query)


def test_page_shows_a_row_per_host_and_model(admin_client):
    log(ttft_ms=120, completion_tokens=40, tokens_per_s=38.5)
    log(host="beta", model="qwen2.5-coder:3b", outcome="failed", status=502)

    response = admin_client.get("/atc/history")

    assert response.status_code == 200
    page = response.content.decode()
    for name in ("alpha", "beta", "llama3.2:1b", "qwen2.5-coder:3b"):
        assert f'data-name="{name}"' in page
    assert 'id="history-data"' in page
    assert response.context["summary"].total.requests == 2


def test_page_without_requests_says_so(admin_client):
    log(queued_at=timezone.now() - timedelta(days=3))

    response = admin_client.get("/atc/history?period=24h")

    assert response.status_code == 200
    assert "No requests in the last 24 hours" in response.content.decode()
    assert 'id="history-data"' not in response.content.decode()


@pytest.mark.parametrize("query", ["period=5y", "since=soon", "since=2025-03-12&until=2025-03-01"])
def test_page_explains_a_bad_query(admin_client, query):
    response = admin_client.get(f"/atc/history?{query}")

    assert response.status_code == 400
    assert 'class="problem"' in response.content.decode()


def test_csv_by_host_has_the_tables_figures(admin_client):
    log(ttft_ms=100, completion_tokens=10, tokens_per_s=20.0)
    log(ttft_ms=300, completion_tokens=30, tokens_per_s=30.0, cold_start=True)
    log(host="beta", model="qwen2.5-coder:3b", outcome="failed", status=502)

    response = admin_client.get("/atc/history.csv?period=24h&by=host")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"].startswith('attachment; filename="clood-history-by-host-24h-')
    assert response["Content-Disposition"].endswith('.csv"')
    header, alpha, beta = read_csv(response)
    assert header == ["host", "requests", "errors", "tokens", "p50_ttft_ms", "p95_ttft_ms", "mean_tokens_per_s",
                      "cold", "warm", "models"]  # fmt: skip
    assert alpha == ["alpha", "2", "0", "40", "200.0", "290.0", "25.0", "1", "1", "llama3.2:1b"]
    assert beta == ["beta", "1", "1", "0", "", "", "", "0", "1", "qwen2.5-coder:3b"]


def test_csv_by_model_follows_the_period(admin_client):
    log(model="llama3.2:1b")
    log(model="qwen2.5-coder:3b", queued_at=timezone.now() - timedelta(days=3))

    recent = read_csv(admin_client.get("/atc/history.csv?period=24h&by=model"))
    week = read_csv(admin_client.get("/atc/history.csv?period=7d&by=model"))

    assert [row[0] for row in recent] == ["model", "llama3.2:1b"]
    assert [row[0] for row in week] == ["model", "llama3.2:1b", "qwen2.5-coder:3b"]


def test_csv_keeps_spreadsheets_from_running_names_as_formulas(admin_client):
    log(model="-2+3")

    rows = read_csv(admin_client.get("/atc/history.csv?by=model"))

    assert rows[1][0] == "'-2+3"


@pytest.mark.parametrize("query", ["by=client", "period=forever", "until=tomorrow"])
def test_csv_refuses_a_bad_query_in_plain_words(admin_client, query):
    response = admin_client.get(f"/atc/history.csv?{query}")

    assert response.status_code == 400
    assert response["Content-Type"].startswith("text/plain")
    assert response.content


@pytest.mark.parametrize("url", ["/atc/history", "/atc/history.csv"])
def test_anonymous_visitors_are_sent_to_the_login(client, url):
    response = client.get(url)

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


@pytest.mark.parametrize("url", ["/atc/history", "/atc/history.csv"])
def test_public_atc_lets_anonymous_visitors_read_the_history(client, settings, url):
    settings.CLOOD_ATC_PUBLIC = True
    log()

    response = client.get(url)

    assert response.status_code == 200
