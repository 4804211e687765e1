"""The host registry: hosts, their health, and the models each one holds (inventory)."""

import re
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone

from hosts.names import normalize_model_name


def validate_base_url(value):
    """http(s)://host[:port][/path] — LAN names without a dot (`gpu-box`) are fine, unlike URLValidator."""
    try:
        parts = urlsplit((value or "").strip())
        port = parts.port
    except ValueError:
        raise ValidationError("Enter a valid URL, e.g. http://192.168.1.20:11434.") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("Enter a valid URL starting with http:// or https://, e.g. http://192.168.1.20:11434.")
    if any(ch.isspace() for ch in value.strip()) or not _HOSTNAME.match(parts.hostname):
        raise ValidationError("Enter a valid URL: the host name has characters a URL cannot have.")
    if parts.username is not None or parts.password is not None:  # it would show wherever the URL is shown
        raise ValidationError("A base URL cannot carry a user name or password: put the key in the API key field.")
    if parts.query or parts.fragment or "?" in value or "#" in value:
        raise ValidationError("A base URL has no query string or fragment.")
    if port == 0:
        raise ValidationError("Enter a valid URL: port 0 is not a port.")


def status_label(enabled, online):
    """One word for a host's state, as pages, events and /status show it."""
    if not enabled:
        return "disabled"
    if online is None:
        return "unknown"
    return "online" if online else "offline"


_HOSTNAME = re.compile(r"^[A-Za-z0-9._:-]+$")


class Host(models.Model):
    class Backend(models.TextChoices):
        OLLAMA = "ollama", "Ollama"
        OPENAI = "openai", "OpenAI-compatible (llama.cpp, vLLM, LM Studio)"

    class Circuit(models.TextChoices):
        CLOSED = "closed", "closed"
        OPEN = "open", "open"

    name = models.SlugField(max_length=64, unique=True, help_text="Short name, e.g. 'gpu-box'.")
    base_url = models.CharField(
        max_length=255,
        validators=[validate_base_url],
        help_text="e.g. http://192.168.1.20:11434 (no trailing /v1 for OpenAI backends).",
    )
    backend = models.CharField(max_length=16, choices=Backend.choices, default=Backend.OLLAMA)
    priority = models.IntegerField(default=100, help_text="Lower wins ties.")
    enabled = models.BooleanField(default=True)
    max_concurrency = models.PositiveIntegerField(
        default=4,
        validators=[MinValueValidator(1)],
        help_text="Requests this host serves at once (match OLLAMA_NUM_PARALLEL).",
    )
    api_key = models.CharField(max_length=512, blank=True, default="")
    static_models = models.TextField(
        blank=True,
        default="",
        help_text="For OpenAI backends that cannot list models: one model name per line.",
    )
    hardware_cpu = models.CharField("CPU", max_length=200, blank=True, default="")
    hardware_gpu = models.CharField("GPU", max_length=200, blank=True, default="")
    hardware_memory = models.CharField("memory", max_length=200, blank=True, default="")
    notes = models.TextField(blank=True, default="")

    # Health, written by the monitor.
    online = models.BooleanField(null=True, blank=True, default=None, help_text="None until first checked.")
    latency_ms = models.FloatField(null=True, blank=True, help_text="Smoothed.")
    version = models.CharField(max_length=64, blank=True, default="")
    last_checked_at = models.DateTimeField(null=True, blank=True)
    last_online_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    consecutive_failures = models.PositiveIntegerField(default=0)
    circuit = models.CharField(max_length=8, choices=Circuit.choices, default=Circuit.CLOSED)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["priority", "name"]

    def __str__(self):
        return self.name

    def save(self, *args, **kwargs):
        self.base_url = (self.base_url or "").strip().rstrip("/")
        super().save(*args, **kwargs)

    def clean(self):
        self.base_url = (self.base_url or "").strip().rstrip("/")

    def is_usable(self):
        return self.enabled and bool(self.online) and self.circuit == self.Circuit.CLOSED

    def static_model_names(self):
        return [line.strip() for line in self.static_models.replace(",", "\n").splitlines() if line.strip()]

    @property
    def status_label(self):
        return status_label(self.enabled, self.online)


class HostModel(models.Model):
    """One model on one host. `name` is normalised (hosts.names); `remote_name` is the host's own spelling."""

    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="models")
    name = models.CharField(max_length=255, db_index=True)
    remote_name = models.CharField(max_length=255)
    digest = models.CharField(max_length=128, blank=True, default="")
    size = models.BigIntegerField(null=True, blank=True)
    family = models.CharField(max_length=64, blank=True, default="")
    parameter_size = models.CharField(max_length=32, blank=True, default="")
    quantization = models.CharField(max_length=32, blank=True, default="")
    capabilities = models.JSONField(default=list, blank=True)
    context_length = models.PositiveIntegerField(null=True, blank=True)
    # The digest whose details (capabilities, context length) we hold, so /api/show is asked once per digest.
    details_digest = models.CharField(max_length=128, blank=True, default="")
    loaded = models.BooleanField(default=False)
    loaded_until = models.DateTimeField(null=True, blank=True)
    size_vram = models.BigIntegerField(null=True, blank=True)
    last_seen_at = models.DateTimeField(default=timezone.now)
    # The newest benchmark of this model on this host (hosts.garden), cleared when the model's digest changes.
    # Routing uses them until live traffic has measured the host.
    bench_load_ms = models.FloatField("benchmark load ms", null=True, blank=True)
    bench_ttft_ms = models.FloatField("benchmark TTFT ms", null=True, blank=True)
    bench_prompt_tps = models.FloatField("benchmark prompt tokens/s", null=True, blank=True)
    bench_gen_tps = models.FloatField("benchmark generation tokens/s", null=True, blank=True)
    bench_at = models.DateTimeField("benchmarked at", null=True, blank=True)

    class Meta:
        ordering = ["host__name", "name"]
        verbose_name = "model"
        verbose_name_plural = "models (across hosts)"
        constraints = [models.UniqueConstraint(fields=["host", "name"], name="unique_model_per_host")]

    def __str__(self):
        return f"{self.remote_name} on {self.host}"

    def matches(self, requested):
        return self.name == normalize_model_name(requested)


class GardenOperation(models.Model):
    """One admin operation on the garden (discover, pull, delete, preload, unload, benchmark), with its progress.

    It runs as a task of the server process that accepted it (hosts.garden) and publishes its progress as ATC events;
    this row keeps the outcome. Two pulls or deletes of one model on one host cannot run at once (a partial unique
    constraint): the second is refused and pointed at the first.
    """

    class Kind(models.TextChoices):
        DISCOVER = "discover", "discover"
        PULL = "pull", "pull"
        DELETE = "delete", "delete"
        PRELOAD = "preload", "preload"
        UNLOAD = "unload", "unload"
        BENCHMARK = "benchmark", "benchmark"

    class Status(models.TextChoices):
        QUEUED = "queued", "queued"  # waiting for the operation before it (a copy pulls one model at a time)
        RUNNING = "running", "running"
        SUCCEEDED = "succeeded", "succeeded"
        FAILED = "failed", "failed"

    kind = models.CharField(max_length=16, choices=Kind.choices)
    host = models.ForeignKey(Host, null=True, blank=True, on_delete=models.SET_NULL, related_name="operations")
    host_name = models.CharField(max_length=64, blank=True, default="")  # kept when the host is deleted
    model = models.CharField(max_length=255, blank=True, default="")  # normalised; the subnet for a discover
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING)
    completed = models.BigIntegerField(null=True, blank=True)  # bytes pulled, addresses probed
    total = models.BigIntegerField(null=True, blank=True)
    message = models.CharField(max_length=500, blank=True, default="")  # the newest status line
    error = models.TextField(blank=True, default="")
    result = models.JSONField(default=dict, blank=True)  # benchmark figures, discovered hosts
    requested_by = models.CharField(max_length=150, blank=True, default="")
    process = models.CharField(max_length=200, blank=True, default="")
    started_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)  # progress written at least every few seconds
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        verbose_name = "garden operation"
        constraints = [
            models.UniqueConstraint(
                fields=["host", "model"],
                condition=models.Q(status__in=["queued", "running"], kind__in=["pull", "delete"]),
                name="one_pull_or_delete_per_model_at_once",
            )
        ]

    def __str__(self):
        where = f" on {self.host_name}" if self.host_name else ""
        return f"{self.kind} {self.model}{where}".replace("  ", " ")

    @property
    def active(self):
        return self.status in (self.Status.QUEUED, self.Status.RUNNING)

    @property
    def percent(self):
        if self.status == self.Status.SUCCEEDED:
            return 100.0
        if self.completed is None or not self.total:
            return None
        return min(100.0, 100.0 * self.completed / self.total)

    def as_event(self):
        """What the ATC event and the admin's progress bars show."""
        percent = self.percent
        return {
            "id": self.pk,
            "kind": self.kind,
            "host": self.host_name,
            "model": self.model,
            "status": self.status,
            "completed": self.completed,
            "total": self.total,
            "percent": round(percent, 1) if percent is not None else None,
            "message": self.message,
            "error": self.error,
        }
