"""Finding LLM hosts on the local network: what an admin may scan (`parse_targets`), the scan itself (`scan`), and a
name for each host found (`suggested_name`).

Only private (RFC 1918) and loopback IPv4 addresses are ever probed, at most `DEFAULT_MAX_ADDRESSES` of them at once.
Nothing here needs Django: the caller passes settings in and turns `Found` values into `Host` rows.
"""

import asyncio
import ipaddress
import json
import re
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field

import httpx

DEFAULT_PORTS = (11434,)  # Ollama's own port
DEFAULT_MAX_ADDRESSES = 1024  # a /22
MAX_PORTS = 16
MAX_BODY_BYTES = 1024 * 1024  # per answer; a hostile server cannot make the scan hold more
PROGRESS_INTERVAL = 0.1  # seconds between progress calls, at most
NAME_MAX_LENGTH = 64  # Host.name

_ALLOWED_NETWORKS = tuple(
    ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8")
)
# Outside _ALLOWED_NETWORKS anyway; named here only so the admin is told why.
# 100.64.0.0/10 (carrier-grade NAT, Tailscale) is refused: on most networks it is the ISP's side of the router, so a
# scan would probe machines the admin does not own; a Tailscale host can still be added by hand with its URL.
_REFUSED_RANGES = (
    (ipaddress.IPv4Network("0.0.0.0/8"), "is not a host address (0.0.0.0/8 means 'this network')"),
    (ipaddress.IPv4Network("100.64.0.0/10"), "is carrier-grade NAT / Tailscale space (100.64.0.0/10), not a LAN"),
    (ipaddress.IPv4Network("169.254.0.0/16"), "is link-local (169.254.0.0/16), not a LAN"),
    (ipaddress.IPv4Network("224.0.0.0/4"), "is multicast (224.0.0.0/4), not a host"),
    (ipaddress.IPv4Network("240.0.0.0/4"), "is reserved or broadcast (240.0.0.0/4), not a host"),
)


@dataclass(frozen=True)
class Targets:
    """A validated scan: one private or loopback IPv4 network and the ports to try on each of its host addresses.

    Build it with `parse_targets`; constructing it directly still refuses networks outside the allowed ranges.
    """

    network: ipaddress.IPv4Network
    ports: tuple[int, ...]

    def __post_init__(self):
        if not isinstance(self.network, ipaddress.IPv4Network) or not _is_allowed(self.network):
            raise ValueError(f"{self.network} is not a private or loopback IPv4 network.")
        if not self.ports or not all(_is_port(p) for p in self.ports):
            raise ValueError("Ports must be whole numbers from 1 to 65535.")

    @property
    def subnet(self):
        return str(self.network)

    @property
    def addresses(self):
        """The host addresses scanned: the network and broadcast addresses are skipped below a /31."""
        return [str(address) for address in self.network.hosts()]

    @property
    def total(self):
        """The number of probes: addresses × ports."""
        return len(self.addresses) * len(self.ports)

    def __str__(self):
        return f"{self.network} port{'s' if len(self.ports) > 1 else ''} {', '.join(map(str, self.ports))}"


@dataclass
class Found:
    """An LLM server that answered. `error` is None, or why its model list could not be read (it still answered)."""

    address: str
    port: int
    base_url: str  # http://address:port, as Host.base_url wants it
    backend: str  # "ollama" or "openai", as Host.backend
    version: str = ""  # Ollama's /api/version; "" for OpenAI-compatible servers
    models: list[str] = field(default_factory=list)  # the names as the server spells them
    total_size: int | None = None  # bytes, the sum of /api/tags sizes; None when the server does not say
    latency_ms: float | None = None  # the round trip of the identifying request
    error: str | None = None
    model_count: int = field(init=False)

    def __post_init__(self):
        self.model_count = len(self.models)

    def as_dict(self):
        """A JSON-ready dict (for GardenOperation.result or an event)."""
        return asdict(self)


def parse_targets(subnet, ports=DEFAULT_PORTS, *, max_addresses=DEFAULT_MAX_ADDRESSES):
    """What an admin typed, validated: `subnet` is a CIDR ("192.168.1.0/24") or one address (= /32), `ports` a list
    of ints or a string ("11434, 8080"). Raises ValueError with a message to show the admin."""
    return Targets(network=_parse_network(subnet, max_addresses), ports=_parse_ports(ports))


def _parse_network(subnet, max_addresses):
    text = (subnet or "").strip() if isinstance(subnet, str) else ""
    if not text:
        raise ValueError("Enter a network to scan, e.g. 192.168.1.0/24, or one address, e.g. 192.168.1.20.")
    try:
        network = ipaddress.ip_network(text, strict=False)  # "192.168.1.20/24" means that address's /24
    except ValueError:
        raise ValueError(
            f"'{text[:60]}' is not an IPv4 address or network: enter e.g. 192.168.1.0/24 or 192.168.1.20."
        ) from None
    if network.version == 6:
        raise ValueError("IPv6 cannot be scanned (a /64 alone has too many addresses): enter an IPv4 network.")
    shown = str(network.network_address) if network.num_addresses == 1 else str(network)
    for refused, why in _REFUSED_RANGES:
        if network.subnet_of(refused):
            raise ValueError(f"{shown} {why}: only private or loopback addresses can be scanned.")
    if not _is_allowed(network):
        raise ValueError(
            f"{shown} is not a private network: only 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 and "
            "127.0.0.0/8 (this machine) can be scanned."
        )
    if network.num_addresses > max_addresses:
        raise ValueError(
            f"{network} has {network.num_addresses} addresses: at most {max_addresses} can be scanned at once "
            f"(a /{32 - (max_addresses.bit_length() - 1)}). Scan it in smaller parts."
        )
    return network


def _parse_ports(ports):
    items = re.split(r"[\s,]+", ports.strip()) if isinstance(ports, str) else list(ports or ())
    items = [item for item in items if item != ""]
    if not items:
        raise ValueError("Enter at least one port, e.g. 11434.")
    parsed = []
    for item in items:
        if isinstance(item, str) and item.isascii() and item.isdigit():
            item = int(item)
        if not _is_port(item):
            raise ValueError(f"'{str(item)[:20]}' is not a port: ports are whole numbers from 1 to 65535.")
        if item not in parsed:
            parsed.append(item)
    if len(parsed) > MAX_PORTS:
        raise ValueError(f"{len(parsed)} ports given: at most {MAX_PORTS} can be scanned at once.")
    return tuple(parsed)


def _is_port(value):
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


def _is_allowed(network_or_address):
    network = ipaddress.IPv4Network(network_or_address)
    return any(network.subnet_of(allowed) for allowed in _ALLOWED_NETWORKS)


def default_subnet():
    """This server's own /24, to prefill the form; "127.0.0.1/32" when its address is not found or not private."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            # Connecting a UDP socket sends nothing: it only asks the kernel which local address routes there.
            sock.connect(("10.255.255.255", 9))
            address = sock.getsockname()[0]
    except OSError:
        return "127.0.0.1/32"
    return _subnet_around(address)


def _subnet_around(address):
    try:
        own = ipaddress.IPv4Address(address)
    except ValueError:
        return "127.0.0.1/32"
    if own.is_loopback or not _is_allowed(own):
        return "127.0.0.1/32"
    return str(ipaddress.IPv4Network(f"{own}/24", strict=False))


def make_scan_client(timeout=0.5, concurrency=64):
    """The HTTP client a scan uses: short connect and read timeouts, no proxies, no redirects, no kept-alive
    connections (so an idle connection never outlives its probe)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout),
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=0),
        follow_redirects=False,
        trust_env=False,
    )


ProgressCallback = Callable[[int, int, list[Found]], Awaitable[None]]


async def scan(
    targets: Targets,
    *,
    concurrency: int = 64,
    timeout: float = 0.5,
    progress: ProgressCallback | None = None,
    client: httpx.AsyncClient | None = None,
) -> list[Found]:
    """Probe every address × port of `targets`; return the servers found, sorted by address then port.

    At most `concurrency` probes (each one connection at a time) run at once. Each probe gets `timeout` seconds to
    connect and between bytes, and 4 × `timeout` in all. A server that refuses, times out or answers anything but
    Ollama's or OpenAI's API is simply not found; nothing a server does makes this raise.

    `progress`, when given, is an async callable `await progress(done, total, found)`: `done` probes finished out of
    `total`, `found` a sorted list of the servers found so far. It is called at most every PROGRESS_INTERVAL seconds
    while probes finish, one call at a time, and once more at the end with done == total. If it raises, the scan
    stops and the exception propagates. Cancelling the task running `scan` stops every probe.

    `client` is for tests; it must not follow redirects or use a proxy (see `make_scan_client`).
    """
    if not isinstance(targets, Targets):
        raise TypeError("scan() takes Targets, as parse_targets() returns them")
    if not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError("concurrency must be a whole number >= 1")
    probes = iter([(address, port) for address in targets.addresses for port in targets.ports])
    total = targets.total
    found, done = [], 0

    async def worker(client):
        nonlocal done
        for address, port in probes:  # one shared iterator: each probe is taken by exactly one worker
            result = await _probe(client, address, port, timeout)
            if result is not None:
                found.append(result)
            done += 1

    own_client = client is None
    if own_client:
        client = make_scan_client(timeout, concurrency)
    workers = [asyncio.create_task(worker(client)) for _ in range(min(concurrency, total))]
    try:
        pending, reported = set(workers), -1
        while pending:
            finished, pending = await asyncio.wait(pending, timeout=PROGRESS_INTERVAL)
            for task in finished:
                task.result()  # a bug in a worker surfaces here rather than vanishing
            if progress is not None and pending and done != reported:
                reported = done
                await progress(done, total, _sorted(found))
        if progress is not None:
            await progress(done, total, _sorted(found))
        return _sorted(found)
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        if own_client:
            await client.aclose()


def _sorted(found):
    return sorted(found, key=lambda f: (ipaddress.IPv4Address(f.address), f.port))


class _NotAnAnswer(Exception):
    """The server answered, but not with a usable JSON body."""


async def _probe(client, address, port, timeout):
    if not _is_allowed(address):  # Targets guarantees this; checked again right before connecting
        raise ValueError(f"refusing to probe {address}: not a private or loopback address")
    base_url = f"http://{address}:{port}"
    try:
        async with asyncio.timeout(4 * timeout):
            return await _identify(client, address, port, base_url)
    except (TimeoutError, httpx.HTTPError, OSError, _NotAnAnswer):
        return None


async def _identify(client, address, port, base_url):
    try:
        answer, latency_ms = await _get_json(client, base_url + "/api/version")
    except _NotAnAnswer:
        answer = None  # an HTTP server, but not Ollama: perhaps OpenAI-compatible
    if isinstance(answer, dict) and isinstance(answer.get("version"), str) and answer["version"]:
        found = Found(address, port, base_url, "ollama", version=answer["version"][:64], latency_ms=latency_ms)
        return await _with_ollama_models(client, found)
    listing, latency_ms = await _get_json(client, base_url + "/v1/models")
    entries = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        return None
    names = [e["id"] for e in entries if _is_model_name(e.get("id"))]
    return Found(address, port, base_url, "openai", models=names, latency_ms=latency_ms)


async def _with_ollama_models(client, found):
    try:
        tags, _ = await _get_json(client, found.base_url + "/api/tags")
    except (httpx.HTTPError, _NotAnAnswer) as exc:
        found.error = f"its model list could not be read: {_describe(exc)}"
        return found
    entries = tags.get("models") if isinstance(tags, dict) else None
    if not isinstance(entries, list):
        found.error = "its model list could not be read: unexpected answer shape"
        return found
    entries = [e for e in entries if isinstance(e, dict)]
    found.models = [name for e in entries if _is_model_name(name := e.get("name") or e.get("model"))]
    found.model_count = len(found.models)
    sizes = [e["size"] for e in entries if isinstance(e.get("size"), int) and not isinstance(e["size"], bool)]
    found.total_size = sum(sizes) if sizes else None
    return found


async def _get_json(client, url):
    """GET `url`; the parsed JSON body and the round trip in ms. Raises _NotAnAnswer, or httpx errors."""
    headers = {"Accept": "application/json", "Accept-Encoding": "identity"}
    started = time.perf_counter()
    async with client.stream("GET", url, headers=headers, follow_redirects=False) as response:
        if response.status_code != 200:
            raise _NotAnAnswer(f"HTTP {response.status_code}")
        if response.headers.get("content-encoding", "identity").lower() != "identity":
            raise _NotAnAnswer("a compressed answer")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise _NotAnAnswer("an answer too large")
        chunks, size = [], 0
        async for chunk in response.aiter_raw():  # raw: never decompressed, so the cap holds
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise _NotAnAnswer("an answer too large")
            chunks.append(chunk)
    elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
    try:
        return json.loads(b"".join(chunks)), elapsed_ms
    except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than the parser goes
        raise _NotAnAnswer("not JSON") from None


def _describe(exc):
    if isinstance(exc, _NotAnAnswer):
        return str(exc)
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return "connection failed"


def _is_model_name(value):
    return isinstance(value, str) and 0 < len(value) <= 255 and value.strip() == value


def suggested_name(found, taken_names: Iterable[str] = (), *, max_length=NAME_MAX_LENGTH):
    """A Host.name (a slug of at most `max_length` characters) for `found`, unique among `taken_names` (compared
    ignoring case): "ollama-192-168-1-20" (Ollama on its default port), "openai-192-168-1-21-8080", "local-11434"
    (loopback); "-2", "-3"… is added when the name is taken."""
    address = ipaddress.IPv4Address(found.address)
    if address.is_loopback:
        base = f"local-{found.port}"
    else:
        base = f"{found.backend}-{str(address).replace('.', '-')}"
        if not (found.backend == "ollama" and found.port == 11434):
            base += f"-{found.port}"
    base = re.sub(r"[^a-z0-9_-]+", "-", base.lower())[:max_length].strip("-") or "host"
    taken = {name.lower() for name in taken_names}
    candidate, number = base, 1
    while candidate in taken:
        number += 1
        suffix = f"-{number}"
        candidate = base[: max_length - len(suffix)].rstrip("-") + suffix
    return candidate
