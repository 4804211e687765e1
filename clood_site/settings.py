"""clood's settings: every environment variable is read here, once, with its default beside it."""

import secrets
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(environ.Env().str("CLOOD_VAR_DIR", default=str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

env = environ.Env()


def _secret_key():
    """SECRET_KEY from the environment, else one generated on first run and kept in var/."""
    if env.str("SECRET_KEY", default=""):
        return env.str("SECRET_KEY")
    path = VAR_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "hosts",
    "proxy",
    "atc",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "clood_site.security.SecurityHeadersMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "clood_site.urls"
ASGI_APPLICATION = "clood_site.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'clood.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several threads (monitor, request log writer) write one file: WAL lets readers go on while one writes, and
    # IMMEDIATE transactions take the write lock up front, so they wait for it instead of failing with "locked".
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        timeout=20, transaction_mode="IMMEDIATE", init_command="PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Several processes (docs/deployment.md): REDIS_URL shares slots, queue, key limits, ATC events and the monitor lock
# between them (clood_site/shared.py), under keys starting with CLOOD_REDIS_PREFIX.
REDIS_URL = env.str("REDIS_URL", default="")
CLOOD_REDIS_PREFIX = env.str("CLOOD_REDIS_PREFIX", default="clood:")
CLOOD_SLOT_LEASE_SECONDS = env.float("CLOOD_SLOT_LEASE_SECONDS", default=10.0)  # a dead process's slots free after
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "prefix": CLOOD_REDIS_PREFIX + "asgi"},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "atc.layers.EventLayer"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "static"

LOGIN_URL = "admin:login"

# Production settings are the default (DEBUG off). CLOOD_HTTPS=true when clood is served over HTTPS (usually by a
# reverse proxy that sets X-Forwarded-Proto): cookies are then sent over HTTPS only, and browsers are told to stay
# on HTTPS (HSTS).
CLOOD_HTTPS = env.bool("CLOOD_HTTPS", default=False)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_AGE = env.int("CLOOD_SESSION_HOURS", default=12) * 3600
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = CLOOD_HTTPS
if CLOOD_HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = env.int("CLOOD_HSTS_SECONDS", default=31536000)

# Canary values that must never appear in output (set by the test suite; see clood_site/tripwire.py).
CLOOD_TRIPWIRES = env.list("CLOOD_TRIPWIRES", default=[])
CLOOD_TRIPWIRE_REPORT = env.str("CLOOD_TRIPWIRE_REPORT", default="")
if CLOOD_TRIPWIRES:
    MIDDLEWARE.insert(0, "clood_site.tripwire.TripwireMiddleware")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "filters": {"tripwire": {"()": "clood_site.tripwire.TripwireLogFilter"}} if CLOOD_TRIPWIRES else {},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["tripwire"] if CLOOD_TRIPWIRES else [],
        }
    },
    "root": {"handlers": ["console"], "level": env.str("CLOOD_LOG_LEVEL", default="INFO")},
    "loggers": {"daphne": {"level": "WARNING"}, "httpx": {"level": "WARNING"}},
}

# --- clood -----------------------------------------------------------------------------------------

# Hosts registered when the registry is empty, as "name=url" pairs separated by commas.
CLOOD_DEFAULT_HOSTS = env.list("CLOOD_DEFAULT_HOSTS", default=["localhost=http://localhost:11434"])
CLOOD_ADMIN_USER = env.str("CLOOD_ADMIN_USER", default="admin")
CLOOD_ADMIN_PASSWORD = env.str("CLOOD_ADMIN_PASSWORD", default="")

# Host monitor: runs inside the server process unless turned off (then run `manage.py monitor`).
CLOOD_RUN_MONITOR = env.bool("CLOOD_RUN_MONITOR", default=True)
CLOOD_MONITOR_INTERVAL = env.float("CLOOD_MONITOR_INTERVAL", default=10.0)
# Per-request timeouts for health checks (seconds) and a deadline for one host's whole check.
CLOOD_MONITOR_CONNECT_TIMEOUT = env.float("CLOOD_MONITOR_CONNECT_TIMEOUT", default=2.0)
CLOOD_MONITOR_READ_TIMEOUT = env.float("CLOOD_MONITOR_READ_TIMEOUT", default=5.0)
CLOOD_MONITOR_HOST_DEADLINE = env.float("CLOOD_MONITOR_HOST_DEADLINE", default=15.0)
# A management answer larger than this is refused (a host answering 50 MB is broken, not busy).
CLOOD_MONITOR_MAX_BODY = env.int("CLOOD_MONITOR_MAX_BODY", default=4 * 1024 * 1024)
# Weight of the newest latency sample in the smoothed latency (exponential moving average).
CLOOD_LATENCY_SMOOTHING = env.float("CLOOD_LATENCY_SMOOTHING", default=0.3)
# Failures in a row after which a host's circuit opens (routing skips it until a check succeeds).
CLOOD_CIRCUIT_THRESHOLD = env.int("CLOOD_CIRCUIT_THRESHOLD", default=3)

# Garden operations from the admin (hosts/garden.py): discover, pull, delete, preload, unload, benchmark.
# Discover scans the admin's subnet (private or loopback only, at most this many addresses) on these ports.
CLOOD_DISCOVER_PORTS = env.list("CLOOD_DISCOVER_PORTS", cast=int, default=[11434])
CLOOD_DISCOVER_MAX_ADDRESSES = env.int("CLOOD_DISCOVER_MAX_ADDRESSES", default=1024)
CLOOD_DISCOVER_CONCURRENCY = env.int("CLOOD_DISCOVER_CONCURRENCY", default=64)  # probes at once
CLOOD_DISCOVER_TIMEOUT = env.float("CLOOD_DISCOVER_TIMEOUT", default=0.5)  # per probe (s)
# A pull whose host sends no progress for this long (s) has failed.
CLOOD_PULL_IDLE_TIMEOUT = env.float("CLOOD_PULL_IDLE_TIMEOUT", default=300.0)
CLOOD_PRELOAD_KEEP_ALIVE = env.str("CLOOD_PRELOAD_KEEP_ALIVE", default="30m")  # how long a preloaded model stays
CLOOD_BENCHMARK_TOKENS = env.int("CLOOD_BENCHMARK_TOKENS", default=128)  # tokens a benchmark generates

# Routing snapshot: rebuilt from the database this often (s), so admin edits reach routing within it.
CLOOD_SNAPSHOT_REFRESH = env.float("CLOOD_SNAPSHOT_REFRESH", default=1.0)

# Proxy (DESIGN §4, §5).
CLOOD_ROUTING_STRATEGY = env.str("CLOOD_ROUTING_STRATEGY", default="smart")
CLOOD_QUEUE_MAX = env.int("CLOOD_QUEUE_MAX", default=200)  # waiting requests beyond this get 429
CLOOD_QUEUE_TIMEOUT = env.float("CLOOD_QUEUE_TIMEOUT", default=60.0)  # longest wait for a slot (s), then 429
CLOOD_MAX_BODY_BYTES = env.int("CLOOD_MAX_BODY_BYTES", default=32 * 1024 * 1024)  # larger bodies get 413
# A request (headers and body) must be fully read within this (s) of its first line, else 408: slow-loris clients
# cannot hold connections (enforced by clood_site/serve.py, the server `./clood run` starts).
CLOOD_REQUEST_READ_TIMEOUT = env.float("CLOOD_REQUEST_READ_TIMEOUT", default=30.0)
CLOOD_CONNECT_TIMEOUT = env.float("CLOOD_CONNECT_TIMEOUT", default=3.0)
CLOOD_FIRST_BYTE_TIMEOUT = env.float("CLOOD_FIRST_BYTE_TIMEOUT", default=120.0)  # model already loaded
CLOOD_COLD_START_TIMEOUT = env.float("CLOOD_COLD_START_TIMEOUT", default=600.0)  # model has to be loaded first
# Once an answer has started, each complete line (or 64 KiB of a long one) must follow the last within this (s):
# a host that goes silent, or drips bytes without finishing a line, is cut off (proxy/relay.py).
CLOOD_IDLE_TIMEOUT = env.float("CLOOD_IDLE_TIMEOUT", default=60.0)
CLOOD_CIRCUIT_COOLDOWN = env.float("CLOOD_CIRCUIT_COOLDOWN", default=30.0)  # then one probe request is let through
CLOOD_UPSTREAM_MAX_CONNECTIONS = env.int("CLOOD_UPSTREAM_MAX_CONNECTIONS", default=2000)
CLOOD_EVENT_PROMPT_CHARS = env.int("CLOOD_EVENT_PROMPT_CHARS", default=120)  # 0 hides prompts from events
CLOOD_LOG_FLUSH_INTERVAL = env.float("CLOOD_LOG_FLUSH_INTERVAL", default=1.0)  # request log batch writes (s)

# API keys: /v1 and /api need a valid key once any key exists, or always when this is on.
CLOOD_REQUIRE_API_KEY = env.bool("CLOOD_REQUIRE_API_KEY", default=False)

# ATC: pages and websocket need a staff login unless this is on (a read-only wall screen anyone can open).
CLOOD_ATC_PUBLIC = env.bool("CLOOD_ATC_PUBLIC", default=False)
CLOOD_ATC_RECENT_EVENTS = env.int("CLOOD_ATC_RECENT_EVENTS", default=5000)  # kept for snapshots and resumes

# GET /_clood/internals answers counts of tasks, upstream connections, slots and flights (tests, debugging leaks).
CLOOD_EXPOSE_INTERNALS = env.bool("CLOOD_EXPOSE_INTERNALS", default=False)
