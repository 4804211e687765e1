"""One error type for the public API, rendered in one place in the shape of the API that was called."""

import json

# OpenAI's `type` for each status clood answers with.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "upstream_timeout",
}


class ApiError(Exception):
    def __init__(self, status, message, *, param=None, code=None, retry_after=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.retry_after = retry_after

    def openai_body(self):
        return {
            "error": {
                "message": self.message,
                "type": _TYPES.get(self.status, "invalid_request_error"),
                "param": self.param,
                "code": self.code,
            }
        }

    def render(self, flavour):
        """(status, headers, body bytes) for the `openai` or `ollama` flavour of the API."""
        body = self.openai_body() if flavour == "openai" else {"error": self.message}
        headers = [(b"content-type", b"application/json")]
        if self.retry_after is not None:
            headers.append((b"retry-after", str(int(self.retry_after)).encode()))
        return self.status, headers, json.dumps(body).encode()


def in_band_error(flavour, message):
    """The line that ends a stream that failed after its first byte (SSE `data:` or an NDJSON line)."""
    if flavour == "openai":
        payload = {"error": {"message": message, "type": "upstream_error", "param": None, "code": "stream_interrupted"}}
        return b"data: " + json.dumps(payload).encode() + b"\n\n"
    return json.dumps({"error": message}).encode() + b"\n"
