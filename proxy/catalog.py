"""Answers clood gives itself, from the routing snapshot, in milliseconds even when hosts are down:
model lists (OpenAI and Ollama), loaded models, version, status, health and readiness."""

import time

from django.conf import settings

from clood_site import shared
from hosts import monitor, snapshot
from hosts.names import model_name_problem, normalize_model_name
from proxy import aliases
from proxy.consumers import ApiConsumer
from proxy.errors import ApiError
from proxy.state import admission, stats

CLOOD_VERSION = "0.1.0"


def _served_models(garden, key, backends=("ollama", "openai")):
    """normalised name -> [(host, ModelView)] over enabled, online hosts, limited to what `key` may use."""
    models = {}
    for host in garden.hosts:
        if host.is_usable() and host.backend in backends:
            for name, model in host.models.items():
                if key is None or key.allows(name):
                    models.setdefault(name, []).append((host, model))
    return dict(sorted(models.items()))


def _openai_model(name, holders):
    created = min((int(m.last_seen_at.timestamp()) for _, m in holders), default=0)
    return {
        "id": holders[0][1].remote_name,
        "object": "model",
        "created": created,
        "owned_by": "clood",
        "clood": {"hosts": [h.name for h, _ in holders], "loaded_on": [h.name for h, m in holders if m.loaded]},
    }


def _ollama_model(model, host, extra=None):
    entry = {
        "name": model.remote_name,
        "model": model.remote_name,
        "modified_at": model.last_seen_at.isoformat(),
        "size": model.size or 0,
        "digest": model.digest,
        "details": {
            "format": "gguf",
            "family": model.family,
            "families": [model.family] if model.family else None,
            "parameter_size": model.parameter_size,
            "quantization_level": model.quantization,
        },
    }
    return {**entry, **(extra or {})}


def _listed_aliases(garden, table, key, backends=("ollama", "openai")):
    """[(AliasView, the model it serves now)] for the enabled aliases the key may use, that no real model shadows
    and that some usable host can serve now."""
    listed = []
    for alias in table.by_key.values():
        if not alias.enabled or garden.holders(alias.key) or (key is not None and not key.allows(alias.key)):
            continue
        serving = aliases.serving_now(alias, garden, table, backends)
        if serving:
            listed.append((alias, serving))
    return sorted(listed, key=lambda pair: pair[0].key)


def _alias_extra(alias, serving):
    return {"alias": True, "targets": [aliases.shown(t) for t in alias.targets], "resolves_to": serving,
            "description": alias.description}  # fmt: skip


def _openai_alias(alias, serving):
    return {
        "id": alias.name,
        "object": "model",
        "created": int(alias.updated_at.timestamp()) if alias.updated_at else 0,
        "owned_by": "clood",
        "clood": _alias_extra(alias, serving),
    }


def _ollama_alias(alias, serving, garden):
    """An alias in /api/tags: family "alias", sizes and quantisation of the model it serves now."""
    model = next(h.models[normalize_model_name(serving)] for h in garden.holders(normalize_model_name(serving)))
    return {
        "name": alias.key,
        "model": alias.key,
        "modified_at": alias.updated_at.isoformat() if alias.updated_at else model.last_seen_at.isoformat(),
        "size": model.size or 0,
        "digest": "",
        "details": {
            "format": "alias",
            "family": "alias",
            "families": ["alias"],
            "parameter_size": model.parameter_size,
            "quantization_level": model.quantization,
        },
        "clood": _alias_extra(alias, serving),
    }


class CatalogConsumer(ApiConsumer):
    methods = ("GET", "HEAD")

    def __init__(self, *args, answer, **kwargs):
        super().__init__(*args, **kwargs)
        self.answer = answer
        self.flavour = "ollama" if answer.startswith("ollama") else "openai"

    async def serve(self, body):
        garden = await snapshot.ensure_fresh()
        await getattr(self, "answer_" + self.answer.replace(".", "_").replace("-", "_"))(garden)

    async def answer_models(self, garden):
        data = [_openai_model(name, holders) for name, holders in _served_models(garden, self.key).items()]
        table = await aliases.table()
        data += [_openai_alias(alias, serving) for alias, serving in _listed_aliases(garden, table, self.key)]
        await self.send_json({"object": "list", "data": data})

    async def answer_model(self, garden):
        model_id = self.scope["url_route"]["kwargs"]["model_id"]
        problem = model_name_problem(model_id)
        if problem:
            raise ApiError(400, f"Invalid model name: {problem}.", param="model", code="invalid_model")
        holders = _served_models(garden, self.key).get(normalize_model_name(model_id))
        if not holders:
            table = await aliases.table()
            listed = dict(_listed_aliases(garden, table, self.key))
            alias = table.get(normalize_model_name(model_id))
            if alias in listed:
                await self.send_json(_openai_alias(alias, listed[alias]))
                return
            raise ApiError(404, f"The model '{model_id}' does not exist.", param="model", code="model_not_found")
        await self.send_json(_openai_model(model_id, holders))

    async def answer_ollama_tags(self, garden):
        models = [_ollama_model(holders[0][1], holders[0][0])
                  for holders in _served_models(garden, self.key, ("ollama",)).values()]  # fmt: skip
        table = await aliases.table()
        models += [_ollama_alias(alias, serving, garden)
                   for alias, serving in _listed_aliases(garden, table, self.key, ("ollama",))]  # fmt: skip
        await self.send_json({"models": models})

    async def answer_ollama_ps(self, garden):
        loaded = []
        for host in garden.hosts:
            if host.is_usable() and host.backend == "ollama":
                for name, model in host.models.items():
                    if model.loaded and (self.key is None or self.key.allows(name)):
                        extra = {
                            "expires_at": model.loaded_until.isoformat() if model.loaded_until else None,
                            "size_vram": model.size_vram or 0,
                            "host": host.name,
                        }
                        loaded.append(_ollama_model(model, host, extra))
        await self.send_json({"models": loaded})

    async def answer_ollama_version(self, garden):
        versions = sorted({h.version for h in garden.hosts if h.is_usable() and h.backend == "ollama" and h.version},
                          key=_version_key)  # fmt: skip
        # The oldest version in the garden: features a client unlocks by version must work on every host.
        await self.send_json({"version": versions[0] if versions else "0.0.0", "clood": CLOOD_VERSION})

    async def answer_health(self, garden):
        await self.send_json({"status": "ok"})

    async def answer_ready(self, garden):
        usable = [h.name for h in garden.hosts if h.is_usable()]
        body = {"ready": bool(usable), "usable_hosts": usable}
        if not usable:
            body["reason"] = "no host is enabled, online and healthy"
        redis = shared.status()
        if redis is not None:
            body["redis"] = redis
            if not redis["ok"]:  # still serving: a warning, not a reason to take this process out of rotation
                body["warnings"] = ["Redis is unavailable: slots, queue, key limits and ATC events hold per process "
                                    "until it is back"]  # fmt: skip
        await self.send_json(body, status=200 if usable else 503)

    async def answer_status(self, garden):
        hosts = []
        for host in garden.hosts:
            live = stats.hosts.get(host.name)
            hosts.append(
                {
                    "name": host.name,
                    "backend": host.backend,
                    "status": host.status_label,
                    "latency_ms": host.latency_ms,
                    "version": host.version,
                    "models": len(host.models),
                    "loaded": sorted(m.remote_name for m in host.models.values() if m.loaded),
                    "requests": live.requests if live else 0,
                    "errors": live.errors if live else 0,
                    "tokens": live.tokens if live else 0,
                    "tokens_per_s": _round(live.recent_tokens_per_s()) if live else None,
                    "p50_ttft_ms": _round(live.p50_ttft_ms()) if live else None,
                    "slots_used": admission.in_flight.get(host.name, 0),
                    "slots_max": host.max_concurrency,
                    "circuit": host.circuit if host.circuit != "closed" else
                               (live.circuit_state() if live else "closed"),
                }
            )  # fmt: skip
        table = await aliases.table()
        await self.send_json(
            {
                "clood": CLOOD_VERSION,
                "uptime_s": round(time.time() - stats.started_at, 1),
                "strategy": settings.CLOOD_ROUTING_STRATEGY,
                "totals": dict(stats.totals),
                "in_flight": sum(admission.in_flight.values()),
                "queued": admission.queued,
                "hosts": hosts,
                "aliases": [
                    _alias_status(alias, garden, table) for alias in sorted(table.by_key.values(), key=lambda a: a.key)
                ],
                "cluster": {
                    "redis": shared.status(),
                    "process": shared.PROCESS_ID,
                    "monitoring_here": monitor.monitoring_here,
                },
            }
        )


def _alias_status(alias, garden, table):
    entry = {
        "name": alias.name,
        "targets": [aliases.shown(t) for t in alias.targets],
        "enabled": alias.enabled,
        "description": alias.description,
        "shadowed_by_model": bool(garden.holders(alias.key)),  # a real model of the same name wins
        "resolves_to": aliases.serving_now(alias, garden, table) if alias.enabled else None,
    }
    if alias.is_auto:
        entry["resolves_to"] = None  # the tier depends on the prompt
        entry["tiers"] = aliases.tier_models(alias, garden, table)
    return entry


def _version_key(version):
    parts = []
    for piece in version.split("-")[0].split("."):
        parts.append(int(piece) if piece.isdigit() else 0)
    return parts


def _round(value):
    return round(value, 1) if value is not None else None


class NotFoundConsumer(ApiConsumer):
    """Any other path under /v1/ or /api/: a 404 in the API's own shape, never an HTML page."""

    methods = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

    def __init__(self, *args, flavour, **kwargs):
        super().__init__(*args, **kwargs)
        self.flavour = flavour

    async def serve(self, body):
        raise ApiError(404, f"Unknown endpoint: {self.scope['method']} {self.scope['path'][:200]}", code="not_found")
