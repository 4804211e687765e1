"""The ATC dashboard in a real browser, against a running clood with simulated hosts `alpha` and `beta`."""

import re
import threading

import openai
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import screenshot

WAIT = 20_000  # ms: generous, the page only has to get there eventually
MARKUP_PROMPT = "<img src=x onerror=alert(1)>"
SERVING = re.compile(r"\bserving\b")


@pytest.fixture
def slow_alpha(browser_garden):
    """alpha answers with 200 tokens at 40 tokens/s (5 s), so a request stays in flight while the test looks."""
    config = browser_garden.sims["alpha"].config
    before = (config.reply_tokens, config.tokens_per_second)
    config.reply_tokens, config.tokens_per_second = 200, 40
    yield
    config.reply_tokens, config.tokens_per_second = before


@pytest.fixture
def streamed_request(browser_garden):
    """Factory: `streamed_request(prompt)` streams a chat completion of llama3.2:1b in a thread; returns its handle."""
    started = []

    def start(prompt="hello"):
        request = StreamedRequest(browser_garden.url, prompt)
        started.append(request)
        return request

    yield start
    for request in started:
        request.thread.join(timeout=60)


class StreamedRequest:
    """A streamed request run in a thread with the real `openai` client; `id` is clood's request id."""

    def __init__(self, url, prompt):
        self.client = openai.OpenAI(base_url=url + "/v1", api_key="x")
        self.prompt = prompt
        self.id = None
        self.chunks = 0
        self.error = None
        self.has_id = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.has_id.wait(30), "the request never started"

    def _run(self):
        try:
            raw = self.client.chat.completions.with_raw_response.create(
                model="llama3.2:1b", messages=[{"role": "user", "content": self.prompt}], stream=True
            )
            self.id = raw.headers["x-clood-request-id"]
            self.has_id.set()
            for _ in raw.parse():
                self.chunks += 1
        except Exception as error:  # noqa: BLE001 - reported by the test through `error`
            self.error = error
        finally:
            self.has_id.set()
            self.client.close()

    def finish(self):
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "the request never finished"
        assert self.error is None, self.error
        assert self.chunks > 0


def latency_class(ms):
    """The colour the brief asks for: green under 50 ms, amber under 250 ms, else red."""
    return "lat-good" if ms < 50 else "lat-fair" if ms < 250 else "lat-bad"


def feed_seqs(page):
    return page.eval_on_selector_all("#feed li", "rows => rows.map(row => row.dataset.seq)")


def reconnect(page, fresh=False):
    """Drop the page's websocket as a network failure would, and wait until the page has a new live one.

    The page resumes with `?since=`; `fresh` makes it ask for a new snapshot instead (as after a long outage).
    """
    page.evaluate(
        "(fresh) => { window.droppedSocket = window.cloodATC.socket(); window.cloodATC.reconnect(fresh); }", fresh
    )
    page.wait_for_function(
        "() => { const s = window.cloodATC.socket(); return s && s !== window.droppedSocket && s.readyState === 1; }",
        timeout=WAIT,
    )
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT)


def test_dashboard_shows_each_host_with_its_models(dashboard):
    alpha = dashboard.locator(".host-card[data-host=alpha]")
    beta = dashboard.locator(".host-card[data-host=beta]")
    expect(alpha.locator(".hc-name")).to_have_text("alpha", timeout=WAIT)
    expect(alpha.locator(".hc-badge")).to_have_text("online", timeout=WAIT)
    expect(alpha.locator(".chips-hot")).to_contain_text("llama3.2:1b")
    expect(alpha.locator(".chips-hot")).not_to_contain_text("nomic-embed-text")
    expect(alpha.locator(".chips:not(.chips-hot)")).to_contain_text("nomic-embed-text")
    expect(beta.locator(".hc-badge")).to_have_text("online", timeout=WAIT)
    expect(beta.locator(".chips:not(.chips-hot)")).to_contain_text("qwen2.5-coder:3b")
    expect(dashboard.locator("#stat-hosts")).to_have_text("2/2", timeout=WAIT)
    latency = alpha.locator(".hc-latency")
    expect(latency).to_have_text(re.compile(r"^\d+ ms$"), timeout=WAIT)
    assert latency.get_attribute("class").split()[-1] == latency_class(int(latency.inner_text().split()[0]))
    screenshot(dashboard, "dashboard")


def test_streamed_request_is_in_flight_then_in_the_feed(dashboard, slow_alpha, streamed_request):
    request = streamed_request("tell me about routers")
    row = dashboard.locator(f"#flights-body tr[data-id='{request.id}']")
    expect(row.locator(".col-model")).to_have_text("llama3.2:1b", timeout=WAIT)
    expect(row.locator(".col-host")).to_have_text("alpha")
    expect(row.locator(".col-warmth")).to_have_text("warm")
    expect(row.locator(".col-tokens")).not_to_have_text("0", timeout=WAIT)  # tokens so far, from `tick`
    expect(row.locator(".col-ttft")).to_contain_text("ms", timeout=WAIT)
    alpha = dashboard.locator(".host-card[data-host=alpha]")
    expect(alpha).to_have_class(SERVING)
    expect(alpha.locator(".chip.serving")).to_have_text("llama3.2:1b")
    screenshot(dashboard, "dashboard-in-flight")

    request.finish()
    expect(row).to_have_count(0, timeout=WAIT)
    completed = dashboard.locator(f"#feed li[data-type=request_completed][data-request='{request.id}']")
    expect(completed).to_have_attribute("data-host", "alpha", timeout=WAIT)
    expect(completed).to_contain_text("completed llama3.2:1b on alpha in")
    expect(dashboard.locator(f"#feed li[data-type=request_started][data-request='{request.id}']")).to_contain_text(
        "llama3.2:1b → alpha (warm)"
    )
    expect(alpha).not_to_have_class(SERVING, timeout=WAIT)


def test_routing_event_opens_the_decision(dashboard, streamed_request):
    request = streamed_request("which host?")
    request.finish()
    started = dashboard.locator(f"#feed li[data-type=request_started][data-request='{request.id}']")
    started.click(timeout=WAIT)
    detail = dashboard.locator("#detail")
    expect(detail).to_be_visible()
    expect(detail.locator(".facts")).to_contain_text("smart")
    expect(detail.locator(".facts")).to_contain_text("alpha has it loaded")
    chosen = detail.locator(".candidates tbody tr").first
    expect(chosen).to_have_class(re.compile(r"\bchosen\b"))
    expect(chosen.locator("td").nth(0)).to_have_text("1")
    expect(chosen.locator("td").nth(1)).to_have_text("alpha")
    expect(chosen.locator("td").nth(2)).to_have_text("loaded")
    expect(detail.locator(".excluded")).to_contain_text("beta")
    expect(detail.locator(".excluded")).to_contain_text("does not have the model")
    screenshot(dashboard, "dashboard-decision")
    dashboard.click("#detail-close")
    expect(detail).to_be_hidden()


def test_host_that_stops_answering_turns_offline(dashboard, browser_garden):
    beta = dashboard.locator(".host-card[data-host=beta]")
    expect(beta.locator(".hc-badge")).to_have_text("online", timeout=WAIT)
    browser_garden.sims["beta"].config.fail = "error"
    try:
        expect(beta.locator(".hc-badge")).to_have_text("offline", timeout=WAIT)
        expect(beta).to_have_class(re.compile(r"\bstatus-offline\b"))
        expect(beta.locator(".hc-error")).to_be_visible()
        expect(dashboard.locator("#stat-hosts")).to_have_text("1/2")
        expect(dashboard.locator("#feed li[data-type=host_status][data-host=beta].ev-bad").first).to_contain_text(
            "beta went offline"
        )
        screenshot(dashboard, "dashboard-host-offline")
    finally:
        browser_garden.sims["beta"].config.fail = None
    expect(beta.locator(".hc-badge")).to_have_text("online", timeout=WAIT)
    expect(beta.locator(".hc-error")).to_be_hidden()


def test_reconnecting_never_duplicates_rows(dashboard, slow_alpha, streamed_request):
    request = streamed_request("still here?")
    in_flight = dashboard.locator(f"#flights-body tr[data-id='{request.id}']")
    started = dashboard.locator(f"#feed li[data-type=request_started][data-request='{request.id}']")
    expect(in_flight).to_have_count(1, timeout=WAIT)
    expect(started).to_have_count(1, timeout=WAIT)

    reconnect(dashboard)  # resumes with ?since=
    expect(in_flight).to_have_count(1)
    expect(started).to_have_count(1)
    reconnect(dashboard, fresh=True)  # a snapshot rebuilds the page's state
    expect(in_flight).to_have_count(1)
    expect(started).to_have_count(1)
    reconnect(dashboard)
    expect(in_flight).to_have_count(1)

    request.finish()
    completed = dashboard.locator(f"#feed li[data-type=request_completed][data-request='{request.id}']")
    expect(completed).to_have_count(1, timeout=WAIT)
    expect(in_flight).to_have_count(0)
    expect(started).to_have_count(1)
    seqs = feed_seqs(dashboard)
    assert len(seqs) == len(set(seqs)), "a feed row was shown twice"

    dashboard.reload()  # a new snapshot rebuilds the page
    expect(dashboard.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT)
    expect(completed).to_have_count(1, timeout=WAIT)
    expect(started).to_have_count(1)
    reconnect(dashboard)
    expect(completed).to_have_count(1)
    seqs = feed_seqs(dashboard)
    assert len(seqs) == len(set(seqs)), "a feed row was shown twice"


def test_markup_in_a_prompt_shows_as_text(dashboard, streamed_request):
    dialogs = []
    dashboard.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    request = streamed_request(MARKUP_PROMPT)
    request.finish()
    started = dashboard.locator(f"#feed li[data-type=request_started][data-request='{request.id}']")
    expect(started.locator(".ev-prompt")).to_have_text(MARKUP_PROMPT, timeout=WAIT)
    started.click()
    expect(dashboard.locator("#detail .facts")).to_contain_text(MARKUP_PROMPT)
    expect(dashboard.locator("#atc img")).to_have_count(0)
    screenshot(dashboard, "dashboard-markup")
    assert dialogs == []


def test_logged_out_page_offers_to_log_in(dashboard):
    dashboard.context.clear_cookies()
    dashboard.evaluate("() => window.cloodATC.socket().close()")  # the reconnect is refused with 4401
    login = dashboard.locator("#login")
    expect(login).to_be_visible(timeout=WAIT)
    expect(login).to_have_attribute("href", "/admin/login/?next=/atc/")
    expect(dashboard.locator("#conn")).to_have_attribute("data-state", "logged out")


def test_anonymous_visitor_is_sent_to_login(browser, browser_garden):
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(browser_garden.url + "/atc/")
        expect(page).to_have_url(browser_garden.url + "/admin/login/?next=/atc/", timeout=WAIT)
        expect(page.locator("#id_username")).to_be_visible()
    finally:
        context.close()


def test_dashboard_fits_a_1280_wide_screen(dashboard, slow_alpha, streamed_request):
    dashboard.set_viewport_size({"width": 1280, "height": 900})
    request = streamed_request("narrow screen")
    expect(dashboard.locator(f"#flights-body tr[data-id='{request.id}']")).to_have_count(1, timeout=WAIT)
    # The charts re-size after the viewport does: wait for the layout to settle, then it must not scroll sideways.
    dashboard.wait_for_function("() => document.documentElement.scrollWidth <= 1280", timeout=WAIT)
    screenshot(dashboard, "dashboard-1280")
