"""`manage.py apikeys create|list|disable|remove`: client API keys, scriptable for config management."""

import json
import os
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from hosts.names import model_name_problem
from proxy.models import ApiKey


class Command(BaseCommand):
    help = "Manage the API keys clients use for /v1 and /api."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="Make a key and print it (the only time it is shown).")
        create.add_argument("name")
        create.add_argument("--models", default="", help="Comma-separated models the key may use (default: all).")
        create.add_argument("--rpm", type=int, help="Routed requests per minute.")
        create.add_argument("--max-concurrency", type=int, help="Requests at once.")
        create.add_argument("--expires-days", type=float, help="The key stops working after this many days.")
        create.add_argument("--key-env", metavar="VAR",
                            help="Use the key in this environment variable (to import an existing key).")  # fmt: skip
        listing = sub.add_parser("list", help="List keys (never the secrets).")
        listing.add_argument("--json", action="store_true", dest="as_json")
        disable = sub.add_parser("disable", help="Disable a key (kept, with its history).")
        disable.add_argument("name")
        remove = sub.add_parser("remove", help="Delete a key (its request log rows keep its name).")
        remove.add_argument("name")

    def handle(self, *args, action, **options):
        getattr(self, f"handle_{action}")(**options)

    def handle_create(self, name, models, rpm, max_concurrency, expires_days, key_env, **_):
        if ApiKey.objects.filter(name=name).exists():
            raise CommandError(f"a key named '{name}' exists already")
        allowed = [m.strip() for m in models.split(",") if m.strip()]
        for model in allowed:
            if model_name_problem(model):
                raise CommandError(f"'{model}' is not a model name: {model_name_problem(model)}")
        for label, value in (("--rpm", rpm), ("--max-concurrency", max_concurrency)):
            if value is not None and value < 1:
                raise CommandError(f"{label} must be at least 1")
        secret = None
        if key_env:
            if not os.environ.get(key_env):
                raise CommandError(f"environment variable {key_env} is not set")
            secret = os.environ[key_env]
            if len(secret) < 16:
                raise CommandError("an imported key must be at least 16 characters long")
        key = ApiKey(name=name, allowed_models=allowed, requests_per_minute=rpm, max_concurrency=max_concurrency)
        if expires_days is not None:
            key.expires_at = timezone.now() + timedelta(days=expires_days)
        secret = key.set_key(secret)
        key.save()
        if key_env:
            self.stdout.write(f"imported key '{name}' ({key.prefix}…)")
        else:
            self.stdout.write(secret)
            self.stderr.write(f"made key '{name}'; copy it now: it is not stored and will not be shown again")

    def handle_list(self, as_json, **_):
        keys = [
            {
                "name": k.name, "prefix": k.prefix, "enabled": k.enabled, "expired": k.is_expired(),
                "allowed_models": k.allowed_models, "requests_per_minute": k.requests_per_minute,
                "max_concurrency": k.max_concurrency,
                "last_used_at": k.last_used_at.isoformat() if k.last_used_at else None,
            }
            for k in ApiKey.objects.all()
        ]  # fmt: skip
        if as_json:
            self.stdout.write(json.dumps(keys, indent=2))
            return
        for k in keys:
            state = "disabled" if not k["enabled"] else ("expired" if k["expired"] else "active")
            models = ", ".join(k["allowed_models"]) or "all models"
            self.stdout.write(f"{k['name']:<24} {k['prefix']}…  {state:<8} {models}")

    def handle_disable(self, name, **_):
        if not ApiKey.objects.filter(name=name).update(enabled=False):
            raise CommandError(f"no key named '{name}'")
        self.stdout.write(f"disabled '{name}'")

    def handle_remove(self, name, **_):
        deleted, _ = ApiKey.objects.filter(name=name).delete()
        if not deleted:
            raise CommandError(f"no key named '{name}'")
        self.stdout.write(f"removed '{name}'")
