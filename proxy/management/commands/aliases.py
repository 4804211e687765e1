"""`manage.py aliases set|list|disable|enable|remove`: model aliases and tiers, scriptable for config management.
A running clood picks changes up within CLOOD_SNAPSHOT_REFRESH seconds."""

import json

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from hosts.names import normalize_model_name
from proxy import aliases
from proxy.models import Alias


class Command(BaseCommand):
    help = "Manage model aliases (a name that stands for an ordered list of models) and the auto tiers."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        put = sub.add_parser("set", help="Make or replace an alias: its models in order, first preferred.")
        put.add_argument("name")
        put.add_argument("models", nargs="+", help="Real model names (for auto: tier alias names), in order.")
        put.add_argument("--description", default="")
        put.add_argument("--disabled", action="store_true", help="Make it disabled.")
        listing = sub.add_parser("list", help="List aliases.")
        listing.add_argument("--json", action="store_true", dest="as_json")
        for action, text in (("disable", "Disable an alias"), ("enable", "Enable an alias"), ("remove", "Delete it")):
            sub.add_parser(action, help=text + ".").add_argument("name")

    def handle(self, *args, action, **options):
        getattr(self, f"handle_{action}")(**options)
        if action != "list":
            aliases.announce()  # ATC pages show the change (with one process, the server notices it)

    def handle_set(self, name, models, description, disabled, **_):
        alias = _find(name, missing_ok=True) or Alias()
        alias.name, alias.targets, alias.description, alias.enabled = name, list(models), description, not disabled
        try:
            alias.full_clean(exclude=["name_key"])
        except ValidationError as error:
            raise CommandError("; ".join(m for messages in error.message_dict.values() for m in messages)) from None
        alias.save()
        self.stdout.write(f"{alias.name} → {' → '.join(alias.targets)}")

    def handle_list(self, as_json, **_):
        rows = [{"name": a.name, "models": a.targets, "enabled": a.enabled, "description": a.description}
                for a in Alias.objects.all()]  # fmt: skip
        if as_json:
            self.stdout.write(json.dumps(rows, indent=2))
            return
        for row in rows:
            state = "" if row["enabled"] else " (disabled)"
            self.stdout.write(f"{row['name']}{state}: {' → '.join(row['models'])}")

    def handle_disable(self, name, **_):
        _set_enabled(name, False)

    def handle_enable(self, name, **_):
        _set_enabled(name, True)

    def handle_remove(self, name, **_):
        _find(name).delete()


def _set_enabled(name, enabled):
    alias = _find(name)
    alias.enabled = enabled
    alias.save(update_fields=["enabled", "updated_at"])


def _find(name, missing_ok=False):
    alias = Alias.objects.filter(name_key=normalize_model_name(name)).first()
    if alias is None and not missing_ok:
        raise CommandError(f"there is no alias '{name}'")
    return alias
