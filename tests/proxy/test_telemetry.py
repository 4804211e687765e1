"""Telemetry reads a copy of the host's answer: tokens, usage, timings and errors, however it is chunked."""

import json
import time
import tracemalloc

import pytest

from proxy.telemetry import MAX_LINE_BYTES, Telemetry


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


def test_a_100_mb_line_is_skipped_without_being_kept():
    piece = b"x" * (64 * 1024)
    t = Telemetry("sse", time.monotonic())
    tracemalloc.start()
    try:
        t.feed(sse(delta("a"))[: -len(b"data: [DONE]\n\n")] + b'data: {"choices":[{"delta":{"content":"')
        for _ in range(100 * 16):
            t.feed(piece)
        t.feed(b'"}}]}\n\n' + sse(delta("b")))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    t.finish()
    assert peak < 2 * MAX_LINE_BYTES + 1024 * 1024
    assert (t.tokens, t.skipped_lines, t.done) == (2, 1, True)


@pytest.mark.parametrize("size", [1, 3, 1000])
def test_invalid_utf8_is_read_as_replacement_characters(size):
    raw = b'data: {"choices":[{"delta":{"content":"\xff\xfeab"}}]}\n\n' + sse(delta("c"))
    t = feed_in_pieces(Telemetry("sse", time.monotonic(), keep_text=True), raw, size)
    assert (t.tokens, t.text, t.unparsed) == (2, "\ufffd\ufffdabc", 0)


@pytest.mark.parametrize(
    ("fmt", "raw", "model"),
    [
        ("sse", sse({"model": "qwen2.5:7b", **delta("a")}, {"model": "other", **delta("b")}), "qwen2.5:7b"),
        ("ndjson", b'{"model":"llama3.2:1b","message":{"content":"hi"},"done":false}\n', "llama3.2:1b"),
        ("json", b'{"model":"m:1b","choices":[{"message":{"content":"x"}}]}', "m:1b"),
        ("json", b'{"model":7,"choices":[]}', None),
    ],
)
def test_the_model_an_answer_names_is_read(fmt, raw, model):
    assert feed_in_pieces(Telemetry(fmt, time.monotonic()), raw, 5).model == model


@pytest.mark.parametrize(
    ("fmt", "raw", "parsed", "unparsed"),
    [
        ("json", b'{"choices": []}', 1, 0),
        ("json", b'{"models": [{"name": "llama3.2', 0, 1),  # cut short
        ("json", b'["not", "an", "object"]', 0, 1),
        ("json", b"", 0, 1),
        ("sse", b": a comment\n\n", 0, 0),
        ("sse", b"data: <html>\n\n", 0, 1),
        ("sse", b"data: [DONE]\n\n", 1, 0),
        ("ndjson", b'{"done": true}\n{oops\n', 1, 1),
    ],
)
def test_answers_and_garbage_are_counted_apart(fmt, raw, parsed, unparsed):
    t = feed_in_pieces(Telemetry(fmt, time.monotonic()), raw, 4)
    assert (t.parsed, t.unparsed) == (parsed, unparsed)
