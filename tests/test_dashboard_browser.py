"""The operator dashboard in a real browser: Debian's chromium driven by Playwright, against a real
`dloop run` on a devnet with the demo's 49 proposals (and an API token, so the trigger must ask for it).

Playwright's own browser download cannot work here: it launches the system chromium. A missing chromium is a
visible skip, or a failure under `CI=true` (.ci/run installs it). Screenshots land in the test's temporary
folder; `DLOOP_DASHBOARD_SCREENSHOT=docs/dashboard.png` also writes the README's one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.support.chain import Chain
from tests.support.chaos import DloopRun, service_env, settled
from tests.support.database import migrate
from tests.support.waiting import poll_until

pytestmark = [pytest.mark.slow, pytest.mark.devnet(proposals=49)]

CHROMIUM = Path(os.environ.get("DLOOP_CHROMIUM", "/usr/bin/chromium"))
# Without the background-networking flags chromium keeps calling home, which floods a closed network.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "dashboard-test-token"
HOSTILE = "<img src=x onerror=alert(1)>"
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"


def _need_chromium() -> None:
    if CHROMIUM.exists():
        return
    message = f"no chromium at {CHROMIUM}: `apt-get install chromium` (.ci/run does) to run the browser tests"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module", autouse=True)
def chromium_present() -> None:
    """First of all: without a browser the module skips (or fails under CI) before starting any chain."""
    _need_chromium()


@pytest.fixture(scope="module")
def service(module_chain: Chain, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DloopRun]:
    anvil, info = module_chain
    folder = tmp_path_factory.mktemp("dashboard")
    env = service_env(
        anvil.ws_url,
        info,
        folder / "dloop.db",
        DLOOP_API_TOKEN=TOKEN,
        DLOOP_ALERT_INTERVAL="0.5",  # the banner test's alert fires and resolves within a second
        # An automining chain makes no block while idle: with the default 30 s the module would see
        # ListenerDown (and an unhealthy head) after a minute of nothing to mine.
        DLOOP_HEAD_TIMEOUT="600",
    )
    migrate(folder / "dloop.db")
    with DloopRun(env, folder, folder / "dloop.log") as run:
        run.wait_live(60)
        poll_until(lambda: settled(folder / "dloop.db", 49 * 5), timeout=120, what="the 49 proposals voted")
        yield run


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright  # imported here: without chromium the module only skips

    with sync_playwright() as playwright:
        # launch() gives every run a fresh temporary profile (user-data-dir).
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


class Watched:
    """A page with its console errors, failed requests, HTTP errors and dialogs recorded."""

    def __init__(self, page: Any, base: str) -> None:
        self.page = page
        self.base = base
        self.console_errors: list[str] = []
        self.failed: list[str] = []
        self.http_errors: list[str] = []
        self.dialogs: list[str] = []
        self.requests: list[str] = []
        page.on("console", lambda m: self.console_errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.console_errors.append(str(e)))
        page.on("requestfailed", lambda r: self.failed.append(f"{r.url} {r.failure}"))
        page.on("request", lambda r: self.requests.append(r.url))
        page.on(
            "response", lambda r: self.http_errors.append(f"{r.status} {r.url}") if r.status >= 400 else None
        )

        def dialog(d: Any) -> None:
            self.dialogs.append(d.message)
            d.dismiss()

        page.on("dialog", dialog)

    def open(self, path: str = "/dashboard") -> Any:
        response = self.page.goto(self.base + path)
        return response

    def wait_live(self) -> None:
        self.page.wait_for_selector("#live.pill-live", timeout=10_000)


@pytest.fixture
def watched(browser: Any, service: DloopRun, request: pytest.FixtureRequest) -> Iterator[Watched]:
    options = {"viewport": {"width": 1280, "height": 900}, **getattr(request, "param", {})}
    context = browser.new_context(**options)
    try:
        yield Watched(context.new_page(), service.url)
    finally:
        context.close()


def _artifact(watched: Watched, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    watched.page.screenshot(path=str(path), full_page=True)
    return path


def _active_ids(service: DloopRun) -> set[int]:
    body = service.get("/active-proposals").json()
    return {p["id"] for p in body["proposals"]}


def test_the_page_shows_five_nodes_and_every_active_proposal_cleanly(
    service: DloopRun, watched: Watched, tmp_path: Path
) -> None:
    response = watched.open()
    assert response.status == 200
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'self'" in csp
    watched.wait_live()
    page = watched.page
    assert page.locator("[data-section=nodes] .node").count() == 5
    shown = {
        int(x) for x in page.locator(".proposal").evaluate_all("els => els.map(e => e.dataset.proposal)")
    }
    assert shown == _active_ids(service) and len(shown) >= 49
    assert page.locator("#proposal-49 tr.vote").count() == 5
    assert page.locator("#listener-state").inner_text() == "connected"
    assert page.locator(".chart").count() == 2
    time.sleep(1.5)  # a live refresh or two
    target = os.environ.get("DLOOP_DASHBOARD_SCREENSHOT")
    if target:  # the README's: the top of the page in one tall viewport (full_page would float the header)
        page.set_viewport_size({"width": 1280, "height": 1700})
        page.evaluate("() => window.scrollTo(0, 0)")
        page.screenshot(path=target)
    path = _artifact(watched, tmp_path, "dashboard-desktop.png")
    for section in ("charts", "rounds"):
        page.locator(f"#{section}").screenshot(path=str(tmp_path / f"dashboard-{section}.png"))
    page.locator(".proposal").first.screenshot(path=str(tmp_path / "dashboard-proposal.png"))
    print(f"screenshot: {path}")
    assert not watched.console_errors, watched.console_errors
    assert not watched.failed, watched.failed
    assert not watched.http_errors, watched.http_errors


def test_root_answers_the_page_to_a_browser_and_json_to_curl(service: DloopRun, watched: Watched) -> None:
    plain = service.get("/")  # httpx sends */*, like curl
    assert plain.json()["system"]["totalNodes"] == 5 and plain.headers["vary"] == "Accept"
    curl = shutil.which("curl")
    if curl:
        import subprocess

        out = subprocess.run([curl, "-s", f"{service.url}/"], capture_output=True, text=True, timeout=10)
        assert json.loads(out.stdout)["status"] in ("running", "degraded")
    html = httpx.get(f"{service.url}/", headers={"Accept": BROWSER_ACCEPT}, timeout=10)
    assert html.headers["content-type"].startswith("text/html")
    assert "Content-Security-Policy" in html.headers and html.headers.get("vary") == "Accept"
    watched.open("/")
    assert watched.page.locator("[data-section=nodes] .node").count() == 5


def test_events_stream_says_hello(service: DloopRun) -> None:
    with httpx.stream("GET", f"{service.url}/events", timeout=10) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        assert next(lines) == "event: hello"


def test_a_new_proposal_appears_with_its_five_votes_within_3_s(
    module_chain: Chain, watched: Watched, tmp_path: Path
) -> None:
    watched.open()
    watched.wait_live()
    page = watched.page
    page.evaluate("() => { window.__notReloaded = true; }")
    (proposal_id,) = module_chain.create(1, first_index=200)
    created = time.monotonic()
    # The page's CSP forbids eval, so no wait_for_function: the locator is polled from here.
    expect(page.locator(f"#proposal-{proposal_id} tr.vote[data-state=confirmed]")).to_have_count(
        5, timeout=3000
    )
    took = time.monotonic() - created
    assert page.evaluate("() => window.__notReloaded === true"), "the page reloaded"
    assert page.locator(".proposal").first.get_attribute("data-proposal") == str(proposal_id)  # newest first
    print(f"proposal {proposal_id} shown with 5 votes {took:.2f} s after it was mined")
    _artifact(watched, tmp_path, "dashboard-new-proposal.png")
    assert not watched.console_errors, watched.console_errors


def test_the_trigger_asks_for_the_token_refuses_a_wrong_one_and_starts_a_round(
    service: DloopRun, watched: Watched
) -> None:
    watched.open()
    watched.wait_live()
    page = watched.page
    page.click("#trigger")
    page.wait_for_selector("#token-box:not([hidden])")
    page.fill("#token-input", "not-the-token")
    page.click("#token-form button")
    page.wait_for_selector("#notice.error")
    assert "refused" in page.locator("#notice").inner_text()
    assert page.locator("#token-box").is_visible()
    assert any("/trigger-voting" in e and e.startswith("401") for e in watched.http_errors)
    page.fill("#token-input", TOKEN)
    page.click("#token-form button")
    page.wait_for_selector("#notice.ok")
    notice = page.locator("#notice").inner_text()
    round_id = int(notice.split("#", 1)[1].split()[0])
    page.wait_for_selector(f"li.round[data-round='{round_id}']", timeout=5000)
    assert page.evaluate("sessionStorage.getItem('dloop-api-token')") == TOKEN
    # Asked once: the next click goes straight through.
    page.click("#trigger")
    expect(page.locator("#notice")).to_contain_text("Voting round #")
    assert page.locator("#token-box").is_hidden()


def test_a_hostile_description_renders_as_text(module_chain: Chain, watched: Watched) -> None:
    watched.open()
    watched.wait_live()
    page = watched.page
    usdc = module_chain.info.token_addresses["USDC"]
    receipt = module_chain.transact(module_chain.info.proposer_key, "createProposal", 0, usdc, 100, HOSTILE)
    proposal_id = max(
        int.from_bytes(log["topics"][1], "big") for log in receipt["logs"] if len(log["topics"]) > 1
    )
    selector = f"#proposal-{proposal_id} .desc"
    page.wait_for_selector(selector, timeout=5000)  # arrived live, through the sections swap
    for _ in range(2):
        assert page.locator(selector).inner_text() == HOSTILE
        assert page.locator(f"{selector} img").count() == 0
        page.reload()
        page.wait_for_selector(selector)
    time.sleep(0.5)
    assert not watched.dialogs
    assert not [url for url in watched.requests if url.rstrip("/").endswith("/x")]


@pytest.mark.parametrize("watched", [{"viewport": {"width": 390, "height": 844}}], indirect=True)
def test_nothing_overflows_horizontally_at_390_px(watched: Watched, tmp_path: Path) -> None:
    watched.open()
    watched.wait_live()
    page = watched.page
    page.locator("details").first.evaluate("d => d.open = true")  # an expanded reason too
    widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    wide = page.evaluate(
        """() => [...document.querySelectorAll('body *')]
            .filter(e => e.getBoundingClientRect().right > window.innerWidth + 0.5)
            .slice(0, 5).map(e => e.tagName + '.' + e.className + ' ' + e.getBoundingClientRect().right)"""
    )
    path = _artifact(watched, tmp_path, "dashboard-390px.png")
    page.screenshot(path=str(tmp_path / "dashboard-390px-top.png"))
    page.locator(".proposal").first.screenshot(path=str(tmp_path / "dashboard-390px-proposal.png"))
    print(f"screenshot: {path}")
    assert widths[0] <= widths[1], (widths, wide)
    assert not wide, wide


@pytest.mark.parametrize("watched", [{"java_script_enabled": False}], indirect=True)
def test_without_javascript_it_is_a_static_page_that_refreshes(service: DloopRun, watched: Watched) -> None:
    watched.open()
    page = watched.page
    assert page.locator("[data-section=nodes] .node").count() == 5
    assert page.locator(".proposal").count() == len(_active_ids(service))
    assert page.locator("meta[http-equiv=refresh]").get_attribute("content") == "10"
    assert "static" in page.locator("#live").inner_text()


def _overflowing(page: Any) -> list[str]:
    return page.evaluate(  # type: ignore[no-any-return]
        """() => [...document.querySelectorAll('body *')]
            .filter(e => e.getBoundingClientRect().right > window.innerWidth + 0.5)
            .slice(0, 5).map(e => e.tagName + '.' + e.className + ' ' + e.getBoundingClientRect().right)"""
    )


def test_a_firing_alert_shows_in_the_banner_and_goes_away_after_the_refund(
    module_chain: Chain, service: DloopRun, watched: Watched, tmp_path: Path
) -> None:
    anvil, info = module_chain
    watched.open()
    watched.wait_live()
    page = watched.page
    banner = page.locator("#alerts")
    expect(banner).to_be_hidden()  # nothing fires
    assert page.locator("#node-analytics tbody tr").count() == 5
    assert page.locator("#type-analytics tbody tr").count() >= 1
    page.evaluate("() => { window.__notReloaded = true; }")
    node = info.node_addresses[2]
    balance = anvil.rpc("eth_getBalance", [node, "latest"])
    anvil.rpc("anvil_setBalance", [node, "0x0"])
    try:
        line = page.locator('#alerts li[data-alert="NodeLowBalance:ai-gov-03"]')
        expect(line).to_be_visible(timeout=10_000)  # arrived live: an `alert` event, then the sections
        assert page.evaluate("() => window.__notReloaded === true"), "the page reloaded"
        assert line.locator(".badge").inner_text() == "warning"
        assert line.locator(".rule").inner_text() == "NodeLowBalance"
        assert line.locator(".subject").inner_text() == "ai-gov-03"
        assert "ai-gov-03's ETH pays for 0 votes" in line.locator(".summary").inner_text()
        assert line.locator(".since").inner_text().startswith("since ")
        firing = service.get("/alerts?state=firing").json()["alerts"]
        assert "NodeLowBalance:ai-gov-03" in {a["fingerprint"] for a in firing}
        _artifact(watched, tmp_path, "dashboard-alert.png")
        page.set_viewport_size({"width": 390, "height": 844})
        page.evaluate("() => window.scrollTo(0, 0)")
        page.screenshot(path=str(tmp_path / "dashboard-alert-390px.png"))
        assert not _overflowing(page), _overflowing(page)
    finally:
        anvil.rpc("anvil_setBalance", [node, balance])
    expect(line).to_have_count(0, timeout=10_000)
    expect(banner).to_be_hidden()
    assert not watched.console_errors, watched.console_errors
    assert not watched.http_errors, watched.http_errors


def test_pausing_a_node_and_the_service_from_the_page(
    service: DloopRun, watched: Watched, tmp_path: Path
) -> None:
    watched.open()
    watched.wait_live()
    page = watched.page
    card = page.locator('.node[data-node="ai-gov-03"]')
    assert card.get_attribute("data-paused") == "false"
    assert page.locator("#signing").inner_text().startswith("on")
    page.click('button[data-control="/nodes/ai-gov-03/pause"]')
    page.wait_for_selector("#token-box:not([hidden])")  # the token is asked for first, as for the trigger
    page.fill("#token-input", TOKEN)
    page.click("#token-form button")
    expect(page.locator('.node[data-node="ai-gov-03"][data-paused="true"]')).to_have_count(1, timeout=5000)
    expect(page.locator("#notice")).to_contain_text("signing paused for node ai-gov-03")
    assert "paused" in card.locator("h3").inner_text()
    by_name = {n["name"]: n for n in service.get("/nodes").json()["nodes"]}
    assert by_name["ai-gov-03"]["paused"] is True and by_name["ai-gov-02"]["paused"] is False
    _artifact(watched, tmp_path, "dashboard-paused-node.png")

    page.click("#service-control")  # the token is kept in the tab: no second prompt
    expect(page.locator('.node[data-paused="true"]')).to_have_count(5, timeout=5000)
    assert page.locator("#token-box").is_hidden()
    assert service.get("/nodes").json()["servicePaused"] is True
    expect(page.locator("#service-control")).to_have_text("Resume signing")
    page.click("#service-control")
    expect(page.locator('.node[data-paused="true"]')).to_have_count(1, timeout=5000)
    page.click('button[data-control="/nodes/ai-gov-03/resume"]')
    expect(page.locator('.node[data-paused="true"]')).to_have_count(0, timeout=5000)
    nodes = service.get("/nodes").json()
    assert not nodes["servicePaused"] and not any(n["paused"] for n in nodes["nodes"])
    assert not watched.console_errors, watched.console_errors
    assert not watched.http_errors, watched.http_errors


def test_sigterm_with_dashboards_open_stops_the_service_within_seconds(
    service: DloopRun, watched: Watched
) -> None:
    """Last in the module (it stops the shared service): open /events streams must not hold up shutdown."""
    watched.open()
    watched.wait_live()
    with httpx.stream("GET", f"{service.url}/events", timeout=10) as response:
        assert next(response.iter_lines()) == "event: hello"
        started = time.monotonic()
        assert service.stop(timeout=15) == 0
        took = time.monotonic() - started
    print(f"stopped {took:.2f} s after SIGTERM with two event streams open")
    assert took < 5, took
    assert not service.tracebacks(), service.tracebacks()
