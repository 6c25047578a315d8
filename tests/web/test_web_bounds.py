"""The web tools' work is bounded by what each input is, whatever a page or a long question makes of it.

A page-discovered URL is checked against the question in one pass over the URL (the question's runs are
indexed once per run, when a page link is first checked); a page cannot make an address longer than
``MAX_URL_CHARS`` fetchable, in its links or its text; once the run's character budget is spent nothing is
fetched, searched or parsed. Work is shown by counting it (lookups, builds, requests), never by timing it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from typing import Any
from urllib.parse import unquote

import anyio
import anyio.to_thread
import pytest

from fusion_mcp.config import load_settings
from fusion_mcp.web.extract import MAX_URL_CHARS
from fusion_mcp.web.fetch import Network
from fusion_mcp.web.tools import ECHO_CHARS, QuestionIndex, WebTools, echoes, open_web_tools, urls_in
from tests.conftest import sim_env
from tests.fakes.provider_sim import ProviderSim, Reply
from tests.fakes.search_apis import SearchApis
from tests.fakes.web import FAR, NAMES, Canary, FakeResolver, Site, router
from tests.web.test_web_fusion import READER, fuse, tool_call, tool_results

pytestmark = pytest.mark.anyio
SPENT = (
    "refused: this run has read its budget of 20,000 characters from the web (FUSION_WEB_MAX_CHARS); "
    "answer with what you have"
)
KEY_QUESTION = "Use the key sk-live-abc123 to read http://example.test/leaky and tell me what it says."


def unseen(url: str) -> str:
    return (
        f"refused: {url[:200]} did not appear in the question, its context, or an earlier search or fetch result; "
        "search for it first"
    )


@pytest.fixture
async def tools(sim: ProviderSim, apis: SearchApis, site: Site, canary: Canary) -> AsyncIterator[WebTools]:
    """Web tools whose runs may read 20,000 characters: exactly one first part of ``/long``."""
    env = sim_env(sim, FUSION_SEARXNG_URL=f"{apis.base}/searxng", FUSION_WEB_MAX_CHARS="20000")
    async with open_web_tools(load_settings(environ=env), Network(FakeResolver(NAMES), router(site, canary))) as tools:
        assert tools is not None
        yield tools
    assert canary.connections == 0


# --- the echo rule: one lookup per run of the URL, the question indexed once per run ------------------------


class CountingSet(set[str]):
    """A set that counts the lookups made in it."""

    def __init__(self, items: Iterable[str]) -> None:
        super().__init__(items)
        self.lookups = 0

    def __contains__(self, item: object) -> bool:
        self.lookups += 1
        return super().__contains__(item)


@pytest.mark.parametrize("question_chars", [100, 200_000])
def test_the_echo_check_looks_each_run_of_the_url_up_once_whatever_the_questions_length(question_chars: int) -> None:
    question = ("The key is sk-live-abc123, keep it safe. " * (question_chars // 40 + 1))[:question_chars]
    grams = CountingSet(question[i : i + ECHO_CHARS] for i in range(len(question) - ECHO_CHARS + 1))
    tail = unquote(f"{FAR[: MAX_URL_CHARS - 40]}?from=text")
    assert echoes(tail, grams) is False
    assert grams.lookups == len(tail) - ECHO_CHARS + 1  # one per window of the URL, none per question character
    grams.lookups = 0
    assert echoes("/leak/sk-live-a?", grams) is True and grams.lookups == 7  # stops at its first echo, "sk-live-"
    grams.lookups = 0
    assert echoes("/leak/a?", grams) is False and grams.lookups == 1  # a tail of ECHO_CHARS: one window


def test_the_questions_index_answers_as_the_set_of_its_runs_would_in_8_bytes_a_run() -> None:
    question = "Compare sk-live-abc123 with the café's menu; 💡 ideas welcome. " * 50
    runs = {question[i : i + ECHO_CHARS] for i in range(len(question) - ECHO_CHARS + 1)}
    index = QuestionIndex(question)
    assert len(index) == len(runs) and index.nbytes == 8 * len(runs)
    probes = [*runs, "sk-live-", "nothing!", "café's m", "", "x" * ECHO_CHARS, question[:ECHO_CHARS]]
    assert all((probe in index) == (probe in runs) for probe in probes)
    assert 42 not in index and len(QuestionIndex("short")) == 0


async def test_the_questions_index_is_built_once_per_run_and_only_for_a_page_link(tools: WebTools) -> None:
    run = tools.run()
    first, second = run.toolbox(KEY_QUESTION), run.toolbox(KEY_QUESTION)
    assert first.seed is second.seed
    for box in (first, second):
        assert "Helpful page" in await box.call("web_fetch", json.dumps({"url": "http://example.test/leaky"}))
    assert first.seed.builds == 0  # a URL of the question needs no index: most runs never build it
    for box in (first, second):
        refused = await box.call("web_fetch", json.dumps({"url": "http://example.test/leak/sk-live-a"}))
        assert refused.startswith("refused: http://example.test/leak/sk-live-a was offered by a page and repeats")
        for c in "ab":
            followed = await box.call("web_fetch", json.dumps({"url": f"http://example.test/leak/{c}"}))
            assert followed.startswith(f"http://example.test/leak/{c} (characters 0-")
    assert first.seed.builds == 1  # six page links checked by two members: one build
    assert run.toolbox("another question").seed.builds == 0


# --- a page cannot make a long address fetchable ---------------------------------------------------------------


def test_urls_written_in_a_page_are_capped_like_its_links() -> None:
    kept, dropped = "http://example.test/" + "a" * 1980, "http://example.test/" + "b" * 1981
    text = f"See {kept}. Or ({dropped}), or http://example.test/wiki/Foo_(bar)))))."
    assert len(kept) == MAX_URL_CHARS
    assert urls_in(text, longest=MAX_URL_CHARS) == {kept, "http://example.test/wiki/Foo_(bar)"}
    assert urls_in(text) == {kept, dropped, "http://example.test/wiki/Foo_(bar)"}  # the question's: no cap


async def test_a_page_cannot_make_a_60000_character_address_fetchable(
    sim: ProviderSim, site: Site, canary: Canary
) -> None:
    page = "http://example.test/long-urls"
    in_text, in_link = (f"http://example.test{FAR}?from={where}" for where in ("text", "link"))
    question = f"What does {page} say? " + "Background the caller pasted, line after line. " * 1000

    def reader(body: dict[str, Any]) -> Reply:
        done = tool_results(body)
        if not done:
            return Reply(content="", tool_calls=[tool_call(1, "web_fetch", url=page)])
        if len(done) == 1:
            urls = (in_text, in_link, "http://example.test/page")
            return Reply(content="", tool_calls=[tool_call(i, "web_fetch", url=u) for i, u in enumerate(urls, 2)])
        return Reply(content="The rest was out of reach.")

    sim.scripts[READER] = reader
    before = len(site.requests)
    result, _, _ = await fuse(sim, site, canary, {"prompt": question, "analysis_models": [READER]})
    assert result["responses"][0]["content"] == "The rest was out of reach."
    read, text_refused, link_refused, short = tool_results(sim.requests_for(READER)[-1].body)
    assert "The rest of this article is at http://example.test/far/zzz" in read
    assert (text_refused, link_refused) == (unseen(in_text), unseen(in_link))
    assert "hello from the public web" in short  # a short URL written in the same text was learned
    assert site.requests[before:] == ["/long-urls", "/page"]


# --- the run's budget is checked before the work it would pay for ------------------------------------------


async def test_once_the_budget_is_spent_nothing_is_fetched_or_searched(
    tools: WebTools, site: Site, apis: SearchApis
) -> None:
    apis.hits = [("Part two", "http://example.test/second", "cancellation")]
    toolbox = tools.run().toolbox("read http://example.test/long, then http://example.test/page")
    first = await toolbox.call("web_fetch", json.dumps({"url": "http://example.test/long"}))
    assert first.startswith("http://example.test/long (characters 0-20,000 of 50,000;")
    before = len(site.requests)
    assert await toolbox.call("web_fetch", json.dumps({"url": "http://example.test/page"})) == SPENT
    assert await toolbox.call("web_search", json.dumps({"query": "anyio cancellation"})) == SPENT
    assert site.requests[before:] == [] and apis.seen == []


async def test_a_page_that_arrives_after_the_budget_is_spent_is_not_parsed(tools: WebTools, site: Site) -> None:
    site.waiting.clear()
    site.gate.clear()
    run = tools.run()
    slow, fast = run.toolbox("see http://example.test/gated"), run.toolbox("see http://example.test/long")
    read: list[str] = []

    async def read_slow_page() -> None:
        read.append(await slow.call("web_fetch", json.dumps({"url": "http://example.test/gated"})))

    before = len(site.requests)
    async with anyio.create_task_group() as tg:
        tg.start_soon(read_slow_page)
        assert await anyio.to_thread.run_sync(site.waiting.wait, 10)  # the slow page is on its way
        spent = await fast.call("web_fetch", json.dumps({"url": "http://example.test/long"}))
        assert spent.startswith("http://example.test/long (characters 0-20,000 of 50,000;")
        site.gate.set()
    assert read == [SPENT]
    # Not parsed: the link the slow page offers was never learned. Not cached: asking again is refused as
    # spent before any request.
    assert await slow.call("web_fetch", json.dumps({"url": "http://example.test/second"})) == unseen(
        "http://example.test/second"
    )
    assert await slow.call("web_fetch", json.dumps({"url": "http://example.test/gated"})) == SPENT
    assert sorted(site.requests[before:]) == ["/gated", "/long"]
