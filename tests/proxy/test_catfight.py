"""Catfights through a running clood, against simulated hosts of different speeds."""

import json
import threading
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from hosts.simulator import SimModel
from proxy.catfight import rank, read_verdict
from tests.conftest import wait_until

PROMPT = "Explain TCP in one paragraph."


class JudgeHost(BaseHTTPRequestHandler):
    """An OpenAI-compatible judge that answers every request with a fixed verdict."""

    protocol_version = "HTTP/1.0"
    verdict = '{"score": 7, "explanation": "Clear and correct."}'

    def do_GET(self):  # noqa: N802
        self._json({"object": "list", "data": [{"id": "judge-model", "object": "model"}]})

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        content = f"Here is my verdict:\n```json\n{self.verdict}\n```"
        self._json({"id": "j", "object": "chat.completion", "choices": [{"index": 0, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": content}}]})  # fmt: skip

    def _json(self, body):
        raw = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def garden(clood_factory, sims):
    judge = ThreadingHTTPServer(("127.0.0.1", 0), JudgeHost)
    threading.Thread(target=judge.serve_forever, daemon=True).start()
    garden = clood_factory(env={"CLOOD_COLD_START_TIMEOUT": "10", "CLOOD_IDLE_TIMEOUT": "5"})
    fast_models = [SimModel(name="llama3.2:1b", loaded=True), SimModel(name="qwen2.5-coder:3b")]
    garden.add("fast", sims(models=fast_models, ttft=0.05, tokens_per_second=200, reply_tokens=40))
    garden.add("slow", sims(models=[SimModel(name="llama3.2:1b", loaded=True)], ttft=0.1, tokens_per_second=40,
                            reply_tokens=40))  # fmt: skip
    garden.add("broken", sims(models=["llama3.2:1b"], fail="drop", fail_paths=["/api/chat"], fail_after_tokens=3))
    garden.server.manage("hosts", "add", "judge", f"http://127.0.0.1:{judge.server_port}", "--backend", "openai")
    garden.refresh()
    yield garden
    judge.shutdown()


def start(garden, **body):
    response = httpx.post(garden.url + "/catfights", json={"prompt": PROMPT, **body}, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()


def finished(garden, catfight_id):
    def done():
        body = httpx.get(f"{garden.url}/catfights/{catfight_id}").json()
        return body if body["status"] == "completed" else None

    return wait_until(done, timeout=60, interval=0.1, what=f"catfight {catfight_id} to finish")


def entries_by(body):
    return {(e["model"], e["host"]): e for e in body["entries"]}


def when(value):
    return datetime.fromisoformat(value)


def test_parallel_across_hosts_one_after_another_on_one_host(garden):
    contestants = [{"model": "llama3.2:1b", "host": "fast"}, {"model": "qwen2.5-coder:3b", "host": "fast"},
                   {"model": "llama3.2:1b", "host": "slow"}]  # fmt: skip
    body = finished(garden, start(garden, contestants=contestants)["id"])
    entries = entries_by(body)
    first, second = entries["llama3.2:1b", "fast"], entries["qwen2.5-coder:3b", "fast"]
    slow = entries["llama3.2:1b", "slow"]
    assert all(e["status"] == "completed" and e["output"] for e in body["entries"])
    assert when(first["finished_at"]) <= when(second["started_at"])  # same host: one after another
    assert when(slow["started_at"]) < when(first["finished_at"])  # other host: at the same time
    assert second["cold"] is True and first["cold"] is False
    winner = next(e for e in body["entries"] if e["id"] == body["winner"])
    assert winner["host"] == "fast" and winner["rank"] == 1
    assert [e["rank"] for e in body["entries"]] == [1, 2, 3]
    assert first["tokens_per_s"] and first["ttft_ms"] and first["completion_tokens"] == 40
    assert first["prompt_tokens_per_s"] is not None  # from Ollama's nanosecond timings


def test_same_host_in_parallel_when_asked(garden):
    contestants = [{"model": "llama3.2:1b", "host": "fast"}, {"model": "qwen2.5-coder:3b", "host": "fast"}]
    body = finished(garden, start(garden, contestants=contestants, parallel_same_host=True)["id"])
    a, b = body["entries"]
    assert when(a["started_at"]) < when(b["finished_at"]) and when(b["started_at"]) < when(a["finished_at"])


def test_one_contestant_failing_mid_stream_does_not_stop_the_others(garden):
    contestants = [{"model": "llama3.2:1b", "host": "broken"}, {"model": "llama3.2:1b", "host": "slow"}]
    body = finished(garden, start(garden, contestants=contestants, rank_by="tokens_per_s")["id"])
    entries = entries_by(body)
    assert entries["llama3.2:1b", "broken"]["status"] == "failed"
    assert entries["llama3.2:1b", "broken"]["rank"] is None and entries["llama3.2:1b", "broken"]["error"]
    assert entries["llama3.2:1b", "slow"]["status"] == "completed"
    assert body["winner"] == entries["llama3.2:1b", "slow"]["id"]


def test_every_contestant_failing_means_no_winner(garden):
    garden.sims["slow"].config.fail, garden.sims["slow"].config.fail_status = "error", 500
    try:
        contestants = [{"model": "llama3.2:1b", "host": "broken"}, {"model": "llama3.2:1b", "host": "slow"}]
        body = finished(garden, start(garden, contestants=contestants)["id"])
    finally:
        garden.sims["slow"].config.fail = None
    assert body["winner"] is None and "No winner" in body["summary"]
    assert {e["status"] for e in body["entries"]} == {"failed"}


def test_judge_scores_each_answer(garden):
    contestants = [{"model": "llama3.2:1b", "host": "fast"}, {"model": "llama3.2:1b", "host": "slow"}]
    body = finished(garden, start(garden, contestants=contestants, rank_by="judge",
                                  judge={"model": "judge-model", "rubric": "Be fair."})["id"])  # fmt: skip
    assert [e["judge_score"] for e in body["entries"]] == [7.0, 7.0]
    assert body["entries"][0]["judge_explanation"] == "Clear and correct."
    assert body["judge"]["rubric"] == "Be fair."


def test_a_judge_answering_garbage_leaves_scores_empty(garden):
    contestants = [{"model": "llama3.2:1b", "host": "fast"}, {"model": "llama3.2:1b", "host": "slow"}]
    body = finished(garden, start(garden, contestants=contestants, rank_by="judge",
                                  judge={"model": "llama3.2:1b", "host": "fast"})["id"])  # fmt: skip
    assert all(e["judge_score"] is None for e in body["entries"])
    assert all("could not be read" in e["judge_explanation"] for e in body["entries"])
    assert body["winner"] is not None  # answers stand; the ranking falls back to speed
    assert "no judge score could be read" in body["summary"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"contestants": [{"model": "llama3.2:1b", "host": "fast"}] * 2}, "missing_field"),
        ({"prompt": PROMPT, "contestants": [{"model": "llama3.2:1b", "host": "fast"}]}, "invalid_value"),
        ({"prompt": PROMPT, "contestants": [{"model": "llama3.2:1b", "host": "fast"}] * 2}, "duplicate"),
        ({"prompt": PROMPT, "contestants": [{"model": "llama3.2:1b", "host": "nope"}, {"model": "x", "host": "fast"}]},
         "unknown_host"),
        ({"prompt": PROMPT, "contestants": [{"model": "qwen2.5-coder:3b", "host": "slow"},
                                            {"model": "llama3.2:1b", "host": "fast"}]}, "model_not_on_host"),
        ({"prompt": PROMPT, "rank_by": "judge", "contestants": [{"model": "llama3.2:1b", "host": "fast"},
                                                                 {"model": "llama3.2:1b", "host": "slow"}]},
         "missing_field"),
        ({"prompt": PROMPT, "temperature": "hot", "contestants": [{"model": "llama3.2:1b", "host": "fast"},
                                                                   {"model": "llama3.2:1b", "host": "slow"}]},
         "invalid_type"),
    ],
)  # fmt: skip
def test_bad_requests_are_400_in_openai_shape(garden, body, code):
    response = httpx.post(garden.url + "/catfights", json=body)
    assert response.status_code == 400 and response.json()["error"]["code"] == code


def test_unknown_catfight_is_404_and_bad_json_is_400(garden):
    assert httpx.get(garden.url + "/catfights/999999").status_code == 404
    response = httpx.post(garden.url + "/catfights", content=b"{nope", headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"


def test_history_exports_and_leaderboard(garden):
    contestants = [{"model": "llama3.2:1b", "host": "fast"}, {"model": "llama3.2:1b", "host": "slow"}]
    catfight_id = finished(garden, start(garden, contestants=contestants)["id"])["id"]
    listing = httpx.get(garden.url + "/catfights").json()["catfights"]
    assert listing[0]["id"] == catfight_id and listing[0]["winner"]["host"] == "fast"

    exported = httpx.get(f"{garden.url}/catfights/{catfight_id}/export.json")
    assert "attachment" in exported.headers["content-disposition"]
    assert json.loads(exported.text)["id"] == catfight_id
    markdown = httpx.get(f"{garden.url}/catfights/{catfight_id}/export.md")
    assert markdown.headers["content-type"].startswith("text/markdown")
    assert f"# Catfight {catfight_id}" in markdown.text and "| 1 | llama3.2:1b | fast |" in markdown.text

    rows = {(r["model"], r["host"]): r for r in httpx.get(garden.url + "/catfights/leaderboard").json()["rows"]}
    assert rows["llama3.2:1b", "fast"]["wins"] >= 1 and rows["llama3.2:1b", "fast"]["best_tokens_per_s"]


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ('{"score": 8, "explanation": "good"}', 8.0),
        ('Sure! ```json\n{"score": 3.5, "explanation": "meh"}\n```', 3.5),
        ("Score: 6/10 because it is fine", 6.0),
        ('{"score": 42}', None),
        ("The quick brown fox", None),
        ("", None),
    ],
)
def test_read_verdict(text, score):
    assert read_verdict(text)[0] == score


class Entry:
    def __init__(self, status="completed", output="x", duration_ms=1.0, tokens_per_s=1.0, ttft_ms=1.0, judge=None):
        self.status, self.output, self.duration_ms = status, output, duration_ms
        self.tokens_per_s, self.ttft_ms, self.judge_score, self.rank = tokens_per_s, ttft_ms, judge, None


def test_failed_or_empty_answers_never_win():
    failed, empty, slow = (
        Entry(status="failed", duration_ms=0.1),
        Entry(output="  ", duration_ms=0.2),
        Entry(duration_ms=9),
    )
    ranked = rank([failed, empty, slow], "fastest")
    assert ranked[0] is slow and slow.rank == 1 and failed.rank is None and empty.rank is None


def test_ranking_criteria():
    a, b = Entry(duration_ms=5, tokens_per_s=50, judge=2), Entry(duration_ms=9, tokens_per_s=90, judge=9)
    assert rank([a, b], "fastest")[0] is a
    assert rank([a, b], "tokens_per_s")[0] is b
    assert rank([a, b], "judge")[0] is b


def test_a_challenge_set_runs_one_catfight_per_prompt(garden):
    garden.server.manage(
        "shell", "-c",
        "from proxy.models import ChallengeSet; "
        "ChallengeSet.objects.create(name='basics', prompts=['What is DNS?', 'What is TCP?'], rubric='Be brief.')",
    )  # fmt: skip
    sets = httpx.get(garden.url + "/catfights/challenge-sets").json()["challenge_sets"]
    basics = next(s for s in sets if s["name"] == "basics")
    contestants = [{"model": "llama3.2:1b", "host": "fast"}, {"model": "llama3.2:1b", "host": "slow"}]
    response = httpx.post(garden.url + "/catfights", json={"challenge_set": basics["id"], "contestants": contestants})
    assert response.status_code == 201
    started = response.json()["catfights"]
    assert [c["prompt"] for c in started] == ["What is DNS?", "What is TCP?"]
    assert all(finished(garden, c["id"])["winner"] for c in started)
