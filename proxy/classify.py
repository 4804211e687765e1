"""The `auto` alias's classifier: which tier (fast, deep, code, writing) a request asks for, judged from its last user
message (or prompt) alone, with plain rules a person can predict. Pure: no settings, no I/O.

The rules, first match wins:
1. code — the text holds code or talks about it: a ``` fence, source-like lines (`def f(`, `class X:`,
   `#include <`, `function f(`, `import x`, `SELECT … FROM`), a stack trace, or a request for a script, function,
   regex, query or bug fix in a programming language;
2. writing — it asks for prose: write/draft a story, poem, essay, email, letter…, or rewrite, rephrase, proofread,
   summarise;
3. deep — it asks for reasoning (why, prove, step by step, analyse, compare, plan, derive, solve, calculate…), or
   it is long: more than DEEP_PROMPT_CHARS characters;
4. fast — anything else: a short, simple question.
"""

import re

TIERS = ("fast", "deep", "code", "writing")

DEEP_PROMPT_CHARS = 1200  # a prompt longer than this goes to `deep`, whatever it says

_CODE_BLOCK = re.compile(r"```")
_CODE_LINES = [
    (re.compile(r"^\s*(async\s+)?def\s+\w+\s*\(", re.M), "a Python function"),
    (re.compile(r"^\s*class\s+\w+\s*[:({]", re.M), "a class definition"),
    (re.compile(r"^\s*#include\s*[<\"]", re.M), "a C/C++ include"),
    (re.compile(r"\bfunction\s*\w*\s*\([^)]*\)\s*\{"), "a JavaScript function"),
    (re.compile(r"^\s*(import\s+[\w.]+|from\s+[\w.]+\s+import\s)", re.M), "an import statement"),
    (re.compile(r"\bSELECT\b[\s\S]+?\bFROM\b"), "an SQL query"),
    (
        re.compile(r"Traceback \(most recent call last\)|^\s+at [\w.$]+\([\w.]+:\d+\)|\w+(Error|Exception): ", re.M),
        "a stack trace",
    ),
    (re.compile(r"(=>|->|::|!==|===|&&|\|\|)\s*\S.*[;{]\s*$", re.M), "code syntax"),
    (re.compile(r"^\s*(const|let|var|fn|func|pub|public|private|package|using)\s+\w+.*[;{=]\s*$", re.M), "code syntax"),
]
_CODE_TASK = re.compile(
    r"\b(python|javascript|typescript|java|rust|golang|c\+\+|bash|shell script|sql|regex|regular expression|"
    r"function|compile|compiler|refactor|debug|unit test|stack trace|segfault|api endpoint)\b",
    re.I,
)
_WRITING = re.compile(
    r"\b((write|draft|compose)\b.{0,30}\b(story|poem|haiku|limerick|essay|e-?mail|letter|blog post|article|speech|"
    r"song|lyrics|toast|cover letter|tweet|post|announcement|description|bio)|rewrite|rephrase|reword|proofread|"
    r"polish (this|my)|summari[sz]e|tl;?dr)\b",
    re.I | re.S,
)
_REASONING = re.compile(
    r"\b(why|prove|proof|step[- ]by[- ]step|analy[sz]e|analysis|compare|comparison|trade-?offs?|pros and cons|plan|"
    r"derive|derivation|reason|evaluate|solve|calculate|equation|integral|theorem|explain in detail|think through)\b",
    re.I,
)


def classify(payload):
    """(tier, reason) for a request body: the tier is one of TIERS, the reason says why in a few words."""
    text = prompt_text(payload)
    if not text.strip():
        return "fast", "the prompt is empty"
    if _CODE_BLOCK.search(text):
        return "code", "the prompt contains a code block"
    for pattern, what in _CODE_LINES:
        if pattern.search(text):
            return "code", f"the prompt contains {what}"
    task = _CODE_TASK.search(text)
    if task:
        return "code", f"the prompt asks about code ('{task.group(0)}')"
    writing = _WRITING.search(text)
    if writing:
        return "writing", f"the prompt asks for writing ('{_short(writing.group(0))}')"
    if len(text) > DEEP_PROMPT_CHARS:
        return "deep", f"the prompt is long ({len(text)} characters > {DEEP_PROMPT_CHARS})"
    reasoning = _REASONING.search(text)
    if reasoning:
        return "deep", f"the prompt asks for reasoning ('{reasoning.group(0)}')"
    return "fast", "a short, simple question"


def prompt_text(payload):
    """The text to judge: the last user message's content (text parts of a multimodal one), else `prompt`/`input`."""
    messages = payload.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return _as_text(message.get("content"))
    return _as_text(payload.get("prompt") or payload.get("input"))


def _as_text(content):
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content if p)
    return ""


def _short(text):
    text = " ".join(text.split())
    return text if len(text) <= 40 else text[:39] + "…"
