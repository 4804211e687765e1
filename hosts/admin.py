"""Admin screens for the garden: hosts (with health, inventory and actions) and models across hosts."""

from asgiref.sync import async_to_sync
from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import path
from django.utils.html import format_html

from hosts import garden, garden_admin
from hosts.backends import check_host, make_client
from hosts.models import GardenOperation, Host, HostModel
from hosts.monitor import check_and_publish, target_for


class HostForm(forms.ModelForm):
    """The API key is write-only: never rendered back; left blank on edit, the old one is kept."""

    new_api_key = forms.CharField(
        label="API key",
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only. Leave blank to keep the current key.",
    )
    clear_api_key = forms.BooleanField(label="Remove the API key", required=False)

    class Meta:
        model = Host
        fields = [
            "name", "base_url", "backend", "enabled", "priority", "max_concurrency", "static_models",
            "hardware_cpu", "hardware_gpu", "hardware_memory", "notes",
        ]  # fmt: skip

    def save(self, commit=True):
        host = super().save(commit=False)
        if self.cleaned_data.get("clear_api_key"):
            host.api_key = ""
        elif self.cleaned_data.get("new_api_key"):
            host.api_key = self.cleaned_data["new_api_key"]
        if commit:
            host.save()
        return host


class HostModelInline(admin.TabularInline):
    model = HostModel
    extra = 0
    can_delete = False
    show_change_link = False
    fields = readonly_fields = [
        "remote_name", "human_size", "family", "parameter_size", "quantization",
        "capabilities", "context_length", "loaded", "loaded_until", "size_vram_human", "benchmark",
    ]  # fmt: skip
    verbose_name_plural = "Inventory (read-only, kept up to date by the monitor)"

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="size")
    def human_size(self, row):
        return filesizeformat(row.size) if row.size else "—"

    @admin.display(description="VRAM")
    def size_vram_human(self, row):
        return filesizeformat(row.size_vram) if row.size_vram else "—"

    @admin.display(description="benchmark")
    def benchmark(self, row):
        return benchmark_summary(row)


def benchmark_summary(row):
    """The newest benchmark of a host × model in one line."""
    if row.bench_at is None:
        return "—"
    parts = [f"TTFT {row.bench_ttft_ms:.0f} ms" if row.bench_ttft_ms is not None else None,
             f"{row.bench_gen_tps:.1f} tok/s" if row.bench_gen_tps is not None else None,
             f"prompt {row.bench_prompt_tps:.0f} tok/s" if row.bench_prompt_tps is not None else None,
             f"load {row.bench_load_ms:.0f} ms" if row.bench_load_ms is not None else None]  # fmt: skip
    return ", ".join(p for p in parts if p) or "—"


@admin.register(Host)
class HostAdmin(admin.ModelAdmin):
    form = HostForm
    inlines = [HostModelInline]
    list_display = [
        "name", "status_badge", "latency", "version", "models_installed", "models_loaded",
        "short_error", "last_checked_at", "backend", "priority", "max_concurrency", "enabled",
    ]  # fmt: skip
    list_filter = ["enabled", "backend", "online"]
    search_fields = ["name", "base_url", "notes"]
    actions = ["refresh_now", "test_connection", "pull_model", "copy_models"]
    change_list_template = "admin/hosts/host/change_list.html"  # adds "Discover hosts"
    readonly_fields = [
        "online", "latency_ms", "version", "last_checked_at", "last_online_at", "last_error",
        "consecutive_failures", "circuit", "api_key_status", "created_at", "updated_at",
    ]  # fmt: skip
    fieldsets = [
        (None, {"fields": ["name", "base_url", "backend", "enabled", "priority", "max_concurrency"]}),
        ("Access", {"fields": ["api_key_status", "new_api_key", "clear_api_key"]}),
        ("Models", {"fields": ["static_models"]}),
        ("Hardware", {"fields": ["hardware_cpu", "hardware_gpu", "hardware_memory", "notes"]}),
        (
            "Health (written by the monitor)",
            {
                "fields": [
                    "online",
                    "latency_ms",
                    "version",
                    "last_checked_at",
                    "last_online_at",
                    "last_error",
                    "consecutive_failures",
                    "circuit",
                    "created_at",
                    "updated_at",
                ]  # fmt: skip
            },
        ),
    ]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("models")

    def get_urls(self):
        discover = self.admin_site.admin_view(lambda request: garden_admin.discover_view(self, request))
        return [path("discover/", discover, name="hosts_host_discover"), *super().get_urls()]

    @admin.action(description="Pull a model onto the selected hosts…", permissions=["change"])
    def pull_model(self, request, queryset):
        return garden_admin.pull_action(self, request, queryset)

    @admin.action(description="Copy another host's models onto the selected host…", permissions=["change"])
    def copy_models(self, request, queryset):
        return garden_admin.copy_action(self, request, queryset)

    @admin.display(description="status", ordering="online")
    def status_badge(self, host):
        colours = {"online": "#1f7a35", "offline": "#b42318", "unknown": "#6b7280", "disabled": "#6b7280"}
        return format_html(
            '<span class="clood-status" style="background:{};color:#fff;padding:1px 6px;border-radius:4px">{}</span>',
            colours[host.status_label],
            host.status_label,
        )

    @admin.display(description="latency", ordering="latency_ms")
    def latency(self, host):
        return f"{host.latency_ms:.0f} ms" if host.online and host.latency_ms is not None else "—"

    @admin.display(description="installed")
    def models_installed(self, host):
        return len(host.models.all())

    @admin.display(description="loaded now")
    def models_loaded(self, host):
        return ", ".join(m.remote_name for m in host.models.all() if m.loaded) or "—"

    @admin.display(description="last error")
    def short_error(self, host):
        return (host.last_error[:80] + "…") if len(host.last_error) > 80 else (host.last_error or "—")

    @admin.display(description="API key")
    def api_key_status(self, host):
        return "set (hidden)" if host.api_key else "not set"

    @admin.action(description="Refresh now (health and inventory)")
    def refresh_now(self, request, queryset):
        names = list(queryset.values_list("name", flat=True))
        for name, report in async_to_sync(check_and_publish)(names):
            if report.ok:
                loaded = sum(1 for m in report.models if m.loaded)
                text = f"Host {name}: online, {_ms(report.latency_ms)}, {len(report.models)} models ({loaded} loaded)"
                self.message_user(request, text, messages.SUCCESS)
            else:
                self.message_user(request, f"Host {name}: offline — {report.error}", messages.ERROR)

    @admin.action(description="Test connection (nothing is saved)")
    def test_connection(self, request, queryset):
        for host in queryset:
            report = async_to_sync(_test)(host)
            if report.ok:
                version = f", version {report.version}" if report.version else ""
                text = f"Host {host.name}: reachable in {_ms(report.latency_ms)}{version}, {len(report.models)} models"
                self.message_user(request, text, messages.SUCCESS)
            else:
                self.message_user(request, f"Host {host.name}: failed — {report.error}", messages.ERROR)


async def _test(host):
    async with make_client() as client:
        return await check_host(client, target_for(host))


def _recent_operations():
    garden.expire_stale()
    return GardenOperation.objects.all()[:10]


def _ms(value):
    return f"{value:.0f} ms" if value is not None else "latency unknown"


@admin.register(HostModel)
class HostModelAdmin(admin.ModelAdmin):
    """Models across the garden: each model once, with the hosts that hold it and a flag when digests differ."""

    list_display = ["name", "host", "digest", "loaded"]

    def get_urls(self):
        operate = self.admin_site.admin_view(
            lambda request, pk, kind: garden_admin.model_operation_view(self, request, pk, kind)
        )
        return [path("<int:pk>/garden/<slug:kind>/", operate, name="hosts_hostmodel_operate"), *super().get_urls()]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def changelist_view(self, request, extra_context=None):
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        query = request.GET.get("q", "").strip().lower()
        rows = HostModel.objects.select_related("host").order_by("name", "host__name")
        if query:
            rows = rows.filter(name__icontains=query)
        models = {}
        for row in rows:
            row.bench_text = benchmark_summary(row)
            models.setdefault(row.name, []).append(row)
        overview = [
            {
                "name": name,
                "rows": holders,
                "digest_differs": len({r.digest for r in holders if r.digest}) > 1,
                "loaded_on": [r.host.name for r in holders if r.loaded],
            }
            for name, holders in models.items()
        ]
        context = {
            **self.admin_site.each_context(request),
            "title": "Models across the garden",
            "opts": self.model._meta,
            "overview": overview,
            "query": query,
            "operations": [(op, garden_admin.progress_cells(op)) for op in _recent_operations()],
            "can_operate": request.user.has_perm("hosts.change_host"),
            "media": self.media + forms.Media(js=["hosts/operations.js"]),
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/hosts/model_overview.html", context)
