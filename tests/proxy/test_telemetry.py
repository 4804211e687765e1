"""Telemetry reads a copy of the host's answer: tokens, usage, timings and errors, however it is chunked."""

import json
import time

from proxy.telemetry import Telemetry


def sse(*objects):
    return b"".join(b"data: " + json.dumps(o).encode() + b"\n\n" for o in objects) + b"data: [DONE]\n\n"


def feed_in_pieces(telemetry, raw, size):
    for i in range(0, len(raw), size):
        telemetry.feed(raw[i : i + size])
    telemetry.finish()
    return telemetry


def delta(content):
    return {"choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]}


def test_sse_tokens_usage_and_finish_reason_survive_any_chunking():
    raw = sse(delta("a"), delta("b" * 100_000), {"choices": [{"delta": {}, "finish_reason": "stop"}]},
              {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}})  # fmt: skip
    for size in (1, 7, 4096, len(raw)):
        t = feed_in_pieces(Telemetry("sse", time.monotonic()), raw, size)
        assert (t.tokens, t.prompt_tokens, t.completion_tokens, t.finish_reason, t.done) == (2, 5, 2, "stop", True)
        assert t.ttft_ms is not None


def test_in_band_error_is_read():
    t = feed_in_pieces(Telemetry("sse", time.monotonic()), sse(delta("a"), {"error": {"message": "boom"}}), 10)
    assert t.error == "boom"


def test_ollama_ndjson_timings():
    lines = [{"message": {"content": "hi"}, "done": False}, {"message": {"content": ""}, "done": True,
             "done_reason": "stop", "eval_count": 20, "eval_duration": 2_000_000_000, "prompt_eval_count": 4,
             "load_duration": 5}]  # fmt: skip
    raw = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    t = feed_in_pieces(Telemetry("ndjson", time.monotonic()), raw, 3)
    assert (t.completion_tokens, t.prompt_tokens, t.finish_reason) == (20, 4, "stop")
    assert t.tokens_per_s(time.monotonic()) == 10.0
    assert t.timings["load_duration"] == 5


def test_non_streamed_body_gives_usage_but_no_made_up_speed():
    body = {"choices": [{"message": {"content": "x"}, "finish_reason": "stop"}], "usage": {"completion_tokens": 9}}
    t = feed_in_pieces(Telemetry("json", time.monotonic()), json.dumps(body).encode(), 5)
    assert t.total_tokens == 9 and t.finish_reason == "stop"
    assert t.tokens_per_s(time.monotonic()) is None


def test_garbage_lines_are_ignored():
    t = feed_in_pieces(Telemetry("sse", time.monotonic()), b"data: {not json\n\ndata: [1,2]\n\n" + sse(delta("a")), 4)
    assert t.tokens == 1 and t.error is None
