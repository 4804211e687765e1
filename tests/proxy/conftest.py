"""A garden for the proxy tests: simulated hosts and one real clood (daphne) in front of them, per module.

The monitor is slowed right down (the tests call `hosts refresh` when they want a check), so a test that breaks
a host's generation endpoints sees the proxy's failover, not the monitor taking the host away.
"""

import json

import httpx
import pytest

from tests.conftest import CloodProcess, simulated_hosts, wait_until

PROXY_ENV = {
    "CLOOD_MONITOR_INTERVAL": "3600",
    "CLOOD_SNAPSHOT_REFRESH": "0.2",
    "CLOOD_FIRST_BYTE_TIMEOUT": "2",
    "CLOOD_COLD_START_TIMEOUT": "4",
    "CLOOD_IDLE_TIMEOUT": "2",
    "CLOOD_MAX_BODY_BYTES": str(1024 * 1024),
    "CLOOD_QUEUE_MAX": "2",
    "CLOOD_QUEUE_TIMEOUT": "20",
    "CLOOD_CIRCUIT_THRESHOLD": "1000",
    "CLOOD_LOG_FLUSH_INTERVAL": "0.2",
}


class Garden:
    """Simulated hosts registered in a running clood."""

    def __init__(self, server):
        self.server = server
        self.url = server.url
        self.sims = {}

    def add(self, name, sim, *args):
        """Register `sim`; with the canary host key unless `args` give another, so that every proxy test checks the
        host's key never reaches a client (simulated Ollama hosts ignore keys)."""
        self.sims[name] = sim
        if "--api-key-env" not in args:
            args = (*args, "--api-key-env", "CLOOD_TEST_HOST_KEY")
        self.server.manage("hosts", "add", name, sim.url, *args)

    def refresh(self):
        self.server.manage("hosts", "refresh", check=False)
        wait_until(self._snapshot_matches, timeout=10, what="clood's snapshot to catch up")

    def _snapshot_matches(self):
        status = httpx.get(self.url + "/status", timeout=5).json()
        online = {h["name"] for h in status["hosts"] if h["status"] == "online"}
        expected = {row["name"] for row in self.server.query("select name from hosts_host where online and enabled")}
        return online == expected

    def status(self, host=None):
        status = httpx.get(self.url + "/status", timeout=5).json()
        if host is None:
            return status
        return next(h for h in status["hosts"] if h["name"] == host)

    def request_logs(self):
        return self.server.query("select * from proxy_requestlog order by id")

    def log_for(self, request_id):
        def find():
            return next((row for row in self.request_logs() if row["request_id"] == request_id), None)

        row = wait_until(find, timeout=10, what=f"request log row {request_id}")
        row["attempts"] = json.loads(row["attempts"])
        return row


@pytest.fixture(scope="module")
def clood_factory(tmp_path_factory):
    servers = []

    def start(env=None):
        server = CloodProcess(tmp_path_factory.mktemp("clood"), env={**PROXY_ENV, **(env or {})})
        servers.append(server)
        return Garden(server.start())

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def sims():
    """Module-scoped simulated hosts: `sims(models=[...], **config)`."""
    with simulated_hosts() as start:
        yield start
