"""Shared fixtures: simulated LLM hosts on free loopback ports, and a real clood server process."""

import asyncio
import contextlib
import faulthandler
import logging
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import environ
import httpx
import pytest

from tests import canaries, services

ROOT = Path(__file__).resolve().parent.parent

# Every clood of this run (the in-process settings and each server process, which inherit the environment) searches
# its output for the canary secrets and reports hits here; the session fails if there is any (see the hooks below).
TRIPWIRE_REPORT = Path(tempfile.gettempdir()) / f"clood-tripwire-{os.getpid()}.txt"
TRIPWIRE_REPORT.unlink(missing_ok=True)
os.environ["CLOOD_TRIPWIRES"] = ",".join(canaries.ALL)
os.environ["CLOOD_TRIPWIRE_REPORT"] = str(TRIPWIRE_REPORT)


def _install_tripwire_in_process():
    """pytest-django has set Django up before this file is read, so this process's own settings, middleware and
    log handlers get the tripwire here (server processes read it from the environment above)."""
    from django.conf import settings

    from clood_site.tripwire import TripwireLogFilter

    settings.CLOOD_TRIPWIRES = list(canaries.ALL)
    settings.CLOOD_TRIPWIRE_REPORT = str(TRIPWIRE_REPORT)
    if "clood_site.tripwire.TripwireMiddleware" not in settings.MIDDLEWARE:
        settings.MIDDLEWARE = ["clood_site.tripwire.TripwireMiddleware", *settings.MIDDLEWARE]
    for handler in logging.getLogger().handlers:
        handler.addFilter(TripwireLogFilter())


_install_tripwire_in_process()


def _own_redis_prefix_in_process():
    """With REDIS_URL this process's channel layer (the consumer tests) uses Redis too: under a prefix of its own,
    not the default one a running clood on the same Redis uses."""
    from django.conf import settings

    if settings.REDIS_URL:
        settings.CLOOD_REDIS_PREFIX = services.new_redis_prefix()
        settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"] = settings.CLOOD_REDIS_PREFIX


_own_redis_prefix_in_process()


def tripwire_hits():
    return TRIPWIRE_REPORT.read_text().splitlines() if TRIPWIRE_REPORT.exists() else []


def pytest_sessionstart(session):
    services.wait_for_services()


def pytest_sessionfinish(session):
    from django.conf import settings

    if settings.REDIS_URL:
        services.delete_redis_keys(settings.CLOOD_REDIS_PREFIX)
    if tripwire_hits() and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    session.config.stash[EXIT_STATUS] = int(session.exitstatus)


EXIT_STATUS = pytest.StashKey[int]()
EXIT_GRACE_SECONDS = 60


def pytest_unconfigure(config):
    """Python waits for every non-daemon thread before it exits. A test that timed out can leave one behind that
    never ends (an event loop whose task ignores being cancelled), and the run would then hang after its summary
    until CI's own limit. A daemon watchdog ends the process instead, naming the threads, if exiting takes longer
    than EXIT_GRACE_SECONDS."""
    status = config.stash.get(EXIT_STATUS, 0)

    def exit_anyway():
        names = [thread.name for thread in threading.enumerate() if not thread.daemon and thread.is_alive()]
        sys.stderr.write(f"\nthe test run did not exit within {EXIT_GRACE_SECONDS} s: threads still running: "
                         f"{', '.join(names)}\n")  # fmt: skip
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(status or pytest.ExitCode.TESTS_FAILED)

    watchdog = threading.Timer(EXIT_GRACE_SECONDS, exit_anyway)
    watchdog.daemon = True
    watchdog.start()


def pytest_terminal_summary(terminalreporter):
    hits = tripwire_hits()
    if hits:
        terminalreporter.section("SECRETS LEAKED: canary values found in clood's output", red=True)
        for hit in hits:
            terminalreporter.line(hit)
    else:
        terminalreporter.line(f"tripwire: {len(canaries.ALL)} canary secrets watched in every response, websocket "
                              "message and log line: none seen")  # fmt: skip


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup):
    """The test database, as pytest-django sets it up. The async tests leave a database connection open in two worker
    threads (clood's database thread, and asgiref's for sync_to_async); PostgreSQL drops the database at the end only
    once they are closed."""
    yield
    from asgiref.sync import sync_to_async
    from django.db import connections

    from clood_site.db import in_db_thread

    async def close_worker_connections():
        await in_db_thread(connections.close_all)()
        await sync_to_async(connections.close_all)()

    asyncio.run(close_worker_connections())


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
    """A real clood server (daphne, as `./clood run` starts it) in its own var dir, database and Redis key prefix.

    `env` can name a DATABASE_URL or CLOOD_REDIS_PREFIX (several processes sharing one); those are used as given and
    left as they are at the end."""

    def __init__(self, var_dir, env=None, command=None):
        given = env or {}
        self.var_dir = Path(var_dir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "CLOOD_VAR_DIR": str(self.var_dir),
            "CLOOD_ADMIN_PASSWORD": canaries.ADMIN_PASSWORD,
            "CLOOD_MONITOR_INTERVAL": "0.5",
            "CLOOD_DEFAULT_HOSTS": "",
            "CLOOD_TEST_HOST_KEY": canaries.HOST_KEY,  # for `hosts add … --api-key-env CLOOD_TEST_HOST_KEY`
            "CLOOD_REDIS_PREFIX": services.new_redis_prefix(),
            "PYTHONUNBUFFERED": "1",
            **given,
        }
        self.env.pop("DJANGO_SETTINGS_MODULE", None)
        self.wants_own_database = services.is_postgres(self.env.get("DATABASE_URL")) and "DATABASE_URL" not in given
        self.created_database = None  # its URL, dropped at stop()
        self.own_redis_prefix = bool(self.env.get("REDIS_URL")) and "CLOOD_REDIS_PREFIX" not in given
        # By default daphne with clood's request limits, as `./clood run` starts it.
        self.command = command(self.port) if command else [
            sys.executable, "-m", "clood_site.serve", "-b", "127.0.0.1", "-p", str(self.port),
            "clood_site.asgi:application",
        ]  # fmt: skip
        self.log_path = self.var_dir / "server.log"
        self.process = None

    def manage(self, *args, check=True):
        return subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True, text=True, check=check
        )

    def start(self):
        self.var_dir.mkdir(parents=True, exist_ok=True)
        if self.wants_own_database and not self.created_database:
            self.env["DATABASE_URL"] = self.created_database = services.create_database()
        try:
            self.manage("migrate", "--noinput", "-v", "0")
            self.manage("bootstrap")
            self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
            self.process = subprocess.Popen(
                self.command, cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT
            )
            wait_until(lambda: _answers(self.url + "/admin/login/"), timeout=30, what=f"clood on {self.url}")
        except BaseException:
            self.stop()  # a module fixture that fails here never reaches its own stop()
            raise
        return self

    def stop(self, keep_database=False):
        """Stop the server; then drop its own database and Redis keys, unless `keep_database` (to look at what the
        server wrote as it stopped: a later `stop()` drops them)."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process and not self.log.closed:
            self.log.close()
            scan_log_for_canaries(self.log_path)
        if keep_database:
            return
        if self.created_database:
            services.drop_database(self.created_database)
            self.created_database = None
        if self.own_redis_prefix:
            services.delete_redis_keys(self.env["CLOOD_REDIS_PREFIX"])
            self.own_redis_prefix = False

    def query(self, sql):
        """The rows (dicts) `sql` selects from this clood's database; JSON columns come as text on both databases."""
        database_url = self.env.get("DATABASE_URL")
        if services.is_postgres(database_url):
            return services.query_postgres(database_url, sql)
        path = environ.Env.db_url_config(database_url)["NAME"] if database_url else self.var_dir / "clood.sqlite3"
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.row_factory = sqlite3.Row
            return [dict(row) for row in db.execute(sql)]

    def output(self):
        return self.log_path.read_text() if self.log_path.exists() else ""


def scan_log_for_canaries(path, report=TRIPWIRE_REPORT):
    """The server's whole output (its logs, daphne's, tracebacks) searched once more for the canaries."""
    text = path.read_text(errors="replace") if path.exists() else ""
    found = [i for i, canary in enumerate(canaries.ALL) if canary in text]
    hits = [f"canary #{i} in the output of the clood in {path.parent}\n" for i in found]
    if hits:
        with open(report, "a") as out:
            out.writelines(hits)


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


@pytest.fixture(autouse=True)
def _aliases_as_at_start():
    """Each test's first alias table is news to nobody, as in a process that just started (proxy.aliases._notice
    announces only changes after that): a table left by an earlier test must not make an aliases_changed event."""
    from proxy import aliases

    aliases._announced, aliases._announced_at = None, float("-inf")
    yield


@pytest.fixture(autouse=True)
def _own_redis_namespace(settings):
    """With REDIS_URL (the suite's PostgreSQL + Redis pass), each test's slots, queue, limits and events live under
    a prefix of their own, so one test's leftovers (a lease still running out) never reach the next."""
    if not settings.REDIS_URL:
        yield
        return
    prefix = settings.CLOOD_REDIS_PREFIX = services.new_redis_prefix()
    yield
    from atc import stream

    # Events a test published from a loop that has closed since must not be sent in the next test's loop.
    stream._outbox.clear()
    stream._mine.clear()
    services.delete_redis_keys(prefix)
