"""Admin screens for the proxy: the request log (read-only)."""

from django.contrib import admin

from proxy.models import Catfight, CatfightEntry, ChallengeSet, RequestLog


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


class CatfightEntryInline(admin.TabularInline):
    model = CatfightEntry
    extra = 0
    can_delete = False
    fields = readonly_fields = [
        "rank", "model", "host", "status", "cold", "ttft_ms", "tokens_per_s", "duration_ms", "load_ms",
        "output_chars", "judge_score", "error",
    ]  # fmt: skip

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Catfight)
class CatfightAdmin(admin.ModelAdmin):
    list_display = ["id", "created_at", "short_prompt", "rank_by", "status", "winner"]
    list_filter = ["status", "rank_by"]
    search_fields = ["prompt"]
    inlines = [CatfightEntryInline]
    readonly_fields = ["winner", "summary", "started_at", "finished_at", "status"]

    def has_add_permission(self, request):
        return False  # catfights are started from /atc/catfight or POST /catfights

    @admin.display(description="prompt")
    def short_prompt(self, catfight):
        return catfight.prompt[:80]


@admin.register(ChallengeSet)
class ChallengeSetAdmin(admin.ModelAdmin):
    list_display = ["name", "prompt_count"]

    @admin.display(description="prompts")
    def prompt_count(self, challenge):
        return len(challenge.prompts or [])
