import pytest

from hosts.names import model_name_problem, normalize_model_name, same_model


@pytest.mark.parametrize(
    ("name", "normalised"),
    [
        ("llama3.2", "llama3.2:latest"),
        ("llama3.2:latest", "llama3.2:latest"),
        ("library/llama3.2", "llama3.2:latest"),
        ("library/llama3.2:latest", "llama3.2:latest"),
        ("registry.ollama.ai/library/llama3.2:latest", "llama3.2:latest"),
        ("LLaMA3.2:Latest", "llama3.2:latest"),
        ("  llama3.2  ", "llama3.2:latest"),
        ("qwen2.5-coder:3b", "qwen2.5-coder:3b"),
        ("llama3.2:", "llama3.2:latest"),
        ("myuser/mymodel", "myuser/mymodel:latest"),
        ("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M", "hf.co/bartowski/llama-3.2-1b-instruct-gguf:q4_k_m"),
        ("localhost:5000/team/model", "localhost:5000/team/model:latest"),
        ("llama3.2@sha256:abc", "llama3.2:latest"),
    ],
)
def test_normalize_model_name(name, normalised):
    assert normalize_model_name(name) == normalised


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("llama3.2", "llama3.2:latest"),
        ("llama3.2", "library/llama3.2:latest"),
        ("Qwen2.5-Coder:7B", "qwen2.5-coder:7b"),
        ("registry.ollama.ai/library/mistral", "mistral"),
    ],
)
def test_same_model(a, b):
    assert same_model(a, b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("qwen2.5-coder:3b", "qwen2.5-coder:7b"),
        ("llama3", "llama3.2"),
        ("llama3.2:1b", "llama3.2"),
        ("myuser/llama3.2", "llama3.2"),
        ("llama3.2:latest", "llama3.2:latest-q4"),
    ],
)
def test_different_models_never_match(a, b):
    assert not same_model(a, b)


@pytest.mark.parametrize("name", ["llama3.2", "qwen2.5-coder:3b", "hf.co/org/Model-GGUF:Q4_K_M", "gpt-4o-mini"])
def test_valid_model_names(name):
    assert model_name_problem(name) is None


@pytest.mark.parametrize(
    "name",
    [
        "",
        "   ",
        "../etc/passwd",
        "a/../b",
        "%2e%2e/x",
        "llama 3",
        "llаma3",
        "x\x00y",
        "a" * 300,
        "llama3.2:1b\n",
        "x\r\nX-Injected: 1",
        42,
        None,
    ],
)
def test_invalid_model_names(name):
    assert model_name_problem(name)
