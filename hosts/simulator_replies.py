"""What the simulated host's answers say: the reply text, token counts, the tool a reply calls, and embeddings."""

import hashlib
import math

from hosts.simulator_requests import WORDS

EMBEDDING_DIMENSION = 8


def reply_text(count):
    """The text of a `count`-token reply: WORDS, cycling."""
    return "".join(WORDS[index % len(WORDS)] for index in range(count))


def token_count(limit, default, context_length):
    """(tokens to send, whether the request's limit decided it): a positive integer limit is the count, capped at
    the model's context length as a real host caps it (so `max_tokens: 10**20` is an answer, not a frozen host)."""
    if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
        return min(limit, context_length), True
    return min(default, context_length), False


def count_words(value):
    """A rough token count for usage: the words in every text of a prompt or a message list."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(count_words(item) for item in value)
    if isinstance(value, dict):
        return count_words(value.get("content")) + count_words(value.get("text"))
    return 0


def chosen_tool(body):
    """The function a tool-calling reply calls: the one `tool_choice` names, else the first tool; None = text."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if not isinstance(tools, list) or not tools or choice == "none":
        return None
    candidates = [choice, tools[0]] if isinstance(choice, dict) else [tools[0]]
    for candidate in candidates:
        function = candidate.get("function") if isinstance(candidate, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if isinstance(name, str) and name:
            return name
    return None


def embedding_vector(text):
    """A deterministic unit vector of EMBEDDING_DIMENSION floats for `text`."""
    digest = hashlib.sha256(text.encode()).digest()
    raw = [byte / 127.5 - 1 for byte in digest[:EMBEDDING_DIMENSION]]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [round(v / norm, 6) for v in raw]
