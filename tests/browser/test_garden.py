"""Garden operations in the browser: pull with a live progress bar (admin and ATC), a failed pull, preload, unload,
benchmark and delete showing on ATC's host cards, discover and import — against a real clood and simulated hosts."""

import re

import pytest
from playwright.sync_api import expect

from hosts.simulator import SimConfig, SimModel, start_in_thread
from tests.browser.conftest import ADMIN_PASSWORD, screenshot
from tests.conftest import CloodProcess, wait_until


@pytest.fixture(scope="module")
def garden(tmp_path_factory):
    """clood with `alpha` (pulls take a few seconds) and `beta` registered, and `gamma` listening but unregistered."""
    sims = {
        "alpha": start_in_thread(SimConfig(models=[SimModel(name="llama3.2:1b")], pull_seconds=4)),
        "beta": start_in_thread(
            SimConfig(models=[SimModel(name="qwen2.5-coder:7b")], tokens_per_second=300, ttft=0.03)
        ),  # fmt: skip
        "gamma": start_in_thread(SimConfig(models=[SimModel(name="mistral:7b")])),
    }
    server = CloodProcess(tmp_path_factory.mktemp("clood-garden"),
                          env={"CLOOD_MONITOR_INTERVAL": "1", "CLOOD_SNAPSHOT_REFRESH": "0.3"})  # fmt: skip
    server.start()
    server.manage("hosts", "add", "alpha", sims["alpha"].url)
    server.manage("hosts", "add", "beta", sims["beta"].url)
    server.manage("hosts", "refresh")
    server.sims = sims
    yield server
    server.stop()
    for sim in sims.values():
        sim.stop()


def logged_in(browser, garden, path):
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(garden.url + "/admin/login/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", ADMIN_PASSWORD)
    page.click("input[type=submit]")
    wait_until(lambda: "/admin/login" not in page.url, timeout=10, what="the admin login")
    page.goto(garden.url + path)
    page.errors = errors
    return page


@pytest.fixture
def admin(browser, garden):
    page = logged_in(browser, garden, "/admin/hosts/host/")
    yield page
    assert page.errors == []
    page.context.close()


@pytest.fixture
def atc(browser, garden):
    page = logged_in(browser, garden, "/atc/")
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=30_000)
    yield page
    assert page.errors == []
    page.context.close()


def run_host_action(page, host, action):
    page.locator("#result_list tr", has_text=host).locator("input.action-select").check()
    page.select_option("select[name=action]", action)
    page.click("button[name=index]")


def progress_values(page):
    return page.evaluate(
        "() => [...document.querySelectorAll('progress[data-field=bar]')].map((p) => p.hasAttribute('value') ? "
        "p.value : null)"
    )


def test_pull_shows_live_progress_in_the_admin_and_on_atc(admin, atc, garden):
    run_host_action(admin, "alpha", "pull_model")
    admin.fill("#id_model", "llama3.2:3b")
    admin.click("#action-form input[type=submit]")
    expect(admin.locator("span[data-field=status]")).to_have_count(1)
    card = atc.locator(".host-card[data-host='alpha']")
    expect(card.locator(".hc-operation")).to_contain_text("pull llama3.2:3b", timeout=10_000)

    seen = set()

    def finished():
        seen.update(v for v in progress_values(admin) if v is not None)
        return admin.locator("span[data-field=status]").inner_text() in ("succeeded", "failed")

    wait_until(finished, timeout=60, interval=0.05, what="the pull to finish")
    screenshot(admin, "garden-pull-done")
    assert admin.locator("span[data-field=status]").inner_text() == "succeeded"
    assert any(0 < v < 100 for v in seen), f"the bar never moved through the download: {sorted(seen)}"
    assert progress_values(admin) == [100]
    # ATC: the bar goes away and the model is on the card.
    expect(card.locator(".hc-operation")).to_have_count(0, timeout=10_000)
    expect(card.locator(".chip[data-model='llama3.2:3b']")).to_have_count(1, timeout=10_000)
    expect(atc.locator("#feed")).to_contain_text("pull llama3.2:3b on alpha done")


def test_a_pull_of_an_unknown_model_shows_the_hosts_error(admin):
    run_host_action(admin, "beta", "pull_model")
    admin.fill("#id_model", "no-such-model:13b")
    admin.click("#action-form input[type=submit]")
    expect(admin.locator("span[data-field=status]")).to_have_text("failed", timeout=30_000)
    expect(admin.locator("span[data-field=message]")).to_contain_text("file does not exist")


def test_preload_and_benchmark_show_on_the_host_card(admin, atc):
    admin.goto(admin.url.split("/admin/")[0] + "/admin/hosts/hostmodel/")
    row = admin.locator("tr[data-model='qwen2.5-coder:7b'] li[data-host='beta']")
    card = atc.locator(".host-card[data-host='beta']")
    expect(card.locator(".chips-hot .chip[data-model='qwen2.5-coder:7b']")).to_have_count(0)
    row.locator("button.op-preload").click()
    expect(card.locator(".chips-hot .chip[data-model='qwen2.5-coder:7b']")).to_have_count(1, timeout=20_000)

    admin.locator("tr[data-model='qwen2.5-coder:7b'] li[data-host='beta'] button.op-benchmark").click()
    chip = card.locator(".chip[data-model='qwen2.5-coder:7b'] .bench")
    expect(chip).to_contain_text("tok/s", timeout=30_000)
    expect(atc.locator("#feed")).to_contain_text(re.compile(r"benchmark qwen2.5-coder:7b on beta done: TTFT"))
    admin.reload()
    expect(admin.locator("tr[data-model='qwen2.5-coder:7b'] li[data-host='beta'] .bench")).to_contain_text("TTFT")
    screenshot(atc, "garden-benchmark-on-atc")


def test_discover_finds_a_host_on_loopback_and_imports_it(admin, garden):
    gamma = garden.sims["gamma"]
    admin.click("#discover-hosts")
    admin.fill("#id_subnet", "127.0.0.1")
    admin.fill("#id_ports", f"{gamma.port}, {garden.sims['alpha'].port}")
    admin.click("#discover-form input[type=submit]")
    found = admin.locator("#found")
    expect(found).to_be_visible(timeout=30_000)  # the page reloads itself when the scan finishes
    expect(found.locator(f"tr[data-base-url='{gamma.url}']")).to_contain_text("mistral:7b")
    expect(found.locator(f"tr[data-base-url='{garden.sims['alpha'].url}']")).to_contain_text("yes, as alpha")
    screenshot(admin, "garden-discover")
    admin.click("#import-form input[name=import]")
    expect(admin.locator("#result_list")).to_contain_text(f"local-{gamma.port}")


def test_an_alias_request_shows_the_model_it_became_on_atc(atc, garden):
    from openai import OpenAI

    garden.manage("aliases", "set", "fast", "no-such-model:1b", "llama3.2:1b")
    client = OpenAI(base_url=garden.url + "/v1", api_key="not-needed", max_retries=0)
    wait_until(lambda: "fast" in [m.id for m in client.models.list()], timeout=15, what="the alias to be listed")
    client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "hello"}])
    expect(atc.locator("#feed")).to_contain_text("fast → llama3.2:1b → alpha")


def test_unload_and_delete_show_on_the_host_card(admin, atc):
    models_page = admin.url.split("/admin/")[0] + "/admin/hosts/hostmodel/"
    admin.goto(models_page)
    row = admin.locator("tr[data-model='qwen2.5-coder:7b'] li[data-host='beta']")
    card = atc.locator(".host-card[data-host='beta']")
    hot = card.locator(".chips-hot .chip[data-model='qwen2.5-coder:7b']")
    if hot.count() == 0:  # loaded by the preload test when it ran first; this test does not rely on it
        row.locator("button.op-preload").click()
        expect(hot).to_have_count(1, timeout=20_000)

    admin.locator("tr[data-model='qwen2.5-coder:7b'] li[data-host='beta'] button.op-unload").click()
    expect(hot).to_have_count(0, timeout=20_000)  # still installed, no longer loaded
    expect(card.locator(".chip[data-model='qwen2.5-coder:7b']")).to_have_count(1)
    expect(atc.locator("#feed")).to_contain_text("unload qwen2.5-coder:7b on beta done")

    admin.locator("tr[data-model='qwen2.5-coder:7b'] li[data-host='beta'] a.op-delete").click()
    expect(admin.locator("#delete-model-form")).to_contain_text("Yes, delete it from beta")  # asks first
    expect(card.locator(".chip[data-model='qwen2.5-coder:7b']")).to_have_count(1)  # nothing happened yet
    admin.click("#delete-model-form input[type=submit]")
    expect(card.locator(".chip[data-model='qwen2.5-coder:7b']")).to_have_count(0, timeout=20_000)
    expect(atc.locator("#feed")).to_contain_text("delete qwen2.5-coder:7b on beta done")
    admin.goto(models_page)
    expect(admin.locator("tr[data-model='qwen2.5-coder:7b']")).to_have_count(0)
