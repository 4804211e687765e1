"""ASGI routes of the public API (mounted in clood_site/asgi.py ahead of Django)."""

from django.urls import path, re_path

from proxy.catalog import CatalogConsumer, NotFoundConsumer
from proxy.consumers import RelayConsumer
from proxy.internals import internals_routes
from proxy.metrics_consumer import MetricsConsumer
from proxy.openapi import OpenApiConsumer


def _relay(route, endpoint):
    return path(route, RelayConsumer.as_asgi(endpoint=endpoint))


def _answer(route, answer):
    return path(route, CatalogConsumer.as_asgi(answer=answer))


urlpatterns = [
    _relay("v1/chat/completions", "chat.completions"),
    _relay("v1/completions", "completions"),
    _relay("v1/embeddings", "embeddings"),
    _answer("v1/models", "models"),
    re_path(r"^v1/models/(?P<model_id>.+)$", CatalogConsumer.as_asgi(answer="model")),
    _relay("api/chat", "ollama.chat"),
    _relay("api/generate", "ollama.generate"),
    _relay("api/embed", "ollama.embed"),
    _relay("api/embeddings", "ollama.embeddings"),
    _relay("api/show", "ollama.show"),
    _answer("api/tags", "ollama.tags"),
    _answer("api/ps", "ollama.ps"),
    _answer("api/version", "ollama.version"),
    _answer("status", "status"),
    _answer("health", "health"),
    _answer("ready", "ready"),
    path("metrics", MetricsConsumer.as_asgi()),
    *internals_routes(),
    path("openapi.json", OpenApiConsumer.as_asgi()),
    re_path(r"^v1/", NotFoundConsumer.as_asgi(flavour="openai")),
    re_path(r"^api/", NotFoundConsumer.as_asgi(flavour="ollama")),
]
