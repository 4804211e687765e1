"""Direct-to-host vs through clood, same run, same machine, one table.

    .venv/bin/python bench/proxy_bench.py [--quick] [--cases CASE ...] [--duration S]

Starts a simulated host (`manage.py simhost`) and clood (daphne, fresh SQLite in a temporary CLOOD_VAR_DIR) as
separate processes on 127.0.0.1, drives both with a closed-loop aiohttp load generator (this process), prints a
markdown table and writes the same figures to bench/results/latest.json. See bench/README.md for the columns.
"""

import argparse
import asyncio
import contextlib
import ctypes
import itertools
import json
import math
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

try:
    import uvloop
except ImportError:  # optional: bench/requirements.txt
    uvloop = None

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CLOOD_SERVER = [PYTHON, "-m", "clood_site.serve"]  # daphne with clood's request limits, as `./clood run` starts it
MODEL = "bench:1b"
HOST_SLOTS = 2000  # max_concurrency of every simulated host: never the bottleneck
CLOOD_ENV = {"CLOOD_QUEUE_MAX": 5000, "CLOOD_LOG_LEVEL": "WARNING", "CLOOD_MONITOR_INTERVAL": 5}  # the rest: defaults
DEFAULT_JSON = ROOT / "bench" / "results" / "latest.json"
CLK_TCK = os.sysconf("SC_CLK_TCK")
REQUEST_TIMEOUT = 120.0  # one request or stream gives up after this (s)
DRAIN_TIMEOUT = 60.0  # after a case's window, requests still running get this long, then are cancelled
UNPACED = {"ttft": 0.0, "tokens_per_second": 0, "reply_tokens": 64}
PACED = {"ttft": 0.05, "tokens_per_second": 100, "reply_tokens": 100}
# Errors the load generator counts (by type name) instead of letting them end the run.
REQUEST_ERRORS = (aiohttp.ClientError, TimeoutError, OSError, ValueError, KeyError, IndexError, TypeError)


@dataclass
class Case:
    name: str
    stream: bool
    concurrency: int
    sim: dict
    fixed: bool = False  # True: each worker sends a fixed number of streams instead of running for a duration


CASES = [
    Case("nonstream-1", False, 1, UNPACED),
    Case("nonstream-16", False, 16, UNPACED),
    Case("nonstream-64", False, 64, UNPACED),
    Case("stream-1", True, 1, UNPACED),
    Case("stream-16", True, 16, UNPACED),
    Case("stream-64", True, 64, UNPACED),
    Case("paced-64", True, 64, PACED),
    Case("paced-1000", True, 1000, PACED, fixed=True),
]
CASE_HELP = ", ".join(c.name for c in CASES) + ", rss (groups: nonstream, stream, paced, all)"


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- processes -----------------------------------------------------------------------------------------------------


def _die_with_parent():  # runs in the child before exec: SIGTERM it when the bench process dies, however it dies
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Processes:
    """The processes the bench started; `stop_all` ends each of them (TERM, then KILL) by its own pid."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.started = {}  # name -> (Popen, log path)
        self.stopped = set()  # names stopped on purpose before the end

    def start(self, name, argv, env):
        path = self.workdir / f"{name}.log"
        with open(path, "wb") as out:
            proc = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent,
            )  # fmt: skip
        self.started[name] = (proc, path)
        return proc

    def check_alive(self, name):
        proc, path = self.started[name]
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail(path)}")

    def running(self):
        """The names of the processes started and not stopped on purpose."""
        return [name for name in self.started if name not in self.stopped]

    def stop(self, name):
        """Stop one process: SIGTERM, then SIGKILL after 10 s."""
        proc, _path = self.started[name]
        self.stopped.add(name)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log(f"{name} did not stop on SIGTERM; killing it")
                proc.kill()
                proc.wait(timeout=10)

    def stop_all(self):
        for name in reversed(list(self.started)):
            self.stop(name)


ACCESS_LOG_LINE = re.compile(r'^\S+ - - \[[^]]*\] "[A-Z]+ [^"]*" \d{3} \d+$')  # daphne's per-request line


def tail(path, lines=30):
    """The last `lines` lines of a log, without daphne's access-log lines."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join([line for line in text.splitlines() if not ACCESS_LOG_LINE.match(line)][-lines:])


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_json(url, body=None, timeout=5.0):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (loopback only)
        return json.loads(response.read())


def wait_until(what, check, procs, names, timeout=60.0):
    deadline = time.monotonic() + timeout
    while True:
        for name in names:
            procs.check_alive(name)
        try:
            if check():
                return
        except (OSError, urllib.error.URLError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.2)


def manage(env, *args):
    result = subprocess.run(
        [PYTHON, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if result.returncode:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def bench_env(var_dir):
    """clood's environment for a bench: a fresh CLOOD_VAR_DIR, SQLite (DATABASE_URL and REDIS_URL removed), a queue
    large enough for the load, warnings only in the log."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DEBUG")}
    env.update(
        CLOOD_VAR_DIR=str(var_dir),
        **{name: str(value) for name, value in CLOOD_ENV.items()},
        CLOOD_ADMIN_PASSWORD=secrets.token_urlsafe(16),  # so bootstrap prints no generated password
        CLOOD_DEFAULT_HOSTS="",  # bootstrap registers no localhost:11434; set_up_clood adds the sims
        CLOOD_ATC_PUBLIC="true",  # --dashboards connect without a login
        DEBUG="false",
        PYTHONUNBUFFERED="1",
    )
    Path(var_dir).mkdir(parents=True, exist_ok=True)
    return env


def start_sim(procs, env, name="simhost"):
    """Start a simulated host holding MODEL (loaded, unpaced 64-token replies); return its url and process."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log(f"starting simulated host on {url}")
    argv = [PYTHON, "manage.py", "simhost", "--port", str(port), "--models", MODEL, "--loaded", MODEL,
            "--tokens", "64", "--ttft", "0", "--tps", "0"]  # fmt: skip
    sim = procs.start(name, argv, env)
    wait_until("the simulated host", lambda: http_json(f"{url}/_sim/config") is not None, procs, [name])
    return url, sim


def set_up_clood(env, sim_urls):
    """Create clood's tables and admin, and register the sims with slots enough never to be the bottleneck."""
    log("setting up clood (migrate, bootstrap, hosts add, hosts refresh)")
    manage(env, "migrate", "--noinput", "-v", "0")
    manage(env, "bootstrap")
    for number, sim_url in enumerate(sim_urls):
        manage(env, "hosts", "add", f"sim{number or ''}", sim_url, "--max-concurrency", str(HOST_SLOTS))
    manage(env, "hosts", "refresh")


def start_clood(procs, env, name="daphne"):
    """Start one clood server (clood_site.serve) on a free port; return its url and process once it lists MODEL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log(f"starting clood ({name}) on {url}")
    command = [*CLOOD_SERVER, "-b", "127.0.0.1", "-p", str(port), "clood_site.asgi:application"]
    daphne = procs.start(name, command, env)

    def listed():
        return any(m.get("id") == MODEL for m in http_json(f"{url}/v1/models").get("data", []))

    wait_until(f"clood to list {MODEL}", listed, procs, procs.running(), timeout=90)
    return url, daphne


def start_stack(procs, workdir):
    """Start the simulated host and clood; return (sim url, clood url, daphne pid, sim pid)."""
    env = bench_env(workdir / "var")
    sim_url, sim = start_sim(procs, env)
    set_up_clood(env, [sim_url])
    clood_url, daphne = start_clood(procs, env)
    return sim_url, clood_url, daphne.pid, sim.pid


# --- /proc readings ------------------------------------------------------------------------------------------------


def cpu_seconds(pid):
    """utime + stime of `pid` (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class RssSampler:
    """Samples a process's RSS every `interval` seconds in a thread; `peak` is the largest sample."""

    def __init__(self, pid, interval=0.1):
        self.pid, self.interval = pid, interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self):
        while True:
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, rss_bytes(self.pid))
            if self._stop.wait(self.interval):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()


def machine_busy_seconds():
    """CPU seconds all cores spent busy since boot (everything in /proc/stat's `cpu` line but idle and iowait)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    return (sum(values) - values[3] - values[4]) / CLK_TCK


class CpuMeter:
    """CPU seconds used by each watched process between `start()` and `stop()`, and by everything else ("other":
    other processes on the machine, which this bench does not control)."""

    def __init__(self, pids):
        self.pids = pids  # name -> pid, or a function that returns CPU seconds used so far (a group of processes)

    def _read(self):
        used = {name: pid() if callable(pid) else cpu_seconds(pid) for name, pid in self.pids.items()}
        used["machine"] = machine_busy_seconds()
        return time.perf_counter(), used

    def start(self):
        self.t0, self.c0 = self._read()

    def stop(self):
        self.t1, c1 = self._read()
        self.used = {name: c1[name] - self.c0[name] for name in self.pids}
        self.used["other"] = max(0.0, c1["machine"] - self.c0["machine"] - sum(self.used.values()))

    @property
    def window(self):
        return self.t1 - self.t0

    def percent(self):
        """Share of one core each process used (200 % = both cores of a 2-core machine)."""
        return {name: round(100 * used / self.window, 1) for name, used in self.used.items()}


# --- the load generator --------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    done: float  # perf_counter when the answer was fully read
    latency: float = 0.0
    ttft: float = 0.0
    error: str = ""
    detail: str = ""  # the start of an error answer's body, kept once per kind of error


def chat_payload(stream):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say something."}], "stream": stream}
    return json.dumps(body).encode()


HEADERS = {"Content-Type": "application/json"}


def _has_content(event):
    """Whether an SSE event carries a non-empty content delta; raises ValueError on an in-band error."""
    for line in event.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            continue
        chunk = json.loads(data)
        if "error" in chunk:
            raise ValueError(f"in-band error: {chunk['error']}")
        choices = chunk.get("choices") or []
        if choices and (choices[0].get("delta") or {}).get("content"):
            return True
    return False


async def one_request(session, url, payload, stream):
    """Send one chat completion; the Outcome has total latency and time to the first content chunk."""
    started = time.perf_counter()
    try:
        async with session.post(url, data=payload, headers=HEADERS) as response:
            if response.status != 200:
                body = await response.read()
                detail = body[:300].decode("utf-8", "replace")
                return Outcome(time.perf_counter(), error=f"HTTP {response.status}", detail=detail)
            if not stream:
                body = await response.read()
                done = time.perf_counter()
                if not json.loads(body)["choices"][0]["message"]["content"]:
                    return Outcome(done, error="empty reply")
                return Outcome(done, done - started, done - started)
            first, pending, tail_bytes = None, b"", b""
            async for chunk in response.content.iter_any():
                if first is None:
                    pending += chunk
                    while first is None and b"\n\n" in pending:
                        event, pending = pending.split(b"\n\n", 1)
                        if _has_content(event):
                            first = time.perf_counter()
                elif b'"error"' in tail_bytes[-8:] + chunk:
                    detail = (tail_bytes + chunk).decode("utf-8", "replace")[-300:]
                    return Outcome(time.perf_counter(), error="in-band error", detail=detail)
                tail_bytes = (tail_bytes + chunk)[-64:]
            done = time.perf_counter()
            if first is None:
                return Outcome(done, error="no content")
            if not tail_bytes.rstrip().endswith(b"data: [DONE]"):
                return Outcome(done, error="stream cut short")
            return Outcome(done, done - started, first - started)
    except REQUEST_ERRORS as exc:
        return Outcome(time.perf_counter(), error=type(exc).__name__, detail=str(exc)[:300])


def new_session(concurrency):
    connector = aiohttp.TCPConnector(limit=concurrency + 8, limit_per_host=0, ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT, sock_connect=10)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False, read_bufsize=2**16)


async def _finish(tasks, timeout=DRAIN_TIMEOUT):
    """Wait for the workers to end by themselves (bounded), then cancel the stragglers."""
    _done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    return len(pending)


async def closed_loop(urls, stream, concurrency, warmup, duration, meter, payload=None):
    """`concurrency` workers send requests back-to-back, to each of `urls` in turn (round-robin across the workers);
    answers finished inside the measured window count. `payload`: the request body (default: a chat of MODEL)."""
    payload = payload or chat_payload(stream)
    outcomes = []
    turns = itertools.cycle(urls)
    async with new_session(concurrency) as session:
        stop_at = time.perf_counter() + warmup + duration

        async def worker():
            while time.perf_counter() < stop_at:
                outcome = await one_request(session, next(turns), payload, stream)
                outcomes.append(outcome)
                if outcome.error:
                    await asyncio.sleep(0.01)  # a failing target must not turn into a busy loop

        tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
        await asyncio.sleep(warmup)
        meter.start()
        await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
        meter.stop()
        cancelled = await _finish(tasks)
    window = [o for o in outcomes if meter.t0 <= o.done <= meter.t1]
    return summarise(window, meter.window, cancelled)


async def fixed_streams(url, concurrency, per_worker, ramp, limit, meter):
    """`concurrency` workers, started evenly over `ramp` seconds, each send `per_worker` streams back-to-back."""
    payload = chat_payload(True)
    outcomes = []
    async with new_session(concurrency) as session:

        async def worker(delay):
            await asyncio.sleep(delay)
            for _ in range(per_worker):
                outcomes.append(await one_request(session, url, payload, True))

        meter.start()
        tasks = [asyncio.create_task(worker(ramp * i / concurrency)) for i in range(concurrency)]
        cancelled = await _finish(tasks, limit)
        meter.stop()
    return summarise(outcomes, meter.window, cancelled)


def percentile(values, q):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))]


def summarise(outcomes, window, cancelled=0):
    ok = [o for o in outcomes if not o.error]
    errors, samples = {}, {}
    for o in outcomes:
        if o.error:
            errors[o.error] = errors.get(o.error, 0) + 1
            samples.setdefault(o.error, o.detail)
    if cancelled:
        errors["cancelled at the time limit"] = cancelled
    latencies, ttfts = [o.latency for o in ok], [o.ttft for o in ok]
    return {
        "requests": len(ok),
        "window_s": round(window, 3),
        "rps": round(len(ok) / window, 1) if window > 0 else None,
        "p50_ms": ms(percentile(latencies, 50)),
        "p99_ms": ms(percentile(latencies, 99)),
        "ttft_p50_ms": ms(percentile(ttfts, 50)),
        "ttft_p99_ms": ms(percentile(ttfts, 99)),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "error_samples": samples,
    }


def ms(seconds):
    return None if seconds is None else round(seconds * 1000, 2)


# --- the run -------------------------------------------------------------------------------------------------------


async def sim_control(session, sim_url, config):
    async with session.post(f"{sim_url}/_sim/config", json=config) as response:
        response.raise_for_status()
    async with session.post(f"{sim_url}/_sim/reset-stats") as response:
        response.raise_for_status()


async def sim_stats(session, sim_url):
    async with session.get(f"{sim_url}/_sim/stats") as response:
        return await response.json()


async def wait_serving(control, url, timeout=120.0):
    """Seconds until one non-stream request through `url` succeeds (after an overload clood may need a while:
    an open circuit, a host marked offline); gives up after `timeout` and lets the case count the errors."""
    started = time.perf_counter()
    payload = chat_payload(False)
    failures = 0
    while time.perf_counter() - started < timeout:
        outcome = await one_request(control, f"{url}/v1/chat/completions", payload, False)
        if not outcome.error:
            break
        failures += 1
        await asyncio.sleep(1.0)
    if not failures:
        return 0.0
    waited = round(time.perf_counter() - started, 1)
    log(f"  {url} failed {failures} probe request(s), served again after {waited} s")
    return waited


async def run_case(case, target, url, stack, args, control):
    sim_url, daphne_pid, sim_pid = stack["sim_url"], stack["daphne_pid"], stack["sim_pid"]
    await sim_control(control, sim_url, case.sim)
    waited = await wait_serving(control, url)
    meter = CpuMeter({"gen": os.getpid(), "sim": sim_pid, "clood": daphne_pid})
    endpoint = f"{url}/v1/chat/completions"
    with RssSampler(daphne_pid) as rss:
        if case.fixed:
            row = await fixed_streams(
                endpoint, case.concurrency, args.streams_per_worker, args.ramp, args.fixed_timeout, meter
            )
        else:
            row = await closed_loop([endpoint], case.stream, case.concurrency, args.warmup, args.duration, meter)
    stats = await sim_stats(control, sim_url)
    row.update(
        case=case.name,
        target=target,
        stream=case.stream,
        concurrency=case.concurrency,
        sim_config=case.sim,
        sim_max_in_flight=stats.get("max_in_flight"),
        sim_disconnects=stats.get("disconnects"),
        cpu_percent=meter.percent(),
        waited_before_s=waited,
    )
    if target == "clood":
        row["clood_cpu_s_per_request"] = round(meter.used["clood"] / row["requests"], 6) if row["requests"] else None
        row["clood_peak_rss_mb"] = round(rss.peak / 2**20, 1)
    log(
        f"  {case.name:<13} {target:<6} {row['rps'] or 0:>8.1f}/s  p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms  "
        f"ttft p50 {row['ttft_p50_ms']} ms  errors {row['errors']}  cpu% {row['cpu_percent']}"
    )
    await asyncio.sleep(0.5)  # let both ends settle (keep-alive sockets, request log flush) before the next case
    return row


async def rss_check(clood_url, daphne_pid, total, concurrency, timeout):
    """Through clood, non-stream: `total` requests at `concurrency`, clood's RSS sampled at every 10 %."""
    payload = chat_payload(False)
    endpoint = f"{clood_url}/v1/chat/completions"
    state = {"issued": 0, "ok": 0, "errors": 0}
    samples = [{"percent": 0, "requests": 0, "at_s": 0.0, "rss_mb": round(rss_bytes(daphne_pid) / 2**20, 1)}]
    steps = [total * k // 10 for k in range(1, 11)]
    cpu0, t0 = cpu_seconds(daphne_pid), time.perf_counter()
    deadline = t0 + timeout
    async with new_session(concurrency) as session:

        async def worker():
            while state["issued"] < total and time.perf_counter() < deadline:
                state["issued"] += 1
                outcome = await one_request(session, endpoint, payload, False)
                state["errors" if outcome.error else "ok"] += 1
                finished = state["ok"] + state["errors"]
                if steps and finished >= steps[0]:
                    steps.pop(0)
                    rss = round(rss_bytes(daphne_pid) / 2**20, 1)
                    at = round(time.perf_counter() - t0, 1)
                    samples.append({"percent": round(100 * finished / total), "requests": finished, "at_s": at,
                                    "rss_mb": rss})  # fmt: skip
                    log(f"  rss check {finished}/{total}: {rss} MB")
                if outcome.error:
                    await asyncio.sleep(0.01)

        tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
        await _finish(tasks, timeout + DRAIN_TIMEOUT)
    elapsed = time.perf_counter() - t0
    values = [s["rss_mb"] for s in samples]
    first, last = values[0], values[-1]
    after_first_tenth = values[1] if len(values) > 1 else first
    done = state["ok"] + state["errors"]
    return {
        "requests": done,
        "target_requests": total,
        "concurrency": concurrency,
        "errors": state["errors"],
        "elapsed_s": round(elapsed, 1),
        "rps": round(done / elapsed, 1) if elapsed else None,
        "clood_cpu_s_per_request": round((cpu_seconds(daphne_pid) - cpu0) / done, 6) if done else None,
        "samples": samples,
        "first_rss_mb": first,
        "last_rss_mb": last,
        "max_rss_mb": max(values),
        "change_percent": round(100 * (last - first) / first, 1) if first else None,
        "change_after_first_10_percent": round(100 * (last - after_first_tenth) / after_first_tenth, 1)
        if after_first_tenth
        else None,
        "completed": done >= total,
    }


async def watch_dashboard(clood_url, counts):
    """One ATC dashboard: a websocket that reads every message and acknowledges what it read, as the page does."""
    ws_url = clood_url.replace("http://", "ws://") + "/ws/atc/"
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(ws_url, origin=clood_url, max_msg_size=0) as socket:
            last_ack = time.monotonic()
            async for message in socket:
                counts["messages"] += 1
                frame = json.loads(message.data)
                counts[frame.get("type")] = counts.get(frame.get("type"), 0) + 1
                counts["events"] += len(frame.get("events") or ())
                seq = (
                    frame["events"][-1]["seq"] if frame.get("type") == "batch" and frame["events"] else frame.get("seq")
                )
                if isinstance(seq, int) and time.monotonic() - last_ack > 2:
                    await socket.send_json({"type": "ack", "seq": seq})
                    last_ack = time.monotonic()


async def run_all(stack, cases, args):
    rows = []
    counts = {"messages": 0, "events": 0}
    watchers = [asyncio.create_task(watch_dashboard(stack["clood_url"], counts)) for _ in range(args.dashboards)]
    if watchers:
        log(f"{len(watchers)} ATC dashboards connected")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as control:
        for case in cases:
            log(f"case {case.name}")
            for target, url in (("direct", stack["sim_url"]), ("clood", stack["clood_url"])):
                rows.append(await run_case(case, target, url, stack, args, control))
        rss = None
        if args.rss:
            await sim_control(control, stack["sim_url"], UNPACED)
            log(f"rss check: {args.rss_requests} non-stream requests through clood at concurrency 16")
            waited = await wait_serving(control, stack["clood_url"])
            rss = await rss_check(stack["clood_url"], stack["daphne_pid"], args.rss_requests, 16, args.rss_timeout)
            rss["waited_for_clood_s"] = waited
    for watcher in watchers:
        watcher.cancel()
    await asyncio.gather(*watchers, return_exceptions=True)
    if watchers:
        log(f"the dashboards received {counts['messages']} messages in all: {counts}")
    return rows, rss


# --- the report ----------------------------------------------------------------------------------------------------


def machine_facts():
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_total = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu_model,
        "memory": mem_total,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "aiohttp": aiohttp.__version__,
        "event_loop": f"uvloop {uvloop.__version__}" if uvloop else "asyncio",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def fmt(value, digits=1):
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def add_deltas(rows):
    direct = {r["case"]: r for r in rows if r["target"] == "direct"}
    for row in rows:
        base = direct.get(row["case"])
        if row["target"] != "clood" or base is None:
            continue
        for key, out in (("p50_ms", "added_p50_ms"), ("ttft_p50_ms", "added_ttft_p50_ms")):
            if row[key] is not None and base[key] is not None:
                row[out] = round(row[key] - base[key], 2)
        if row["rps"] and base["rps"]:
            row["rps_vs_direct_percent"] = round(100 * row["rps"] / base["rps"])


def render(report):
    m, s = report["machine"], report["settings"]
    lines = [
        f"clood proxy bench, {report['started_at']} ({report['elapsed_s']:.0f} s)",
        "",
        f"machine: nproc {m['nproc']}, {m['cpu'] or 'unknown CPU'}, {m['memory']}, Python {m['python']}, "
        f"{m['platform']}, load generator aiohttp {m['aiohttp']} on {m['event_loop']}",
        f"settings: {s['duration']} s per case after {s['warmup']} s warm-up; paced-1000: "
        f"{s['streams_per_worker']} stream(s) per worker, opened over {s['ramp']} s. The simulated host, clood and the "
        "load generator are three processes sharing these cores.",
        "",
        "| case | target | conc | req/s | vs direct | p50 ms | p99 ms | TTFT p50 | TTFT p99 | errors | host peak "
        "| added p50 | added TTFT p50 | clood CPU ms/req | clood peak RSS MB | CPU % gen / sim / clood / other |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in report["rows"]:
        cpu = r["cpu_percent"]
        clood = r["target"] == "clood"
        per_request = r.get("clood_cpu_s_per_request")
        cells = [
            r["case"],
            r["target"],
            str(r["concurrency"]),
            fmt(r["rps"]),
            f"{r['rps_vs_direct_percent']} %" if clood and r.get("rps_vs_direct_percent") is not None else "",
            fmt(r["p50_ms"]),
            fmt(r["p99_ms"]),
            fmt(r["ttft_p50_ms"]),
            fmt(r["ttft_p99_ms"]),
            str(r["errors"]),
            fmt(r.get("sim_max_in_flight")),
            fmt(r.get("added_p50_ms"), 2) if clood else "",
            fmt(r.get("added_ttft_p50_ms"), 2) if clood else "",
            fmt(per_request * 1000 if per_request is not None else None, 2) if clood else "",
            fmt(r.get("clood_peak_rss_mb")) if clood else "",
            f"{cpu['gen']:.0f} / {cpu['sim']:.0f} / {cpu['clood']:.0f} / {cpu['other']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    failing = [r for r in report["rows"] if r["error_kinds"]]
    if failing:
        lines += ["", "errors by kind (with the first answer or exception of each kind):"]
        for r in failing:
            counts = ", ".join(f"{kind} × {n}" for kind, n in r["error_kinds"].items())
            lines.append(f"- {r['case']} {r['target']}: {counts}")
            for kind, detail in r["error_samples"].items():
                if detail:
                    lines.append(f"  - {kind}: `{' '.join(detail.split())[:200]}`")
    rss = report.get("rss_check")
    if rss:
        waited = rss.get("waited_for_clood_s", 0)
        recovered = f"; clood failed probe requests for {waited} s before it" if waited else ""
        trail = ", ".join(f"{x['rss_mb']:.0f} ({x['at_s']:.0f} s)" for x in rss["samples"])
        lines += [
            "",
            f"RSS stability (through clood, non-stream, concurrency {rss['concurrency']}): {rss['requests']} of "
            f"{rss['target_requests']} requests in {rss['elapsed_s']} s ({rss['rps']} req/s), {rss['errors']} errors, "
            f"clood CPU {fmt((rss['clood_cpu_s_per_request'] or 0) * 1000, 2)} ms/req{recovered}",
            f"RSS MB first {rss['first_rss_mb']}, last {rss['last_rss_mb']}, max {rss['max_rss_mb']}: change "
            f"{rss['change_percent']:+.1f} % (from the 10 % sample: {rss['change_after_first_10_percent']:+.1f} %)",
            f"samples at 0, 10, …, 100 % of the requests, MB (time since start): {trail}",
        ]
    if report.get("notes"):
        lines += [""] + [f"note: {n}" for n in report["notes"]]
    return "\n".join(lines)


def notes_for(rows, daphne_log):
    notes = []
    for r in rows:
        busy = [name for name, pct in r["cpu_percent"].items() if pct >= 90 and name != "other"]
        if busy:
            notes.append(f"{r['case']} {r['target']}: {', '.join(busy)} used ≥ 90 % of a core")
        if r["cpu_percent"]["other"] >= 20:
            notes.append(
                f"{r['case']} {r['target']}: other processes on the machine used {r['cpu_percent']['other']:.0f} % "
                "of a core during the case; its figures are disturbed"
            )
    for message, count in clood_log_summary(daphne_log).items():
        notes.append(f"clood logged ({count}×): {message}")
    return notes


CHAINED = ("During handling", "The above exception")
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d [\d:,.]+ (WARNING|ERROR|CRITICAL) (.*)$")


def clood_log_summary(text, limit=10):
    """clood's own WARNING+ log lines and tracebacks (not daphne's access log), each distinct message counted."""
    counts, in_traceback = {}, False
    for line in text.splitlines():
        match = LOG_LINE.match(line)
        message = None
        if match:
            message, in_traceback = f"{match[1]} {match[2]}", False
        elif line.startswith("Traceback"):
            in_traceback = True
        elif in_traceback and line and not line[0].isspace() and not line.startswith(CHAINED):
            message, in_traceback = f"traceback ending in: {line}", False
        if message:
            counts[message[:200]] = counts.get(message[:200], 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1])[:limit])


def run_started():
    """When a run started, and on what: the first part of its report (see report_head)."""
    return {"began": time.perf_counter(), "started_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine_facts()}  # fmt: skip


def report_head(start, **settings):
    """What every bench report begins with: when, how long, on what machine, with which settings."""
    return {
        "started_at": start["started_at"],
        "elapsed_s": round(time.perf_counter() - start["began"], 1),
        "machine": start["machine"],
        "settings": {**settings, "clood_env": CLOOD_ENV, "host_max_concurrency": HOST_SLOTS},
    }


def run_async(coroutine):
    """Run the load generator's coroutine on uvloop when installed."""
    return (uvloop.run if uvloop else asyncio.run)(coroutine)


def publish(table, report, path, markdown=False):
    """The table to stdout, the figures as JSON to `path` (and the table beside it as .md, if asked)."""
    print(table, flush=True)
    write_json(report, path)
    written = [path]
    if markdown:
        written.append(path.with_suffix(".md"))
        written[-1].write_text(table + "\n")
    log(f"wrote {' and '.join(str(p) for p in written)}")


def write_json(report, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    ignore = path.parent / ".gitignore"
    if path.parent == DEFAULT_JSON.parent and not ignore.exists():
        ignore.write_text("*\n!.gitignore\n")
    path.write_text(json.dumps(report, indent=2) + "\n")


def select_cases(tokens):
    wanted = [t for token in tokens for t in token.split(",") if t]
    if not wanted or "all" in wanted:
        return list(CASES), True
    chosen, rss = [], False
    for token in wanted:
        if token == "rss":
            rss = True
            continue
        matches = [c for c in CASES if c.name == token or c.name.startswith(token + "-")]
        if not matches:
            raise SystemExit(f"unknown case {token!r}; choose from {CASE_HELP}")
        chosen += [c for c in matches if c not in chosen]
    return [c for c in CASES if c in chosen], rss


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="clood proxy bench: direct-to-host vs through clood, one table.")
    parser.add_argument("--quick", action="store_true", help="Short run: 3 s cases, 5,000-request RSS check.")
    parser.add_argument("--cases", nargs="+", default=["all"], metavar="CASE", help=f"Cases to run: {CASE_HELP}.")
    parser.add_argument("--duration", type=float, help="Measured seconds per case (default 8, --quick 3).")
    parser.add_argument("--warmup", type=float, help="Warm-up seconds before each case (default 1, --quick 0.5).")
    parser.add_argument("--rss-requests", type=int, help="Requests in the RSS check (default 50000, --quick 5000).")
    parser.add_argument("--rss-timeout", type=float, default=900, help="The RSS check stops after this (s).")
    parser.add_argument("--streams-per-worker", type=int, help="paced-1000: streams per worker (2, --quick 1).")
    parser.add_argument("--ramp", type=float, default=1.0, help="paced-1000: seconds over which workers start.")
    parser.add_argument(
        "--fixed-timeout", type=float, default=180, help="paced-1000: cancel streams still running after this (s)."
    )
    parser.add_argument("--dashboards", type=int, default=0, help="ATC websocket clients connected during the run.")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="Where to write the JSON results.")
    parser.add_argument("--keep-logs", action="store_true", help="Keep the temporary dir (logs, database).")
    args = parser.parse_args(argv)
    args.duration = args.duration if args.duration is not None else (3.0 if args.quick else 8.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0)
    args.rss_requests = args.rss_requests or (5000 if args.quick else 50000)
    args.streams_per_worker = args.streams_per_worker or (1 if args.quick else 2)
    if args.duration <= 0 or args.warmup < 0 or args.rss_requests < 1 or args.streams_per_worker < 1:
        parser.error("--duration must be > 0, --warmup >= 0, --rss-requests and --streams-per-worker >= 1")
    args.cases, args.rss = select_cases(args.cases)
    return args


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def bench_processes(prefix, keep_logs):
    """A temporary directory and the `Processes` started in it. On the way out, however the run ends, every process
    is stopped; a failed run shows the end of each log and keeps the directory, as does `keep_logs`."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    procs = Processes(workdir)
    failed = False
    try:
        yield procs
    except KeyboardInterrupt:
        log("interrupted; stopping the processes the bench started")
        raise
    except BaseException:
        failed = True
        raise
    finally:
        procs.stop_all()
        if failed:
            for name, (_proc, path) in procs.started.items():
                log(f"last lines of {name}'s log:\n{tail(path)}")
        if keep_logs or failed:
            log(f"logs and database kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv=None):
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:  # 1000 streams need ~3000 sockets across the processes
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))
    start = run_started()
    try:
        with bench_processes("clood-bench-", args.keep_logs) as procs:
            sim_url, clood_url, daphne_pid, sim_pid = start_stack(procs, procs.workdir)
            stack = {"sim_url": sim_url, "clood_url": clood_url, "daphne_pid": daphne_pid, "sim_pid": sim_pid}
            rows, rss = run_async(run_all(stack, args.cases, args))
            for name in procs.started:
                procs.check_alive(name)
            add_deltas(rows)
            report = report_head(
                start,
                duration=args.duration,
                warmup=args.warmup,
                streams_per_worker=args.streams_per_worker,
                ramp=args.ramp,
                rss_requests=args.rss_requests,
                quick=args.quick,
            )
            report.update(rows=rows, rss_check=rss, notes=notes_for(rows, tail(procs.workdir / "daphne.log", 100000)))
            publish(render(report), report, args.json)
    except KeyboardInterrupt:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
