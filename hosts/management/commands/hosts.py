"""`manage.py hosts add|list|remove|refresh`: the registry, scriptable for config management."""

import json
import os

from asgiref.sync import async_to_sync
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from hosts.models import Host
from hosts.monitor import check_and_publish


class Command(BaseCommand):
    help = "Manage the host registry."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="Register a host (or update one with the same name).")
        add.add_argument("name")
        add.add_argument("url")
        add.add_argument("--backend", choices=Host.Backend.values, default=Host.Backend.OLLAMA)
        add.add_argument("--priority", type=int, default=100)
        add.add_argument("--max-concurrency", type=int, default=4)
        add.add_argument("--api-key-env", metavar="VAR", help="Read the host's API key from this variable.")
        add.add_argument("--static-models", default="", help="Comma-separated models (OpenAI backends).")
        add.add_argument("--disabled", action="store_true")
        listing = sub.add_parser("list", help="List hosts with health and inventory.")
        listing.add_argument("--json", action="store_true")
        remove = sub.add_parser("remove", help="Remove a host and its inventory.")
        remove.add_argument("name")
        refresh = sub.add_parser("refresh", help="Check hosts now (all enabled hosts, or one).")
        refresh.add_argument("name", nargs="?")

    def handle(self, *args, action, **options):
        getattr(self, f"handle_{action}")(**options)

    def handle_add(self, name, url, backend, priority, max_concurrency, api_key_env, static_models, disabled, **_):
        api_key = ""
        if api_key_env:
            if api_key_env not in os.environ:
                raise CommandError(f"environment variable {api_key_env} is not set")
            api_key = os.environ[api_key_env]
        host = Host.objects.filter(name=name).first() or Host(name=name)
        host.base_url = url
        host.backend = backend
        host.priority = priority
        host.max_concurrency = max_concurrency
        host.enabled = not disabled
        host.static_models = "\n".join(n.strip() for n in static_models.split(",") if n.strip())
        if api_key:
            host.api_key = api_key
        try:
            host.full_clean(validate_unique=False)
        except ValidationError as exc:
            problems = "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in exc.message_dict.items())
            raise CommandError(f"invalid host: {problems}") from None
        created = host.pk is None
        host.save()
        self.stdout.write(f"{'added' if created else 'updated'} {host.name} → {host.base_url} ({host.backend})")

    def handle_list(self, json, **_):  # noqa: A002 - the flag is --json
        hosts = list(Host.objects.prefetch_related("models"))
        if json:
            self.stdout.write(dumps([host_as_dict(h) for h in hosts]))
            return
        if not hosts:
            self.stdout.write("no hosts registered")
            return
        for host in hosts:
            loaded = [m.remote_name for m in host.models.all() if m.loaded]
            latency = f"{host.latency_ms:.0f} ms" if host.latency_ms is not None else "-"
            self.stdout.write(
                f"{host.name:<20} {host.status_label:<8} {latency:>8}  {host.base_url}  "
                f"{len(host.models.all())} models, loaded: {', '.join(loaded) or '-'}"
                + (f"  error: {host.last_error}" if host.last_error else "")
            )

    def handle_remove(self, name, **_):
        deleted, _ = Host.objects.filter(name=name).delete()
        if not deleted:
            raise CommandError(f"no host named {name!r}")
        self.stdout.write(f"removed {name}")

    def handle_refresh(self, name, **_):
        if name and not Host.objects.filter(name=name).exists():
            raise CommandError(f"no host named {name!r}")
        results = async_to_sync(check_and_publish)([name] if name else None)
        failed = 0
        for host_name, report in results:
            if report.ok:
                self.stdout.write(f"{host_name}: online, {len(report.models)} models")
            else:
                failed += 1
                self.stdout.write(f"{host_name}: offline — {report.error}")
        if failed:
            raise CommandError(f"{failed} of {len(results)} hosts failed their check")


def host_as_dict(host):
    return {
        "name": host.name,
        "base_url": host.base_url,
        "backend": host.backend,
        "priority": host.priority,
        "enabled": host.enabled,
        "max_concurrency": host.max_concurrency,
        "api_key_set": bool(host.api_key),
        "static_models": host.static_model_names(),
        "hardware": {"cpu": host.hardware_cpu, "gpu": host.hardware_gpu, "memory": host.hardware_memory},
        "status": host.status_label,
        "online": host.online,
        "latency_ms": host.latency_ms,
        "version": host.version,
        "last_checked_at": host.last_checked_at.isoformat() if host.last_checked_at else None,
        "last_error": host.last_error,
        "consecutive_failures": host.consecutive_failures,
        "circuit": host.circuit,
        "models": [
            {
                "name": m.name,
                "remote_name": m.remote_name,
                "digest": m.digest,
                "size": m.size,
                "family": m.family,
                "parameter_size": m.parameter_size,
                "quantization": m.quantization,
                "capabilities": m.capabilities,
                "context_length": m.context_length,
                "loaded": m.loaded,
                "loaded_until": m.loaded_until.isoformat() if m.loaded_until else None,
                "size_vram": m.size_vram,
            }
            for m in host.models.all()
        ],
    }


def dumps(value):
    return json.dumps(value, indent=2)
