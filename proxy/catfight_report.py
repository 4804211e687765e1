"""Reading catfights: their JSON shape (docs/catfight-api.md), the Markdown export and the leaderboard."""

import statistics
import time

from hosts.names import normalize_model_name
from proxy.catfight import DEFAULT_RUBRIC, live
from proxy.models import Catfight, CatfightEntry


def entry_as_dict(entry):
    running = live.get(entry.pk)
    return {
        "id": entry.pk, "model": entry.model, "host": entry.host, "status": entry.status,
        "output": running.text if running is not None else entry.output, "error": entry.error, "cold": entry.cold,
        "started_at": _iso(entry.started_at), "first_token_at": _iso(entry.first_token_at),
        "finished_at": _iso(entry.finished_at), "load_ms": _round(entry.load_ms),
        "ttft_ms": _round(running.ttft_ms if running is not None else entry.ttft_ms),
        "prompt_tokens": entry.prompt_tokens, "prompt_tokens_per_s": _round(entry.prompt_tokens_per_s),
        "completion_tokens": running.total_tokens if running is not None else entry.completion_tokens,
        "tokens_per_s": _round(running.tokens_per_s(time.monotonic()) if running is not None else entry.tokens_per_s),
        "duration_ms": _round(entry.duration_ms),
        "output_chars": len(running.text) if running is not None else entry.output_chars,
        "judge_score": entry.judge_score, "judge_explanation": entry.judge_explanation, "rank": entry.rank,
    }  # fmt: skip


def catfight_as_dict(catfight, entries):
    ordered = sorted(entries, key=lambda e: (e.rank is None, e.rank or 0, e.position)) \
        if catfight.status == "completed" else sorted(entries, key=lambda e: e.position)  # fmt: skip
    judge = {"model": catfight.judge_model, "host": catfight.judge_host or None, "rubric": catfight.rubric or
             DEFAULT_RUBRIC} if catfight.judge_model else None  # fmt: skip
    return {
        "id": catfight.pk, "status": catfight.status, "prompt": catfight.prompt, "system": catfight.system,
        "params": catfight.params, "rank_by": catfight.rank_by, "parallel_same_host": catfight.parallel_same_host,
        "created_at": _iso(catfight.created_at), "started_at": _iso(catfight.started_at),
        "finished_at": _iso(catfight.finished_at), "judge": judge, "winner": catfight.winner_id,
        "summary": catfight.summary, "entries": [entry_as_dict(e) for e in ordered],
    }  # fmt: skip


def leaderboard():
    rows = {}
    winners = set(Catfight.objects.exclude(winner=None).values_list("winner_id", flat=True))
    for entry in CatfightEntry.objects.all().only("id", "model", "host", "status", "tokens_per_s", "ttft_ms"):
        row = rows.setdefault((normalize_model_name(entry.model), entry.host),
                              {"model": entry.model, "host": entry.host, "runs": 0, "completed": 0, "wins": 0,
                               "_tps": [], "_ttft": []})  # fmt: skip
        row["runs"] += 1
        row["wins"] += entry.pk in winners
        if entry.status == "completed":
            row["completed"] += 1
            if entry.tokens_per_s:
                row["_tps"].append(entry.tokens_per_s)
            if entry.ttft_ms is not None:
                row["_ttft"].append(entry.ttft_ms)
    result = []
    for row in rows.values():
        tps, ttft = row.pop("_tps"), row.pop("_ttft")
        row["best_tokens_per_s"] = _round(max(tps)) if tps else None
        row["median_tokens_per_s"] = _round(statistics.median(tps)) if tps else None
        row["median_ttft_ms"] = _round(statistics.median(ttft)) if ttft else None
        result.append(row)
    result.sort(key=lambda r: (-r["wins"], -(r["best_tokens_per_s"] or 0), r["model"], r["host"]))
    return result


def as_markdown(data):
    lines = [f"# Catfight {data['id']}", "", f"**Prompt:** {data['prompt']}", ""]
    if data["system"]:
        lines += [f"**System:** {data['system']}", ""]
    lines += [f"**Ranked by:** {data['rank_by']}  ", f"**Summary:** {data['summary'] or '—'}", "",
              "| rank | model | host | status | duration s | TTFT ms | tok/s | load ms | cold | judge |",
              "|--:|---|---|---|--:|--:|--:|--:|---|--:|"]  # fmt: skip
    for e in data["entries"]:
        duration = f"{e['duration_ms'] / 1000:.2f}" if e["duration_ms"] is not None else "—"
        lines.append(
            f"| {e['rank'] or '—'} | {_md(e['model'])} | {_md(e['host'])} | {e['status']} | {duration} | "
            f"{_fmt(e['ttft_ms'])} | {_fmt(e['tokens_per_s'])} | {_fmt(e['load_ms'])} | "
            f"{'cold' if e['cold'] else 'warm'} | {_fmt(e['judge_score'])} |"
        )
    for e in data["entries"]:
        lines += ["", f"## {_md(e['model'])} on {_md(e['host'])}", ""]
        if e["error"]:
            lines += [f"**Error:** {e['error']}", ""]
        if e["judge_explanation"]:
            lines += [f"**Judge:** {e['judge_explanation']}", ""]
        lines += ["```", e["output"].replace("```", "ʼʼʼ"), "```"]
    return "\n".join(lines) + "\n"


def _md(text):
    return str(text).replace("|", "\\|")


def _fmt(value):
    return "—" if value is None else f"{value:g}" if isinstance(value, int | float) else str(value)


def _iso(value):
    return value.isoformat() if value else None


def _round(value):
    return round(value, 1) if value is not None else None
