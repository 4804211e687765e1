"""Reading a copy of what a host sends back: time to first token, tokens, usage, finish reason, in-band errors.

The relay forwards the host's bytes untouched; this only looks at a copy. Lines are split across chunks without a
length limit, so a long line never ends a stream.
"""

import json
import time

MAX_BUFFERED_BODY = 4 * 1024 * 1024  # a non-streamed answer larger than this is relayed but not parsed


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
        self.timings = {}  # Ollama's nanosecond durations and counts
        self._buffer = b""
        self._size = 0

    def feed(self, chunk):
        now = time.monotonic()
        if self.first_byte_at is None:
            self.first_byte_at = now
        if self.format == "json":
            self._size += len(chunk)
            if self._size <= MAX_BUFFERED_BODY:
                self._buffer += chunk
            return
        data = self._buffer + chunk if self._buffer else chunk
        lines = data.split(b"\n")
        self._buffer = lines.pop()
        for line in lines:
            self._line(line, now)

    def finish(self):
        """Parse what is left (a non-streamed body, or a last line without a newline)."""
        now = time.monotonic()
        if self.format == "json":
            if self._size <= MAX_BUFFERED_BODY:
                self._object(_loads(self._buffer), now, whole=True)
        elif self._buffer.strip():
            self._line(self._buffer, now)
        self._buffer = b""

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
                return
            line = payload
        self._object(_loads(line), now)

    def _object(self, obj, now, whole=False):
        if not isinstance(obj, dict):
            return
        if "error" in obj:
            error = obj["error"]
            self.error = str(error.get("message") if isinstance(error, dict) else error)[:500]
            return
        if "choices" in obj:
            self._openai(obj, now, whole)
        elif "message" in obj or "response" in obj or "done" in obj:
            self._ollama(obj, now, whole)
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self.prompt_tokens = usage.get("prompt_tokens", self.prompt_tokens)
            self.completion_tokens = usage.get("completion_tokens", self.completion_tokens)

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
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
