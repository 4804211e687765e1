"""What this process has seen of each host: counters, TTFT and speed samples, and the proxy-side circuit.

Routing reads it (observed speed, circuit); `/status` shows it. Everything is in memory and per process.
"""

import statistics
import time
from collections import deque
from dataclasses import dataclass, field

from django.conf import settings

# After clood caused a cold start, the model counts as loaded there for this long (Ollama's default keep_alive),
# until the monitor's next check says otherwise.
WARM_FOR_SECONDS = 300


@dataclass
class HostStats:
    requests: int = 0
    errors: int = 0
    tokens: int = 0
    ttft_ms: deque = field(default_factory=lambda: deque(maxlen=200))
    tokens_per_s: deque = field(default_factory=lambda: deque(maxlen=50))
    consecutive_failures: int = 0
    circuit_open_until: float = 0.0  # monotonic time; 0 = closed
    circuit_opened_at: float = 0.0  # wall-clock time, compared with the monitor's last check
    probing: bool = False  # the one request let through after the cooldown is in flight
    warm: dict = field(default_factory=dict)  # model -> monotonic time clood last loaded it here (cold start)
    model_ttft_ms: dict = field(default_factory=dict)  # model -> deque of its recent TTFTs here (ms)

    def recently_loaded(self, model, now=None):
        loaded_at = self.warm.get(model)
        return loaded_at is not None and (now or time.monotonic()) - loaded_at < WARM_FOR_SECONDS

    def p50_ttft_ms(self, model=None):
        """The median TTFT of recent requests here: of every model, or of the normalised `model` only."""
        ttfts = self.ttft_ms if model is None else self.model_ttft_ms.get(model)
        return statistics.median(ttfts) if ttfts else None

    def observe_ttft(self, ms, model=None):
        self.ttft_ms.append(ms)
        if model is not None:
            ttfts = self.model_ttft_ms.get(model)
            if ttfts is None:
                ttfts = self.model_ttft_ms[model] = deque(maxlen=50)
            ttfts.append(ms)

    def recent_tokens_per_s(self):
        return statistics.median(self.tokens_per_s) if self.tokens_per_s else None

    def circuit_state(self, now=None):
        if not self.circuit_open_until:
            return "closed"
        return "open" if (now or time.monotonic()) < self.circuit_open_until else "half-open"


class LiveStats:
    def __init__(self):
        self.hosts = {}
        self.started_at = time.time()
        self.totals = {"requests": 0, "errors": 0, "rejected": 0, "tokens": 0}

    def host(self, name):
        stats = self.hosts.get(name)
        if stats is None:
            stats = self.hosts[name] = HostStats()
        return stats

    def circuit_allows(self, name):
        """Closed: yes. Open: no. Half-open (cooldown over): one probe request at a time."""
        stats = self.hosts.get(name)
        if stats is None:
            return True
        state = stats.circuit_state()
        if state == "closed":
            return True
        return state == "half-open" and not stats.probing

    def attempt_started(self, name):
        stats = self.host(name)
        if stats.circuit_state() == "half-open":
            stats.probing = True

    def upstream_failed(self, name):
        stats = self.host(name)
        stats.errors += 1
        stats.consecutive_failures += 1
        stats.probing = False
        if stats.consecutive_failures >= settings.CLOOD_CIRCUIT_THRESHOLD:
            stats.circuit_open_until = time.monotonic() + settings.CLOOD_CIRCUIT_COOLDOWN
            stats.circuit_opened_at = time.time()

    def upstream_succeeded(self, name):
        stats = self.host(name)
        stats.consecutive_failures = 0
        stats.circuit_open_until = 0.0
        stats.probing = False

    def host_seen_well(self, name, checked_at):
        """The monitor found the host healthy after the circuit opened: close the proxy-side circuit too."""
        stats = self.hosts.get(name)
        if stats and stats.circuit_open_until and checked_at and checked_at.timestamp() > stats.circuit_opened_at:
            self.upstream_succeeded(name)

    def request_finished(self, name, *, ok, tokens, ttft_ms, tokens_per_s, model=None):
        stats = self.host(name)
        stats.requests += 1
        stats.tokens += tokens or 0
        self.totals["requests"] += 1
        self.totals["tokens"] += tokens or 0
        if not ok:
            self.totals["errors"] += 1
        if ttft_ms is not None:
            stats.observe_ttft(ttft_ms, model)
        if tokens_per_s:
            stats.tokens_per_s.append(tokens_per_s)
