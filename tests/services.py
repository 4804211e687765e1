"""The PostgreSQL and Redis servers of `./clood test`'s second pass (DATABASE_URL and REDIS_URL set): waiting for
them, and a database and a Redis key prefix for each clood process the tests start, so that no test sees another's
hosts, request log or events (on SQLite each process has a database file in its own var dir)."""

import os
import secrets
import time
from urllib.parse import urlsplit

import environ
import psycopg
import pytest
import redis
from psycopg.rows import dict_row
from psycopg.types.string import TextLoader


def is_postgres(database_url):
    return bool(database_url) and environ.Env.db_url_config(database_url)["ENGINE"] == "django.db.backends.postgresql"


def wait_for_services(timeout=30):
    """PostgreSQL and Redis, when the run uses them, must answer within `timeout` seconds (CI starts them with the
    machine), else the run stops at once with a message that says which one is missing."""
    checks = []
    if is_postgres(os.environ.get("DATABASE_URL")):
        checks.append(("PostgreSQL", _database_url("postgres"), lambda: _postgres_server().close()))
    if os.environ.get("REDIS_URL"):
        checks.append(("Redis", os.environ["REDIS_URL"], lambda: _redis().close()))
    deadline = time.monotonic() + timeout
    for name, url, check in checks:
        while True:
            try:
                check()
                break
            except (psycopg.Error, redis.RedisError) as exc:
                if time.monotonic() > deadline:
                    pytest.exit(f"{name} does not answer at {url} ({exc}); this run needs it.", returncode=3)
                time.sleep(1)


def create_database():
    """A new, empty PostgreSQL database on DATABASE_URL's server; returns its URL."""
    name = f"clood_test_{os.getpid()}_{secrets.token_hex(4)}"
    with _postgres_server() as server:
        server.execute(f'CREATE DATABASE "{name}"')
    return _database_url(name)


def drop_database(database_url):
    """Drop the database, disconnecting whoever still uses it (a server that did not stop, a test's query)."""
    name = urlsplit(database_url).path.lstrip("/")
    with _postgres_server() as server:
        server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def query_postgres(database_url, sql):
    """The rows (dicts) `sql` selects; JSON columns come as text, as SQLite gives them."""
    with psycopg.connect(database_url, row_factory=dict_row) as db:
        db.adapters.register_loader("jsonb", TextLoader)
        return db.execute(sql).fetchall()


def new_redis_prefix():
    return f"test-{secrets.token_hex(6)}:"


def delete_redis_keys(prefix):
    with _redis() as client:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)


def _postgres_server():
    """A connection to the maintenance database of DATABASE_URL's server, for creating and dropping databases."""
    return psycopg.connect(_database_url("postgres"), autocommit=True, connect_timeout=5)


def _database_url(name):
    return urlsplit(os.environ["DATABASE_URL"])._replace(path=f"/{name}").geturl()


def _redis():
    client = redis.Redis.from_url(os.environ["REDIS_URL"], socket_connect_timeout=5)
    client.ping()
    return client
