from django.apps import AppConfig


class AtcConfig(AppConfig):
    name = "atc"
