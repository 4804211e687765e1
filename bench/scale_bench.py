"""How clood's throughput changes from one server process to two, same run, same machine, one table.

    .venv/bin/python bench/scale_bench.py [--duration S] [--concurrency N ...]

Starts a simulated host, then measures in turn: the host directly; one clood process on SQLite without Redis (the
default setup); one clood process on PostgreSQL and Redis; two clood processes on the same PostgreSQL database and
Redis, the load spread round-robin over their ports. The database is a fresh one on the machine's PostgreSQL,
dropped at the end; Redis is a redis-server of the bench's own on a free port. The load generator is this process
(proxy_bench's closed loop). Prints a markdown table, also written to bench/results/scale.md, and the figures to
bench/results/scale.json. See bench/README.md ("Scaling out").
"""

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import sys
from pathlib import Path

import aiohttp
import psycopg
import redis
from proxy_bench import (
    ROOT,
    UNPACED,
    CpuMeter,
    _terminate,
    bench_env,
    bench_processes,
    closed_loop,
    cpu_seconds,
    fmt,
    free_port,
    log,
    notes_for,
    publish,
    report_head,
    run_async,
    run_started,
    set_up_clood,
    sim_control,
    start_clood,
    start_sim,
    tail,
    wait_serving,
    wait_until,
)

DEFAULT_JSON = ROOT / "bench" / "results" / "scale.json"
POSTGRES = "postgres://postgres@127.0.0.1:5432/postgres"
SHARED = "PostgreSQL + Redis"


class PostgresBackends:
    """CPU seconds used so far by the PostgreSQL backends serving one database, found by their process title
    (`postgres: USER DATABASE ADDRESS …`). A backend that starts and ends between two readings is missed, and so is
    the work of PostgreSQL's own background processes (WAL writer, checkpointer): that lands in "other"."""

    def __init__(self, database):
        self.marker = f" {database} "
        self.seen = {}  # pid -> CPU seconds at its last reading

    def __call__(self):
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, IndexError):
                title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if title.startswith("postgres: ") and self.marker in title:
                    self.seen[int(entry.name)] = cpu_seconds(int(entry.name))
        return sum(self.seen.values())


@contextlib.contextmanager
def fresh_database(server_url):
    """A new, empty database on `server_url`'s PostgreSQL: yields (name, url, server version); dropped afterwards,
    connections and all."""
    name = f"clood_scale_{secrets.token_hex(4)}"
    with psycopg.connect(server_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
        version = connection.execute("SHOW server_version").fetchone()[0]
    log(f"created PostgreSQL database {name}")
    try:
        yield name, server_url.rsplit("/", 1)[0] + "/" + name, version
    finally:
        with psycopg.connect(server_url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        log(f"dropped PostgreSQL database {name}")


def start_redis(procs, env):
    """A redis-server of the bench's own on a free port, without persistence; returns its url and process."""
    port = free_port()
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    server = procs.start("redis", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                   "no"], env)  # fmt: skip

    def answers():
        with redis.Redis(port=port, socket_timeout=0.5) as connection:
            return connection.ping()

    wait_until("redis-server", answers, procs, ["redis"], timeout=10)
    return f"redis://127.0.0.1:{port}/0", server


def redis_facts(redis_url):
    with redis.Redis.from_url(redis_url, socket_timeout=2) as connection:
        return connection.info("server")["redis_version"]


def forget_keys(redis_url, prefix):
    """Delete the keys left under the run's own prefix (in a Redis the bench did not start)."""
    with redis.Redis.from_url(redis_url, socket_timeout=2) as connection:
        for name in connection.scan_iter(match=prefix + "*", count=1000):
            connection.delete(name)


# --- the measurements ----------------------------------------------------------------------------------------------


async def measure(setup, urls, meter_pids, sim_url, args):
    """At each concurrency, a non-stream then a stream window through `urls` round-robin; one row per concurrency."""
    rows = []
    processes = sum(name.startswith("clood") for name in meter_pids)
    endpoints = [f"{url}/v1/chat/completions" for url in urls]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as control:
        for concurrency in args.concurrency:
            row = {"setup": setup, "processes": processes, "concurrency": concurrency}
            for kind, stream in (("nonstream", False), ("stream", True)):
                await sim_control(control, sim_url, UNPACED)
                waited = [await wait_serving(control, url) for url in urls]
                meter = CpuMeter(meter_pids)
                window = await closed_loop(endpoints, stream, concurrency, args.warmup, args.duration, meter)
                clood_s = sum(used for name, used in meter.used.items() if name.startswith("clood"))
                window.update(
                    cpu_percent=meter.percent(),
                    cpu_s={name: round(used, 3) for name, used in meter.used.items()},
                    clood_cpu_ms_per_request=round(1000 * clood_s / window["requests"], 3)
                    if processes and window["requests"]
                    else None,
                    waited_before_s=max(waited),
                )
                row[kind] = window
                log(
                    f"  {setup:<30} {kind:<9} conc {concurrency:<3} {window['rps'] or 0:>7.1f}/s  "
                    f"p50 {window['p50_ms']} ms  p99 {window['p99_ms']} ms  ttft p50 {window['ttft_p50_ms']} ms  "
                    f"errors {window['errors']}  cpu% {window['cpu_percent']}"
                )
                await asyncio.sleep(0.5)  # keep-alive sockets and the request log settle before the next window
            rows.append(row)
    return rows


async def cluster_view(urls):
    """What each process says of itself in /status: its own totals, and the cluster part (Redis, who monitors)."""
    views = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        for url in urls:
            async with session.get(f"{url}/status") as response:
                body = await response.json()
            views.append({"url": url, "totals": body.get("totals"), "cluster": body.get("cluster")})
    return views


def run_setups(procs, args):
    """Measure the four setups in turn; returns (rows, /status of the two processes, facts, clood's log lines)."""
    workdir = procs.workdir
    sim_url, sim = start_sim(procs, bench_env(workdir / "var-sim"))
    base = {"gen": os.getpid(), "sim": sim.pid}
    log("direct to the simulated host")
    rows = run_async(measure("direct", [sim_url], base, sim_url, args))

    env = bench_env(workdir / "var-sqlite")
    set_up_clood(env, [sim_url])
    url, clood = start_clood(procs, env, "clood-sqlite")
    rows += run_async(measure("1 process, SQLite", [url], {**base, "clood": clood.pid}, sim_url, args))
    procs.stop("clood-sqlite")  # idle, but it would still take a little CPU from the next setups

    prefix = f"bench-scale-{secrets.token_hex(3)}:"
    env = bench_env(workdir / "var-shared")
    with fresh_database(args.postgres) as (database, database_url, pg_version):
        if args.redis_url:
            redis_url, pids = args.redis_url, {**base, "postgres": PostgresBackends(database)}
        else:
            redis_url, server = start_redis(procs, env)
            pids = {**base, "redis": server.pid, "postgres": PostgresBackends(database)}
        facts = {"postgres": pg_version, "redis": redis_facts(redis_url), "redis_prefix": prefix,
                 "redis_own_server": not args.redis_url}  # fmt: skip
        # What docs/deployment.md asks of every process: one database, one Redis and prefix, one SECRET_KEY.
        env.update(DATABASE_URL=database_url, REDIS_URL=redis_url, CLOOD_REDIS_PREFIX=prefix,
                   SECRET_KEY=secrets.token_urlsafe(50))  # fmt: skip
        set_up_clood(env, [sim_url])
        url_a, a = start_clood(procs, env, "clood-a")
        rows += run_async(measure(f"1 process, {SHARED}", [url_a], {**pids, "clood-a": a.pid}, sim_url, args))
        url_b, b = start_clood(procs, env, "clood-b")
        both = {**pids, "clood-a": a.pid, "clood-b": b.pid}
        rows += run_async(measure(f"2 processes, {SHARED}", [url_a, url_b], both, sim_url, args))
        views = run_async(cluster_view([url_a, url_b]))
        for name in ("clood-a", "clood-b"):
            procs.check_alive(name)
            procs.stop(name)  # before their database is dropped
        if args.redis_url:
            forget_keys(redis_url, prefix)
    logs = "\n".join(tail(path, 100000) for name, (_proc, path) in procs.started.items() if name.startswith("clood"))
    return rows, views, facts, logs


# --- the report ----------------------------------------------------------------------------------------------------


def add_scale(rows):
    """Two processes' req/s as a multiple of one process's, on the same PostgreSQL and Redis, same concurrency."""
    one = {r["concurrency"]: r for r in rows if r["setup"] == f"1 process, {SHARED}"}
    for row in rows:
        base = one.get(row["concurrency"])
        if row["processes"] == 2 and base:
            for kind in ("nonstream", "stream"):
                if row[kind]["rps"] and base[kind]["rps"]:
                    row[kind]["rps_vs_1_process"] = round(row[kind]["rps"] / base[kind]["rps"], 2)


def cpu_cell(cpu):
    clood = sum(value for name, value in cpu.items() if name.startswith("clood"))
    names = ("gen", "sim", "clood", "redis", "postgres", "other")
    values = {**cpu, "clood": clood if any(name.startswith("clood") for name in cpu) else None}
    return " / ".join("–" if values.get(name) is None else f"{values[name]:.0f}" for name in names)


def render(report):
    m, s, f = report["machine"], report["settings"], report["facts"]
    lines = [
        f"clood scale bench, {report['started_at']} ({report['elapsed_s']:.0f} s)",
        "",
        f"machine: {m['nproc']} CPU cores, {m['cpu'] or 'unknown CPU'}, {m['memory']}, Python {m['python']}, "
        f"load average at start {' '.join(str(x) for x in m['load_average_at_start'])}; load generator: this "
        f"process, aiohttp {m['aiohttp']} on {m['event_loop']}",
        f"settings: {s['duration']} s per window after {s['warmup']} s warm-up; one simulated host (64-token replies, "
        f"no pacing, max_concurrency {s['host_max_concurrency']}); PostgreSQL {f['postgres']}, Redis {f['redis']} "
        f"({'own redis-server' if f['redis_own_server'] else 'given REDIS_URL'}, prefix {f['redis_prefix']}).",
        "Every process below shares these cores: the load generator, the simulated host, clood, Redis, PostgreSQL.",
        "",
        "| setup | conc | req/s | × 1 process | p50 ms | p99 ms | stream req/s | TTFT p50 ms | TTFT p99 ms | errors "
        "| clood CPU ms/req | CPU % gen / sim / clood / redis / pg / other |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in report["rows"]:
        plain, stream = r["nonstream"], r["stream"]
        scale = plain.get("rps_vs_1_process")
        cells = [
            r["setup"],
            str(r["concurrency"]),
            fmt(plain["rps"]),
            f"{scale:.2f}" if scale is not None else "",
            fmt(plain["p50_ms"]),
            fmt(plain["p99_ms"]),
            fmt(stream["rps"]),
            fmt(stream["ttft_p50_ms"]),
            fmt(stream["ttft_p99_ms"]),
            str(plain["errors"] + stream["errors"]),
            fmt(plain["clood_cpu_ms_per_request"], 2),
            cpu_cell(plain["cpu_percent"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "req/s, p50, p99, clood CPU and CPU %: the non-stream window; stream req/s and TTFT: the stream window. "
        "CPU %: share of one core over the window (the ceiling is "
        f"{100 * m['nproc']} %); pg: the backends of the bench's database; other: everything else on the machine.",
    ]
    failing = [(r, kind) for r in report["rows"] for kind in ("nonstream", "stream") if r[kind]["error_kinds"]]
    if failing:
        lines += ["", "errors by kind (with the first answer or exception of each kind):"]
        for r, kind in failing:
            counts = ", ".join(f"{name} × {n}" for name, n in r[kind]["error_kinds"].items())
            lines.append(f"- {r['setup']} {kind} {r['concurrency']}: {counts}")
            for name, detail in r[kind]["error_samples"].items():
                if detail:
                    lines.append(f"  - {name}: `{' '.join(detail.split())[:200]}`")
    for view in report["cluster"]:
        cluster = view["cluster"] or {}
        lines.append(
            f"process {view['url']}: served {view['totals'].get('requests')} requests in all, Redis "
            f"{(cluster.get('redis') or {}).get('ok')}, monitoring here {cluster.get('monitoring_here')}"
        )
    if report.get("notes"):
        lines += [""] + [f"note: {n}" for n in report["notes"]]
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="clood scale bench: direct, 1 process, 2 processes; one table.")
    parser.add_argument("--duration", type=float, default=5.0, help="Measured seconds per window (default 5).")
    parser.add_argument("--warmup", type=float, default=1.0, help="Warm-up seconds before each window (default 1).")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64], metavar="N",
                        help="Concurrent workers; one row per setup and value (default 16 64).")  # fmt: skip
    parser.add_argument("--postgres", default=POSTGRES, help=f"A PostgreSQL server to create the database on "
                        f"(default {POSTGRES}).")  # fmt: skip
    parser.add_argument("--redis-url", help="Use this Redis (under a unique key prefix) instead of starting one.")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="Where to write the JSON results.")
    parser.add_argument("--keep-logs", action="store_true", help="Keep the temporary dir (logs, SQLite database).")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.warmup < 0 or min(args.concurrency) < 1:
        parser.error("--duration must be > 0, --warmup >= 0, --concurrency >= 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    start = run_started()
    try:
        with bench_processes("clood-scale-", args.keep_logs) as procs:
            rows, views, facts, logs = run_setups(procs, args)
            add_scale(rows)
            windows = [{"case": f"{kind} {r['concurrency']}", "target": r["setup"], "cpu_percent": r[kind]
                        ["cpu_percent"]} for r in rows for kind in ("nonstream", "stream")]  # fmt: skip
            report = report_head(start, duration=args.duration, warmup=args.warmup, concurrency=args.concurrency)
            report.update(facts=facts, rows=rows, cluster=views, notes=notes_for(windows, logs))
            publish(render(report), report, args.json, markdown=True)
    except KeyboardInterrupt:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
