"""Admin screens for the proxy: the request log (read-only)."""

from django.contrib import admin

from proxy.models import RequestLog


@admin.register(RequestLog)
class RequestLogAdmin(admin.ModelAdmin):
    list_display = [
        "queued_at", "endpoint", "model", "host", "outcome", "status", "stream", "cold_start",
        "ttft_ms_short", "duration_ms_short", "completion_tokens", "tokens_per_s_short", "client",
    ]  # fmt: skip
    list_filter = ["outcome", "endpoint", "stream", "cold_start", "host"]
    search_fields = ["request_id", "decision_id", "model", "host", "error", "client"]
    date_hierarchy = "queued_at"
    list_per_page = 100

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="TTFT ms", ordering="ttft_ms")
    def ttft_ms_short(self, row):
        return f"{row.ttft_ms:.0f}" if row.ttft_ms is not None else "—"

    @admin.display(description="duration ms", ordering="duration_ms")
    def duration_ms_short(self, row):
        return f"{row.duration_ms:.0f}" if row.duration_ms is not None else "—"

    @admin.display(description="tokens/s", ordering="tokens_per_s")
    def tokens_per_s_short(self, row):
        return f"{row.tokens_per_s:.1f}" if row.tokens_per_s else "—"
