"""The aliases panel of the ATC dashboard in a real browser: an alias made, changed and deleted in the admin shows
at once, with the model a request would get now, which follows the hosts going offline and coming back."""

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import screenshot

WAIT = 20_000  # ms


@pytest.fixture
def admin_tab(page, browser_garden):
    """A second tab of the logged-in admin, for editing aliases while the dashboard watches."""
    tab = page.context.new_page()
    yield tab
    tab.close()


def save_alias(tab, url, name, targets, change_url=None):
    tab.goto(url + (change_url or "/admin/proxy/alias/add/"))
    tab.fill("#id_name", name)
    tab.fill("#id_targets", "\n".join(targets))
    tab.click("input[name=_save]")
    expect(tab.locator(".messagelist")).to_contain_text("successfully", timeout=WAIT)


def test_aliases_show_what_they_would_serve_and_follow_the_admin_and_the_hosts(dashboard, admin_tab, browser_garden):
    url = browser_garden.url
    panel = dashboard.locator("#aliases-panel")
    expect(panel).to_be_hidden()  # no aliases yet

    save_alias(admin_tab, url, "fast", ["phi3:mini", "llama3.2:1b"])
    fast = dashboard.locator("#aliases-body tr[data-alias=fast]")
    expect(panel).to_be_visible(timeout=WAIT)
    expect(fast.locator(".alias-target")).to_have_text(["phi3:mini", "llama3.2:1b"])
    expect(fast.locator(".alias-target.serving")).to_have_text("llama3.2:1b")  # phi3:mini: no host has it
    expect(fast.locator("td").nth(2)).to_have_text("llama3.2:1b")
    expect(dashboard.locator("#feed li[data-type=aliases_changed]").first).to_contain_text("aliases now: fast")

    save_alias(admin_tab, url, "auto", ["fast", "qwen2.5-coder:3b"])
    auto = dashboard.locator("#aliases-body tr[data-alias=auto]")
    expect(auto.locator("td").nth(2)).to_have_text(
        "by the prompt: fast → llama3.2:1b; qwen2.5-coder:3b → qwen2.5-coder:3b", timeout=WAIT
    )
    expect(dashboard.locator("#aliases-count")).to_have_text("2")
    screenshot(dashboard, "dashboard-aliases")

    alpha = browser_garden.sims["alpha"].config
    alpha.fail = "error"  # alpha, the only host with llama3.2:1b, goes offline
    try:
        expect(fast.locator("td").nth(2)).to_have_text("nothing: no usable host has any of these models", timeout=WAIT)
        expect(fast.locator(".alias-target.serving")).to_have_count(0)
        expect(auto.locator("td").nth(2)).to_contain_text("fast → nothing")
    finally:
        alpha.fail = None
    expect(fast.locator("td").nth(2)).to_have_text("llama3.2:1b", timeout=WAIT)

    # A change from the command line (another process) reaches the page too: the server notices it on its reload.
    browser_garden.manage("aliases", "set", "code", "qwen2.5-coder:7b", "qwen2.5-coder:3b")
    code = dashboard.locator("#aliases-body tr[data-alias=code]")
    expect(code.locator(".alias-target.serving")).to_have_text("qwen2.5-coder:3b", timeout=WAIT)
    expect(dashboard.locator("#aliases-count")).to_have_text("3")
    expect(dashboard.locator("#feed li[data-type=aliases_changed]").first).to_contain_text("auto, code, fast")
    assert dashboard.locator("#feed li[data-type=aliases_changed]").count() == 3  # once per change

    admin_tab.goto(url + "/admin/proxy/alias/")
    admin_tab.locator("#result_list th a", has_text="auto").click()
    admin_tab.click("a.deletelink")
    admin_tab.click("input[type=submit]")  # "Yes, I'm sure"
    expect(auto).to_have_count(0, timeout=WAIT)
    expect(dashboard.locator("#aliases-count")).to_have_text("2")

    dashboard.reload()  # a new snapshot says the same
    expect(dashboard.locator("#aliases-body tr")).to_have_count(2, timeout=WAIT)
    expect(dashboard.locator("#aliases-body tr[data-alias=fast] td").nth(2)).to_have_text("llama3.2:1b")
