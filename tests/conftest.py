"""Shared fixtures: simulated LLM hosts on free loopback ports, and a real clood server process."""

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def simulated_hosts():
    """Yields `start(models=[...], **config)`, which starts a simulated host; every one is stopped on exit.
    Models are names or SimModel objects."""
    from hosts.simulator import SimConfig, SimModel, start_in_thread

    started = []

    def start(models=("llama3.2:1b",), **config):
        specs = [m if isinstance(m, SimModel) else SimModel(name=m) for m in models]
        host = start_in_thread(SimConfig(models=specs, **config))
        started.append(host)
        return host

    try:
        yield start
    finally:
        for host in started:
            host.stop()


@pytest.fixture
def sim_host():
    """Factory: `sim_host(models=[...], **config)` starts a simulated host; all are stopped after the test."""
    with simulated_hosts() as start:
        yield start


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def closed_port_url():
    """A loopback URL where nothing listens (connection refused at once)."""
    return f"http://127.0.0.1:{free_port()}"


class CloodProcess:
    """A real clood server (daphne, as `./clood run` starts it) in its own var dir and database."""

    def __init__(self, var_dir, env=None, command=None):
        self.var_dir = Path(var_dir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "CLOOD_VAR_DIR": str(self.var_dir),
            "CLOOD_ADMIN_PASSWORD": "test-admin-pw-0123",
            "CLOOD_MONITOR_INTERVAL": "0.5",
            "CLOOD_DEFAULT_HOSTS": "",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.env.pop("DJANGO_SETTINGS_MODULE", None)
        self.command = command(self.port) if command else [
            sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "clood_site.asgi:application",
        ]  # fmt: skip
        self.log_path = self.var_dir / "server.log"
        self.process = None

    def manage(self, *args, check=True):
        return subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True, text=True, check=check
        )

    def start(self):
        self.var_dir.mkdir(parents=True, exist_ok=True)
        self.manage("migrate", "--noinput", "-v", "0")
        self.manage("bootstrap")
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        wait_until(lambda: _answers(self.url + "/admin/login/"), timeout=30, what=f"clood on {self.url}")
        return self

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process:
            self.log.close()

    def output(self):
        return self.log_path.read_text() if self.log_path.exists() else ""


def _answers(url):
    try:
        return httpx.get(url, timeout=1).status_code < 500
    except httpx.HTTPError:
        return False


def wait_until(condition, timeout=15.0, interval=0.1, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def clood_server(tmp_path):
    """Factory: `clood_server(env={...})` starts a real clood; stopped after the test."""
    servers = []

    def start(env=None, command=None):
        server = CloodProcess(tmp_path / f"clood{len(servers)}", env=env, command=command)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()
