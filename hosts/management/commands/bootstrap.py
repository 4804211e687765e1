"""`manage.py bootstrap`: what the one start command does after migrating, safe to run on every start.

Creates the admin account when it does not exist (password from CLOOD_ADMIN_PASSWORD, which must pass Django's
password validators as in the admin, or generated and printed once), and registers CLOOD_DEFAULT_HOSTS when the
registry is empty.
"""

import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from hosts.models import Host


class Command(BaseCommand):
    help = "Create the admin account and the default hosts when they are missing."

    def handle(self, *args, **options):
        self.ensure_admin()
        self.ensure_default_hosts()

    def ensure_admin(self):
        User = get_user_model()
        username = settings.CLOOD_ADMIN_USER
        user = User.objects.filter(username=username).first()
        changing = user is None or not user.check_password(settings.CLOOD_ADMIN_PASSWORD)
        if settings.CLOOD_ADMIN_PASSWORD and changing:  # the admin's password forms' validators, when it is set
            try:
                validate_password(settings.CLOOD_ADMIN_PASSWORD, user or User(username=username))
            except ValidationError as error:
                raise CommandError(
                    "CLOOD_ADMIN_PASSWORD is not accepted as the admin's password: " + " ".join(error.messages)
                ) from None
        if user is None:
            password = settings.CLOOD_ADMIN_PASSWORD or secrets.token_urlsafe(12)
            User.objects.create_superuser(username=username, email="", password=password)
            if settings.CLOOD_ADMIN_PASSWORD:
                self.stdout.write(f"admin account '{username}' created (password from CLOOD_ADMIN_PASSWORD)")
            else:
                self.stdout.write(
                    f"admin account '{username}' created with password: {password}\n"
                    "  (shown once; change it in the admin, or set CLOOD_ADMIN_PASSWORD before the first start)"
                )
        elif settings.CLOOD_ADMIN_PASSWORD and not user.check_password(settings.CLOOD_ADMIN_PASSWORD):
            user.set_password(settings.CLOOD_ADMIN_PASSWORD)
            user.save(update_fields=["password"])
            self.stdout.write(f"admin account '{username}': password updated from CLOOD_ADMIN_PASSWORD")

    def ensure_default_hosts(self):
        if Host.objects.exists():
            return
        for entry in settings.CLOOD_DEFAULT_HOSTS:
            name, sep, url = entry.partition("=")
            if not sep:
                raise CommandError(f"CLOOD_DEFAULT_HOSTS entry {entry!r} is not name=url")
            host = Host(name=name.strip(), base_url=url.strip())
            try:
                host.full_clean()
            except ValidationError as exc:
                problems = "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in exc.message_dict.items())
                raise CommandError(f"CLOOD_DEFAULT_HOSTS entry {entry!r}: {problems}") from None
            host.save()
            self.stdout.write(f"registered default host {host.name} → {host.base_url}")
