"""Admin screens for the proxy: API keys (the full key shown once), aliases, the request log (read-only),
catfights."""

from datetime import timedelta

from django import forms
from django.contrib import admin, messages
from django.db import transaction
from django.db.models import Count, Q, Sum
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from hosts.models import Host, HostModel
from hosts.names import model_name_problem, normalize_model_name
from proxy import aliases
from proxy.models import AUTO_ALIAS, Alias, ApiKey, Catfight, CatfightEntry, ChallengeSet, RequestLog


class ModelListField(forms.CharField):
    """A list of model names, one per line or comma-separated."""

    widget = forms.Textarea(attrs={"rows": 3, "cols": 60})

    def prepare_value(self, value):
        return "\n".join(value) if isinstance(value, list | tuple) else value

    def to_python(self, value):
        names = [n.strip() for n in (value or "").replace(",", "\n").splitlines() if n.strip()]
        for name in names:
            problem = model_name_problem(name)
            if problem:
                raise forms.ValidationError(f"'{name}' is not a model name: {problem}.")
        return list(dict.fromkeys(names))


class ApiKeyForm(forms.ModelForm):
    allowed_models = ModelListField(
        required=False, help_text="One model per line (or comma-separated), e.g. llama3.2:3b. Empty: every model."
    )

    class Meta:
        model = ApiKey
        fields = ["name", "enabled", "allowed_models", "requests_per_minute", "max_concurrency", "expires_at", "notes"]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    form = ApiKeyForm
    list_display = [
        "name", "prefix_shown", "state", "models_shown", "requests_per_minute", "max_concurrency",
        "requests_24h", "tokens_24h", "requests_total", "last_used_at", "expires_at",
    ]  # fmt: skip
    list_filter = ["enabled"]
    search_fields = ["name", "prefix", "notes"]
    readonly_fields = ["prefix_shown", "created_at", "last_used_at", "usage"]
    actions = ["roll_keys", "disable_keys"]

    def get_queryset(self, request):
        day_ago = timezone.now() - timedelta(days=1)
        recent = Q(requests__queued_at__gte=day_ago)
        return (
            super()
            .get_queryset(request)
            .annotate(
                n_total=Count("requests"),
                n_day=Count("requests", filter=recent),
                tokens_day=Sum("requests__completion_tokens", filter=recent),
            )
        )

    def get_fields(self, request, obj=None):
        fields = list(super().get_fields(request, obj))
        return fields if obj is not None else [f for f in fields if f not in self.readonly_fields]

    @admin.display(description="key")
    def prefix_shown(self, key):
        return f"{key.prefix}…" if key.prefix else "—"

    @admin.display(description="state")
    def state(self, key):
        if not key.enabled:
            return "disabled"
        return "expired" if key.is_expired() else "active"

    @admin.display(description="models")
    def models_shown(self, key):
        return ", ".join(key.allowed_models) if key.allowed_models else "all"

    @admin.display(description="requests 24 h", ordering="n_day")
    def requests_24h(self, key):
        return key.n_day

    @admin.display(description="tokens 24 h", ordering="tokens_day")
    def tokens_24h(self, key):
        return key.tokens_day or 0

    @admin.display(description="requests", ordering="n_total")
    def requests_total(self, key):
        url = reverse("admin:proxy_requestlog_changelist") + f"?api_key__id__exact={key.pk}"
        return format_html('<a href="{}">{}</a>', url, key.n_total)

    @admin.display(description="usage")
    def usage(self, key):
        url = reverse("admin:proxy_requestlog_changelist") + f"?api_key__id__exact={key.pk}"
        return format_html('{} requests, {} in the last 24 h ({} tokens) — <a href="{}">see them</a>',
                           key.n_total, key.n_day, key.tokens_day or 0, url)  # fmt: skip

    def save_model(self, request, obj, form, change):
        if not change:
            obj._new_key = obj.set_key()
        super().save_model(request, obj, form, change)

    def response_add(self, request, obj, post_url_continue=None):
        return self._show_once(request, [(obj, obj._new_key)], "made")

    @admin.action(description="Roll the selected keys (new secret, the old one stops working)")
    def roll_keys(self, request, queryset):
        rolled = []
        for key in queryset:
            secret = key.set_key()
            key.save(update_fields=["prefix", "key_hash"])
            rolled.append((key, secret))
        return self._show_once(request, rolled, "rolled")

    @admin.action(description="Disable the selected keys")
    def disable_keys(self, request, queryset):
        count = queryset.update(enabled=False)
        self.message_user(request, f"Disabled {count} key(s).", messages.SUCCESS)

    def _show_once(self, request, pairs, verb):
        """The page that shows new keys: rendered straight into this response (never a redirect, a message or a
        session), with caching off, so the secret exists in exactly one page the admin sees once."""
        context = {
            **self.admin_site.each_context(request),
            "title": f"API key {verb}",
            "pairs": pairs,
            "verb": verb,
            "opts": self.opts,
            "changelist_url": reverse("admin:proxy_apikey_changelist"),
        }
        response = TemplateResponse(request, "admin/proxy/apikey/created.html", context)
        response["Cache-Control"] = "no-store"
        return response


class AliasForm(forms.ModelForm):
    targets = ModelListField(
        label="Models",
        help_text="Real model names in order of preference, one per line, e.g. qwen2.5-coder:7b then llama3.2:3b: "
        "the first one a usable host holds is served, the others are fallbacks. For auto: its tier aliases, "
        "e.g. fast, code, deep, writing.",
    )

    class Meta:
        model = Alias
        fields = ["name", "enabled", "targets", "description"]


@admin.register(Alias)
class AliasAdmin(admin.ModelAdmin):
    form = AliasForm
    list_display = ["name", "enabled", "chain", "serving_now", "description", "updated_at"]
    list_filter = ["enabled"]
    search_fields = ["name", "description"]

    @admin.display(description="models, in order")
    def chain(self, alias):
        return " → ".join(alias.targets or ())

    @admin.display(description="serving now")
    def serving_now(self, alias):
        """The target a request would get now: the first one some enabled, online host with a closed circuit holds.
        (Two small queries a row: an admin page, and there are a handful of aliases.)"""
        held = _held_by_usable_hosts()

        def first_held(keys):
            return next((aliases.shown(k) for k in keys if k in held), None)

        if alias.name_key in held:
            return "the real model of this name (it wins over the alias)"
        if alias.name_key == AUTO_ALIAS:
            tiers = {a.name_key: a for a in Alias.objects.filter(enabled=True)}
            shown = []
            for key in alias.target_keys():
                tier = tiers.get(key) if key not in held else None
                shown.append(f"{aliases.shown(key)} → {first_held(tier.target_keys() if tier else [key]) or 'nothing'}")
            return "depends on the prompt: " + "; ".join(shown)
        return first_held(alias.target_keys()) or "nothing: no usable host has any of these models"

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        _aliases_changed()

    def delete_model(self, request, obj):
        super().delete_model(request, obj)
        _aliases_changed()

    def delete_queryset(self, request, queryset):
        super().delete_queryset(request, queryset)
        _aliases_changed()


def _aliases_changed():
    """Once the change is committed: this process routes by the new table at once (the others within
    CLOOD_SNAPSHOT_REFRESH), and every ATC page shows it."""

    def committed():
        aliases.invalidate()
        aliases.announce()

    transaction.on_commit(committed)


def _held_by_usable_hosts():
    """Normalised names of the models some usable host (enabled, online, circuit closed) holds."""
    rows = HostModel.objects.filter(host__enabled=True, host__online=True, host__circuit=Host.Circuit.CLOSED)
    return {normalize_model_name(name) for name in rows.values_list("name", flat=True)}


@admin.register(RequestLog)
class RequestLogAdmin(admin.ModelAdmin):
    list_display = [
        "queued_at", "endpoint", "model", "served_model", "host", "outcome", "status", "stream", "cold_start",
        "ttft_ms_short", "duration_ms_short", "completion_tokens", "tokens_per_s_short", "client", "api_key_name",
    ]  # fmt: skip
    list_filter = ["outcome", "endpoint", "stream", "cold_start", "host", "api_key_name"]
    search_fields = ["request_id", "decision_id", "model", "host", "error", "client", "api_key_name"]
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
