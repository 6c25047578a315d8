"""The web lab in a real browser: the machine's Chromium (the Debian package; ``.ci/run`` installs it) driven by
Playwright's Python package, nothing downloaded at test time.

A person signs in with a token, asks the simulator's panel, watches each member's column fill while it streams
and the analysis appear, cancels a run, opens a run from the history by its URL, and is refused another
principal's run. A member answer and a page a member fetched are hostile: nothing of them runs, no image of
them is loaded (the canary sees no connection), and the browser reports no Content-Security-Policy violation,
so the pages themselves need nothing the policy forbids. Screenshots of ask, watch, read and history at a
desktop and a phone width go to ``.ci/artifacts/lab/`` (``FUSION_LAB_SCREENSHOTS`` elsewhere), kept by CI.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fusion_mcp.web.network import Network
from tests.conftest import ANALYST, PANEL, REPO, sim_env
from tests.fakes.provider_sim import ProviderSim, Reply, analysis_for, schema_labels
from tests.fakes.web import NAMES, Canary, FakeResolver, Site, router
from tests.lab.lab_client import ALICE, BOB, TOKENS, Lab, LabClient, lab_server

playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
SHOTS = Path(os.environ.get("FUSION_LAB_SCREENSHOTS") or REPO / ".ci" / "artifacts" / "lab")
WATCH_CSP = """
document.addEventListener("securitypolicyviolation", (e) => {
  console.error("CSP-VIOLATION " + e.violatedDirective + " " + e.blockedURI);
});
"""
STREAMED = " ".join(f"word{i}" for i in range(40))


def chromium() -> str:
    """The system Chromium: ``FUSION_CHROMIUM`` (``.ci/run`` sets it), else ``/usr/bin/chromium``. Missing, these
    tests skip, except under CI, where they fail."""
    found = os.environ.get("FUSION_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(found).exists():
        reason = f"no Chromium at {found}: apt-get install chromium, or set FUSION_CHROMIUM (.ci/run does both)"
        if os.environ.get("CI"):
            pytest.fail(f"CI runs the lab's browser tests, but {reason}")
        pytest.skip(reason)
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = chromium()
    with playwright.sync_playwright() as p:
        # Each test's context is a fresh profile (Playwright gives every launch and context a new one).
        launched = p.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS, headless=True)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def lab(_sim: ProviderSim, site: Site, canary: Canary) -> Iterator[Lab]:
    network = Network(FakeResolver(NAMES), router(site, canary))
    env = sim_env(_sim, FUSION_HTTP_TOKENS=TOKENS)
    with lab_server(env, network) as running:
        yield running


class Seen:
    """What a page did that it should not have: console errors (CSP violations among them) and failed requests."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        self.requests: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        page.on("request", lambda r: self.requests.append(r.url))

    def csp_violations(self) -> list[str]:
        return [e for e in self.errors if "CSP-VIOLATION" in e or "Content Security Policy" in e]


def open_page(browser: Any, viewport: dict[str, int] = DESKTOP) -> tuple[Any, Any, Seen]:
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    page.add_init_script(WATCH_CSP)
    return context, page, Seen(page)


def sign_in(page: Any, base: str, token: str) -> None:
    page.goto(f"{base}/lab/history")
    assert page.url == f"{base}/lab/signin"  # without a session: only the sign-in page
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{base}/lab/ask")


def shoot(page: Any, view: str, viewport: dict[str, int]) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    name = "desktop" if viewport == DESKTOP else "phone"
    page.screenshot(path=str(SHOTS / f"{view}-{name}.png"), full_page=True)


def slow_analyst(body: dict[str, Any]) -> Reply:
    if isinstance(body.get("response_format"), dict):
        return Reply(content=json.dumps(analysis_for(schema_labels(body))), latency=1.0)
    return Reply(content="the analyst as a member")


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_ask_watch_the_columns_stream_read_the_analysis_open_it_from_history(
    browser: Any, lab: Lab, sim: ProviderSim, viewport: dict[str, int]
) -> None:
    sim.script(PANEL[1], Reply(content=STREAMED, chunk_delay=0.08))
    sim.script(PANEL[2], Reply(content="Short **answer** with a [link](https://example.org/docs)."))
    sim.scripts[ANALYST] = slow_analyst
    context, page, seen = open_page(browser, viewport)
    with context:
        sign_in(page, lab.base, ALICE)
        shoot(page, "ask", viewport)
        page.get_by_label("Question").fill("How should I stream text to a browser?")
        page.get_by_role("button", name="Run").click()
        page.wait_for_url(f"{lab.base}/lab/runs/*")
        run_url = page.url
        column = page.locator(f'[data-member="{PANEL[1]}"] [data-text]')
        # The column fills while the member streams: part of its answer is there before all of it.
        page.wait_for_function(
            """([selector, whole]) => {
                const text = document.querySelector(selector).textContent;
                return text.length > 0 && text.length < whole.length && whole.startsWith(text);
            }""",
            arg=[f'[data-member="{PANEL[1]}"] [data-text]', STREAMED],
        )
        shoot(page, "watch", viewport)
        page.wait_for_function(
            "([s, w]) => document.querySelector(s).textContent === w",
            arg=[f'[data-member="{PANEL[1]}"] [data-text]', STREAMED],
        )
        assert column.text_content() == STREAMED
        # Then the analysis: the page turns into the read view by itself.
        page.get_by_role("heading", name="Analysis").wait_for()
        for bucket in ("Consensus", "Contradictions", "Partial coverage", "Unique insights", "Blind spots"):
            assert page.get_by_role("heading", name=bucket).count() == 1, bucket
        assert page.locator(".stance").count() == 3  # a contradiction shows every stance side by side
        link = page.get_by_role("link", name="link", exact=True)
        assert link.get_attribute("rel") == "noopener noreferrer"
        assert page.locator("strong", has_text="answer").count() == 1  # markdown, rendered
        shoot(page, "read", viewport)
        # A member named in a point links to its full answer.
        page.locator(".bucket a.member").first.click()
        assert "#member-" in page.url
        # The history lists it; its permanent URL opens it again in a new page.
        page.goto(f"{lab.base}/lab/history")
        page.get_by_role("link", name="How should I stream text to a browser?").first.wait_for()
        shoot(page, "history", viewport)
        page.goto(f"{lab.base}/lab/usage")
        assert page.locator("figure.chart svg").count() == 2  # per day, per model
        shoot(page, "usage", viewport)
        again = context.new_page()
        again.goto(run_url)
        assert again.get_by_role("heading", name="Analysis").count() == 1
    assert seen.csp_violations() == [] and seen.errors == []


def test_cancel_a_run_from_its_page(browser: Any, lab: Lab, sim: ProviderSim) -> None:
    for model in PANEL:
        sim.script(model, Reply(content="never finished", latency=30))
    context, page, seen = open_page(browser)
    with context:
        sign_in(page, lab.base, ALICE)
        page.get_by_label("Question").fill("a question to cancel")
        page.get_by_role("button", name="Run").click()
        page.wait_for_url(f"{lab.base}/lab/runs/*")
        page.get_by_role("button", name="Cancel run").click()
        page.get_by_text("the run was cancelled in the lab").wait_for()
        assert page.locator(".badge.status-error").text_content() == "error: cancelled"
    assert seen.csp_violations() == [] and seen.errors == []


def test_another_principals_run_is_refused_in_the_browser(browser: Any, lab: Lab, sim: ProviderSim) -> None:
    context, page, _ = open_page(browser)
    with context:
        sign_in(page, lab.base, ALICE)
        page.get_by_label("Question").fill("only for alice")
        page.get_by_role("button", name="Run").click()
        page.wait_for_url(f"{lab.base}/lab/runs/*")
        run_url = page.url
        page.get_by_role("heading", name="Analysis").wait_for()
    context, page, _ = open_page(browser)
    with context:
        sign_in(page, lab.base, BOB)
        answer = page.goto(run_url)
        assert answer is not None and answer.status == 404
        assert page.get_by_role("heading", name="No such run").count() == 1
        assert page.get_by_text("only for alice").count() == 0


def hostile(canary: Canary) -> str:
    """Markdown and HTML a model could write to attack the page that shows it."""
    at = f"http://127.0.0.1:{canary.port}"
    return (
        "Hostile answer <script>window.__pwned = 'answer script'</script>\n\n"
        f'<img src="{at}/answer-img.png" onerror="window.__pwned = \'onerror\'">\n\n'
        f"![tracking pixel]({at}/answer-md.png) and ![ref image][pic]\n\n"
        "[click me](javascript:window.__pwned='md-link') [spaced]( javascript:window.__pwned='spaced') "
        "[encoded](&#106;avascript:window.__pwned='entity') [data](data:text/html,<script>alert(1)</script>) "
        "<javascript:window.__pwned='autolink'>\n\n"
        "<a href=\"javascript:window.__pwned='raw-link'\">raw link</a> <svg onload=\"window.__pwned='svg'\"></svg> "
        f'<iframe src="{at}/frame"></iframe> <style>body{{background:url({at}/css.png)}}</style>\n\n'
        f"[pic]: {at}/answer-ref.png\n"
    )


def test_hostile_answers_and_pages_run_nothing_load_nothing_and_break_no_policy(
    browser: Any, lab: Lab, sim: ProviderSim, site: Site, canary: Canary
) -> None:
    page_url = f"http://example.test/hostile?canary={canary.port}"

    def reader(body: dict[str, Any]) -> Reply:
        results = [m["content"] for m in body["messages"] if m["role"] == "tool"]
        if not results:
            call = {
                "id": "call_1",
                "type": "function",
                "function": {"name": "web_fetch", "arguments": json.dumps({"url": page_url})},
            }
            return Reply(content="", tool_calls=[call])
        return Reply(content=f"What the page said:\n\n{results[0]}\n\n{hostile(canary)}", chunk_delay=0.01)

    def analyst(body: dict[str, Any]) -> Reply:
        if not isinstance(body.get("response_format"), dict):
            return Reply(content=hostile(canary))
        analysis = analysis_for(schema_labels(body))
        analysis["consensus"].append(hostile(canary))
        analysis["blind_spots"].append(
            "<img src=x onerror=\"window.__pwned='analysis'\"> [x](javascript:window.__pwned=1)"
        )
        return Reply(content=json.dumps(analysis))

    sim.scripts[PANEL[1]] = reader
    sim.script(PANEL[2], Reply(content=hostile(canary), chunk_delay=0.005))
    sim.scripts[ANALYST] = analyst
    before = canary.connections
    context, page, seen = open_page(browser)
    with context:
        sign_in(page, lab.base, ALICE)
        page.get_by_label("Question").fill(f"Summarise {page_url} <script>window.__pwned='question'</script>")
        page.get_by_role("button", name="Run").click()
        page.wait_for_url(f"{lab.base}/lab/runs/*")
        page.get_by_role("heading", name="Analysis").wait_for()
        assert "/hostile" in site.requests[-1]  # the member did read the page
        assert page.get_by_text("What the page said").count() == 1
        page.get_by_text("Sources (1)").click()  # the fetched page's title, shown as text
        assert page.evaluate("window.__pwned") is None
        # Every link left is http(s) and opens a new tab with neither opener nor referrer.
        hrefs = page.eval_on_selector_all("main a[href]", "as => as.map(a => [a.getAttribute('href'), a.rel])")
        for href, rel in hrefs:
            assert href.startswith(("#", "/lab/", "http://", "https://")), href
            if href.startswith("http"):
                assert rel == "noopener noreferrer", href
        assert page.locator("main img, main iframe, main svg[onload], main script, main style").count() == 0
        # Hover and click what a person might: still nothing runs.
        page.get_by_text("Read me").first.hover() if page.get_by_text("Read me").count() else None
        assert page.evaluate("window.__pwned") is None
        page.goto(f"{lab.base}/lab/history")
        assert page.evaluate("window.__pwned") is None
    assert canary.connections == before
    assert not [r for r in seen.requests if f":{canary.port}" in r]
    assert seen.csp_violations() == []
    assert seen.errors == []


def test_a_retry_and_a_failure_show_in_their_columns_as_they_happen(browser: Any, lab: Lab, sim: ProviderSim) -> None:
    sim.script(PANEL[1], Reply(status=429, retry_after="0"), Reply(content="answered after a retry"))
    sim.script(PANEL[2], Reply(status=400, error_message="this model refuses"))

    def analyst(body: dict[str, Any]) -> Reply:
        if isinstance(body.get("response_format"), dict):
            return Reply(content=json.dumps(analysis_for(schema_labels(body))), latency=3.0)
        return Reply(content="the analyst as a member")

    sim.scripts[ANALYST] = analyst
    context, page, seen = open_page(browser)
    with context:
        sign_in(page, lab.base, ALICE)
        page.get_by_label("Question").fill("retry and fail")
        page.get_by_role("button", name="Run").click()
        page.wait_for_url(f"{lab.base}/lab/runs/*")
        failed = page.locator(f'[data-member="{PANEL[2]}"]')
        # Locators, not expressions: under the lab's CSP the page cannot eval a string.
        page.locator(f'[data-member="{PANEL[2]}"][data-kind="failed"]').wait_for()
        assert "this model refuses" in failed.locator("[data-steps]").inner_text()
        retried = page.locator(f'[data-member="{PANEL[1]}"] [data-steps] .step-retry')
        assert "retry" in retried.inner_text().lower()
        page.locator("[data-analyst] [data-state]", has_text="comparing the answers…").wait_for()
        page.get_by_role("heading", name="Analysis").wait_for()
    assert seen.csp_violations() == [] and seen.errors == []


def test_a_tool_call_shows_what_it_reads_as_it_happens(lab: Lab, sim: ProviderSim, site: Site) -> None:
    """The live stream's tool step names the URL a member is reading, before its answer (HTTP: no browser needed)."""
    page_url = "http://example.test/article"

    def reader(body: dict[str, Any]) -> Reply:
        if not [m for m in body["messages"] if m["role"] == "tool"]:
            arguments = json.dumps({"url": page_url})
            call = {"id": "call_1", "type": "function", "function": {"name": "web_fetch", "arguments": arguments}}
            return Reply(content="", tool_calls=[call])
        return Reply(content="read it")

    sim.scripts[PANEL[1]] = reader
    with LabClient(lab.base) as client:
        assert client.sign_in(ALICE).status_code == 303
        run_id = client.ask(prompt=f"What does {page_url} say?")
        steps = [s for e in client.events(run_id) for s in e["steps"]]  # type: ignore[union-attr]
    tools = [s for s in steps if s["kind"] == "tool"]
    assert [(s["model"], s["tool"], s["target"]) for s in tools] == [(PANEL[1], "web_fetch", page_url)]
    answered = next(i for i, s in enumerate(steps) if s["kind"] == "member_answered" and s["model"] == PANEL[1])
    assert steps.index(tools[0]) < answered


def test_the_lab_works_from_the_keyboard(browser: Any, lab: Lab, sim: ProviderSim) -> None:
    context, page, seen = open_page(browser)
    with context:
        page.goto(f"{lab.base}/lab/signin")
        page.keyboard.press("Tab")  # the first stop is the skip link
        assert page.evaluate("document.activeElement.textContent") == "Skip to content"
        page.keyboard.press("Tab")
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == "token"
        page.keyboard.type(ALICE)
        page.keyboard.press("Enter")
        page.wait_for_url(f"{lab.base}/lab/ask")
        page.get_by_label("Question").focus()
        page.keyboard.type("asked from the keyboard")
        page.get_by_role("button", name="Run").focus()
        page.keyboard.press("Enter")
        page.wait_for_url(f"{lab.base}/lab/runs/*")
        page.get_by_role("heading", name="Analysis").wait_for()
        assert page.get_by_text("asked from the keyboard").count() == 1
    assert seen.errors == []


def test_a_live_view_that_loses_its_stream_picks_it_up_without_repeating_text(
    browser: Any, lab: Lab, sim: ProviderSim
) -> None:
    """The first connection of the live view breaks after one piece (a stream cut short, as a proxy or a
    network drop would); the browser reconnects, and the new stream, which starts from the beginning, replaces
    what was drawn rather than adding to it."""
    sim.script(PANEL[1], Reply(content=STREAMED, chunk_delay=0.02))

    def analyst(body: dict[str, Any]) -> Reply:
        if isinstance(body.get("response_format"), dict):
            return Reply(content=json.dumps(analysis_for(schema_labels(body))), latency=8.0)
        return Reply(content="the analyst as a member")

    sim.scripts[ANALYST] = analyst
    connections: list[str] = []

    def cut_the_first(route: Any) -> None:
        connections.append(route.request.url)
        if len(connections) > 1:
            route.continue_()
            return
        piece = json.dumps({"text": {PANEL[1]: "word0 "}, "steps": [], "done": False})
        body = f"retry: 100\n\nevent: news\ndata: {piece}\n\n"
        route.fulfill(status=200, content_type="text/event-stream", body=body)

    context, page, _ = open_page(browser)
    with context:
        page.route("**/events", cut_the_first)
        sign_in(page, lab.base, ALICE)
        page.get_by_label("Question").fill("a stream that breaks")
        page.get_by_role("button", name="Run").click()
        page.wait_for_url(f"{lab.base}/lab/runs/*")
        page.locator("[data-analyst] [data-state]", has_text="comparing the answers…").wait_for()
        assert len(connections) >= 2
        assert page.locator(f'[data-member="{PANEL[1]}"] [data-text]').text_content() == STREAMED
