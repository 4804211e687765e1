"""API keys on the hot path: who is asking (`identify`), may they use this model (`check_model`), and are they
within their limits (`KeyLimits`).

Keys are read from the database into an in-memory table, refreshed every CLOOD_SNAPSHOT_REFRESH seconds like the
routing snapshot, so a request never waits on a query. A key made or disabled in the admin takes effect within
that interval. `KeyLimits` counts the limits in this process; with REDIS_URL, proxy.cluster.SharedKeyLimits counts
them for every process at once (and falls back to this one while Redis is down).
"""

import asyncio
import hashlib
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from importlib import import_module

from channels.auth import get_user
from django.conf import settings
from django.http.cookie import parse_cookie
from django.utils import timezone
from django.utils.crypto import constant_time_compare

from clood_site.db import in_db_thread
from hosts.names import normalize_model_name
from hosts.snapshot import refresh_forever
from proxy.cluster import SharedKeyLimits
from proxy.errors import ApiError
from proxy.models import ApiKey

WINDOW_S = 60.0  # the requests-per-minute window


@dataclass(frozen=True)
class KeyView:
    id: int
    name: str
    prefix: str
    allowed_models: frozenset  # normalised names; empty: every model
    requests_per_minute: int | None
    max_concurrency: int | None
    enabled: bool
    expires_at: datetime | None

    def allows(self, model_key):
        return not self.allowed_models or model_key in self.allowed_models


@dataclass(frozen=True)
class KeyTable:
    by_hash: dict
    loaded_at: float = 0.0

    @property
    def required(self):
        return bool(self.by_hash) or settings.CLOOD_REQUIRE_API_KEY


_table = KeyTable(by_hash={})
_refresher = None


def load():
    by_hash = {}
    for key in ApiKey.objects.all():
        by_hash[key.key_hash] = KeyView(
            id=key.pk,
            name=key.name,
            prefix=key.prefix,
            allowed_models=frozenset(normalize_model_name(m) for m in key.allowed_models or ()),
            requests_per_minute=key.requests_per_minute,
            max_concurrency=key.max_concurrency,
            enabled=key.enabled,
            expires_at=key.expires_at,
        )
    return KeyTable(by_hash=by_hash, loaded_at=time.monotonic())


async def refresh():
    global _table
    _table = await in_db_thread(load)()
    return _table


async def table():
    """The key table: loaded on first use, then kept fresh by a background task."""
    global _refresher
    if _table.loaded_at == 0.0:
        await refresh()
    if _refresher is None or _refresher.done():
        refresher = refresh_forever(refresh, "the API keys")
        _refresher = asyncio.get_running_loop().create_task(refresher, name="clood-api-keys")
    return _table


async def identify(scope):
    """Who is asking: (KeyView or None, staff user or None). A request without a key is also let in, when keys are
    required, if it comes from one of clood's own pages with a staff login (see `staff_session`). Raises
    ApiError(401) otherwise."""
    keys = await table()
    try:
        return authenticate(keys, scope), None
    except ApiError as refused:
        if refused.code == "missing_api_key":
            user = await staff_session(scope)
            if user is not None:
                return None, user
        raise


async def staff_session(scope):
    """The active staff user of the session cookie, when the request repeats the CSRF cookie in an X-CSRFToken
    header (clood's pages do; another site's page can make the browser send the cookies but cannot read them to
    repeat one), else None."""
    headers = dict(scope.get("headers", ()))
    cookies = parse_cookie(headers.get(b"cookie", b"").decode("latin-1"))
    session_key = cookies.get(settings.SESSION_COOKIE_NAME)
    csrf_cookie = cookies.get(settings.CSRF_COOKIE_NAME, "")
    token = headers.get(b"x-csrftoken", b"").decode("latin-1")
    if not (session_key and csrf_cookie and token and constant_time_compare(token, csrf_cookie)):
        return None
    user = await get_user({"session": import_module(settings.SESSION_ENGINE).SessionStore(session_key)})
    return user if user.is_active and user.is_staff else None


def bearer_token(scope):
    """The token of an `Authorization: Bearer …` header, or None."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


def authenticate(keys, scope):
    """The KeyView of the request's key; None when keys are not required and none (or an unknown one) was sent.
    Raises ApiError(401) when a key is required and missing, unknown, disabled or expired. Messages never repeat
    what the client sent."""
    token = bearer_token(scope)
    key = keys.by_hash.get(hashlib.sha256(token.encode()).hexdigest()) if token else None
    if not keys.required:
        return key if key is not None and _usable(key) else None
    if token is None:
        raise ApiError(401, "This clood needs an API key: send it as 'Authorization: Bearer <key>'.",
                       code="missing_api_key")  # fmt: skip
    if key is None:
        raise ApiError(401, "The API key is not valid.", code="invalid_api_key")
    if not key.enabled:
        raise ApiError(401, f"The API key '{key.name}' is disabled.", code="invalid_api_key")
    if key.expires_at is not None and key.expires_at <= timezone.now():
        raise ApiError(401, f"The API key '{key.name}' has expired.", code="expired_api_key")
    return key


def _usable(key):
    return key.enabled and (key.expires_at is None or key.expires_at > timezone.now())


def check_model(key, model, model_key):
    if key is not None and not key.allows(model_key):
        raise ApiError(403, f"The API key '{key.name}' may not use the model '{model}'.", param="model",
                       code="model_not_allowed")  # fmt: skip


class KeyLimits:
    """Requests per minute (a sliding window) and requests at once, per key, in this process (with REDIS_URL,
    proxy.cluster.SharedKeyLimits wraps it: the counts are the cluster's unless Redis is down)."""

    def __init__(self):
        self.recent = {}  # key id -> deque of monotonic start times within the window
        self.active = {}  # key id -> requests now running or queued

    def acquire(self, key, now=None):
        """Count one request against `key`; raises ApiError(429) when it is over a limit. Pair with release()."""
        now = time.monotonic() if now is None else now
        if key.max_concurrency is not None and self.active.get(key.id, 0) >= key.max_concurrency:
            raise ApiError(429, f"The API key '{key.name}' already has {key.max_concurrency} requests running.",
                           code="concurrency_limit_exceeded", retry_after=1)  # fmt: skip
        if key.requests_per_minute is not None:
            times = self.recent.setdefault(key.id, deque())
            while times and times[0] <= now - WINDOW_S:
                times.popleft()
            if len(times) >= key.requests_per_minute:
                wait = max(1, int(times[0] + WINDOW_S - now) + 1)
                raise ApiError(429, f"The API key '{key.name}' is over its limit of {key.requests_per_minute} "
                               "requests per minute.", code="rate_limit_exceeded", retry_after=wait)  # fmt: skip
            times.append(now)
        self.active[key.id] = self.active.get(key.id, 0) + 1

    def release(self, key):
        left = self.active.get(key.id, 0) - 1
        if left > 0:
            self.active[key.id] = left
        else:
            self.active.pop(key.id, None)


limits = SharedKeyLimits(KeyLimits())
