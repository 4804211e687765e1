"""Model identity: one function decides whether two model names are the same model, the way Ollama does.

Ollama's full name is `[registry/][namespace/]model[:tag]`, with registry `registry.ollama.ai`, namespace `library`
and tag `latest` by default, compared case-insensitively. The normalised form drops the defaults that can be
dropped without ambiguity: `llama3.2`, `llama3.2:latest` and `library/llama3.2:LATEST` all become `llama3.2:latest`.
Names are never prefix-matched: `llama3` is not `llama3.2`, `qwen2.5-coder:3b` is not `qwen2.5-coder:7b`.
"""

import re

DEFAULT_REGISTRY = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
MAX_NAME_LENGTH = 255

# Letters, digits and the punctuation Ollama, Hugging Face and OpenAI-style servers use in model names.
_VALID_NAME = re.compile(r"[A-Za-z0-9_./:@+-]+")


def normalize_model_name(name):
    """The canonical spelling of a model name, used as the inventory key and to compare names."""
    name = (name or "").strip().lower()
    if "@" in name:  # a pinned digest (`model@sha256:…`) names the same model
        name = name.split("@", 1)[0]
    path, _, tag = name.rpartition(":") if ":" in name.rsplit("/", 1)[-1] else (name, "", "")
    tag = tag or DEFAULT_TAG
    parts = [part for part in path.split("/") if part] if path else []
    while len(parts) >= 3 and parts[0] == DEFAULT_REGISTRY:
        parts = parts[1:]
    if len(parts) == 2 and parts[0] == DEFAULT_NAMESPACE:
        parts = parts[1:]
    return "/".join(parts) + ":" + tag


def same_model(a, b):
    return normalize_model_name(a) == normalize_model_name(b)


def model_name_problem(name):
    """Why `name` cannot be a model name (a short message), or None when it can."""
    if not isinstance(name, str) or not name.strip():
        return "model name is empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"model name is longer than {MAX_NAME_LENGTH} characters"
    if not _VALID_NAME.fullmatch(name):
        return "model name may only contain letters, digits and . _ - : / @ +"
    if ".." in name or "//" in name:
        return "model name may not contain '..' or '//'"
    if normalize_model_name(name).startswith(":") or normalize_model_name(name).endswith(":"):
        return "model name has no model in it"
    return None
