"""Reading a copy of what a host sends back: time to first token, tokens, usage, finish reason, in-band errors, and
the model the answer names.

The relay forwards the host's bytes untouched; this only looks at a copy, and never raises on what it reads. A line
longer than MAX_LINE_BYTES is not kept (so a host sending a 100 MB line costs no memory here) and is skipped, not
parsed; it never ends a stream. Bytes that are not UTF-8 are read as U+FFFD, so a token with a broken byte still
counts. `parsed` and `unparsed` count the lines (or the single body) that were, or were not, JSON objects: the relay
uses them to tell an answer from garbage.
"""

import json
import time

MAX_BUFFERED_BODY = 4 * 1024 * 1024  # a non-streamed answer larger than this is relayed but not parsed
MAX_LINE_BYTES = 1024 * 1024  # a streamed line longer than this is relayed but not parsed
MAX_MODEL_CHARS = 255


class Telemetry:
    """Fed every chunk of one response; `format` is "sse", "ndjson" or "json" (a single body)."""

    def __init__(self, fmt, started, keep_text=False):
        self.format = fmt
        self.parts = [] if keep_text else None  # the answer's text, for catfights
        self.started = started
        self.first_byte_at = None
        self.first_token_at = None
        self.tokens = 0
        self.prompt_tokens = None
        self.completion_tokens = None
        self.finish_reason = None
        self.error = None
        self.done = False
        self.model = None  # the model the answer names (its first "model" field)
        self.timings = {}  # Ollama's nanosecond durations and counts
        self.parsed = 0  # data lines (or the single body) read as JSON objects, and [DONE]
        self.unparsed = 0  # data lines (or the single body) that were not JSON objects
        self.skipped_lines = 0  # lines longer than MAX_LINE_BYTES
        self._buffer = bytearray()  # the single body, or the start of a line
        self._size = 0
        self._skipping = False  # inside a line longer than MAX_LINE_BYTES

    def feed(self, chunk):
        now = time.monotonic()
        if self.first_byte_at is None:
            self.first_byte_at = now
        if self.format == "json":
            self._size += len(chunk)
            if self._size <= MAX_BUFFERED_BODY:
                self._buffer += chunk
            return
        lines = chunk.split(b"\n")
        rest = lines.pop()
        if lines:
            if self._skipping:
                self._skipping = False
                lines[0] = None  # the end of an over-long line
            elif self._buffer:
                lines[0] = self._buffer + lines[0]
                self._buffer = bytearray()
            for line in lines:
                if line is None:
                    continue
                if len(line) > MAX_LINE_BYTES:
                    self.skipped_lines += 1
                else:
                    self._line(line, now)
        self._keep_partial(rest)

    def finish(self):
        """Parse what is left (a non-streamed body, or a last line without a newline)."""
        now = time.monotonic()
        if self.format == "json":
            if self._size <= MAX_BUFFERED_BODY:
                self._count(self._object(_loads(self._buffer), now, whole=True))
        elif self._buffer.strip() and not self._skipping:
            self._line(self._buffer, now)
        self._buffer = bytearray()
        self._skipping = False

    def _keep_partial(self, rest):
        """Keep the start of a line until its end arrives, unless the line is longer than anyone should parse."""
        if self._skipping or not rest:
            return
        if len(self._buffer) + len(rest) > MAX_LINE_BYTES:
            self._buffer = bytearray()
            self._skipping = True
            self.skipped_lines += 1
        else:
            self._buffer += rest

    @property
    def ttft_ms(self):
        mark = self.first_token_at or (self.first_byte_at if self.format == "json" else None)
        return (mark - self.started) * 1000 if mark else None

    @property
    def total_tokens(self):
        return self.completion_tokens if self.completion_tokens is not None else self.tokens

    def _line(self, line, now):
        line = line.strip()
        if not line:
            return
        if self.format == "sse":
            if not line.startswith(b"data:"):
                return
            payload = line[5:].strip()
            if payload == b"[DONE]":
                self.done = True
                self.parsed += 1
                return
            line = payload
        self._count(self._object(_loads(line), now))

    def _count(self, was_object):
        if was_object:
            self.parsed += 1
        else:
            self.unparsed += 1

    def _object(self, obj, now, whole=False):
        """Read one JSON value of the answer; returns whether it was an object (the only shape an answer has)."""
        if not isinstance(obj, dict):
            return False
        if self.model is None and isinstance(obj.get("model"), str):
            self.model = obj["model"][:MAX_MODEL_CHARS]
        if "error" in obj:
            error = obj["error"]
            self.error = str(error.get("message") if isinstance(error, dict) else error)[:500]
            return True
        if "choices" in obj:
            self._openai(obj, now, whole)
        elif "message" in obj or "response" in obj or "done" in obj:
            self._ollama(obj, now, whole)
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self.prompt_tokens = usage.get("prompt_tokens", self.prompt_tokens)
            self.completion_tokens = usage.get("completion_tokens", self.completion_tokens)
        return True

    def _openai(self, obj, now, whole):
        for choice in obj.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            part = choice.get("message" if whole else "delta") or {}
            if not whole and ("text" in choice):  # legacy completions stream
                part = {"content": choice.get("text")}
            if isinstance(part, dict) and (part.get("content") or part.get("reasoning") or part.get("tool_calls")
                                           or part.get("reasoning_content")):  # fmt: skip
                self._token(now)
                self._keep(part.get("content"))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        if whole:
            self.done = True

    def _ollama(self, obj, now, whole):
        message = obj.get("message")
        content = message.get("content") or message.get("thinking") if isinstance(message, dict) else None
        if content or obj.get("response") or obj.get("thinking"):
            self._token(now)
            self._keep(message.get("content") if isinstance(message, dict) else obj.get("response"))
        if obj.get("done"):
            self.done = True
            self.finish_reason = obj.get("done_reason") or self.finish_reason
            for key in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
                        "eval_count", "eval_duration"):  # fmt: skip
                if isinstance(obj.get(key), int):
                    self.timings[key] = obj[key]
            if "eval_count" in self.timings:
                self.completion_tokens = self.timings["eval_count"]
            if "prompt_eval_count" in self.timings:
                self.prompt_tokens = self.timings["prompt_eval_count"]

    def _keep(self, text):
        if self.parts is not None and isinstance(text, str) and text:
            self.parts.append(text)

    @property
    def text(self):
        return "".join(self.parts or ())

    def _token(self, now):
        self.tokens += 1
        if self.first_token_at is None:
            self.first_token_at = now

    def tokens_per_s(self, finished):
        """Generation speed: Ollama's own eval timing when given, else tokens over the time after the first one."""
        if self.timings.get("eval_duration") and self.timings.get("eval_count"):
            return self.timings["eval_count"] / (self.timings["eval_duration"] / 1e9)
        if self.format == "json":
            return None  # one body: no way to tell generation time from the rest
        tokens = self.total_tokens
        if self.first_token_at and tokens and tokens > 1 and finished > self.first_token_at:
            return (tokens - 1) / (finished - self.first_token_at)
        return None


def _loads(raw):
    """The JSON value in `raw` (invalid UTF-8 read as U+FFFD), or None."""
    try:
        return json.loads(raw.decode("utf-8", "replace"))
    except (ValueError, RecursionError):
        return None
