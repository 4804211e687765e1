"""The catfight analysis panel on the ATC dashboard, against a running clood with simulated hosts `alpha` and `beta`."""

import re

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import screenshot

WAIT = 30_000  # ms: generous, the page only has to get there eventually
PROMPT = "Explain in two sentences why a router needs a routing table."
MARKUP_PROMPT = "<img src=x onerror=alert(1)> which is faster?"
CONTESTANTS = [{"model": "llama3.2:1b", "host": "alpha"}, {"model": "qwen2.5-coder:3b", "host": "beta"}]
CATFIGHT = re.compile(r"\bcatfight\b")


@pytest.fixture
def sim_config(browser_garden):
    """Factory: `sim_config(host, **changes)` changes a simulated host for this test; undone afterwards."""
    changed = []

    def change(host, **changes):
        config = browser_garden.sims[host].config
        changed.append((config, {name: getattr(config, name) for name in changes}))
        config.update(changes)

    yield change
    for config, before in reversed(changed):
        config.update(before)


def start_catfight(garden, prompt):
    answer = httpx.post(garden.url + "/catfights", json={"prompt": prompt, "contestants": CONTESTANTS}, timeout=30)
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def test_panel_follows_a_catfight_then_keeps_its_ranking(dashboard, browser_garden, sim_config):
    # alpha answers in about 5 s, beta in about 10 s: alpha wins "fastest", and beta is still at it when alpha is done.
    sim_config("alpha", reply_tokens=200, tokens_per_second=40)
    sim_config("beta", reply_tokens=200, tokens_per_second=20)
    catfight_id = start_catfight(browser_garden, PROMPT)

    panel = dashboard.locator("#fight")
    expect(panel).to_be_visible(timeout=WAIT)
    expect(panel).to_have_attribute("data-catfight", str(catfight_id))
    expect(panel).to_have_attribute("data-state", "running")
    expect(dashboard.locator("#fight-title")).to_contain_text(f"Catfight #{catfight_id}:")
    expect(dashboard.locator("#fight-prompt")).to_have_text(PROMPT)
    expect(dashboard.locator("#fight-state")).to_have_text("running")
    rows = panel.locator("#fight-body tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0).locator(".col-contestant")).to_have_text("llama3.2:1b @ alpha")
    expect(rows.nth(1).locator(".col-contestant")).to_have_text("qwen2.5-coder:3b @ beta")
    alpha_phase = panel.locator("#fight-body tr[data-host=alpha] .col-phase")
    beta_phase = panel.locator("#fight-body tr[data-host=beta] .col-phase")
    expect(alpha_phase).to_have_text(re.compile(r"^first token after \d+ ms$"), timeout=WAIT)
    expect(beta_phase).to_have_text(re.compile(r"^first token after \d+ ms$"), timeout=WAIT)

    alpha = dashboard.locator(".host-card[data-host=alpha]")
    beta = dashboard.locator(".host-card[data-host=beta]")
    expect(alpha).to_have_class(CATFIGHT)
    expect(alpha.locator(".hc-fight")).to_be_visible()
    expect(alpha.locator(".chip.fighting")).to_have_text("llama3.2:1b")
    expect(beta).to_have_class(CATFIGHT)
    expect(beta.locator(".chip.fighting")).to_have_text("qwen2.5-coder:3b")
    screenshot(dashboard, "analysis-running")

    # alpha is done first: its row says so and its card calms down while beta's still fights.
    expect(alpha_phase).to_have_text(re.compile(r"^done in [\d.]+ s at [\d.]+ tok/s$"), timeout=WAIT)
    expect(alpha).not_to_have_class(CATFIGHT)
    expect(alpha.locator(".hc-fight")).to_be_hidden()

    expect(panel).to_have_attribute("data-state", "done", timeout=WAIT)
    expect(dashboard.locator("#fight-state")).to_have_text("done")
    expect_ranking(dashboard, catfight_id)
    expect(beta).not_to_have_class(CATFIGHT)
    expect(beta.locator(".chip.fighting")).to_have_count(0)

    feed = dashboard.locator("#feed")
    expect(feed.locator(f"li[data-type=catfight_started][data-catfight='{catfight_id}'] .ev-text")).to_have_text(
        f"catfight #{catfight_id} started: llama3.2:1b @ alpha vs qwen2.5-coder:3b @ beta"
    )
    expect(feed.locator(f"li[data-type=catfight_started][data-catfight='{catfight_id}'] .ev-prompt")).to_have_text(
        PROMPT
    )
    expect(feed.locator("li[data-type=catfight_entry][data-host=alpha]").first).to_contain_text(
        f"catfight #{catfight_id}: llama3.2:1b on alpha done in"
    )
    completed = feed.locator(f"li[data-type=catfight_completed][data-catfight='{catfight_id}']")
    expect(completed).to_contain_text(f"catfight #{catfight_id} completed: llama3.2:1b on alpha wins (fastest)")
    expect(completed.locator("a")).to_have_attribute("href", f"/atc/catfight/{catfight_id}")
    screenshot(dashboard, "analysis-done")

    dashboard.reload()  # the snapshot's recent events bring the result back
    expect(dashboard.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT)
    expect(panel).to_have_attribute("data-state", "done", timeout=WAIT)
    expect_ranking(dashboard, catfight_id)
    expect(alpha).not_to_have_class(CATFIGHT)

    dashboard.set_viewport_size({"width": 1280, "height": 900})
    expect(panel).to_be_visible()
    # The charts re-size after the viewport does: wait for the layout to settle, then it must not scroll sideways.
    dashboard.wait_for_function("() => document.documentElement.scrollWidth <= 1280", timeout=WAIT)
    screenshot(dashboard, "analysis-1280")

    dashboard.click("#fight-close")
    expect(panel).to_be_hidden()
    expect(dashboard.locator(".host-card[data-host=alpha]")).to_be_visible()


def expect_ranking(page, catfight_id):
    panel = page.locator("#fight")
    rows = panel.locator("#fight-body tr")
    expect(rows).to_have_count(2, timeout=WAIT)
    winner = rows.nth(0)
    expect(winner).to_have_class(re.compile(r"\bwinner\b"))
    expect(winner.locator(".col-rank")).to_have_text("1")
    expect(winner.locator(".col-contestant")).to_have_text("llama3.2:1b @ alpha")
    expect(winner.locator(".col-outcome")).to_have_text("★ winner")
    expect(winner.locator("td.num").nth(1)).to_have_text(re.compile(r"^[\d.]+ s$"))  # duration
    expect(rows.nth(1).locator(".col-rank")).to_have_text("2")
    expect(rows.nth(1).locator(".col-contestant")).to_have_text("qwen2.5-coder:3b @ beta")
    expect(rows.nth(1)).not_to_have_class(re.compile(r"\bwinner\b"))
    expect(page.locator("#fight-summary")).to_contain_text("llama3.2:1b on alpha wins (fastest)")
    expect(page.locator("#fight-link")).to_have_attribute("href", f"/atc/catfight/{catfight_id}")


def test_catfight_where_everyone_fails_has_no_winner(dashboard, browser_garden, sim_config):
    dialogs = []
    dashboard.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    for host in ("alpha", "beta"):  # generation fails; health checks still pass
        sim_config(host, fail="error", fail_paths=["/api/chat", "/v1/chat/completions"])
    catfight_id = start_catfight(browser_garden, MARKUP_PROMPT)

    panel = dashboard.locator("#fight")
    expect(panel).to_have_attribute("data-catfight", str(catfight_id), timeout=WAIT)
    expect(panel).to_have_attribute("data-state", "done", timeout=WAIT)
    expect(dashboard.locator("#fight-state")).to_have_text("no winner")
    expect(dashboard.locator("#fight-prompt")).to_have_text(MARKUP_PROMPT)
    expect(dashboard.locator("#fight-summary")).to_contain_text("No winner")
    rows = panel.locator("#fight-body tr")
    expect(rows).to_have_count(2)
    for row in (rows.nth(0), rows.nth(1)):
        expect(row).to_have_attribute("data-status", "failed")
        expect(row.locator(".col-rank")).to_have_text("–")
        expect(row.locator(".col-outcome")).to_have_text(re.compile(r"^failed: "))
    expect(panel.locator("tr.winner")).to_have_count(0)
    expect(
        dashboard.locator(f"#feed li[data-type=catfight_entry][data-catfight='{catfight_id}'].ev-bad")
    ).to_have_count(2)
    expect(dashboard.locator(f"#feed li[data-type=catfight_completed][data-catfight='{catfight_id}']")).to_contain_text(
        f"catfight #{catfight_id} completed: No winner"
    )
    expect(dashboard.locator(".host-card.catfight")).to_have_count(0)
    expect(dashboard.locator("#atc img")).to_have_count(0)
    screenshot(dashboard, "analysis-no-winner")
    assert dialogs == []
