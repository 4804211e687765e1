"""The history page: what RequestLog says about hosts and models over a chosen period, as tables, charts and CSV.

The figures are computed in Python from plain value tuples (percentiles included), so they read the same on
SQLite and PostgreSQL; `summarize(rows)` does the arithmetic and the views only pick the rows and render.
"""

import csv
import math
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from urllib.parse import urlencode

from django.http import HttpResponse
from django.shortcuts import render
from django.utils import timezone

from atc.views import viewer_required
from proxy.models import RequestLog

PERIODS = {
    "1h": ("the last hour", timedelta(hours=1)),
    "24h": ("the last 24 hours", timedelta(hours=24)),
    "7d": ("the last 7 days", timedelta(days=7)),
    "30d": ("the last 30 days", timedelta(days=30)),
    "all": ("all time", None),
}
DEFAULT_PERIOD = "24h"
GROUPINGS = ("host", "model")
ROW_FIELDS = ("host", "model", "outcome", "cold_start", "queued_at", "ttft_ms", "completion_tokens", "tokens_per_s")
NO_HOST = "(no host)"  # rejected before routing, or every host failed
NO_MODEL = "(no model)"  # the body could not be read
CSV_FIGURES = ("requests", "errors", "tokens", "p50_ttft_ms", "p95_ttft_ms", "mean_tokens_per_s", "cold", "warm")


class BadQuery(ValueError):
    """A query-string value the history cannot use; the message is shown to the person who sent it."""


@dataclass(frozen=True)
class Window:
    """The stretch of time the history covers: `since` inclusive, `until` exclusive, None for open."""

    period: str  # a PERIODS key, or "custom" when since/until were given
    since: datetime | None
    until: datetime | None
    label: str
    params: dict = field(default_factory=dict)  # the query that chose it, for links to the CSV

    @property
    def query(self):
        return urlencode(self.params)

    def rows(self):
        """The requests queued inside the window, as named tuples of ROW_FIELDS (never model instances)."""
        logs = RequestLog.objects.order_by()
        if self.since is not None:
            logs = logs.filter(queued_at__gte=self.since)
        if self.until is not None:
            logs = logs.filter(queued_at__lt=self.until)
        return logs.values_list(*ROW_FIELDS, named=True).iterator(chunk_size=2000)


def parse_window(params, now=None):
    """The Window a query string asks for: `period` (default 24h), or `since`/`until` ISO dates or date-times."""
    now = now or timezone.now()
    period = params.get("period") or DEFAULT_PERIOD
    if period not in PERIODS:
        raise BadQuery(f"“{period}” is not a period clood knows: use one of {', '.join(PERIODS)}.")
    since = _parse_moment(params.get("since"), "since")
    until = _parse_moment(params.get("until"), "until")
    if since is None and until is None:
        label, length = PERIODS[period]
        return Window(period, now - length if length else None, None, label, {"period": period})
    if since is not None and until is not None and since >= until:
        raise BadQuery("“since” must be earlier than “until”.")
    raw = {name: params[name].strip() for name in ("since", "until") if params.get(name, "").strip()}
    label = f"{raw.get('since', 'the beginning')} → {raw.get('until', 'now')}"
    return Window("custom", since, until, label, raw)


def _parse_moment(value, name):
    """An aware datetime from an ISO date or date-time. A bare date means its midnight, or for `until` the
    midnight after it (so `until=2025-01-31` includes that day); naive values are in the site's time zone."""
    value = (value or "").strip()
    if not value:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        day = None
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise BadQuery(f"“{value}” is not a date for {name}: write it as 2025-01-31 or 2025-01-31T18:00.") from None
    try:
        if day is not None:
            moment = datetime.combine(day + timedelta(days=1) if name == "until" else day, time())
        if timezone.is_naive(moment):
            moment = timezone.make_aware(moment)
        return moment.astimezone(UTC)
    except OverflowError:  # the first or last day a datetime can hold, moved by a day or a time zone
        raise BadQuery(f"“{value}” is too far away for {name}.") from None


def percentile(values, pct):
    """The pct-th percentile by linear interpolation between closest ranks (numpy's default); None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Figures:
    """One group's numbers: a host, a model, or every request of the window."""

    name: str
    requests: int = 0
    errors: int = 0  # outcome other than ok
    tokens: int = 0  # completion tokens
    cold: int = 0  # routed to a host that had to load the model first
    warm: int = 0
    related: set = field(default_factory=set)  # the models a host served, the hosts that served a model
    ttfts: list = field(default_factory=list, repr=False)
    speeds: list = field(default_factory=list, repr=False)

    def add(self, row):
        self.requests += 1
        if row.outcome != RequestLog.Outcome.OK:
            self.errors += 1
        self.tokens += row.completion_tokens or 0
        if row.host:  # only a request that reached a host started, cold or warm
            if row.cold_start:
                self.cold += 1
            else:
                self.warm += 1
        if row.ttft_ms is not None:
            self.ttfts.append(row.ttft_ms)
        if row.tokens_per_s is not None:
            self.speeds.append(row.tokens_per_s)

    @property
    def p50_ttft_ms(self):
        return percentile(self.ttfts, 50)

    @property
    def p95_ttft_ms(self):
        return percentile(self.ttfts, 95)

    @property
    def mean_tokens_per_s(self):
        return sum(self.speeds) / len(self.speeds) if self.speeds else None

    @property
    def error_percent(self):
        return 100 * self.errors / self.requests if self.requests else 0

    def related_names(self):
        return sorted(self.related)

    def related_preview(self, shown=2):
        """A few related names for a table cell: "a, b +4"."""
        names = self.related_names()
        more = f" +{len(names) - shown}" if len(names) > shown else ""
        return ", ".join(names[:shown]) + more


@dataclass
class Summary:
    total: Figures
    by_host: list[Figures]  # busiest first
    by_model: list[Figures]
    requests_per_hour: list[int]  # index = hour of the day in the site's time zone
    errors_per_hour: list[int]

    def groups(self, by):
        return self.by_host if by == "host" else self.by_model

    def busiest_hours(self, count=3):
        """The hours of the day with the most requests, busiest first: [(hour, requests)]."""
        hours = sorted(range(24), key=lambda hour: (-self.requests_per_hour[hour], hour))
        return [(hour, self.requests_per_hour[hour]) for hour in hours[:count] if self.requests_per_hour[hour]]

    def chart_data(self):
        """What static/atc/history.js draws (plain numbers, rounded; None where nothing was measured)."""
        return {
            "hosts": [{"name": f.name, "requests": f.requests, "errors": f.errors} for f in self.by_host],
            "models": [
                {"name": f.name, "p50": _round(f.p50_ttft_ms), "p95": _round(f.p95_ttft_ms)}
                for f in self.by_model
                if f.ttfts
            ],
            "hours": {"requests": self.requests_per_hour, "errors": self.errors_per_hour},
        }


def summarize(rows):
    """Aggregate rows (objects with the ROW_FIELDS attributes) into totals, per-host, per-model and per-hour figures."""
    total = Figures("all")
    hosts, models = {}, {}
    requests_per_hour, errors_per_hour = [0] * 24, [0] * 24
    for row in rows:
        total.add(row)
        host = hosts.setdefault(row.host or NO_HOST, Figures(row.host or NO_HOST))
        host.add(row)
        model = models.setdefault(row.model or NO_MODEL, Figures(row.model or NO_MODEL))
        model.add(row)
        if row.model:
            host.related.add(row.model)
        if row.host:
            model.related.add(row.host)
        hour = timezone.localtime(row.queued_at).hour
        requests_per_hour[hour] += 1
        if row.outcome != RequestLog.Outcome.OK:
            errors_per_hour[hour] += 1
    return Summary(total, _busiest_first(hosts), _busiest_first(models), requests_per_hour, errors_per_hour)


def _busiest_first(groups):
    return sorted(groups.values(), key=lambda figures: (-figures.requests, figures.name))


def _round(value, digits=1):
    return round(value, digits) if value is not None else None


def csv_rows(summary, by):
    """The header and one row per group, the same figures the page's table shows."""
    yield [by, *CSV_FIGURES, "models" if by == "host" else "hosts"]
    for figures in summary.groups(by):
        numbers = [getattr(figures, name) for name in CSV_FIGURES]
        yield [
            _cell(figures.name),
            *("" if n is None else _round(n) if isinstance(n, float) else n for n in numbers),
            _cell(" ".join(figures.related_names())),
        ]


def _file_span(window):
    if window.period != "custom":
        return f"{window.period}-{timezone.localdate():%Y%m%d}"
    last = window.until - timedelta(microseconds=1) if window.until else None  # until is exclusive
    ends = [f"{timezone.localtime(moment):%Y%m%d}" if moment else None for moment in (window.since, last)]
    return f"{ends[0] or 'start'}-to-{ends[1] or 'now'}"


def _cell(text):
    # A spreadsheet would run a cell starting with one of these as a formula; model names come from clients.
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


@viewer_required
def history_page(request):
    periods = [(key, label) for key, (label, _) in PERIODS.items()]
    try:
        window = parse_window(request.GET)
    except BadQuery as problem:
        context = {"problem": str(problem), "periods": periods, "period": DEFAULT_PERIOD}
        return render(request, "atc/history.html", context, status=400)
    summary = summarize(window.rows())
    tables = [
        {"by": "host", "title": "By host", "rows": summary.by_host, "related": "Models"},
        {"by": "model", "title": "By model", "rows": summary.by_model, "related": "Hosts"},
    ]
    context = {
        "window": window,
        "period": window.period,
        "periods": periods,
        "summary": summary,
        "tables": tables,
        "busiest_hours": summary.busiest_hours(),
        "chart_data": summary.chart_data(),
        "since": request.GET.get("since", ""),
        "until": request.GET.get("until", ""),
    }
    return render(request, "atc/history.html", context)


@viewer_required
def history_csv(request):
    by = request.GET.get("by") or "host"
    try:
        if by not in GROUPINGS:
            raise BadQuery(f"“{by}” is not a grouping: use by=host or by=model.")
        window = parse_window(request.GET)
    except BadQuery as problem:
        return HttpResponse(str(problem), status=400, content_type="text/plain; charset=utf-8")
    summary = summarize(window.rows())
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    filename = f"clood-history-by-{by}-{_file_span(window)}.csv"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    csv.writer(response).writerows(csv_rows(summary, by))
    return response
