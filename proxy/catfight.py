"""Catfights: one prompt against several contestants (model × host), measured, ranked and optionally judged.

Contestants go through the proxy's own admission and relay (no second HTTP path to hosts). Contestants on
different hosts run in parallel; on one host they run one after another (two models at once on one GPU distort
each other) unless `parallel_same_host` is set. While a catfight runs, each entry's text so far is read from its
live telemetry (`live`), so the page can poll it.
"""

import asyncio
import json
import logging
import re
import time
from datetime import UTC, datetime, timedelta

from asgiref.sync import sync_to_async
from django.conf import settings

from atc.events import apublish, publish
from hosts import snapshot
from hosts.names import model_name_problem, normalize_model_name
from proxy.errors import ApiError
from proxy.models import Catfight, CatfightEntry, ChallengeSet
from proxy.relay import UpstreamError, relay
from proxy.routing import choose_hosts
from proxy.state import admission, stats
from proxy.telemetry import Telemetry

log = logging.getLogger(__name__)

MAX_CONTESTANTS = 12
DEFAULT_RUBRIC = (
    "Score the answer from 0 to 10 for correctness, completeness and clarity. "
    "An empty, off-topic or broken answer scores 0."
)
JUDGE_INSTRUCTIONS = 'Reply with JSON only: {"score": <number 0-10>, "explanation": "<one or two sentences>"}.'

live = {}  # entry id -> Telemetry of a contestant being generated
_tasks = set()


# --- starting ------------------------------------------------------------------------------------------------------


def parse_spec(payload):
    """Check a POST /catfights body against the garden. Returns a dict of clean fields; raises ApiError(400)."""
    if not isinstance(payload, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
    prompts = _prompts(payload)
    contestants = payload.get("contestants")
    if not isinstance(contestants, list) or not 2 <= len(contestants) <= MAX_CONTESTANTS:
        raise ApiError(400, f"contestants must be a list of 2 to {MAX_CONTESTANTS} {{model, host}} objects.",
                       param="contestants", code="invalid_value")  # fmt: skip
    garden = snapshot.current()
    clean, seen = [], set()
    for contestant in contestants:
        model, host = _contestant(contestant, garden)
        same = (normalize_model_name(model), host)  # `LLAMA3.2:1B` is `llama3.2:1b`
        if same in seen:
            raise ApiError(400, f"{model} on {host} is listed twice.", param="contestants", code="duplicate")
        seen.add(same)
        clean.append((model, host))
    params = {}
    for name, kind in (("temperature", float), ("seed", int), ("max_tokens", int)):
        value = payload.get(name)
        if value is None:
            continue
        wrong_kind = kind is int and not isinstance(value, int)
        if isinstance(value, bool) or not isinstance(value, int | float) or wrong_kind:
            raise ApiError(400, f"{name} must be a number.", param=name, code="invalid_type")
        if name == "max_tokens" and value < 1:
            raise ApiError(400, "max_tokens must be a positive integer.", param=name, code="invalid_value")
        params[name] = value
    rank_by = payload.get("rank_by") or Catfight.RankBy.FASTEST
    if rank_by not in Catfight.RankBy.values:
        raise ApiError(400, f"rank_by must be one of {', '.join(Catfight.RankBy.values)}.", param="rank_by",
                       code="invalid_value")  # fmt: skip
    judge = payload.get("judge") or None
    if judge is not None:
        valid = isinstance(judge, dict) and isinstance(judge.get("model"), str)
        if not valid or model_name_problem(judge["model"]):
            raise ApiError(400, "judge must be {model, host?, rubric?} with a valid model name.", param="judge",
                           code="invalid_value")  # fmt: skip
    if rank_by == "judge" and judge is None:
        raise ApiError(400, "rank_by judge needs a judge.", param="judge", code="missing_field")
    system = payload.get("system") or ""
    if not isinstance(system, str):
        raise ApiError(400, "system must be a string.", param="system", code="invalid_type")
    return {
        "prompts": prompts,
        "contestants": clean,
        "params": params,
        "rank_by": rank_by,
        "system": system,
        "parallel_same_host": bool(payload.get("parallel_same_host")),
        "judge_model": judge["model"] if judge else "",
        "judge_host": str(judge.get("host") or "") if judge else "",
        "rubric": str(judge.get("rubric") or "") if judge else "",
    }


def _prompts(payload):
    if payload.get("challenge_set") is not None:
        pk = payload["challenge_set"]
        valid = isinstance(pk, int) and not isinstance(pk, bool) and 0 < pk < 2**63
        challenge = ChallengeSet.objects.filter(pk=pk).first() if valid else None
        if challenge is None or not challenge.prompts:
            raise ApiError(400, "No challenge set with that id (or it has no prompts).", param="challenge_set",
                           code="not_found")  # fmt: skip
        judge = payload.get("judge")
        if isinstance(judge, dict) and not judge.get("rubric") and challenge.rubric:  # parse_spec checks the judge
            judge["rubric"] = challenge.rubric
        return [str(p) for p in challenge.prompts]
    prompt = payload.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ApiError(400, "You must provide a prompt (or a challenge_set).", param="prompt", code="missing_field")
    return [prompt]


def _contestant(contestant, garden):
    if not isinstance(contestant, dict) or not isinstance(contestant.get("model"), str) \
            or not isinstance(contestant.get("host"), str):  # fmt: skip
        raise ApiError(400, "Each contestant is {model, host}.", param="contestants", code="invalid_type")
    model, host_name = contestant["model"], contestant["host"]
    problem = model_name_problem(model)
    if problem:
        raise ApiError(400, f"Invalid model name: {problem}.", param="contestants", code="invalid_model")
    host = garden.host(host_name)
    if host is None:
        raise ApiError(400, f"There is no host named {host_name!r}.", param="contestants", code="unknown_host")
    if normalize_model_name(model) not in host.models:
        raise ApiError(400, f"{host_name} does not have {model}.", param="contestants", code="model_not_on_host")
    return model, host_name


def create(spec):
    """Create the catfights (one per prompt) and their entries. Sync: called from a view."""
    catfights = []
    for prompt in spec["prompts"]:
        catfight = Catfight.objects.create(
            prompt=prompt, system=spec["system"], params=spec["params"], rank_by=spec["rank_by"],
            parallel_same_host=spec["parallel_same_host"], judge_model=spec["judge_model"],
            judge_host=spec["judge_host"], rubric=spec["rubric"],
        )  # fmt: skip
        for position, (model, host) in enumerate(spec["contestants"]):
            CatfightEntry.objects.create(catfight=catfight, position=position, model=model, host=host)
        catfights.append(catfight)
    return catfights


def start(catfight_ids):
    """Run the catfights one after another in the background of this server process."""
    task = asyncio.get_running_loop().create_task(_run_all(catfight_ids))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task


async def _run_all(catfight_ids):
    for catfight_id in catfight_ids:
        try:
            await run(catfight_id)
        except Exception:
            log.exception("catfight %s failed", catfight_id)
            failed = "clood hit an internal error running this catfight; it has been logged."
            await sync_to_async(Catfight.objects.filter(pk=catfight_id).update)(
                status="completed", summary=failed, finished_at=datetime.now(UTC)
            )
            await apublish("catfight_completed", id=catfight_id, prompt="", rank_by="", winner=None, summary=failed,
                           ranking=[])  # fmt: skip


# --- running -------------------------------------------------------------------------------------------------------


async def run(catfight_id):
    catfight = await Catfight.objects.aget(pk=catfight_id)
    entries = [e async for e in catfight.entries.order_by("position")]
    await snapshot.ensure_fresh()
    catfight.started_at = datetime.now(UTC)
    await catfight.asave(update_fields=["started_at"])
    await apublish("catfight_started", id=catfight.pk, prompt=catfight.prompt[:200], rank_by=catfight.rank_by,
                   contestants=[{"entry": e.pk, "model": e.model, "host": e.host} for e in entries])  # fmt: skip
    groups = {}
    for entry in entries:
        key = entry.pk if catfight.parallel_same_host else entry.host
        groups.setdefault(key, []).append(entry)
    await asyncio.gather(*(_run_in_turn(catfight, group) for group in groups.values()))
    if catfight.judge_model:
        await _judge(catfight, entries)
    ranked = rank(entries, catfight.rank_by)
    for entry in entries:
        await entry.asave()
    winner = ranked[0] if ranked and ranked[0].rank == 1 else None
    catfight.winner = winner
    catfight.status = "completed"
    catfight.finished_at = datetime.now(UTC)
    catfight.summary = summarize(catfight, ranked)
    await catfight.asave()
    await apublish(
        "catfight_completed", id=catfight.pk, prompt=catfight.prompt[:200], rank_by=catfight.rank_by,
        winner={"entry": winner.pk, "model": winner.model, "host": winner.host} if winner else None,
        summary=catfight.summary, ranking=[_ranking_row(e) for e in ranked],
    )  # fmt: skip


async def _run_in_turn(catfight, group):
    for entry in group:
        await run_entry(catfight, entry)


async def run_entry(catfight, entry):
    """Generate one contestant's answer through admission and the relay, measuring as it goes."""
    garden = snapshot.current()
    host = garden.host(entry.host)
    model = host.models.get(normalize_model_name(entry.model)) if host else None
    host_stats = stats.hosts.get(entry.host)
    entry.cold = bool(model) and not (model.loaded or (host_stats and host_stats.recently_loaded(model.name)))
    entry.status = "running"
    entry.started_at = datetime.now(UTC)
    await entry.asave(update_fields=["status", "started_at", "cold"])
    await apublish("catfight_entry", **_entry_event(catfight, entry, "started"))
    if host is None or model is None or not host.is_usable():
        state = host.status_label if host else "removed"
        return await _fail(catfight, entry, f"{entry.host} is not usable right now ({state})")
    ollama = host.backend == "ollama"
    path, body = _request(catfight, model.remote_name, ollama)
    started = time.monotonic()
    telemetry = Telemetry("ndjson" if ollama else "sse", started, keep_text=True)
    sink = _EntrySink(catfight, entry, telemetry)
    live[entry.pk] = telemetry
    admission.set_limit(host.name, host.max_concurrency)
    try:
        await admission.acquire([host.name], max_queue=settings.CLOOD_QUEUE_MAX, timeout=settings.CLOOD_QUEUE_TIMEOUT)
    except ApiError as error:
        live.pop(entry.pk, None)
        return await _fail(catfight, entry, error.message)
    try:
        first_byte = settings.CLOOD_COLD_START_TIMEOUT if entry.cold else settings.CLOOD_FIRST_BYTE_TIMEOUT
        result = await relay(host, "POST", path, body, sink, telemetry, first_byte_timeout=first_byte,
                             idle_timeout=settings.CLOOD_IDLE_TIMEOUT)  # fmt: skip
    except UpstreamError as error:
        return await _fail(catfight, entry, error.message)
    finally:
        admission.release(host.name)
        live.pop(entry.pk, None)
    finished = time.monotonic()
    _measure(entry, telemetry, started, finished)
    error = result.error or telemetry.error or (sink.error_body if result.status >= 400 else "")
    if error or result.status >= 400:
        return await _fail(catfight, entry, error or f"{host.name} answered HTTP {result.status}")
    if entry.cold:
        stats.host(host.name).warm[model.name] = finished
    entry.status = "completed"
    await entry.asave()
    await apublish("catfight_entry", **_entry_event(catfight, entry, "completed"))


def _request(catfight, remote_name, ollama):
    messages = ([{"role": "system", "content": catfight.system}] if catfight.system else []) + [
        {"role": "user", "content": catfight.prompt}
    ]
    params = catfight.params or {}
    if ollama:
        options = {k: v for k, v in (("temperature", params.get("temperature")), ("seed", params.get("seed")),
                                     ("num_predict", params.get("max_tokens"))) if v is not None}  # fmt: skip
        body = {"model": remote_name, "messages": messages, "stream": True, "options": options}
        return "/api/chat", json.dumps(body).encode()
    body = {"model": remote_name, "messages": messages, "stream": True, "stream_options": {"include_usage": True},
            **{k: params[k] for k in ("temperature", "seed", "max_tokens") if k in params}}  # fmt: skip
    return "/v1/chat/completions", json.dumps(body).encode()


def _measure(entry, telemetry, started, finished):
    timings = telemetry.timings
    entry.output = telemetry.text
    entry.output_chars = len(entry.output)
    entry.ttft_ms = telemetry.ttft_ms
    entry.duration_ms = (finished - started) * 1000
    entry.completion_tokens = telemetry.total_tokens
    entry.prompt_tokens = telemetry.prompt_tokens
    entry.tokens_per_s = telemetry.tokens_per_s(finished)
    entry.load_ms = timings["load_duration"] / 1e6 if "load_duration" in timings else None
    if timings.get("prompt_eval_count") and timings.get("prompt_eval_duration"):
        entry.prompt_tokens_per_s = timings["prompt_eval_count"] / (timings["prompt_eval_duration"] / 1e9)
    elif entry.prompt_tokens and entry.ttft_ms:  # measured: the prompt is read before the first token
        entry.prompt_tokens_per_s = entry.prompt_tokens / (entry.ttft_ms / 1000)
    if telemetry.first_token_at is not None:
        entry.first_token_at = entry.started_at + timedelta(seconds=telemetry.first_token_at - started)
    entry.finished_at = datetime.now(UTC)


async def _fail(catfight, entry, message):
    entry.status = "failed"
    entry.error = message[:2000]
    entry.finished_at = datetime.now(UTC)
    await entry.asave()
    await apublish("catfight_entry", **_entry_event(catfight, entry, "failed"))


class _EntrySink:
    """Where the relay writes a contestant's answer: nowhere but the telemetry (and an error body, if any)."""

    def __init__(self, catfight, entry, telemetry):
        self.catfight, self.entry, self.telemetry = catfight, entry, telemetry
        self.status = None
        self.error_body = ""
        self.first_token_sent = False

    async def start(self, status, headers):
        self.status = status

    async def body(self, chunk):
        if self.status and self.status >= 400 and len(self.error_body) < 500:
            self.error_body += chunk.decode("utf-8", "replace")[:500]
        if not self.first_token_sent and self.telemetry.first_token_at is not None:
            self.first_token_sent = True
            publish("catfight_entry", **_entry_event(self.catfight, self.entry, "first_token",
                                                     ttft_ms=self.telemetry.ttft_ms))  # fmt: skip


def _entry_event(catfight, entry, phase, **extra):
    return {
        "id": catfight.pk, "entry": entry.pk, "model": entry.model, "host": entry.host, "phase": phase,
        "ttft_ms": _round(entry.ttft_ms), "tokens_per_s": _round(entry.tokens_per_s),
        "duration_ms": _round(entry.duration_ms), "error": entry.error, **extra,
    }  # fmt: skip


# --- judging and ranking -------------------------------------------------------------------------------------------


async def _judge(catfight, entries):
    """Ask the judge model to score each answer. A judge that answers garbage leaves the score empty, with why."""
    garden = snapshot.current()
    judge_name = normalize_model_name(catfight.judge_model)
    if catfight.judge_host:
        host = garden.host(catfight.judge_host)
        hosts = [host] if host and judge_name in host.models and host.is_usable() else []
    else:
        hosts = [c.host for c in choose_hosts(judge_name, garden, stats, admission.in_flight).candidates]
    rubric = catfight.rubric or DEFAULT_RUBRIC
    for entry in entries:
        if entry.status != "completed" or not entry.output.strip():
            continue
        if not hosts:
            entry.judge_explanation = f"no usable host has the judge model {catfight.judge_model}"
            continue
        host = hosts[0]
        body = {
            "model": host.models[judge_name].remote_name, "stream": False, "temperature": 0,
            "messages": [
                {"role": "system", "content": f"You are a strict judge. {rubric}\n{JUDGE_INSTRUCTIONS}"},
                {"role": "user", "content": f"Question:\n{catfight.prompt}\n\nAnswer:\n{entry.output}"},
            ],
        }  # fmt: skip
        telemetry = Telemetry("json", time.monotonic(), keep_text=True)
        sink = _EntrySink(catfight, entry, telemetry)
        sink.first_token_sent = True
        try:
            await relay(host, "POST", "/v1/chat/completions", json.dumps(body).encode(), sink, telemetry,
                        first_byte_timeout=settings.CLOOD_COLD_START_TIMEOUT,
                        idle_timeout=settings.CLOOD_IDLE_TIMEOUT)  # fmt: skip
        except UpstreamError as error:
            entry.judge_explanation = f"the judge failed: {error.message}"
            continue
        entry.judge_score, entry.judge_explanation = read_verdict(telemetry.text)


def read_verdict(text):
    """(score 0–10 or None, explanation) from a judge's answer, however it wrapped its JSON."""
    text = text or ""
    for candidate in re.findall(r"\{.*?\}", text, flags=re.DOTALL) + re.findall(r"\{.*\}", text, flags=re.DOTALL):
        try:
            verdict = json.loads(candidate)
        except ValueError:
            continue
        score = verdict.get("score") if isinstance(verdict, dict) else None
        if isinstance(score, int | float) and not isinstance(score, bool) and 0 <= score <= 10:
            return float(score), str(verdict.get("explanation") or "")[:1000]
    match = re.search(r"score\W{0,3}(\d+(?:\.\d+)?)\s*(?:/\s*10)?", text, flags=re.IGNORECASE)
    if match and 0 <= float(match.group(1)) <= 10:
        return float(match.group(1)), text.strip()[:1000]
    return None, f"the judge's answer could not be read as a score: {text.strip()[:200]!r}"


def rank(entries, rank_by):
    """Rank entries in place and return them in ranked order. Failed or empty answers get no rank."""
    eligible = [e for e in entries if e.status == "completed" and e.output.strip()]
    others = [e for e in entries if e not in eligible]
    inf = float("inf")
    if rank_by == "tokens_per_s":
        eligible.sort(key=lambda e: (-(e.tokens_per_s or 0), e.duration_ms or inf))
    elif rank_by == "judge":
        eligible.sort(key=lambda e: (e.judge_score is None, -(e.judge_score or 0), e.duration_ms or inf))
    else:
        eligible.sort(key=lambda e: (e.duration_ms or inf, e.ttft_ms or inf))
    for position, entry in enumerate(eligible, 1):
        entry.rank = position
    for entry in others:
        entry.rank = None
    return eligible + others


def summarize(catfight, ranked):
    if not ranked or ranked[0].rank is None:
        return "No winner: every contestant failed or gave an empty answer."
    best = ranked[0]
    criterion = {"fastest": "fastest", "tokens_per_s": "highest tokens/s", "judge": "best judge score"}
    criterion = criterion[catfight.rank_by]
    if catfight.rank_by == "judge" and best.judge_score is None:
        criterion = "fastest: no judge score could be read"
    score = f", score {best.judge_score:g}" if best.judge_score is not None else ""
    lines = [f"{best.model} on {best.host} wins ({criterion}): {best.duration_ms / 1000:.2f} s, "
             f"{(best.tokens_per_s or 0):.1f} tok/s{score}."]  # fmt: skip
    failed = [e for e in ranked if e.rank is None]
    if failed:
        lines.append("No rank (failed or empty): " + ", ".join(f"{e.model} on {e.host}" for e in failed) + ".")
    return " ".join(lines)


def _ranking_row(entry):
    return {
        "entry": entry.pk, "model": entry.model, "host": entry.host, "rank": entry.rank, "status": entry.status,
        "duration_ms": _round(entry.duration_ms), "ttft_ms": _round(entry.ttft_ms),
        "tokens_per_s": _round(entry.tokens_per_s), "judge_score": entry.judge_score, "error": entry.error,
    }  # fmt: skip


def _round(value):
    return round(value, 1) if value is not None else None
