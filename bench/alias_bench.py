"""What an alias costs: the same requests direct to the host, through clood by model name, by alias, by an alias
whose first targets no host has, and by `auto` (the classifier), same run, same machine, one table.

    .venv/bin/python bench/alias_bench.py [--duration S] [--concurrency N]

One simulated host holding `bench:1b` (unpaced 64-token replies), one clood on SQLite; non-streamed chat
completions from a closed-loop load generator (bench/proxy_bench.py's). Writes bench/results/aliases.json.
"""

import argparse
import json
from pathlib import Path

from proxy_bench import (
    MODEL,
    ROOT,
    CpuMeter,
    bench_env,
    bench_processes,
    closed_loop,
    fmt,
    log,
    manage,
    publish,
    report_head,
    run_async,
    run_started,
    set_up_clood,
    start_clood,
    start_sim,
)

DEFAULT_JSON = ROOT / "bench" / "results" / "aliases.json"
PROMPT = "Say something."  # short and plain: `auto` classifies it as `fast`
ALIASES = [
    ("fast", [MODEL]),
    ("chain", ["missing-a:1b", "missing-b:1b", MODEL]),  # two targets skipped before the one served
    ("code", [MODEL]),
    ("deep", [MODEL]),
    ("writing", [MODEL]),
    ("auto", ["fast", "code", "deep", "writing"]),
]
CASES = [  # (label, target, model)
    ("direct to the host", "sim", MODEL),
    ("clood, model name", "clood", MODEL),
    ("clood, alias `fast`", "clood", "fast"),
    ("clood, alias `chain` (2 targets skipped)", "clood", "chain"),
    ("clood, `auto` (classified)", "clood", "auto"),
]


async def run_cases(urls, pids, args):
    rows = []
    for label, target, model in CASES:
        meter = CpuMeter({"clood": pids["clood"]})
        log(f"case: {label}")
        payload = json.dumps({"model": model, "messages": [{"role": "user", "content": PROMPT}]}).encode()
        url = urls[target] + "/v1/chat/completions"
        result = await closed_loop([url], False, args.concurrency, 1.0, args.duration, meter, payload=payload)
        used = meter.used["clood"]
        result["clood_cpu_ms_per_request"] = round(1000 * used / result["requests"], 3) if result["requests"] else None
        rows.append({"case": label, **result})
    return rows


def render(rows, concurrency):
    lines = [
        f"| case (non-stream, c{concurrency}) | req/s | p50 ms | p99 ms | clood CPU ms/req | errors |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for row in rows:
        cpu = row["clood_cpu_ms_per_request"] if not row["case"].startswith("direct") else None
        lines.append(f"| {row['case']} | {fmt(row['rps'])} | {fmt(row['p50_ms'], 2)} | {fmt(row['p99_ms'], 2)} | "
                     f"{fmt(cpu, 3)} | {row['errors']} |")  # fmt: skip
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=6.0, help="Measured seconds per case.")
    parser.add_argument("--concurrency", type=int, default=16, help="Requests in flight.")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="Where to write the figures.")
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args()
    start = run_started()
    with bench_processes("clood-alias-bench-", args.keep_logs) as procs:
        env = bench_env(procs.workdir / "var")
        sim_url, _sim = start_sim(procs, env)
        set_up_clood(env, [sim_url])
        for name, targets in ALIASES:
            manage(env, "aliases", "set", name, *targets)
        clood_url, daphne = start_clood(procs, env)
        rows = run_async(run_cases({"sim": sim_url, "clood": clood_url}, {"clood": daphne.pid}, args))
    report = {**report_head(start, duration=args.duration, concurrency=args.concurrency), "rows": rows}
    publish(render(rows, args.concurrency), report, args.json)


if __name__ == "__main__":
    main()
