"""The simulated host's model store over real HTTP (pull, delete, copy, load and unload), driven by the `ollama`
client where it speaks these routes and by plain httpx for the exact error shapes; and the timings a benchmark reads.

No database: these run with or without pytest-django (`-p no:django`).
"""

import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import ollama
import pytest

from hosts.simulator import SimModel, default_library
from hosts.simulator_ollama import UNKNOWN_MODEL_MESSAGE, layers
from tests.conftest import simulated_hosts

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sim():
    """Factory: `sim("a:1b", SimModel(...), **config)` starts a simulated host; all are stopped after the test."""
    with simulated_hosts() as start:
        yield lambda *models, **config: start(models or ("llama3.2:1b",), **config)


def pull_lines(host, body):
    response = httpx.post(host.url + "/api/pull", json=body, timeout=30)
    return response, [json.loads(line) for line in response.text.splitlines()]


def listed(host):
    return [m["name"] for m in httpx.get(host.url + "/api/tags").json()["models"]]


def running(host):
    return [m["name"] for m in httpx.get(host.url + "/api/ps").json()["models"]]


# --- pull ----------------------------------------------------------------------------------------------------------


def test_pull_streams_progress_then_lists_the_model_not_loaded(sim):
    host = sim()
    with ollama.Client(host=host.url) as client:
        progress = list(client.pull("qwen2.5-coder:7b", stream=True))
        models = [m.model for m in client.list().models]
        ps = client.ps().models
    statuses = [p.status for p in progress]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    entry = next(m for m in default_library() if m.name == "qwen2.5-coder:7b")
    weights_digest, weights_size = layers(entry)[0]
    weights = [p for p in progress if p.digest == weights_digest]
    assert weights[0].status == f"pulling {weights_digest[7:19]}" and len(weights) >= 5
    completed = [p.completed or 0 for p in weights]
    assert completed == sorted(completed) and completed[0] == 0 and completed[-1] == weights_size
    assert {p.total for p in weights} == {weights_size}
    assert sum(size for _, size in layers(entry)) == entry.size
    assert {p.digest for p in progress if p.digest} == {digest for digest, _ in layers(entry)}
    assert models == ["llama3.2:1b", "qwen2.5-coder:7b"] and [m.model for m in ps] == []


def test_pulled_model_answers_as_listed(sim):
    host = sim()
    with ollama.Client(host=host.url) as client:
        client.pull("nomic-embed-text")
        tags = {m.model: m for m in client.list().models}
        embedded = client.embed(model="nomic-embed-text", input="hello")
    assert tags["nomic-embed-text:latest"].size == 274_302_450
    assert tags["nomic-embed-text:latest"].details.family == "nomic-bert"
    assert len(embedded.embeddings) == 1


def test_pull_without_stream_answers_success_once(sim):
    host = sim()
    response, lines = pull_lines(host, {"model": "mistral:7b", "stream": False})
    assert response.status_code == 200 and lines == [{"status": "success"}]
    assert "mistral:7b" in listed(host)


@pytest.mark.parametrize(
    ("body", "listed_as"),
    [
        ({"model": "LLAMA3.2:3B"}, "llama3.2:3b"),
        ({"model": "library/deepseek-r1:1.5b"}, "deepseek-r1:1.5b"),
        ({"model": "nomic-embed-text:latest"}, "nomic-embed-text:latest"),
        ({"name": "mistral:7b"}, "mistral:7b"),  # the legacy field
    ],
)
def test_pull_finds_library_names_as_ollama_matches_them(sim, body, listed_as):
    host = sim()
    response, lines = pull_lines(host, body)
    assert response.status_code == 200 and lines[-1] == {"status": "success"}
    assert listed_as in listed(host)


def test_pull_paced_by_pull_seconds_reports_often(sim):
    host = sim(pull_seconds=0.6)
    started = time.monotonic()
    _, lines = pull_lines(host, {"model": "llama3.2:3b"})
    assert time.monotonic() - started >= 0.5
    weights_digest = lines[1]["digest"]
    assert len([line for line in lines if line.get("digest") == weights_digest]) >= 6  # one per 0.1 s, and the first


@pytest.mark.parametrize("name", ["ghost:1b", "mistral"])  # mistral:latest is not mistral:7b
def test_pull_of_an_unknown_model_fails_in_the_stream_like_ollama(sim, name):
    host = sim()
    response, lines = pull_lines(host, {"model": name})
    assert response.status_code == 200
    assert lines == [{"status": "pulling manifest"}, {"error": UNKNOWN_MODEL_MESSAGE}]
    assert UNKNOWN_MODEL_MESSAGE == "pull model manifest: file does not exist"
    with ollama.Client(host=host.url) as client, pytest.raises(ollama.ResponseError) as failed:
        list(client.pull(name, stream=True))
    assert failed.value.error == UNKNOWN_MODEL_MESSAGE
    assert listed(host) == ["llama3.2:1b"]


def test_pull_of_an_unknown_model_without_stream_is_a_500(sim):
    host = sim()
    response = httpx.post(host.url + "/api/pull", json={"model": "ghost:1b", "stream": False})
    assert response.status_code == 500 and response.json() == {"error": UNKNOWN_MODEL_MESSAGE}
    with ollama.Client(host=host.url) as client, pytest.raises(ollama.ResponseError) as failed:
        client.pull("ghost:1b")
    assert failed.value.status_code == 500 and failed.value.error == UNKNOWN_MODEL_MESSAGE


def test_pull_of_a_present_model_only_verifies_it(sim):
    host = sim(pull_seconds=30)  # a download would time the test out
    _, lines = pull_lines(host, {"model": "llama3.2:1b"})
    layer_lines = [line for line in lines if "digest" in line]
    assert len(layer_lines) == len(layers(host.config.library[0]))
    assert all(line["completed"] == line["total"] for line in layer_lines)
    assert lines[-1] == {"status": "success"} and listed(host) == ["llama3.2:1b"]


def test_pull_of_a_changed_model_downloads_it_and_updates_its_digest(sim):
    host = sim()
    changed = {"name": "llama3.2:1b", "digest": "ab" * 32, "size": 1_400_000_000}
    httpx.post(host.url + "/_sim/config", json={"library": [changed]}).raise_for_status()
    _, lines = pull_lines(host, {"model": "llama3.2:1b"})
    assert any("completed" not in line for line in lines if "digest" in line)  # downloaded from 0
    tags = httpx.get(host.url + "/api/tags").json()["models"]
    assert [(m["name"], m["digest"], m["size"]) for m in tags] == [("llama3.2:1b", "ab" * 32, 1_400_000_000)]


async def test_concurrent_pulls_of_one_model_both_finish_and_list_it_once(sim):
    host = sim(pull_seconds=0.3)

    async def pull_all():
        return [p.status async for p in await ollama.AsyncClient(host=host.url).pull("mistral:7b", stream=True)]

    first, second = await asyncio.gather(pull_all(), pull_all())
    assert first[-1] == second[-1] == "success"
    assert listed(host).count("mistral:7b") == 1


@pytest.mark.parametrize("body", [{"model": ""}, {"model": "bad name!"}, {"model": 7}, {}])
def test_pull_of_an_invalid_name_is_a_400(sim, body):
    response = httpx.post(sim().url + "/api/pull", json=body)
    assert response.status_code == 400 and response.json() == {"error": "invalid model name"}


# --- a pull that dies ----------------------------------------------------------------------------------------------


def test_pull_dropped_midway_breaks_the_stream_and_the_next_pull_succeeds(sim):
    host = sim(fail="drop", fail_paths=["/api/pull"], fail_after_tokens=3)
    seen = []
    with ollama.Client(host=host.url) as client:
        with pytest.raises(httpx.TransportError):
            for progress in client.pull("mistral:7b", stream=True):
                seen.append(progress.status)
        assert len(seen) == 3 and "success" not in seen
        assert "mistral:7b" not in [m.model for m in client.list().models]
        host.config.update({"fail": None})
        assert client.pull("mistral:7b").status == "success"
        assert "mistral:7b" in [m.model for m in client.list().models]


def test_pull_without_stream_dropped_gets_no_answer(sim):
    host = sim(fail="drop", fail_paths=["/api/pull"], fail_after_tokens=2)
    with pytest.raises(httpx.TransportError):
        httpx.post(host.url + "/api/pull", json={"model": "mistral:7b", "stream": False})
    assert "mistral:7b" not in listed(host)


def test_pull_dripping_still_ends_in_success(sim):
    host = sim(fail="drip", fail_paths=["/api/pull"], fail_after_tokens=12, drip_rate=4000)
    response, lines = pull_lines(host, {"model": "mistral:7b"})
    assert response.status_code == 200 and lines[-1] == {"status": "success"} and len(lines) > 12


def test_host_stopping_mid_pull_closes_the_connection(sim):
    host = sim(pull_seconds=30)
    with httpx.stream("POST", host.url + "/api/pull", json={"model": "mistral:7b"}, timeout=30) as response:
        lines = response.iter_lines()
        assert json.loads(next(lines)) == {"status": "pulling manifest"}
        host.stop()
        with pytest.raises(httpx.TransportError):
            list(lines)
    assert "mistral:7b" not in [m.name for m in host.config.models]


# --- delete and copy -----------------------------------------------------------------------------------------------


def test_delete_removes_a_model_from_tags_and_ps(sim):
    host = sim(SimModel(name="llama3.2:1b", loaded=True), "nomic-embed-text")
    assert running(host) == ["llama3.2:1b"]
    with ollama.Client(host=host.url) as client:
        assert client.delete("llama3.2:1b").status == "success"
    assert listed(host) == ["nomic-embed-text:latest"] and running(host) == []


def test_delete_answers_200_with_an_empty_body(sim):
    host = sim("nomic-embed-text")
    response = httpx.request("DELETE", host.url + "/api/delete", json={"name": "NOMIC-EMBED-TEXT"})  # legacy field
    assert response.status_code == 200 and response.content == b"" and listed(host) == []


def test_delete_of_a_missing_model_is_ollamas_404(sim):
    host = sim()
    response = httpx.request("DELETE", host.url + "/api/delete", json={"model": "ghost:1b"})
    assert response.status_code == 404 and response.json() == {"error": "model 'ghost:1b' not found"}
    with ollama.Client(host=host.url) as client, pytest.raises(ollama.ResponseError) as failed:
        client.delete("ghost:1b")
    assert failed.value.status_code == 404 and failed.value.error == "model 'ghost:1b' not found"


def test_copy_lists_the_model_again_under_the_new_name(sim):
    host = sim(SimModel(name="llama3.2:1b", loaded=True))
    with ollama.Client(host=host.url) as client:
        assert client.copy("llama3.2:1b", "my-llama").status == "success"
        tags = {m.model: m for m in client.list().models}
        answer = client.generate(model="my-llama", prompt="hi")
    assert tags["my-llama:latest"].digest == tags["llama3.2:1b"].digest
    assert tags["my-llama:latest"].size == tags["llama3.2:1b"].size
    assert answer.done and running(host)[0] in ("llama3.2:1b", "my-llama:latest")


def test_copy_answers_200_empty_and_404_when_the_source_is_missing(sim):
    host = sim()
    copied = httpx.post(host.url + "/api/copy", json={"source": "llama3.2:1b", "destination": "library/twin:1b"})
    assert copied.status_code == 200 and copied.content == b"" and "twin:1b" in listed(host)
    missing = httpx.post(host.url + "/api/copy", json={"source": "ghost:1b", "destination": "x"})
    assert missing.status_code == 404 and missing.json() == {"error": 'model "ghost:1b" not found'}
    with ollama.Client(host=host.url) as client, pytest.raises(ollama.ResponseError) as failed:
        client.copy("ghost:1b", "x")
    assert failed.value.status_code == 404


@pytest.mark.parametrize(
    ("path", "method", "body", "error"),
    [
        ("/api/delete", "DELETE", {"model": "bad name!"}, 'name "bad name!" is invalid'),
        ("/api/copy", "POST", {"source": "", "destination": "x"}, 'source "" is invalid'),
        ("/api/copy", "POST", {"source": "llama3.2:1b", "destination": "a b"}, 'destination "a b" is invalid'),
    ],
)
def test_invalid_names_are_a_400(sim, path, method, body, error):
    response = httpx.request(method, sim().url + path, json=body)
    assert response.status_code == 400 and response.json() == {"error": error}


# --- load and unload -----------------------------------------------------------------------------------------------


def test_keep_alive_without_a_prompt_loads_then_zero_unloads(sim):
    host = sim()
    loaded = httpx.post(host.url + "/api/generate", json={"model": "llama3.2:1b", "keep_alive": "10m"}).json()
    assert loaded["done"] and loaded["done_reason"] == "load"
    with ollama.Client(host=host.url) as client:
        ps = client.ps().models
        assert [m.model for m in ps] == ["llama3.2:1b"]
        assert timedelta(minutes=9) < ps[0].expires_at - datetime.now(UTC) <= timedelta(minutes=10)
        unloaded = client.generate(model="llama3.2:1b", keep_alive=0)
        assert unloaded.done_reason == "unload" and client.ps().models == []


# --- timings -------------------------------------------------------------------------------------------------------


def test_generate_timings_follow_the_pacing(sim):
    host = sim(ttft=0.1, tokens_per_second=40, reply_tokens=8, load_time=0.2)
    with ollama.Client(host=host.url) as client:
        cold = list(client.generate(model="llama3.2:1b", prompt="why is the sky blue", stream=True))[-1]
        warm = client.generate(model="llama3.2:1b", prompt="why is the sky blue")
    for final in (cold, warm):
        assert final.done and final.eval_count == 8 and final.prompt_eval_count == 5
        assert final.prompt_eval_duration >= 0.1e9
        assert 10 < final.eval_count / (final.eval_duration / 1e9) <= 40.01  # the configured pace, or slower
        parts = final.load_duration + final.prompt_eval_duration + final.eval_duration
        assert parts <= final.total_duration < parts + 5e9
    assert 0.2e9 <= cold.load_duration < 5e9 and warm.load_duration == 0


def test_unpaced_generate_still_reports_some_eval_time(sim):
    host = sim(reply_tokens=3)
    final = httpx.post(host.url + "/api/generate", json={"model": "llama3.2:1b", "prompt": "hi", "stream": False})
    timings = final.json()
    assert timings["eval_duration"] > 0 and timings["prompt_eval_duration"] > 0 and timings["total_duration"] > 0


# --- configuration -------------------------------------------------------------------------------------------------


def test_config_takes_a_library_and_pull_seconds(sim):
    host = sim()
    changes = {"library": ["tiny:1b", {"name": "big:70b", "size": 40_000_000_000}], "pull_seconds": 0.2}
    config = httpx.post(host.url + "/_sim/config", json=changes).json()
    assert [m["name"] for m in config["library"]] == ["tiny:1b", "big:70b"] and config["pull_seconds"] == 0.2
    _, lines = pull_lines(host, {"model": "big:70b"})
    assert lines[-1] == {"status": "success"} and "big:70b" in listed(host)
    _, lines = pull_lines(host, {"model": "mistral:7b"})
    assert lines[-1] == {"error": UNKNOWN_MODEL_MESSAGE}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"pull_seconds": -1}, "pull_seconds must be a number >= 0, not -1"),
        ({"pull_seconds": "fast"}, "pull_seconds must be a number >= 0, not 'fast'"),
        ({"library": "llama3.2:1b"}, "library must be a list of models (names or objects)"),
        ({"library": [{"size": 5}]}, "library[0] must be a model name or an object with a non-empty name"),
        ({"library": ["ok:1b", {"name": "x", "colour": "red"}]}, "library[1] has unknown fields: colour"),
        ({"library": [{"name": "x", "size": 0}]}, "library[0].size must be a whole number of bytes > 0, not 0"),
        ({"models": [3]}, "models[0] must be a model name or an object with a non-empty name"),
    ],
)
def test_config_rejects_bad_library_and_pull_seconds_clearly(sim, changes, message):
    host = sim()
    response = httpx.post(host.url + "/_sim/config", json=changes)
    assert response.status_code == 400 and response.json() == {"error": message}
    assert host.config.pull_seconds == 0 and len(host.config.library) == len(default_library())


def test_simhost_command_has_pull_seconds(tmp_path):
    env = {**os.environ, "CLOOD_VAR_DIR": str(tmp_path)}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    command = [sys.executable, "manage.py", "simhost"]
    shown = subprocess.run([*command, "--help"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert "--pull-seconds" in shown.stdout
    refused = subprocess.run(
        [*command, "--port", "0", "--pull-seconds", "-1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode != 0 and "--pull-seconds must be >= 0" in refused.stderr
