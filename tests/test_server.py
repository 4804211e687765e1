"""clood as a user starts it: the README's run command, daphne and runserver, with the monitor inside."""

import json
import re
import subprocess
import sys

import httpx

from tests import canaries
from tests.conftest import ROOT, TRIPWIRE_REPORT, free_port, wait_until


def log_in(base_url, username="admin", password=canaries.ADMIN_PASSWORD):
    client = httpx.Client(base_url=base_url, timeout=10)
    page = client.get("/admin/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    response = client.post(
        "/admin/login/?next=/admin/",
        data={"username": username, "password": password, "csrfmiddlewaretoken": token, "next": "/admin/"},
    )
    assert response.status_code == 302, response.text[:500]
    return client


def hosts_json(server):
    return {h["name"]: h for h in json.loads(server.manage("hosts", "list", "--json").stdout)}


def test_run_command_starts_a_working_clood(tmp_path, sim_host):
    sim = sim_host(models=["llama3.2:1b"])
    port = free_port()
    env = {
        "CLOOD_VAR_DIR": str(tmp_path / "var"),
        "CLOOD_PORT": str(port),
        "CLOOD_ADMIN_PASSWORD": canaries.ADMIN_PASSWORD,
        "CLOOD_DEFAULT_HOSTS": f"sim={sim.url}",
        "CLOOD_MONITOR_INTERVAL": "0.5",
        "CLOOD_TRIPWIRES": ",".join(canaries.ALL),
        "CLOOD_TRIPWIRE_REPORT": str(TRIPWIRE_REPORT),
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
    }
    log = open(tmp_path / "run.log", "w+")  # noqa: SIM115
    process = subprocess.Popen([str(ROOT / "clood"), "run"], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _get(base + "/admin/login/") == 200, timeout=120, what="./clood run to serve")
        output = (tmp_path / "run.log").read_text()
        for line in [f"{base}/admin/", f"{base}/atc/", f"{base}/v1"]:
            assert line in output
        assert "registered default host sim" in output
        assert listening_addresses(port) == {"127.0.0.1"}  # nothing else on the network can reach it by default

        admin = log_in(base)
        wait_until(lambda: ">online<" in admin.get("/admin/hosts/host/").text, what="the default host to go online")
        assert _get(base + "/static/clood.css") == 200
        assert admin.get("/atc/").status_code == 200
        assert [h["name"] for h in admin.get("/status").json()["hosts"]] == ["sim"]

        sim.config.fail = "error"
        wait_until(lambda: ">offline<" in admin.get("/admin/hosts/host/").text, what="the host to go offline")
    finally:
        process.terminate()
        process.wait(15)
        log.close()


def test_daphne_serves_and_monitors(clood_server, sim_host):
    sim = sim_host(models=["a:1b"])
    server = clood_server(env={"CLOOD_DEFAULT_HOSTS": f"box={sim.url}"})
    wait_until(lambda: hosts_json(server)["box"]["online"], what="the monitor inside daphne to check the host")
    assert hosts_json(server)["box"]["models"][0]["name"] == "a:1b"

    sim.stop()
    wait_until(lambda: hosts_json(server)["box"]["online"] is False, what="the host to go offline")
    assert "host box is offline" in server.output()


def test_runserver_serves_and_monitors(clood_server, sim_host):
    sim = sim_host(models=["a:1b"])
    server = clood_server(
        env={"CLOOD_DEFAULT_HOSTS": f"box={sim.url}"},
        command=lambda port: [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
    )
    wait_until(lambda: hosts_json(server)["box"]["online"], what="the monitor inside runserver to check the host")


def test_monitor_can_be_turned_off_and_run_alone(clood_server, sim_host):
    sim = sim_host(models=["a:1b"])
    server = clood_server(env={"CLOOD_DEFAULT_HOSTS": f"box={sim.url}", "CLOOD_RUN_MONITOR": "false"})
    assert hosts_json(server)["box"]["online"] is None
    assert "box: online" in server.manage("monitor", "--once").stdout
    assert hosts_json(server)["box"]["online"] is True


def listening_addresses(port):
    """The local addresses with a socket listening on `port` (Linux's /proc/net/tcp and tcp6)."""
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(table).read().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                addresses.add(_ip(address))
    return addresses


def _ip(hex_address):
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return ".".join(str(b) for b in reversed(raw))
    return raw.hex()  # IPv6, left raw: anything here means more than 127.0.0.1


def _get(url):
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None


def test_stopping_writes_the_pending_log_rows_and_closes_upstream_connections(clood_server, sim_host):
    sim = sim_host(models=["a:1b"])
    server = clood_server(env={"CLOOD_DEFAULT_HOSTS": f"box={sim.url}", "CLOOD_LOG_FLUSH_INTERVAL": "3600"})
    wait_until(lambda: httpx.get(server.url + "/v1/models").json()["data"], what="the host's model")
    chat = {"model": "a:1b", "messages": [{"role": "user", "content": "hi"}]}
    sent = {httpx.post(server.url + "/v1/chat/completions", json=chat).headers["x-clood-request-id"] for _ in range(5)}

    server.stop(keep_database=True)  # SIGTERM, long before the hourly batch would have written them

    rows = {row["request_id"] for row in server.query("select request_id from proxy_requestlog")}
    assert rows == sent
    assert "Unclosed" not in server.output()
