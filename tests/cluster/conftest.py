"""Several real clood processes sharing one PostgreSQL database and one Redis, as in docs/deployment.md.

Each test gets a fresh database on the machine's PostgreSQL (127.0.0.1:5432) and a Redis server of its own on a free
port (redis-server from the machine), so a test can stop Redis and start it again without touching anyone else's.
"""

import os
import secrets
import shutil
import subprocess
import time

import httpx
import psycopg
import pytest

from tests import canaries
from tests.conftest import CloodProcess, free_port, wait_until

POSTGRES = os.environ.get("CLOOD_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432/postgres")


class RedisServer:
    """A redis-server of the test's own, which the test may stop and start again on the same port."""

    def __init__(self, var_dir):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = var_dir / "redis.log"
        self.process = None

    def start(self):
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--logfile", str(self.log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_until(self._answers, timeout=10, what=f"redis-server on port {self.port}")
        return self

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def _answers(self):
        import redis

        try:
            return redis.Redis(port=self.port, socket_timeout=0.5).ping()
        except redis.RedisError:
            return False


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def postgres_database():
    """A new, empty PostgreSQL database for this test; dropped afterwards."""
    name = f"clood_cluster_{secrets.token_hex(4)}"
    with psycopg.connect(POSTGRES, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    yield POSTGRES.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(POSTGRES, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def cluster(tmp_path, redis_server, postgres_database):
    """Factory: `cluster(count=2, env={...})` starts that many clood processes on one database and one Redis."""
    started = []

    def start(count=2, env=None):
        shared_env = {
            "DATABASE_URL": postgres_database,
            "REDIS_URL": redis_server.url,
            "CLOOD_REDIS_PREFIX": f"cluster-{secrets.token_hex(3)}:",
            "CLOOD_ATC_PUBLIC": "true",
            "CLOOD_SNAPSHOT_REFRESH": "0.5",
            "CLOOD_SLOT_LEASE_SECONDS": "3",
            "CLOOD_TEST_CLIENT_KEY": canaries.CLIENT_KEY,  # for `apikeys create … --key-env CLOOD_TEST_CLIENT_KEY`
            **(env or {}),
        }
        for _ in range(count):
            process = CloodProcess(tmp_path / f"clood{len(started)}", env=shared_env)
            started.append(process)
            process.start()
        return started[-count:]

    yield start
    for process in started:
        process.stop()


def status(process):
    return httpx.get(process.url + "/status", timeout=5).json()


def wait_for_model(processes, model, timeout=20):
    """Wait until every process routes `model` (its snapshot has the monitor's result)."""

    def everywhere():
        for process in processes:
            ids = [m["id"] for m in httpx.get(process.url + "/v1/models", timeout=5).json()["data"]]
            if model not in ids:
                return False
        return True

    wait_until(everywhere, timeout=timeout, what=f"{model} on every process")


def eventually(condition, timeout=20, what="condition"):
    return wait_until(condition, timeout=timeout, interval=0.2, what=what)


__all__ = ["status", "wait_for_model", "eventually", "time"]
