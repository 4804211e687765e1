"""Canary secrets: values that must never appear in anything clood sends out — a response, a websocket message, a
log line. tests/conftest.py hands them to every clood the suite runs (CLOOD_TRIPWIRES, clood_site/tripwire.py) and
fails the session if any of them shows up. Tests that need a secret take it from here."""

HOST_KEY = "sk-host-canary-31337-f00d"  # a host's API key
CLIENT_KEY = "clood-client-canary-4242-5a5a5a5a"  # a client's API key (imported with `apikeys create --key-env`)
WRONG_CLIENT_KEY = "sk-wrong-canary-0000-dead"  # a key no one has
ADMIN_PASSWORD = "test-garden-pw-0123"  # the admin's password in every test clood

# Canaries from older tests, kept so that their values are watched too.
OLDER = [
    "sk-host-canary-5150",
    "sk-canary-wrong-key-9431",
    "sk-event-canary-1999",
    "sk-admin-canary-7f3a9e",
    "sk-cmd-canary-1234",
    "sk-ws-canary-7",
    "sk-host-canary-31337",
    "sk-client-canary-4242",
]

ALL = [HOST_KEY, CLIENT_KEY, WRONG_CLIENT_KEY, ADMIN_PASSWORD, *OLDER]
