"""What the proxy keeps: API keys, aliases, one RequestLog row per client request (written in batches, off the hot
path), and catfights."""

import hashlib
import secrets

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from hosts.names import model_name_problem, normalize_model_name

KEY_PREFIX = "clood-"
KEY_PREFIX_SHOWN = 12  # characters of a key kept in clear, to recognise it in lists


class ApiKey(models.Model):
    """A client's key for /v1 and /api. Only its SHA-256 and its first characters are stored: the full key is
    shown once, when it is made."""

    name = models.CharField(max_length=100, unique=True, help_text="Who or what uses this key, e.g. open-webui.")
    prefix = models.CharField(max_length=KEY_PREFIX_SHOWN, editable=False, db_index=True)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    allowed_models = models.JSONField(
        default=list, blank=True, help_text="Models this key may use (empty: every model)."
    )
    requests_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Routed requests per minute (empty: no limit)."
    )
    max_concurrency = models.PositiveIntegerField(
        null=True, blank=True, help_text="Requests at once, queued ones included (empty: no limit)."
    )
    enabled = models.BooleanField(default=True)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="After this the key is refused.")
    notes = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["name"]
        verbose_name = "API key"

    def __str__(self):
        return f"{self.name} ({self.prefix}…)"

    @staticmethod
    def hash_key(key):
        return hashlib.sha256(key.encode()).hexdigest()

    def set_key(self, key=None):
        """Give this key a new secret (a fresh random one unless `key` is given) and return it: the only time
        the full key is known."""
        key = key or KEY_PREFIX + secrets.token_urlsafe(32)
        self.prefix = key[:KEY_PREFIX_SHOWN]
        self.key_hash = self.hash_key(key)
        return key

    def is_expired(self, now=None):
        return self.expires_at is not None and self.expires_at <= (now or timezone.now())


AUTO_ALIAS = "auto:latest"  # the normalised name of the alias that picks a tier by the prompt


class Alias(models.Model):
    """A name such as `fast` that stands for an ordered list of real models: a request for it is served by the first
    one some usable host holds, and the rest are its fallbacks. Only `auto` may list other aliases (its tiers)."""

    name = models.CharField(
        max_length=255,
        help_text="The name clients ask for, e.g. fast or code. Compared like model names: fast is fast:latest. "
        "A host's real model of the same name wins over the alias.",
    )
    name_key = models.CharField(max_length=255, unique=True, editable=False)  # normalised, for uniqueness
    targets = models.JSONField(
        default=list,
        help_text="Real model names in order of preference, one per line: the first one a usable host holds is "
        "served, the others are fallbacks. For auto: the tier aliases it may pick, e.g. fast, code, deep, writing.",
    )
    description = models.TextField(blank=True, default="", help_text="What the alias is for (shown to people).")
    enabled = models.BooleanField(default=True, help_text="A disabled alias is an unknown model to clients.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "aliases"

    def __str__(self):
        return self.name

    def save(self, *args, **kwargs):
        self.name = self.name.strip()
        self.name_key = normalize_model_name(self.name)
        super().save(*args, **kwargs)

    @property
    def is_auto(self):
        return normalize_model_name(self.name) == AUTO_ALIAS

    def clean(self):
        errors = {}
        problem = model_name_problem(self.name)
        key = normalize_model_name(self.name)
        others = {a.name_key: a for a in Alias.objects.exclude(pk=self.pk)}
        if problem:
            errors["name"] = f"'{self.name}' cannot be an alias name: {problem}."
        elif key in others:
            errors["name"] = f"There is already an alias '{others[key].name}' ({key})."
        elif key != AUTO_ALIAS:
            listing = sorted(a.name for a in others.values() if a.name_key != AUTO_ALIAS and key in a.target_keys())
            if listing:
                errors["name"] = (f"The alias {', '.join(listing)} lists {self.name} as a model; only auto may "
                                  "list aliases.")  # fmt: skip
        targets_error = self._targets_problem(key, others)
        if targets_error:
            errors["targets"] = targets_error
        if errors:
            raise ValidationError(errors)

    def _targets_problem(self, key, others):
        targets = self.targets
        if not isinstance(targets, list) or not targets:
            return "List at least one model."
        for target in targets:
            problem = model_name_problem(target)
            if problem:
                return f"'{target}' is not a model name: {problem}."
        keys = self.target_keys()
        if key in keys:
            return "An alias may not list itself."
        repeated = sorted({t for t in keys if keys.count(t) > 1})
        if repeated:
            return f"{', '.join(repeated)} is listed more than once."
        nested = [t for t in keys if t in others]
        if nested and key != AUTO_ALIAS:
            return f"{', '.join(nested)} is an alias: only auto may list aliases. List the real models instead."
        return None

    def target_keys(self):
        return [normalize_model_name(t) for t in self.targets or () if isinstance(t, str)]


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
    model = models.CharField(max_length=255, blank=True, default="", db_index=True)  # as the client asked
    served_model = models.CharField(max_length=255, blank=True, default="")  # the real model (an alias resolved)
    host = models.CharField(max_length=64, blank=True, default="", db_index=True)
    client = models.CharField(max_length=128, blank=True, default="")
    # No database constraint: rows are written in batches and must not fail when a key was deleted meanwhile.
    api_key = models.ForeignKey(
        ApiKey, null=True, blank=True, on_delete=models.SET_NULL, db_constraint=False, related_name="requests"
    )
    api_key_name = models.CharField(max_length=100, blank=True, default="", db_index=True)
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


class ChallengeSet(models.Model):
    """A saved list of prompts to run catfights on (edited in the admin)."""

    name = models.CharField(max_length=100, unique=True)
    prompts = models.JSONField(
        default=list, help_text='A JSON list of prompts, e.g. ["Explain TCP", "Write fizzbuzz"].'
    )
    rubric = models.TextField(blank=True, default="", help_text="Judge rubric for these prompts (optional).")

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class Catfight(models.Model):
    """One prompt run against several contestants (model × host), ranked, optionally judged."""

    class RankBy(models.TextChoices):
        FASTEST = "fastest", "fastest"
        TOKENS_PER_S = "tokens_per_s", "highest tokens/s"
        JUDGE = "judge", "judge score"

    prompt = models.TextField()
    system = models.TextField(blank=True, default="")
    params = models.JSONField(default=dict, blank=True)  # temperature, seed, max_tokens
    rank_by = models.CharField(max_length=16, choices=RankBy.choices, default=RankBy.FASTEST)
    parallel_same_host = models.BooleanField(default=False)
    judge_model = models.CharField(max_length=255, blank=True, default="")
    judge_host = models.CharField(max_length=64, blank=True, default="")
    rubric = models.TextField(blank=True, default="")
    status = models.CharField(max_length=16, default="running")
    summary = models.TextField(blank=True, default="")
    winner = models.ForeignKey("CatfightEntry", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"catfight {self.pk}: {self.prompt[:40]}"


class CatfightEntry(models.Model):
    catfight = models.ForeignKey(Catfight, on_delete=models.CASCADE, related_name="entries")
    position = models.PositiveSmallIntegerField(default=0)
    model = models.CharField(max_length=255)
    host = models.CharField(max_length=64)
    status = models.CharField(max_length=16, default="pending")
    output = models.TextField(blank=True, default="")
    error = models.TextField(blank=True, default="")
    cold = models.BooleanField(default=False)
    started_at = models.DateTimeField(null=True, blank=True)
    first_token_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    load_ms = models.FloatField(null=True, blank=True)
    ttft_ms = models.FloatField(null=True, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    prompt_tokens_per_s = models.FloatField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_s = models.FloatField(null=True, blank=True)
    duration_ms = models.FloatField(null=True, blank=True)
    output_chars = models.PositiveIntegerField(default=0)
    judge_score = models.FloatField(null=True, blank=True)
    judge_explanation = models.TextField(blank=True, default="")
    rank = models.PositiveSmallIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["catfight", "position"]

    def __str__(self):
        return f"{self.model} @ {self.host}"
