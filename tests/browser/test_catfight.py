"""Catfight pages in Chromium, against a real clood in front of the simulated hosts alpha and beta.

alpha serves llama3.2:1b (loaded, 40 tokens/s), beta serves qwen2.5-coder:3b (20 tokens/s); the catfight API
runs the contestants for real, and the pages read it as a person's browser would.
"""

import re
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from hosts.simulator import GENERATION_PATHS
from tests.browser.conftest import screenshot
from tests.conftest import wait_until

TIMEOUT = 30_000  # ms; generous on purpose, nothing here measures speed
CONTESTANTS = [{"model": "llama3.2:1b", "host": "alpha"}, {"model": "qwen2.5-coder:3b", "host": "beta"}]

# Records every length each column's answer goes through, to tell streaming from one late paint.
RECORD_ANSWER_LENGTHS = """() => {
  window.answerLengths = {};
  const columns = document.getElementById("columns");
  new MutationObserver(() => {
    for (const column of columns.querySelectorAll(".cf-col")) {
      const lengths = (window.answerLengths[column.dataset.entry] ??= []);
      const length = column.querySelector(".cf-output").textContent.length;
      if (length && length !== lengths.at(-1)) lengths.push(length);
    }
  }).observe(columns, { subtree: true, childList: true, characterData: true });
}"""


@pytest.fixture
def catfight_page(page):
    """The logged-in page; a script error on it fails the test."""
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    assert errors == []


@pytest.fixture
def long_answers(browser_garden):
    """Answers that take seconds (alpha 120 tokens at 40/s, beta 100 at 20/s), so the test can watch them grow."""
    configs = [browser_garden.sims[name].config for name in ("alpha", "beta")]
    before = [(config.reply_tokens, config.tokens_per_second) for config in configs]
    configs[0].update({"reply_tokens": 120, "tokens_per_second": 40})
    configs[1].update({"reply_tokens": 100, "tokens_per_second": 20})
    yield
    for config, (tokens, speed) in zip(configs, before, strict=True):
        config.update({"reply_tokens": tokens, "tokens_per_second": speed})


@pytest.fixture
def broken_beta(browser_garden):
    """beta cuts its answers off after three tokens; mended after the test."""
    config = browser_garden.sims["beta"].config
    config.update({"fail": "drop", "fail_after_tokens": 3, "fail_paths": list(GENERATION_PATHS)})
    yield
    config.update({"fail": None, "fail_paths": None})


def run_catfight(garden, prompt):
    """Start a catfight of CONTESTANTS through the API and return it once it is completed."""
    with httpx.Client(base_url=garden.url, timeout=30) as client:
        started = client.post("/catfights", json={"prompt": prompt, "contestants": CONTESTANTS})
        assert started.status_code == 201, started.text

        def completed():
            catfight = client.get(f"/catfights/{started.json()['id']}").json()
            return catfight if catfight["status"] == "completed" else None

        return wait_until(completed, timeout=30, interval=0.2, what="the catfight to complete")


def column(page, model, host):
    return page.locator(f".cf-col[data-model='{model}'][data-host='{host}']")


def test_a_catfight_from_the_form_streams_both_answers_and_ranks_a_winner(catfight_page, browser_garden, long_answers):
    page = catfight_page
    page.goto(browser_garden.url + "/atc/catfight")
    alpha = page.get_by_label("llama3.2:1b @ alpha")
    expect(alpha).to_be_enabled(timeout=TIMEOUT)
    expect(page.locator("#grid input[data-model='qwen2.5-coder:3b'][data-host='alpha']")).to_have_count(0)
    expect(page.get_by_label("nomic-embed-text:latest @ alpha")).to_be_disabled()  # embeddings cannot answer

    page.fill("#prompt", "Tell me about foxes.")
    alpha.check()
    page.get_by_label("qwen2.5-coder:3b @ beta").check()
    expect(page.locator("#picked-count")).to_have_text("2")
    with page.expect_request(lambda request: request.url.endswith("/catfights")) as posted:
        page.click("#start")
    assert posted.value.post_data_json["contestants"] == CONTESTANTS
    assert posted.value.post_data_json["rank_by"] == "fastest"

    page.wait_for_url(re.compile(r"/atc/catfight/\d+$"), timeout=TIMEOUT)
    page.evaluate(RECORD_ANSWER_LENGTHS)
    llama, qwen = column(page, "llama3.2:1b", "alpha"), column(page, "qwen2.5-coder:3b", "beta")
    expect(qwen).to_have_attribute("data-status", "running", timeout=TIMEOUT)
    expect(qwen.locator(".cf-output")).to_contain_text("quick brown", timeout=TIMEOUT)
    expect(qwen.locator(".cf-fig-speed dd")).to_have_text(re.compile(r"^≈ \d+\.\d$"), timeout=TIMEOUT)  # measured live
    expect(page.locator("#status")).to_have_text("running")
    expect(page.locator("#question-prompt")).to_have_text("Tell me about foxes.")
    screenshot(page, "catfight-live")

    expect(page.locator("#catfight")).to_have_attribute("data-status", "completed", timeout=TIMEOUT)
    lengths = page.evaluate("window.answerLengths")
    assert len(lengths) == 2
    for grown in lengths.values():
        assert len(grown) > 3, f"an answer did not stream: {lengths}"
        assert grown == sorted(grown)
    expect(llama).to_have_class(re.compile(r"\bwinner\b"))
    expect(llama.locator(".cf-badge-rank")).to_have_text("#1 winner")
    expect(qwen.locator(".cf-badge-rank")).to_have_text("#2")
    expect(llama.locator(".cf-fig-tokens dd")).to_have_text("120")
    expect(qwen.locator(".cf-fig-speed dd")).to_have_text(re.compile(r"^\d+\.\d$"))
    expect(llama.locator(".cf-badge-start")).to_have_text("warm")
    rows = page.locator("#ranking tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.first).to_have_class(re.compile(r"\bwinner\b"))
    expect(rows.first.locator(".cf-who")).to_have_text("llama3.2:1b @ alpha")
    expect(rows.nth(1).locator(".cf-place")).to_have_text("2")
    expect(page.locator("#summary")).to_contain_text("llama3.2:1b")
    screenshot(page, "catfight-done")


def test_a_finished_catfight_is_in_the_history_and_exports_markdown(catfight_page, browser_garden):
    page = catfight_page
    catfight = run_catfight(browser_garden, "Which is quicker, <b>the fox</b> or the dog?")

    page.goto(browser_garden.url + "/atc/catfights")
    row = page.locator(f"#catfights tbody tr[data-id='{catfight['id']}']")
    expect(row).to_be_visible(timeout=TIMEOUT)
    expect(row.locator(".cf-prompt-cell")).to_have_text("Which is quicker, <b>the fox</b> or the dog?")  # as text
    expect(row.locator(".winner-cell")).to_contain_text("@")
    expect(row).to_have_attribute("data-status", "completed")
    screenshot(page, "catfights")

    row.locator(".cf-prompt-cell a").click()
    page.wait_for_url(f"**/atc/catfight/{catfight['id']}", timeout=TIMEOUT)
    expect(page.locator("#ranking tbody tr.winner")).to_have_count(1, timeout=TIMEOUT)
    with page.expect_download(timeout=TIMEOUT) as download_info:
        page.click("#export-md")
    download = download_info.value
    text = Path(download.path()).read_text()

    assert download.suggested_filename == f"catfight-{catfight['id']}.md"
    assert text.startswith(f"# Catfight {catfight['id']}")
    assert "Which is quicker" in text
    assert "llama3.2:1b" in text and "qwen2.5-coder:3b" in text


def test_the_leaderboard_lists_every_contestant(catfight_page, browser_garden):
    page = catfight_page
    run_catfight(browser_garden, "Count to ten.")

    page.goto(browser_garden.url + "/atc/catfights/leaderboard")

    board = page.locator("#leaderboard tbody")
    llama = board.locator("tr[data-model='llama3.2:1b'][data-host='alpha']")
    qwen = board.locator("tr[data-model='qwen2.5-coder:3b'][data-host='beta']")
    expect(llama).to_be_visible(timeout=TIMEOUT)
    expect(qwen).to_be_visible()
    runs = int(llama.locator("td").nth(3).inner_text())
    assert runs >= 1
    expect(qwen.locator("td").nth(3)).to_have_text(str(runs))  # both fought every catfight of this module
    wins = [int(row.locator(".cf-wins").inner_text()) for row in (llama, qwen)]
    assert sum(wins) >= 1
    expect(page.locator("#chart-speed canvas").first).to_be_attached(timeout=TIMEOUT)
    expect(page.locator("#chart-wins canvas").first).to_be_attached()
    screenshot(page, "leaderboard")


def test_a_contestant_that_fails_is_marked_and_never_wins(catfight_page, browser_garden, broken_beta):
    page = catfight_page
    catfight = run_catfight(browser_garden, "Write a sort function.")

    page.goto(f"{browser_garden.url}/atc/catfight/{catfight['id']}")

    qwen = column(page, "qwen2.5-coder:3b", "beta")
    expect(qwen).to_have_attribute("data-status", "failed", timeout=TIMEOUT)
    expect(qwen.locator(".cf-col-error")).to_contain_text("beta")
    expect(qwen).not_to_have_class(re.compile(r"\bwinner\b"))
    failed = page.locator("#ranking tbody tr[data-status='failed']")
    expect(failed.locator(".cf-who")).to_have_text("qwen2.5-coder:3b @ beta")
    expect(failed.locator(".cf-place")).to_have_text("–")
    expect(failed.locator(".cf-outcome")).to_contain_text("failed")
    expect(page.locator("#ranking tbody tr.winner .cf-who")).to_have_text("llama3.2:1b @ alpha")


def test_an_unknown_catfight_says_so(catfight_page, browser_garden):
    page = catfight_page
    page.goto(browser_garden.url + "/atc/catfight/999999")

    expect(page.locator("#problem")).to_contain_text("There is no catfight #999999", timeout=TIMEOUT)
    expect(page.locator("#status")).to_have_text("not found")


def test_the_form_asks_for_two_contestants_before_it_starts(catfight_page, browser_garden):
    page = catfight_page
    posts = []
    page.on("request", lambda request: posts.append(request) if request.method == "POST" else None)
    page.goto(browser_garden.url + "/atc/catfight")
    expect(page.get_by_label("llama3.2:1b @ alpha")).to_be_enabled(timeout=TIMEOUT)

    page.fill("#prompt", "Alone?")
    page.get_by_label("llama3.2:1b @ alpha").check()
    page.click("#start")

    expect(page.locator("#form-error")).to_have_text("Pick at least two contestants (model @ host).")
    assert posts == []
