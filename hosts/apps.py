from django.apps import AppConfig


class HostsConfig(AppConfig):
    verbose_name = "Garden"
    name = "hosts"
