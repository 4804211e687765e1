"""The network scan behind "Discover hosts", over real HTTP on loopback only.

Every scan here is of 127.0.0.1, on ports where a simulated host or a small misbehaving server listens (or nothing
does). Scans of any other address would leave this machine, so none is made: the one test about other addresses
uses an in-memory transport.
"""

import asyncio
import ipaddress
import time

import httpx
import pytest
from django.core.exceptions import ValidationError
from django.core.validators import validate_slug

from hosts import discover
from hosts.discover import Found, Targets, default_subnet, parse_targets, scan, suggested_name
from hosts.simulator import SimModel
from tests.conftest import free_port


class RawServers:
    """TCP servers on 127.0.0.1, one per `reply(reader, writer)`, counting the connections open at once across all
    of them (the scan's bound is on all its connections) and the connections each one accepted."""

    def __init__(self, *replies):
        self.replies = replies
        self.open = 0
        self.max_open = 0
        self.accepted = {}  # port -> connections accepted
        self.writers = set()

    async def __aenter__(self):
        self.servers = []
        for reply in self.replies:
            server = await asyncio.start_server(self._handler(reply), "127.0.0.1", 0)
            self.servers.append(server)
        self.ports = [server.sockets[0].getsockname()[1] for server in self.servers]
        return self

    async def __aexit__(self, *exc):
        for server in self.servers:
            server.close()
        for writer in list(self.writers):
            writer.close()
        for server in self.servers:
            await server.wait_closed()

    def _handler(self, reply):
        async def handle(reader, writer):
            port = writer.get_extra_info("sockname")[1]
            self.accepted[port] = self.accepted.get(port, 0) + 1
            self.writers.add(writer)
            self.open += 1
            self.max_open = max(self.max_open, self.open)
            try:
                await reply(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()
                self.open -= 1  # in the same step as the close: the scan cannot see the answer before this
                self.writers.discard(writer)

        return handle


async def read_head(reader):
    return await reader.readuntil(b"\r\n\r\n")


def answer_with(status_line, content_type, body):
    async def reply(reader, writer):
        await read_head(reader)
        head = f"{status_line}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        writer.write(head.encode() + b"Connection: close\r\n\r\n" + body)

    return reply


async def never_answer(reader, writer):
    await reader.read()  # until the scanner gives up and closes


async def garbage(reader, writer):
    await read_head(reader)
    writer.write(b"\x00\xff this is not HTTP at all \r\n\r\n\x00")


async def huge_json(reader, writer):
    """Ollama's version answer, padded to 2 MB with no Content-Length: only reading it all would find it."""
    await read_head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
    writer.write(b'{"version": "0.6.5", "pad": "')
    for _ in range(32):
        writer.write(b"x" * 65536)
        await writer.drain()
    writer.write(b'"}')


DEEP_JSON = b'{"version": "0.6.5", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
HTML = b"<!DOCTYPE html><html><body><h1>Router login</h1></body></html>"


async def counted_404(reader, writer):
    await read_head(reader)
    await asyncio.sleep(0.1)  # long enough for probes started together to overlap
    writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


def loopback(*ports):
    return parse_targets("127.0.0.1", list(ports))


# The scan


async def test_scan_finds_exactly_the_simulated_hosts(sim_host):
    ollama = sim_host(models=[SimModel("llama3.2:1b", size=1_000), SimModel("qwen2.5-coder:7b", size=4_000)])
    openai_only = sim_host(models=["mistral-7b-instruct"], ollama_api=False)
    async with RawServers(
        answer_with("HTTP/1.1 200 OK", "text/html", HTML),
        never_answer,
        garbage,
        huge_json,
        answer_with("HTTP/1.1 200 OK", "application/json", DEEP_JSON),
        answer_with("HTTP/1.1 200 OK", "application/json", b'{"version": ""}'),
    ) as misbehaving:
        found = await scan(loopback(ollama.port, openai_only.port, free_port(), *misbehaving.ports), timeout=0.5)
        assert set(misbehaving.accepted) == set(misbehaving.ports)  # each was really asked

    assert [(f.port, f.backend) for f in found] == sorted([(ollama.port, "ollama"), (openai_only.port, "openai")])
    by_backend = {f.backend: f for f in found}
    assert by_backend["ollama"] == Found(
        address="127.0.0.1",
        port=ollama.port,
        base_url=ollama.url,
        backend="ollama",
        version="0.6.5",
        models=["llama3.2:1b", "qwen2.5-coder:7b"],
        total_size=5_000,
        latency_ms=by_backend["ollama"].latency_ms,
    )
    assert by_backend["ollama"].model_count == 2
    assert by_backend["ollama"].latency_ms > 0
    openai = by_backend["openai"]
    assert (openai.base_url, openai.version, openai.models, openai.model_count) == (
        openai_only.url,
        "",
        ["mistral-7b-instruct"],
        1,
    )
    assert openai.error is None and openai.latency_ms > 0


async def test_ollama_host_whose_model_list_fails_is_found_with_an_error(sim_host):
    host = sim_host(fail="html", fail_paths=["/api/tags"])
    [found] = await scan(loopback(host.port))
    assert (found.backend, found.version, found.models, found.model_count) == ("ollama", "0.6.5", [], 0)
    assert found.error.startswith("its model list could not be read")


async def test_results_are_sorted_by_port(sim_host):
    hosts = [sim_host() for _ in range(3)]
    found = await scan(loopback(*(h.port for h in reversed(hosts))))
    assert [f.port for f in found] == sorted(h.port for h in hosts)


async def test_found_is_json_ready():
    found = Found("127.0.0.1", 11434, "http://127.0.0.1:11434", "ollama", version="0.6.5", models=["a:latest"])
    assert found.as_dict() == {
        "address": "127.0.0.1",
        "port": 11434,
        "base_url": "http://127.0.0.1:11434",
        "backend": "ollama",
        "version": "0.6.5",
        "models": ["a:latest"],
        "total_size": None,
        "latency_ms": None,
        "error": None,
        "model_count": 1,
    }


async def test_progress_ends_with_every_probe_done(sim_host):
    host = sim_host()
    calls = []

    async def progress(done, total, found_so_far):
        calls.append((done, total, [f.port for f in found_so_far]))

    async with RawServers(never_answer, never_answer) as silent:
        found = await scan(
            loopback(host.port, free_port(), *silent.ports), concurrency=2, timeout=0.3, progress=progress
        )

    assert calls[-1] == (4, 4, [host.port])
    assert [f.port for f in found] == [host.port]
    dones = [done for done, _, _ in calls]
    assert dones == sorted(dones) and all(total == 4 for _, total, _ in calls)
    assert dones.count(4) == 1  # the final call, once


async def test_progress_is_throttled_not_called_per_probe(sim_host):
    host = sim_host()
    calls = []

    async def progress(done, total, found_so_far):
        calls.append(done)

    closed_ports = {free_port() for _ in range(15)} - {host.port}
    started = time.monotonic()
    await scan(loopback(host.port, *closed_ports), progress=progress)
    elapsed = time.monotonic() - started
    assert calls[-1] == len(closed_ports) + 1
    assert len(calls) <= elapsed / discover.PROGRESS_INTERVAL + 2


async def test_a_failing_progress_callback_stops_the_scan(sim_host):
    host = sim_host()

    async def progress(done, total, found_so_far):
        raise RuntimeError("the page went away")

    with pytest.raises(RuntimeError, match="the page went away"):
        await scan(loopback(host.port), progress=progress)


async def test_concurrency_bound_is_honoured():
    async with RawServers(*[counted_404] * 8) as servers:
        await scan(loopback(*servers.ports), concurrency=2, timeout=2)
    # Each server saw one probe: two requests (/api/version, then /v1/models), one connection each.
    assert servers.accepted == {port: 2 for port in servers.ports}
    assert servers.max_open <= 2


async def test_the_connection_counter_would_see_a_broken_bound():
    async with RawServers(*[counted_404] * 8) as servers:
        await scan(loopback(*servers.ports), concurrency=8, timeout=2)
    assert servers.max_open > 2


async def test_cancelling_a_scan_stops_its_probes():
    async with RawServers(*[never_answer] * 4) as servers:
        task = asyncio.create_task(scan(loopback(*servers.ports), concurrency=4, timeout=60))
        await wait_for(lambda: servers.open == 4, "every probe to connect")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=5)
        await wait_for(lambda: servers.open == 0, "the scanner to close its connections")


async def wait_for(condition, what, timeout=10.0):
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


def test_targets_cannot_be_built_for_a_public_network():
    with pytest.raises(ValueError, match="not a private or loopback"):
        Targets(network=ipaddress.IPv4Network("8.8.8.8/32"), ports=(80,))


async def test_scan_never_connects_outside_private_ranges_even_with_tampered_targets():
    requested = []
    transport = httpx.MockTransport(lambda request: requested.append(request.url) or httpx.Response(404))
    targets = parse_targets("192.168.1.20", [80])
    object.__setattr__(targets, "network", ipaddress.IPv4Network("8.8.8.8/32"))
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(ValueError, match="refusing to probe 8.8.8.8"):
            await scan(targets, client=client)
    assert requested == []


# What an admin may scan


@pytest.mark.parametrize(
    ("subnet", "ports", "network", "address_count", "expected_ports"),
    [
        ("192.168.1.0/24", [11434], "192.168.1.0/24", 254, (11434,)),
        ("192.168.1.37/24", [11434], "192.168.1.0/24", 254, (11434,)),
        ("192.168.1.20/32", [11434], "192.168.1.20/32", 1, (11434,)),
        ("  192.168.1.20 ", [11434], "192.168.1.20/32", 1, (11434,)),
        ("127.0.0.1", [11434], "127.0.0.1/32", 1, (11434,)),
        ("10.0.0.0/22", [11434], "10.0.0.0/22", 1022, (11434,)),
        ("172.16.5.0/31", [11434], "172.16.5.0/31", 2, (11434,)),
        ("10.1.2.3", "11434, 8080", "10.1.2.3/32", 1, (11434, 8080)),
        ("10.1.2.3", "11434 8080,8080 ,11434", "10.1.2.3/32", 1, (11434, 8080)),
        ("10.1.2.3", ["1234", 8000], "10.1.2.3/32", 1, (1234, 8000)),
    ],
)
def test_parse_targets_accepts(subnet, ports, network, address_count, expected_ports):
    targets = parse_targets(subnet, ports)
    assert (targets.subnet, len(targets.addresses), targets.ports) == (network, address_count, expected_ports)
    assert targets.total == address_count * len(expected_ports)


def test_a_network_scans_its_host_addresses_only():
    addresses = parse_targets("192.168.1.0/24").addresses
    assert addresses[0] == "192.168.1.1" and addresses[-1] == "192.168.1.254"


def test_the_size_limit_can_be_set():
    assert len(parse_targets("10.0.0.0/21", max_addresses=2048).addresses) == 2046
    with pytest.raises(ValueError, match="at most 256 can be scanned at once \\(a /24\\)"):
        parse_targets("10.0.0.0/23", max_addresses=256)


@pytest.mark.parametrize(
    ("subnet", "ports", "message"),
    [
        ("10.0.0.0/21", [11434], "10.0.0.0/21 has 2048 addresses: at most 1024 can be scanned at once (a /22)"),
        ("8.8.8.8", [11434], "8.8.8.8 is not a private network"),
        ("192.169.0.0/24", [11434], "192.169.0.0/24 is not a private network"),
        ("10.0.0.0/7", [11434], "10.0.0.0/7 is not a private network"),
        ("0.0.0.0/0", [11434], "0.0.0.0/0 is not a private network"),
        ("0.0.0.0", [11434], "0.0.0.0 is not a host address"),
        ("169.254.1.1", [11434], "169.254.1.1 is link-local"),
        ("224.0.0.1", [11434], "224.0.0.1 is multicast"),
        ("255.255.255.255", [11434], "255.255.255.255 is reserved or broadcast"),
        ("100.64.1.2", [11434], "100.64.1.2 is carrier-grade NAT / Tailscale"),
        ("::1", [11434], "IPv6 cannot be scanned"),
        ("fd00::/120", [11434], "IPv6 cannot be scanned"),
        ("gpu-box", [11434], "'gpu-box' is not an IPv4 address or network"),
        ("192.168.1.0/33", [11434], "is not an IPv4 address or network"),
        ("", [11434], "Enter a network to scan"),
        ("   ", [11434], "Enter a network to scan"),
        (None, [11434], "Enter a network to scan"),
        ("127.0.0.1", [0], "'0' is not a port"),
        ("127.0.0.1", [70000], "'70000' is not a port"),
        ("127.0.0.1", "abc", "'abc' is not a port"),
        ("127.0.0.1", "11434, -1", "'-1' is not a port"),
        ("127.0.0.1", [True], "'True' is not a port"),
        ("127.0.0.1", "", "Enter at least one port"),
        ("127.0.0.1", [], "Enter at least one port"),
        ("127.0.0.1", list(range(1, 18)), "17 ports given: at most 16"),
    ],
)
def test_parse_targets_refuses(subnet, ports, message):
    with pytest.raises(ValueError) as refused:
        parse_targets(subnet, ports)
    assert message in str(refused.value)


# The form's default


def test_default_subnet_is_scannable():
    parse_targets(default_subnet())


@pytest.mark.parametrize(
    ("own_address", "subnet"),
    [
        ("192.168.1.37", "192.168.1.0/24"),
        ("10.20.30.40", "10.20.30.0/24"),
        ("172.31.255.1", "172.31.255.0/24"),
        ("127.0.1.1", "127.0.0.1/32"),
        ("8.8.8.8", "127.0.0.1/32"),
        ("100.101.102.103", "127.0.0.1/32"),
        ("0.0.0.0", "127.0.0.1/32"),
        ("not an address", "127.0.0.1/32"),
    ],
)
def test_default_subnet_is_the_servers_own_private_slash_24(own_address, subnet):
    assert discover._subnet_around(own_address) == subnet


# Names for found hosts


def found_at(address, port=11434, backend="ollama"):
    return Found(address, port, f"http://{address}:{port}", backend)


@pytest.mark.parametrize(
    ("found", "taken", "name"),
    [
        (found_at("192.168.1.20"), [], "ollama-192-168-1-20"),
        (found_at("192.168.1.20", 8080), [], "ollama-192-168-1-20-8080"),
        (found_at("10.0.0.5", 8000, "openai"), [], "openai-10-0-0-5-8000"),
        (found_at("127.0.0.1"), [], "local-11434"),
        (found_at("127.0.0.1", 8080, "openai"), [], "local-8080"),
        (found_at("192.168.1.20"), ["ollama-192-168-1-20"], "ollama-192-168-1-20-2"),
        (found_at("192.168.1.20"), ["OLLAMA-192-168-1-20", "ollama-192-168-1-20-2"], "ollama-192-168-1-20-3"),
        (found_at("127.0.0.1"), ["local-11434", "other"], "local-11434-2"),
    ],
)
def test_suggested_name(found, taken, name):
    assert suggested_name(found, taken) == name


def test_suggested_names_are_valid_host_names():
    taken = []
    for address, port, backend in [("172.16.255.254", 65535, "openai"), ("127.0.0.1", 1, "ollama")] * 3:
        name = suggested_name(found_at(address, port, backend), taken)
        assert len(name) <= 64 and name not in taken
        try:
            validate_slug(name)
        except ValidationError:
            pytest.fail(f"{name!r} is not a slug")
        taken.append(name)


def test_suggested_name_stays_within_its_length_when_suffixed():
    found = found_at("172.16.255.254", 65535, "openai")
    assert suggested_name(found, [], max_length=20) == "openai-172-16-255-25"
    assert suggested_name(found, ["openai-172-16-255-25"], max_length=20) == "openai-172-16-255-2"
    assert suggested_name(found, ["openai-172-16-255-25"], max_length=19) == "openai-172-16-255-2"
