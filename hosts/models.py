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

    class Meta:
        ordering = ["host__name", "name"]
        verbose_name = "model"
        verbose_name_plural = "models (across hosts)"
        constraints = [models.UniqueConstraint(fields=["host", "name"], name="unique_model_per_host")]

    def __str__(self):
        return f"{self.remote_name} on {self.host}"

    def matches(self, requested):
        return self.name == normalize_model_name(requested)
