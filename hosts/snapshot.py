"""The in-memory view of the garden that the request hot path reads: hosts, health, inventory, loaded models.

It is rebuilt from the database every CLOOD_SNAPSHOT_REFRESH seconds by a background task of the server, so admin
edits and monitor results (from any process) reach routing within that interval; a request never queries the
database itself. A snapshot is immutable: readers keep the one they got even while a newer one is swapped in.
"""

import asyncio
import logging
import time
from dataclasses import dataclass, field

from django.conf import settings

from clood_site.db import in_db_thread
from hosts.models import Host, HostModel, status_label

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelView:
    name: str
    remote_name: str
    digest: str
    size: int | None
    family: str
    parameter_size: str
    quantization: str
    capabilities: tuple
    context_length: int | None
    loaded: bool
    loaded_until: object
    size_vram: int | None
    last_seen_at: object
    bench_ttft_ms: float | None = None  # the newest admin benchmark (hosts.garden), None when never measured
    bench_gen_tps: float | None = None


@dataclass(frozen=True)
class HostView:
    id: int
    name: str
    base_url: str
    backend: str
    priority: int
    enabled: bool
    online: bool | None
    circuit: str
    latency_ms: float | None
    max_concurrency: int
    api_key: str = field(repr=False)
    version: str
    last_checked_at: object  # aware datetime or None
    last_error: str
    hardware_cpu: str
    hardware_gpu: str
    hardware_memory: str
    notes: str
    models: dict  # normalised name -> ModelView

    def is_usable(self):
        return self.enabled and bool(self.online) and self.circuit == Host.Circuit.CLOSED

    @property
    def status_label(self):
        return status_label(self.enabled, self.online)


@dataclass(frozen=True)
class Snapshot:
    hosts: tuple = ()
    loaded_at: float = 0.0

    def holders(self, name):
        """Hosts (any state) whose inventory has the normalised model `name`."""
        return [host for host in self.hosts if name in host.models]

    def host(self, name):
        return next((host for host in self.hosts if host.name == name), None)


def model_as_dict(model, digest_differs=False):
    """A model (HostModel row or snapshot ModelView) as ATC shows it."""
    return {
        "name": model.name,
        "remote_name": model.remote_name,
        "loaded": model.loaded,
        "loaded_until": model.loaded_until.isoformat() if model.loaded_until else None,
        "size": model.size,
        "size_vram": model.size_vram,
        "family": model.family,
        "parameter_size": model.parameter_size,
        "quantization": model.quantization,
        "capabilities": list(model.capabilities or ()),
        "context_length": model.context_length,
        "digest": model.digest,
        "digest_differs": digest_differs,
        "bench_ttft_ms": getattr(model, "bench_ttft_ms", None),
        "bench_gen_tps": getattr(model, "bench_gen_tps", None),
    }


_current = Snapshot()
_refresher = None


def current():
    return _current


def build():
    hosts = list(Host.objects.all())
    models = {}
    for row in HostModel.objects.all():
        models.setdefault(row.host_id, {})[row.name] = ModelView(
            name=row.name,
            remote_name=row.remote_name,
            digest=row.digest,
            size=row.size,
            family=row.family,
            parameter_size=row.parameter_size,
            quantization=row.quantization,
            capabilities=tuple(row.capabilities or ()),
            context_length=row.context_length,
            loaded=row.loaded,
            loaded_until=row.loaded_until,
            size_vram=row.size_vram,
            last_seen_at=row.last_seen_at,
            bench_ttft_ms=row.bench_ttft_ms,
            bench_gen_tps=row.bench_gen_tps,
        )
    views = tuple(
        HostView(
            id=h.pk,
            name=h.name,
            base_url=h.base_url,
            backend=h.backend,
            priority=h.priority,
            enabled=h.enabled,
            online=h.online,
            circuit=h.circuit,
            latency_ms=h.latency_ms,
            max_concurrency=h.max_concurrency,
            api_key=h.api_key,
            version=h.version,
            last_checked_at=h.last_checked_at,
            last_error=h.last_error,
            hardware_cpu=h.hardware_cpu,
            hardware_gpu=h.hardware_gpu,
            hardware_memory=h.hardware_memory,
            notes=h.notes,
            models=models.get(h.pk, {}),
        )
        for h in hosts
    )
    return Snapshot(hosts=views, loaded_at=time.monotonic())


async def refresh():
    global _current
    _current = await in_db_thread(build)()
    return _current


async def ensure_fresh():
    """Load the snapshot on first use, and start the refresher if this process has none yet."""
    if _current.loaded_at == 0.0:
        await refresh()
    start_refresher()
    return _current


async def refresh_forever(reload, what="the routing snapshot"):
    """Call `reload` every CLOOD_SNAPSHOT_REFRESH seconds; a failure keeps the previous state (and is logged)."""
    while True:
        await asyncio.sleep(settings.CLOOD_SNAPSHOT_REFRESH)
        try:
            await reload()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("could not refresh %s; keeping the previous one", what)


def start_refresher():
    global _refresher
    if _refresher is None or _refresher.done():
        _refresher = asyncio.get_running_loop().create_task(refresh_forever(refresh), name="clood-snapshot")
    return _refresher
