"""Browser tests: Playwright for Python driving Debian's Chromium against a real clood and simulated hosts.

Screenshots go to `test-artifacts/` at the top of the project (kept out of git) so people can look at the pages.
"""

from pathlib import Path

import pytest
from playwright.sync_api import expect

from hosts.simulator import SimModel
from tests import canaries
from tests.conftest import ROOT, CloodProcess, wait_until

ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]  # fmt: skip
ADMIN_PASSWORD = canaries.ADMIN_PASSWORD  # what CloodProcess sets


@pytest.fixture(scope="module")  # not session: Playwright's sync API holds an event loop while it is open
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is not installed: ./clood test installs it with apt")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def browser_garden(tmp_path_factory):
    """A running clood with two simulated hosts (`alpha` warm and fast, `beta` slower), checked every second."""
    from hosts.simulator import SimConfig, start_in_thread

    sims = {
        "alpha": start_in_thread(SimConfig(models=[SimModel(name="llama3.2:1b", loaded=True),
                                                   SimModel(name="nomic-embed-text")],  # fmt: skip
                                           ttft=0.05, tokens_per_second=40, reply_tokens=40)),
        "beta": start_in_thread(SimConfig(models=[SimModel(name="qwen2.5-coder:3b")], ttft=0.1,
                                          tokens_per_second=20, reply_tokens=30)),
    }  # fmt: skip
    server = CloodProcess(
        tmp_path_factory.mktemp("clood-browser"),
        env={"CLOOD_MONITOR_INTERVAL": "1", "CLOOD_SNAPSHOT_REFRESH": "0.3", "CLOOD_LOG_FLUSH_INTERVAL": "0.3"},
    )
    server.start()
    keyed = ("--api-key-env", "CLOOD_TEST_HOST_KEY")  # a canary: the pages must never show it (tests/canaries.py)
    server.manage("hosts", "add", "alpha", sims["alpha"].url, "--priority", "1", *keyed)
    server.manage("hosts", "add", "beta", sims["beta"].url, "--priority", "2", *keyed)
    server.manage("hosts", "refresh")
    server.sims = sims
    yield server
    server.stop()
    for sim in sims.values():
        sim.stop()


@pytest.fixture
def page(browser, browser_garden):
    """A page logged in as the admin (staff) user."""
    context = browser.new_context(viewport={"width": 1920, "height": 1080})
    page = context.new_page()
    page.goto(browser_garden.url + "/admin/login/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", ADMIN_PASSWORD)
    page.click("input[type=submit]")
    wait_until(lambda: "/admin/login" not in page.url, timeout=10, what="the admin login")
    yield page
    context.close()


@pytest.fixture
def dashboard(page, browser_garden):
    """The logged-in page on /atc/, with its websocket live. A script error on the page fails the test."""
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    def on_console(message):
        if message.type == "error" and message.text.startswith("ATC"):  # an event the page could not show
            errors.append(message.text)

    page.on("console", on_console)
    page.goto(browser_garden.url + "/atc/")
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=30_000)
    yield page
    assert errors == []


def screenshot(page, name):
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
