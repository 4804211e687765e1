"""What the proxy keeps: one RequestLog row per client request (written in batches, off the hot path)."""

from django.db import models


class RequestLog(models.Model):
    class Outcome(models.TextChoices):
        OK = "ok", "completed"
        INCOMPLETE = "incomplete", "failed mid-stream"
        FAILED = "failed", "failed before the first byte"
        REJECTED = "rejected", "rejected (bad input, no host, queue full)"
        CANCELLED = "cancelled", "client went away"

    request_id = models.CharField(max_length=32, unique=True)
    decision_id = models.CharField(max_length=32, blank=True, default="")
    endpoint = models.CharField(max_length=64)
    model = models.CharField(max_length=255, blank=True, default="", db_index=True)
    host = models.CharField(max_length=64, blank=True, default="", db_index=True)
    client = models.CharField(max_length=128, blank=True, default="")
    stream = models.BooleanField(default=False)
    status = models.PositiveSmallIntegerField(default=0)
    outcome = models.CharField(max_length=16, choices=Outcome.choices, db_index=True)
    error = models.TextField(blank=True, default="")
    attempts = models.JSONField(default=list, blank=True)
    cold_start = models.BooleanField(default=False)
    queued_at = models.DateTimeField(db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    first_token_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    queue_wait_ms = models.FloatField(null=True, blank=True)
    ttft_ms = models.FloatField(null=True, blank=True)
    duration_ms = models.FloatField(null=True, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_s = models.FloatField(null=True, blank=True)
    finish_reason = models.CharField(max_length=32, blank=True, default="")

    class Meta:
        ordering = ["-queued_at"]

    def __str__(self):
        return f"{self.request_id} {self.model} → {self.host or '-'} ({self.outcome})"
