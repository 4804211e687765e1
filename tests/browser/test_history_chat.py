"""The chat console and the history page in Chromium, against a real clood in front of simulated hosts.

alpha serves llama3.2:1b (warm, fast), beta serves qwen2.5-coder:3b; beta is broken on purpose for the error tests
and mended afterwards. The history test runs last so it sees the chat tests' requests as well as its own.
"""

import re
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from hosts.simulator import GENERATION_PATHS
from tests.browser.conftest import screenshot
from tests.conftest import wait_until

TIMEOUT = 20_000  # ms; generous on purpose, nothing here measures speed

# Records every length the last reply's text goes through, to tell streaming from one late paint.
RECORD_REPLY_LENGTHS = """() => {
  window.replyLengths = [];
  const list = document.getElementById("messages");
  new MutationObserver(() => {
    const replies = list.querySelectorAll(".msg.assistant .text");
    const length = replies.length ? replies[replies.length - 1].textContent.length : 0;
    if (length && length !== window.replyLengths.at(-1)) window.replyLengths.push(length);
  }).observe(list, { subtree: true, childList: true, characterData: true });
}"""


def open_chat(page, garden):
    page.goto(garden.url + "/atc/chat")
    expect(page.locator("#model")).to_be_enabled(timeout=TIMEOUT)


def say(page, text, model):
    page.select_option("#model", model)
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


@pytest.fixture
def broken_beta(browser_garden):
    """beta's generation endpoints fail as told (`broken_beta("error")`); mended after the test."""
    config = browser_garden.sims["beta"].config

    def breaks(mode, **changes):
        config.update({"fail": mode, "fail_paths": list(GENERATION_PATHS), **changes})

    yield breaks
    config.update({"fail": None, "fail_paths": None})


def test_chat_lists_the_models_of_the_garden(page, browser_garden):
    open_chat(page, browser_garden)

    expect(page.locator("#model option[value='llama3.2:1b']")).to_have_count(1)
    expect(page.locator("#model option[value='qwen2.5-coder:3b']")).to_have_count(1)
    expect(page.locator("#model option[value='llama3.2:1b']")).to_contain_text("alpha")


def test_chat_streams_a_reply_and_logs_where_it_went(page, browser_garden):
    open_chat(page, browser_garden)
    page.evaluate(RECORD_REPLY_LENGTHS)

    say(page, "Tell me about foxes.", "llama3.2:1b")

    reply = page.locator("#messages .msg.assistant").last
    expect(reply).to_have_attribute("data-state", "done", timeout=TIMEOUT)
    expect(reply.locator(".text")).to_contain_text("quick brown fox")
    expect(reply.locator(".meta")).to_have_text("llama3.2:1b @ alpha")
    lengths = page.evaluate("window.replyLengths")
    assert len(lengths) > 5, f"the reply did not stream: {lengths}"
    assert lengths == sorted(lengths)
    row = page.locator("#routing-log tbody tr").first
    expect(row).to_have_attribute("data-state", "ok")
    expect(row.locator(".host")).to_have_text("alpha")
    expect(row.locator(".tokens")).to_have_text("40")
    expect(row.locator(".ttft")).to_have_text(re.compile(r"^\d+ ms$"))
    expect(row.locator(".speed")).to_have_text(re.compile(r"^\d+\.\d$"))
    expect(row.locator(".start")).to_have_text("warm", timeout=TIMEOUT)  # from the ATC websocket
    assert len(row.get_attribute("data-request-id")) == 16


def test_chat_works_with_the_staff_session_when_api_keys_are_required(page, browser_garden):
    browser_garden.manage("apikeys", "create", "someone-else")
    try:
        chat = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}]}
        wait_until(lambda: httpx.post(browser_garden.url + "/v1/chat/completions", json=chat).status_code == 401,
                   what="keys to be required")  # fmt: skip
        open_chat(page, browser_garden)
        say(page, "Still there?", "llama3.2:1b")
        reply = page.locator("#messages .msg.assistant").last
        expect(reply).to_have_attribute("data-state", "done", timeout=TIMEOUT)
        expect(reply.locator(".text")).to_contain_text("quick brown fox")
    finally:
        browser_garden.manage("apikeys", "remove", "someone-else")
        wait_until(lambda: httpx.post(browser_garden.url + "/v1/chat/completions", json=chat).status_code == 200,
                   what="the garden to be open again")  # fmt: skip


def sent_messages(page, text, model="llama3.2:1b"):
    """Say `text` and return the messages the page sent with it, once the reply is complete."""
    with page.expect_request(lambda request: request.url.endswith("/v1/chat/completions")) as request_info:
        say(page, text, model)
    expect(page.locator("#messages .msg.assistant").last).to_have_attribute("data-state", "done", timeout=TIMEOUT)
    return request_info.value.post_data_json["messages"]


def test_chat_keeps_the_conversation_until_a_new_chat(page, browser_garden):
    open_chat(page, browser_garden)

    sent_messages(page, "First question")
    second = sent_messages(page, "Second question")
    page.click("#new-chat")
    expect(page.locator("#messages .msg")).to_have_count(0)
    third = sent_messages(page, "Third question")

    assert [m["role"] for m in second] == ["user", "assistant", "user"]
    assert [second[0]["content"], second[2]["content"]] == ["First question", "Second question"]
    assert "quick brown fox" in second[1]["content"]
    assert third == [{"role": "user", "content": "Third question"}]


def test_chat_shows_an_http_error_from_a_failing_host(page, browser_garden, broken_beta):
    broken_beta("error", fail_status=500)
    open_chat(page, browser_garden)

    say(page, "Write a sort function.", "qwen2.5-coder:3b")

    error = page.locator("#messages .msg.error").last
    expect(error).to_be_visible(timeout=TIMEOUT)
    expect(error.locator(".text")).to_contain_text("HTTP 502")
    expect(error.locator(".text")).to_contain_text("beta answered HTTP 500")
    row = page.locator("#routing-log tbody tr").first
    expect(row).to_have_attribute("data-state", "error")
    expect(row.locator(".result")).to_have_text("HTTP 502")


def test_chat_shows_an_error_in_the_middle_of_a_stream(page, browser_garden, broken_beta):
    broken_beta("drop", fail_after_tokens=3)
    open_chat(page, browser_garden)
    say(page, "Hello!", "llama3.2:1b")
    expect(page.locator("#messages .msg.assistant").last).to_have_attribute("data-state", "done", timeout=TIMEOUT)

    say(page, "Now write a sort function.", "qwen2.5-coder:3b")

    error = page.locator("#messages .msg.error").last
    expect(error).to_be_visible(timeout=TIMEOUT)
    expect(error.locator(".text")).to_contain_text("beta")
    partial = page.locator("#messages .msg.assistant").last
    expect(partial).to_have_attribute("data-state", "error")
    expect(partial.locator(".text")).to_have_text("The quick brown ")
    row = page.locator("#routing-log tbody tr").first
    expect(row.locator(".host")).to_have_text("beta")
    expect(row).to_have_attribute("data-state", "error")
    page.fill("#prompt", "Shall we try again?")
    screenshot(page, "chat")


def request_count(garden):
    return garden.query("select count(*) as n from proxy_requestlog")[0]["n"]


def test_history_shows_hosts_and_models_and_exports_csv(page, browser_garden):
    before = request_count(browser_garden)
    with httpx.Client(base_url=browser_garden.url, timeout=30) as client:
        for stream in (False, True, False):
            chat = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
            assert client.post("/v1/chat/completions", json=chat).status_code == 200
        chat = {"model": "qwen2.5-coder:3b", "messages": [{"role": "user", "content": "code"}], "max_tokens": 8}
        assert client.post("/v1/chat/completions", json=chat).status_code == 200
        chat = {"model": "nope:1b", "messages": [{"role": "user", "content": "?"}]}
        assert client.post("/v1/chat/completions", json=chat).status_code == 404
    wait_until(lambda: request_count(browser_garden) >= before + 5, timeout=15, what="the request log to be written")

    page.goto(browser_garden.url + "/atc/history?period=24h")

    hosts = page.locator(".table-card[data-by=host]")
    models = page.locator(".table-card[data-by=model]")
    expect(hosts.locator("tr[data-name=alpha]")).to_be_visible(timeout=TIMEOUT)
    expect(hosts.locator("tr[data-name=beta]")).to_be_visible()
    expect(models.locator("tr[data-name='llama3.2:1b']")).to_be_visible()
    expect(models.locator("tr[data-name='llama3.2:1b'] td.related")).to_have_text("alpha")
    expect(page.locator("#chart-hosts canvas").first).to_be_attached(timeout=TIMEOUT)
    expect(page.locator("#chart-hours canvas").first).to_be_attached()
    screenshot(page, "history")

    with page.expect_download(timeout=TIMEOUT) as download_info:
        hosts.locator("a.csv").click()
    download = download_info.value
    text = Path(download.path()).read_text()

    assert download.suggested_filename.startswith("clood-history-by-host-24h-")
    assert download.suggested_filename.endswith(".csv")
    assert text.startswith("host,requests,errors,tokens,p50_ttft_ms,p95_ttft_ms,mean_tokens_per_s,cold,warm,models")
    assert any(line.startswith("alpha,") for line in text.splitlines())
