"""Soak: mixed traffic through clood for a bounded time while hosts fail and restart; then check nothing leaked.

    .venv/bin/python bench/soak.py [--minutes 30] [--concurrency 16] [--restart-every 180] [--fail-rate 0.05]

Starts three simulated hosts and clood (daphne, fresh SQLite in a temporary CLOOD_VAR_DIR) the way proxy_bench.py
does, sends mixed OpenAI and Ollama traffic for --minutes, restarts one host every --restart-every seconds, samples
clood's RSS and open file descriptors every minute, then checks that every routed request left a RequestLog row.
Prints a markdown table and exits non-zero when rows were lost or RSS / fds grew past the stated limits.
See bench/README.md ("Soak").
"""

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from proxy_bench import (
    CLOOD_SERVER,
    PYTHON,
    ROOT,
    Processes,
    _terminate,
    clood_log_summary,
    cpu_seconds,
    free_port,
    http_json,
    log,
    machine_busy_seconds,
    machine_facts,
    manage,
    rss_bytes,
    tail,
    uvloop,
    wait_until,
    write_json,
)

CHAT_MODEL = "soak:1b"
EMBED_MODEL = "soak-embed:latest"  # "embed" in the name: the simulator gives it the embedding capability
REPLY_TOKENS = 24
HOST_SLOTS = 8  # max_concurrency of each host: 24 slots for 16 workers, 16 while one host is down
# The requests that make a model work; the simulated failures apply to these only.
FAIL_PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/api/chat", "/api/generate", "/api/embed"]
DEFAULT_JSON = ROOT / "bench" / "results" / "soak.json"
SAMPLE_EVERY = 60.0  # seconds between RSS / fd samples and progress rows
RESTART_DOWNTIME = 5.0  # seconds a restarted host stays down
FLUSH_WAIT = 60.0  # longest wait for the request log to catch up after the traffic stops (s)


@dataclass
class SimHost:
    name: str
    ttft: float
    tokens_per_second: float
    failure: dict  # SimConfig fields: how this host's failing share fails
    port: int = 0
    generation: int = 0  # restarts so far; names its process and log file

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"


def sim_hosts():
    return [
        SimHost("a", 0.02, 300, {"fail": "error", "fail_status": 500}),  # a crash answer before the first byte
        SimHost("b", 0.035, 200, {"fail": "drop", "fail_after_tokens": 3}),  # hangs up mid-answer
        SimHost("c", 0.05, 100, {"fail": "error", "fail_status": 503}),  # Ollama's "server busy"
    ]


@dataclass
class Kind:
    """One kind of client request: where it goes, its body, and how a good answer looks (`shape`)."""

    name: str
    method: str
    path: str
    body: dict | None
    shape: str  # sse | ndjson | chat | completion | embedding | models | tags
    weight: int
    routed: bool = True  # False: answered from memory, no RequestLog row

    def payload(self):
        return None if self.body is None else json.dumps(self.body).encode()


MESSAGES = [{"role": "user", "content": "Say something short."}]
KINDS = [
    Kind("openai chat stream", "POST", "/v1/chat/completions",
         {"model": CHAT_MODEL, "messages": MESSAGES, "stream": True}, "sse", 25),
    Kind("openai chat", "POST", "/v1/chat/completions",
         {"model": CHAT_MODEL, "messages": MESSAGES, "stream": False}, "chat", 15),
    Kind("openai completions", "POST", "/v1/completions",
         {"model": CHAT_MODEL, "prompt": "Once upon a time", "stream": False}, "completion", 10),
    Kind("openai embeddings", "POST", "/v1/embeddings", {"model": EMBED_MODEL, "input": "a soak"}, "embedding", 10),
    Kind("ollama chat stream", "POST", "/api/chat",
         {"model": CHAT_MODEL, "messages": MESSAGES, "stream": True}, "ndjson", 15),
    Kind("ollama generate stream", "POST", "/api/generate",
         {"model": CHAT_MODEL, "prompt": "Once upon a time", "stream": True}, "ndjson", 15),
    Kind("catalog /v1/models", "GET", "/v1/models", None, "models", 5, routed=False),
    Kind("catalog /api/tags", "GET", "/api/tags", None, "tags", 5, routed=False),
]  # fmt: skip


# --- the stack -----------------------------------------------------------------------------------------------------


def clood_env(workdir, first_host):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DEBUG")}
    env.update(
        CLOOD_VAR_DIR=str(workdir / "var"),
        CLOOD_LOG_LEVEL="WARNING",
        CLOOD_MONITOR_INTERVAL="3",  # notices a restarted host within a few seconds
        CLOOD_ADMIN_PASSWORD=secrets.token_urlsafe(16),  # so bootstrap prints no generated password
        CLOOD_DEFAULT_HOSTS=f"{first_host.name}={first_host.url}",  # not localhost:11434
        DEBUG="false",
        PYTHONUNBUFFERED="1",
        CLOOD_EXPOSE_INTERNALS="true",  # /_clood/internals: clood's asyncio tasks, counted at each sample
    )
    return env


def start_sim(procs, host, env):
    """Start (or restart) `host`'s simulator on its port; returns the process's name in `procs`."""
    host.generation += 1
    name = f"sim-{host.name}-{host.generation}"
    argv = [PYTHON, "manage.py", "simhost", "--port", str(host.port), "--models", f"{CHAT_MODEL},{EMBED_MODEL}",
            "--loaded", f"{CHAT_MODEL},{EMBED_MODEL}", "--tokens", str(REPLY_TOKENS), "--ttft", str(host.ttft),
            "--tps", str(host.tokens_per_second)]  # fmt: skip
    procs.start(name, argv, env)
    return name


def sim_failures(host, fail_rate):
    """The live config that makes `fail_rate` of the host's generation requests fail its way (set after each start:
    `manage.py simhost --fail` would fail every request)."""
    return {**host.failure, "fail_rate": fail_rate, "fail_paths": FAIL_PATHS}


def start_stack(procs, workdir, hosts, fail_rate):
    """Start the simulated hosts and clood; return (clood url, daphne Popen, env)."""
    for host in hosts:
        host.port = free_port()
    clood_url = f"http://127.0.0.1:{free_port()}"
    env = clood_env(workdir, hosts[0])
    (workdir / "var").mkdir()
    for host in hosts:
        log(f"starting simulated host {host.name} on {host.url} ({host.failure['fail']})")
        proc_name = start_sim(procs, host, env)
        wait_until(f"host {host.name}", lambda h=host: http_json(f"{h.url}/_sim/config"), procs, [proc_name])
        http_json(f"{host.url}/_sim/config", sim_failures(host, fail_rate))
    log("setting up clood (migrate, bootstrap, hosts add, hosts refresh)")
    manage(env, "migrate", "--noinput", "-v", "0")
    manage(env, "bootstrap")
    for host in hosts:
        manage(env, "hosts", "add", host.name, host.url, "--max-concurrency", str(HOST_SLOTS))
    manage(env, "hosts", "refresh")
    log(f"starting clood (daphne) on {clood_url}")
    port = clood_url.rsplit(":", 1)[1]
    daphne = procs.start("daphne", [*CLOOD_SERVER, "-b", "127.0.0.1", "-p", port, "clood_site.asgi:application"], env)

    def listed():
        return {m.get("id") for m in http_json(f"{clood_url}/v1/models").get("data", [])} >= {CHAT_MODEL, EMBED_MODEL}

    wait_until("clood to list the models", listed, procs, ["daphne"], timeout=90)
    return clood_url, daphne, env


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def threads(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


# --- the clients ---------------------------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the clients saw: per kind sent / ok / errors by class, and the request id of every routed answer."""

    sent: dict = field(default_factory=dict)
    ok: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)  # class -> {kind: count}
    samples: dict = field(default_factory=dict)  # class -> first detail
    ids: dict = field(default_factory=dict)  # request id -> "ok" or the error class
    routed_without_id: int = 0  # routed requests whose answer never brought a request id
    never_reached_clood: int = 0  # routed requests refused at connect: no row is expected

    def add(self, kind, error, detail, request_id):
        self.sent[kind.name] = self.sent.get(kind.name, 0) + 1
        if error:
            per_kind = self.errors.setdefault(error, {})
            per_kind[kind.name] = per_kind.get(kind.name, 0) + 1
            self.samples.setdefault(error, f"{kind.name}: {' '.join(detail.split())[:240]}")
        else:
            self.ok[kind.name] = self.ok.get(kind.name, 0) + 1
        if kind.routed:
            if request_id:
                self.ids[request_id] = error or "ok"
            else:
                self.routed_without_id += 1
                self.never_reached_clood += error == "connection refused by clood"

    def totals(self):
        sent, ok = sum(self.sent.values()), sum(self.ok.values())
        return sent, ok, sent - ok


def judge(kind, body):
    """The error class of a 200 answer ("" when it is a good one) and a detail."""
    text = body.decode("utf-8", "replace")
    try:
        if kind.shape == "sse":
            events = [line[5:].strip() for line in text.split("\n") if line.startswith("data:")]
            failed = [e for e in events if e.startswith("{") and "error" in json.loads(e)]
            if failed:
                return "in-band error", failed[0]
            return ("", "") if events and events[-1] == "[DONE]" else ("stream cut short", text[-300:])
        if kind.shape == "ndjson":
            lines = [line for line in text.split("\n") if line.strip()]
            failed = [line for line in lines if "error" in json.loads(line)]
            if failed:
                return "in-band error", failed[0]
            return ("", "") if lines and json.loads(lines[-1]).get("done") else ("stream cut short", text[-300:])
        answer = json.loads(text)
        good = {
            "chat": lambda: answer["choices"][0]["message"]["content"],
            "completion": lambda: answer["choices"][0]["text"],
            "embedding": lambda: answer["data"][0]["embedding"],
            "models": lambda: CHAT_MODEL in {m["id"] for m in answer["data"]},
            "tags": lambda: answer["models"],
        }[kind.shape]()
        return ("", "") if good else ("bad answer", text[:300])
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        return "bad answer", f"{type(exc).__name__}: {text[:300]}"


async def send_one(session, base_url, kind, tally):
    request_id, error, detail = "", "", ""
    try:
        async with session.request(kind.method, base_url + kind.path, data=kind.payload(),
                                   headers={"Content-Type": "application/json"}) as response:  # fmt: skip
            request_id = response.headers.get("x-clood-request-id", "")
            body = await response.read()
            if response.status != 200:
                error, detail = f"HTTP {response.status}", body[:300].decode("utf-8", "replace")
            else:
                error, detail = judge(kind, body)
    except TimeoutError:
        error, detail = "client timeout", f"no complete answer within {session.timeout.total:g} s"
    except aiohttp.ClientConnectorError as exc:
        error, detail = "connection refused by clood", str(exc)
    except aiohttp.ClientError as exc:
        error, detail = f"connection error ({type(exc).__name__})", str(exc)
    tally.add(kind, error, detail, request_id)
    return error


async def worker(session, base_url, rng, tally, stop_at):
    weights = [k.weight for k in KINDS]
    while time.monotonic() < stop_at:
        if await send_one(session, base_url, rng.choices(KINDS, weights)[0], tally):
            await asyncio.sleep(0.05)  # a failing clood must not turn into a busy loop


# --- the run -------------------------------------------------------------------------------------------------------


async def clood_status(control, clood_url):
    try:
        async with control.get(f"{clood_url}/status") as response:
            return await response.json()
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


async def clood_tasks(control, clood_url):
    try:
        async with control.get(f"{clood_url}/_clood/internals") as response:
            return (await response.json())["tasks"]
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError):
        return None


def host_states(status):
    return {h["name"]: h["status"] for h in (status or {}).get("hosts", [])}


@dataclass
class Soak:
    """One soak run: the stack it drives, the clock, and what it has seen so far."""

    procs: Processes
    hosts: list
    env: dict
    clood_url: str
    daphne_pid: int
    args: argparse.Namespace
    control: aiohttp.ClientSession = None  # restarts, samples, /status: never the load's connection pool
    started: float = 0.0
    stop_at: float = 0.0
    tally: Tally = field(default_factory=Tally)
    samples: list = field(default_factory=list)
    restarts: list = field(default_factory=list)
    traffic_s: float = 0.0  # from the first request to the last answer
    idle: dict = None  # clood once the traffic is over and its clients are gone
    final_status: dict = None  # clood's /status then

    async def status(self):
        return await clood_status(self.control, self.clood_url)

    async def tasks(self):
        return await clood_tasks(self.control, self.clood_url)

    async def restart_hosts(self):
        """Restart the hosts in turn, the first at half an interval; none that would not be back before the end."""
        for index in itertools.count():
            at = self.started + self.args.restart_every * (index + 0.5)
            if at + RESTART_DOWNTIME + 10 > self.stop_at:
                return
            await asyncio.sleep(at - time.monotonic())
            record = {"at_s": round(time.monotonic() - self.started)}
            record.update(await self.restart(self.hosts[index % len(self.hosts)]))
            self.restarts.append(record)

    async def restart(self, host):
        """Stop `host`'s simulator, keep it down RESTART_DOWNTIME s, start it on the same port; how clood saw it."""
        proc, _path = self.procs.started[f"sim-{host.name}-{host.generation}"]
        log(f"restart: stopping host {host.name}")
        began = time.monotonic()
        proc.terminate()
        await asyncio.to_thread(proc.wait, 10)
        seen_offline = False
        while time.monotonic() - began < RESTART_DOWNTIME:
            seen_offline |= host_states(await self.status()).get(host.name) == "offline"
            await asyncio.sleep(0.5)
        name = start_sim(self.procs, host, self.env)
        for _ in range(100):
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                config = sim_failures(host, self.args.fail_rate)
                async with self.control.post(f"{host.url}/_sim/config", json=config) as response:
                    if response.status == 200:
                        break
            self.procs.check_alive(name)
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError(f"host {host.name} did not come back on port {host.port}")
        up, back_after = time.monotonic(), None
        while time.monotonic() - up < 60 and time.monotonic() < self.stop_at:
            state = host_states(await self.status()).get(host.name)
            seen_offline |= state == "offline"
            if state == "online" and seen_offline:
                back_after = round(time.monotonic() - up, 1)
                break
            if state == "online" and time.monotonic() - up > 15:
                break  # clood never saw it go
            await asyncio.sleep(0.5)
        log(f"restart: host {host.name} back; clood saw it offline: {seen_offline}, online again after {back_after} s")
        return {"host": host.name, "seen_offline": seen_offline, "online_again_after_s": back_after}

    async def sample_until_the_end(self):
        """A sample at the start, every SAMPLE_EVERY seconds, and at the end of the traffic; stops if clood dies."""
        cpu_started = cpu_seconds(self.daphne_pid)
        while True:
            self.procs.check_alive("daphne")
            self.samples.append(self.sample(await self.status(), cpu_started, await self.tasks()))
            now = time.monotonic()
            if now >= self.stop_at - 0.5:
                return
            await asyncio.sleep(min(SAMPLE_EVERY - (now - self.started) % SAMPLE_EVERY, self.stop_at - now))

    def sample(self, status, cpu_started, tasks=None):
        """One progress row: the clients' counts, clood's RSS, fds, threads and CPU, and its view of the hosts."""
        sent, ok, errors = self.tally.totals()
        pid, now = self.daphne_pid, time.monotonic()
        previous = self.samples[-1] if self.samples else None
        sample = {
            "at_s": round(now - self.started),
            "sent": sent,
            "ok": ok,
            "errors": errors,
            "rss_mb": round(rss_bytes(pid) / 2**20, 1),
            "fds": open_fds(pid),
            "threads": threads(pid),
            "tasks": tasks,
            "clood_cpu_s": round(cpu_seconds(pid) - cpu_started, 2),
            "gen_cpu_s": round(cpu_seconds(os.getpid()), 2),
            "machine_cpu_s": round(machine_busy_seconds(), 2),
            "hosts": host_states(status),
            "in_flight": (status or {}).get("in_flight"),
            "queued": (status or {}).get("queued"),
            "_t": now,
        }
        span = now - previous["_t"] if previous else 0
        sample["rps"] = round((sent - previous["sent"]) / span, 1) if span else 0.0
        for name in ("clood", "gen", "machine"):  # share of one core since the previous sample (2 cores: 200 %)
            used = sample[f"{name}_cpu_s"] - previous[f"{name}_cpu_s"] if previous else 0
            sample[f"{name}_cpu_percent"] = round(100 * used / span) if span else 0
        hosts = " ".join(f"{name}:{state}" for name, state in sample["hosts"].items())
        log(f"{sample['at_s'] // 60:>3}:{sample['at_s'] % 60:02d}  sent {sent}  ok {ok}  errors {errors}  "
            f"{sample['rps']} req/s  RSS {sample['rss_mb']} MB  fds {sample['fds']}  threads {sample['threads']}  "
            f"tasks {sample['tasks']}  "
            f"CPU % clood {sample['clood_cpu_percent']} gen {sample['gen_cpu_percent']} "
            f"machine {sample['machine_cpu_percent']}  in flight {sample['in_flight']}  {hosts}")  # fmt: skip
        return sample

    async def wait_idle(self, timeout=30.0):
        """clood's /status once its in-flight and queued counts are 0 (or after `timeout`)."""
        deadline = time.monotonic() + timeout
        while True:
            status = await self.status()
            if (status and not status["in_flight"] and not status["queued"]) or time.monotonic() > deadline:
                return status
            await asyncio.sleep(0.5)

    async def run(self):
        """The traffic, the restarts and the samples until --minutes are over; then clood at rest."""
        rng = random.Random(self.args.seed)
        connector = aiohttp.TCPConnector(limit=self.args.concurrency + 4, limit_per_host=0)
        timeout = aiohttp.ClientTimeout(total=self.args.request_timeout, sock_connect=10)
        self.started = time.monotonic()
        self.stop_at = self.started + self.args.minutes * 60
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as self.control:
            # Every task ends by itself shortly after stop_at (a worker after its last answer: --request-timeout
            # at most). If one fails (clood died, a host did not come back) or the run is interrupted, the group
            # cancels the others at once.
            try:
                async with (
                    aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
                    asyncio.TaskGroup() as group,
                ):
                    for _ in range(self.args.concurrency):
                        group.create_task(worker(session, self.clood_url, rng, self.tally, self.stop_at))
                    group.create_task(self.sample_until_the_end())
                    group.create_task(self.restart_hosts())
            except ExceptionGroup as failures:
                raise failures.exceptions[0] from None
            self.traffic_s = time.monotonic() - self.started
            # The clients' connections are closed now: what clood still holds is its own.
            status = await self.wait_idle()
            idle_tasks = await clood_tasks(self.control, self.clood_url)
        pid = self.daphne_pid
        self.idle = {"rss_mb": round(rss_bytes(pid) / 2**20, 1), "fds": open_fds(pid), "threads": threads(pid),
                     "in_flight": (status or {}).get("in_flight"), "queued": (status or {}).get("queued"),
                     "tasks": idle_tasks}  # fmt: skip
        self.final_status = status


# --- the checks ----------------------------------------------------------------------------------------------------


def logged_rows(database):
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)) as db:
        return {rid: (outcome, status) for rid, outcome, status in
                db.execute("SELECT request_id, outcome, status FROM proxy_requestlog")}  # fmt: skip


def wait_for_rows(database, expected):
    """The request log's rows once it holds `expected` rows, or once it stopped growing for 5 s (at most
    FLUSH_WAIT s)."""
    deadline, last_count, still_since = time.monotonic() + FLUSH_WAIT, -1, time.monotonic()
    while True:
        rows = logged_rows(database)
        if len(rows) != last_count:
            last_count, still_since = len(rows), time.monotonic()
        if len(rows) >= expected or time.monotonic() - still_since > 5 or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


def check_log(tally, rows):
    expected = sum(tally.sent.get(k.name, 0) for k in KINDS if k.routed) - tally.never_reached_clood
    missing = [rid for rid in tally.ids if rid not in rows]
    crosstab = {}
    for rid, seen in tally.ids.items():
        outcome = rows[rid][0] if rid in rows else "(no row)"
        key = f"{seen} → {outcome}"
        crosstab[key] = crosstab.get(key, 0) + 1
    return {
        "routed_sent": expected + tally.never_reached_clood,
        "never_reached_clood": tally.never_reached_clood,
        "expected_rows": expected,
        "ids_seen": len(tally.ids),
        "routed_without_id": tally.routed_without_id,
        "rows": len(rows),
        "ids_without_row": len(missing),
        "missing_ids": missing[:10],
        "rows_without_seen_id": len(set(rows) - set(tally.ids)),
        "lost": max(len(missing), expected - len(rows)),
        "client_vs_log": dict(sorted(crosstab.items(), key=lambda item: -item[1])),
    }


def check_growth(samples, idle, args):
    warm = [s for s in samples if s["at_s"] >= args.warmup - 1]
    start, end = (warm[0] if len(warm) > 1 else samples[0]), samples[-1]
    rss_change = 100 * (end["rss_mb"] - start["rss_mb"]) / start["rss_mb"]
    fd_change = end["fds"] - start["fds"]
    return {
        "start": {k: start.get(k) for k in ("at_s", "rss_mb", "fds", "threads", "tasks")},
        "end": {k: end.get(k) for k in ("at_s", "rss_mb", "fds", "threads", "tasks")},
        "idle_after_drain": idle,
        "rss_change_percent": round(rss_change, 1),
        "fd_change": fd_change,
        "thread_change": end["threads"] - start["threads"],
        "rss_ok": rss_change <= args.max_rss_growth,
        "fds_ok": fd_change <= args.max_fd_growth,
        # At rest, clood holds what it held under load at most (its background tasks; no request's leftovers).
        "tasks_ok": None not in (idle.get("tasks"), start.get("tasks")) and idle["tasks"] <= start["tasks"],
        "idle_ok": idle.get("in_flight") == 0 and idle.get("queued") == 0,
    }


# --- the report ----------------------------------------------------------------------------------------------------


def render(report):
    s, t, g, lg = report["settings"], report["traffic"], report["growth"], report["log"]
    m = report["machine"]
    failing = ", ".join(f"{h['name']}: {describe_failure(h['failure'])}" for h in s["hosts"])
    lines = [
        f"clood soak, {report['started_at']}: {t['traffic_s']:.0f} s of traffic, {s['concurrency']} workers, "
        f"{len(s['hosts'])} hosts failing {s['fail_rate'] * 100:g} % of model requests ({failing}), one host "
        f"restarted every {s['restart_every']:g} s ({len(report['restarts'])} restarts)",
        f"machine: nproc {m['nproc']}, {m['cpu'] or 'unknown CPU'}, Python {m['python']}, load average at start "
        f"{m['load_average_at_start']}",
        "",
        "| requests | sent | served OK | errors | OK % | req/s |",
        "|---|--:|--:|--:|--:|--:|",
    ]

    def row(label, names):
        sent = sum(t["sent"].get(n, 0) for n in names)
        ok = sum(t["ok"].get(n, 0) for n in names)
        pct = f"{100 * ok / sent:.2f}" if sent else "–"
        return f"| {label} | {sent} | {ok} | {sent - ok} | {pct} | {sent / t['traffic_s']:.1f} |"

    routed = [k.name for k in KINDS if k.routed]
    lines += [row(name, [name]) for name in routed]
    lines.append(row("**routed, all**", routed))
    lines += [row(k.name, [k.name]) for k in KINDS if not k.routed]
    lines += ["", "| errors returned to clients, by class | count | by kind | first answer |", "|---|--:|---|---|"]
    for error, per_kind in sorted(t["errors"].items(), key=lambda item: -sum(item[1].values())):
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(per_kind.items(), key=lambda item: -item[1]))
        sample = t["samples"][error].replace("|", "\\|")[:200]
        lines.append(f"| {error} | {sum(per_kind.values())} | {kinds} | `{sample}` |")
    if not t["errors"]:
        lines.append("| none | 0 | | |")
    limits = f"limits: RSS +{s['max_rss_growth']:g} %, fds +{s['max_fd_growth']}"
    lines += [
        "",
        f"| clood (daphne) | start ({g['start']['at_s']} s) | end ({g['end']['at_s']} s) | change | idle after drain "
        f"| {limits} |",
        "|---|--:|--:|--:|--:|---|",
        f"| RSS MB | {g['start']['rss_mb']} | {g['end']['rss_mb']} | {g['rss_change_percent']:+.1f} % "
        f"| {g['idle_after_drain']['rss_mb']} | {'ok' if g['rss_ok'] else '**GREW**'} |",
        f"| open fds | {g['start']['fds']} | {g['end']['fds']} | {g['fd_change']:+d} "
        f"| {g['idle_after_drain']['fds']} | {'ok' if g['fds_ok'] else '**GREW**'} |",
        f"| threads | {g['start']['threads']} | {g['end']['threads']} | {g['thread_change']:+d} "
        f"| {g['idle_after_drain']['threads']} | |",
        f"| asyncio tasks | {g['start']['tasks']} | {g['end']['tasks']} | | {g['idle_after_drain'].get('tasks')} "
        f"| {'ok' if g.get('tasks_ok') else '**MORE THAN UNDER LOAD**'} (at rest ≤ under load) |",
        f"| in flight / queued (/status) | | | | {g['idle_after_drain']['in_flight']} / "
        f"{g['idle_after_drain']['queued']} | {'ok' if g.get('idle_ok') else '**NOT 0 / 0**'} |",
        "",
        "| request log | routed sent | reached clood | ids seen | rows | ids without a row | rows without a seen id "
        "| lost |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
        f"| RequestLog | {lg['routed_sent']} | {lg['expected_rows']} | {lg['ids_seen']} | {lg['rows']} "
        f"| {lg['ids_without_row']} | {lg['rows_without_seen_id']} | {lg['lost']} |",
        "",
        "client saw → row outcome: " + ", ".join(f"{k} {n}" for k, n in lg["client_vs_log"].items()),
    ]
    if lg["missing_ids"]:
        lines.append(f"missing ids (first {len(lg['missing_ids'])}): {', '.join(lg['missing_ids'])}")
    if report["restarts"]:
        lines.append("restarts (at s: host, clood saw it offline, online again after s): " + "; ".join(
            f"{r['at_s']}: {r['host']}, {'yes' if r['seen_offline'] else 'no'}, {r['online_again_after_s']}"
            for r in report["restarts"]))  # fmt: skip
    lines.append("samples (at s: RSS MB / fds / req/s / CPU % clood / machine): " + "; ".join(
        f"{x['at_s']}: {x['rss_mb']} / {x['fds']} / {x['rps']} / {x['clood_cpu_percent']} / {x['machine_cpu_percent']}"
        for x in report["samples"]))  # fmt: skip
    lines += [f"note: {n}" for n in report["notes"]]
    lines += ["", f"verdict: {report['verdict']}"]
    return "\n".join(lines)


def describe_failure(failure):
    if failure["fail"] == "error":
        return f"HTTP {failure['fail_status']}"
    if failure["fail"] == "drop":
        return f"drop after {failure['fail_after_tokens']} tokens"
    return failure["fail"]


def verdict(growth, log_check):
    problems = []
    if log_check["lost"]:
        problems.append(f"{log_check['lost']} request log rows lost")
    if not growth["rss_ok"]:
        problems.append(f"RSS grew {growth['rss_change_percent']:+.1f} %")
    if not growth["fds_ok"]:
        problems.append(f"open fds grew {growth['fd_change']:+d}")
    if not growth["idle_ok"]:
        problems.append("requests still in flight or queued after the drain")
    if not growth["tasks_ok"]:
        problems.append("more asyncio tasks at rest than under load")
    return (
        ("FAIL: " + "; ".join(problems))
        if problems
        else ("PASS: no request log row lost, RSS and fds flat, nothing left in flight, no task left behind")
    )


# --- main ----------------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="clood soak: mixed traffic, failing and restarting hosts, leaks.")
    parser.add_argument("--minutes", type=float, default=30, help="Minutes of traffic (default 30).")
    parser.add_argument("--concurrency", type=int, default=16, help="Client workers sending back to back.")
    parser.add_argument("--restart-every", type=float, default=180, help="Seconds between host restarts.")
    parser.add_argument("--fail-rate", type=float, default=0.05, help="Share of model requests each host fails.")
    parser.add_argument("--warmup", type=float, default=60, help="The start figures are taken after this (s).")
    parser.add_argument("--request-timeout", type=float, default=30, help="A client gives up after this (s).")
    parser.add_argument("--max-rss-growth", type=float, default=20, help="Largest RSS growth that passes (%%).")
    parser.add_argument("--max-fd-growth", type=int, default=20, help="Largest open-fd growth that passes.")
    parser.add_argument("--seed", type=int, default=1, help="Seed of the request mix.")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="Where to write the JSON results.")
    parser.add_argument("--keep-logs", action="store_true", help="Keep the temporary dir (logs, database).")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.concurrency < 1 or args.restart_every <= RESTART_DOWNTIME:
        parser.error(f"--minutes must be > 0, --concurrency >= 1, --restart-every > {RESTART_DOWNTIME:g}")
    if not 0 <= args.fail_rate <= 1:
        parser.error("--fail-rate must be from 0 to 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    workdir = Path(tempfile.mkdtemp(prefix="clood-soak-"))
    procs = Processes(workdir)
    hosts = sim_hosts()
    started_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = machine_facts()
    code, failed = 2, True
    try:
        clood_url, daphne, env = start_stack(procs, workdir, hosts, args.fail_rate)
        log(f"soak: {args.minutes:g} min, {args.concurrency} workers, a restart every {args.restart_every:g} s")
        runner = uvloop.run if uvloop else asyncio.run
        soak = Soak(procs, hosts, env, clood_url, daphne.pid, args)
        runner(soak.run())
        procs.check_alive("daphne")
        log("waiting for the request log to catch up")
        tally = soak.tally
        expected = sum(tally.sent.get(k.name, 0) for k in KINDS if k.routed) - tally.never_reached_clood
        log_check = check_log(tally, wait_for_rows(workdir / "var" / "clood.sqlite3", expected))
        growth = check_growth(soak.samples, soak.idle, args)
        notes = [f"clood logged ({count}×): {message}"
                 for message, count in clood_log_summary(tail(workdir / "daphne.log", 100000)).items()]  # fmt: skip
        report = {
            "started_at": started_at,
            "machine": machine,
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
            | {"hosts": [{"name": h.name, "ttft": h.ttft, "tokens_per_second": h.tokens_per_second,
                          "failure": h.failure, "max_concurrency": HOST_SLOTS} for h in hosts],
               "reply_tokens": REPLY_TOKENS, "clood_env": {"CLOOD_MONITOR_INTERVAL": 3}},
            "traffic": {"traffic_s": round(soak.traffic_s, 1), "sent": tally.sent, "ok": tally.ok,
                        "errors": tally.errors, "samples": tally.samples},
            "samples": [{k: v for k, v in x.items() if k != "_t"} for x in soak.samples],
            "restarts": soak.restarts,
            "growth": growth,
            "log": log_check,
            "clood_status_at_end": soak.final_status,
            "notes": notes,
            "verdict": verdict(growth, log_check),
        }  # fmt: skip
        print(render(report), flush=True)
        write_json(report, args.json)
        log(f"wrote {args.json}")
        failed = False
        code = 1 if report["verdict"].startswith("FAIL") else 0
    except KeyboardInterrupt:
        code = 130
        log("interrupted; stopping the processes the soak started")
    except (RuntimeError, OSError, subprocess.SubprocessError, sqlite3.Error) as exc:
        log(f"soak failed: {exc}")
    finally:
        procs.stop_all()
        if failed and code != 130:
            for name, (_proc, path) in procs.started.items():
                log(f"last lines of {name}'s log:\n{tail(path)}")
        if args.keep_logs or (failed and code != 130):
            log(f"logs and database kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
