"""Admin screens for garden operations (hosts/garden.py): the operations list with live progress bars, the discover
page and its import, and the forms behind the pull, copy, delete, preload, unload and benchmark actions."""

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html

from hosts import discover, garden
from hosts.models import GardenOperation, Host, HostModel

Kind = GardenOperation.Kind


class PullForm(forms.Form):
    model = forms.CharField(
        max_length=255,
        strip=True,
        help_text="As Ollama names it, e.g. llama3.2:3b, qwen2.5-coder:7b or nomic-embed-text.",
    )


class CopyForm(forms.Form):
    source = forms.ModelChoiceField(
        queryset=Host.objects.filter(backend=Host.Backend.OLLAMA), help_text="The host whose models are copied."
    )


class DiscoverForm(forms.Form):
    subnet = forms.CharField(
        max_length=64, strip=True,
        help_text="A private network such as 192.168.1.0/24, or one address. At most "
                  f"{settings.CLOOD_DISCOVER_MAX_ADDRESSES} addresses; public addresses are never scanned.",
    )  # fmt: skip
    ports = forms.CharField(max_length=200, strip=True, help_text="Comma-separated; Ollama listens on 11434.")

    def clean(self):
        data = super().clean()
        if "subnet" in data and "ports" in data:
            try:
                discover.parse_targets(
                    data["subnet"], data["ports"], max_addresses=settings.CLOOD_DISCOVER_MAX_ADDRESSES
                )
            except ValueError as exc:
                raise forms.ValidationError(str(exc)) from None
        return data


def _can_operate(request):
    if not request.user.has_perm("hosts.change_host"):
        raise PermissionDenied


def _operations_url(operations=()):
    url = reverse("admin:hosts_gardenoperation_changelist")
    ids = ",".join(str(op.pk) for op in operations)
    return f"{url}?id__in={ids}" if ids else url


def _report(model_admin, request, started, refused):
    for text in refused:
        model_admin.message_user(request, text, messages.ERROR)
    if started:
        text = f"Started {len(started)} operation{'s' if len(started) != 1 else ''}: " + ", ".join(map(str, started))
        model_admin.message_user(request, text, messages.SUCCESS)


def _intermediate(model_admin, request, queryset, template, form, title, action):
    context = {
        **model_admin.admin_site.each_context(request),
        "title": title,
        "opts": model_admin.model._meta,
        "form": form,
        "hosts": queryset,
        "action": action,
        "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
        "media": model_admin.media + form.media,
    }
    return TemplateResponse(request, template, context)


def pull_action(model_admin, request, queryset):
    """Host action: ask for the model, then pull it onto every selected host."""
    _can_operate(request)
    form = PullForm(request.POST if "apply" in request.POST else None)
    if form.is_valid():
        try:
            started, refused = garden.start_pulls(list(queryset), form.cleaned_data["model"], request.user.username)
        except garden.Refused as exc:
            form.add_error("model", str(exc))
        else:
            _report(model_admin, request, started, refused)
            return HttpResponseRedirect(_operations_url(started))
    return _intermediate(model_admin, request, queryset, "admin/hosts/pull.html", form,
                         "Pull a model onto hosts", "pull_model")  # fmt: skip


def copy_action(model_admin, request, queryset):
    """Host action on one host: pull onto it every model another host has and it lacks."""
    _can_operate(request)
    if queryset.count() != 1:
        model_admin.message_user(request, "Select exactly one host to copy models onto.", messages.ERROR)
        return None
    target = queryset.get()
    form = CopyForm(request.POST if "apply" in request.POST else None)
    form.fields["source"].queryset = form.fields["source"].queryset.exclude(pk=target.pk)
    if form.is_valid():
        try:
            started, refused = garden.start_copy(form.cleaned_data["source"], target, request.user.username)
        except garden.Refused as exc:
            form.add_error("source", str(exc))
        else:
            _report(model_admin, request, started, refused)
            return HttpResponseRedirect(_operations_url(started))
    return _intermediate(model_admin, request, queryset, "admin/hosts/copy.html", form,
                         f"Copy models onto {target.name}", "copy_models")  # fmt: skip


def discover_view(model_admin, request):
    _can_operate(request)
    if request.method == "POST":
        form = DiscoverForm(request.POST)
        if form.is_valid():
            try:
                op = garden.start_discover(
                    form.cleaned_data["subnet"], form.cleaned_data["ports"], request.user.username
                )
            except garden.Refused as exc:
                form.add_error(None, str(exc))
            else:
                return HttpResponseRedirect(reverse("admin:hosts_gardenoperation_change", args=[op.pk]))
    else:
        ports = ", ".join(str(p) for p in settings.CLOOD_DISCOVER_PORTS)
        form = DiscoverForm(initial={"subnet": discover.default_subnet(), "ports": ports})
    context = {
        **model_admin.admin_site.each_context(request),
        "title": "Discover hosts",
        "opts": model_admin.model._meta,
        "form": form,
        "recent": GardenOperation.objects.filter(kind=Kind.DISCOVER)[:5],
    }
    return TemplateResponse(request, "admin/hosts/discover.html", context)


def model_operation_view(model_admin, request, pk, kind):
    """A model row's operation: POST starts it (delete after a confirmation page), then back to the models page."""
    _can_operate(request)
    row = get_object_or_404(HostModel.objects.select_related("host"), pk=pk)
    if kind not in (Kind.PRELOAD, Kind.UNLOAD, Kind.BENCHMARK, Kind.DELETE):
        raise PermissionDenied
    if request.method != "POST":
        if kind != Kind.DELETE:
            return HttpResponseNotAllowed(["POST"])
        context = {**model_admin.admin_site.each_context(request), "title": "Delete a model from a host",
                   "opts": model_admin.model._meta, "row": row}  # fmt: skip
        return TemplateResponse(request, "admin/hosts/delete_model.html", context)
    try:
        op = garden.start_on_model(kind, row, request.user.username)
    except garden.Refused as exc:
        model_admin.message_user(request, str(exc), messages.ERROR)
    else:
        model_admin.message_user(request, f"Started: {op} — its progress is below.", messages.SUCCESS)
    return HttpResponseRedirect(reverse("admin:hosts_hostmodel_changelist"))


def progress_cells(op):
    """The progress bar, status and message of an operation, as the live script (static/hosts/operations.js) finds
    them: by data-operation-id and data-field."""
    percent = op.percent
    bar = (format_html('<progress data-operation-id="{}" data-field="bar" max="100" value="{}"></progress>', op.pk,
                       f"{percent:.1f}") if percent is not None else
           format_html('<progress data-operation-id="{}" data-field="bar" max="100"></progress>', op.pk))  # fmt: skip
    label = f"{percent:.0f}%" if percent is not None else ""
    return {
        "bar": format_html('{} <span data-operation-id="{}" data-field="percent">{}</span>', bar, op.pk, label),
        "status": format_html(
            '<span class="op-status" data-operation-id="{}" data-field="status" data-status="{}">{}</span>',
            op.pk,
            op.status,
            op.status,
        ),  # fmt: skip
        "message": format_html(
            '<span data-operation-id="{}" data-field="message">{}</span>', op.pk, op.error or op.message
        ),  # fmt: skip
    }


@admin.register(GardenOperation)
class GardenOperationAdmin(admin.ModelAdmin):
    """What the garden operations did and are doing; the bars move live over the ATC websocket."""

    list_display = ["id", "kind", "where", "status_cell", "progress_cell", "message_cell", "requested_by",
                    "started_at", "duration"]  # fmt: skip
    list_display_links = ["id", "kind"]
    list_filter = ["kind", "status"]
    search_fields = ["host_name", "model", "message", "error"]

    class Media:
        js = ["hosts/operations.js"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def lookup_allowed(self, lookup, value, request=None):
        return lookup == "id__in" or super().lookup_allowed(lookup, value, request)

    @admin.display(description="on")
    def where(self, op):
        return f"{op.model} on {op.host_name}" if op.host_name else f"{op.model}"

    @admin.display(description="status")
    def status_cell(self, op):
        return progress_cells(op)["status"]

    @admin.display(description="progress")
    def progress_cell(self, op):
        return progress_cells(op)["bar"]

    @admin.display(description="message")
    def message_cell(self, op):
        return progress_cells(op)["message"]

    @admin.display(description="took")
    def duration(self, op):
        if op.finished_at is None:
            return "—"
        return f"{(op.finished_at - op.started_at).total_seconds():.1f} s"

    def changelist_view(self, request, extra_context=None):
        garden.expire_stale()
        return super().changelist_view(request, extra_context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        garden.expire_stale()
        op = get_object_or_404(GardenOperation, pk=object_id)
        if not self.has_view_or_change_permission(request, op):
            raise PermissionDenied
        if request.method == "POST" and "import" in request.POST:
            return self._import(request, op)
        found = op.result.get("found", []) if op.kind == Kind.DISCOVER else []
        context = {
            **self.admin_site.each_context(request),
            "title": f"Operation #{op.pk}: {op}",
            "opts": self.model._meta,
            "op": op,
            "cells": progress_cells(op),
            "found": found,
            "importable": any(not f["registered"] for f in found),
            "figures": op.result if op.kind == Kind.BENCHMARK and op.status == op.Status.SUCCEEDED else None,
            "media": self.media,
        }
        return TemplateResponse(request, "admin/hosts/operation_detail.html", context)

    def _import(self, request, op):
        _can_operate(request)
        chosen = set(request.POST.getlist("base_url"))
        if not chosen:
            self.message_user(request, "Tick the hosts to import first.", messages.WARNING)
            return HttpResponseRedirect(request.path)
        created = garden.import_found(op, chosen)
        if created:
            names = ", ".join(h.name for h in created)
            self.message_user(request, f"Registered {len(created)} host(s): {names}. The monitor checks them now.",
                              messages.SUCCESS)  # fmt: skip
            garden.check_soon([h.name for h in created])
        else:
            self.message_user(request, "Those hosts are registered already.", messages.WARNING)
        return HttpResponseRedirect(reverse("admin:hosts_host_changelist"))
