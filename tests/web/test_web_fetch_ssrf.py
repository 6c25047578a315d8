"""The guarded fetcher through its real HTTP path: hostile URLs refused, the canary never reached, limits held.

No real DNS: a fake resolver answers names from a table and IP literals the way glibc does. Connections
to the one public fake address go to a loopback site; anything else would land on the canary.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from fusion_mcp.web.fetch import Fetcher, FetchFailed, FetchRefused, Network
from tests.fakes.hostile import HOSTILE
from tests.fakes.web import NAMES, PUBLIC_SITE, Canary, FakeResolver, Site, TlsSite, router

pytestmark = pytest.mark.anyio


@pytest.fixture
async def fetcher(site: Site, canary: Canary) -> AsyncIterator[Fetcher]:
    f = Fetcher(network=Network(FakeResolver(NAMES), router(site, canary)), deadline_s=3)
    yield f
    await f.aclose()
    assert canary.connections == 0, "a refused fetch reached the network"


@pytest.mark.parametrize("url", list(HOSTILE))
async def test_hostile_urls_are_refused_before_any_byte_leaves(fetcher: Fetcher, url: str) -> None:
    with pytest.raises(FetchRefused) as info:
        await fetcher.fetch(url)
    message = str(info.value)
    assert message.startswith("refused: ")
    assert HOSTILE[url] in message


async def test_a_name_that_answers_public_then_private_is_connected_to_the_checked_address(
    site: Site, canary: Canary
) -> None:
    resolver = FakeResolver(NAMES)
    fetcher = Fetcher(network=Network(resolver, router(site, canary)))
    try:
        page = await fetcher.fetch("http://rebind.test/page")
    finally:
        await fetcher.aclose()
    assert page.body == b"hello from the public web"
    assert resolver.calls["rebind.test"] == 1  # resolved once, connected to exactly that answer
    assert canary.connections == 0


async def test_public_pages_are_fetched_following_safe_redirects(fetcher: Fetcher) -> None:
    page = await fetcher.fetch("http://example.test/relative#frag")
    assert (page.url, page.status, page.content_type, page.body) == (
        "http://example.test/page",
        200,
        "text/plain",
        b"hello from the public web",
    )
    assert (await fetcher.fetch("http://example.test/json")).content_type == "application/json"
    assert (await fetcher.fetch("http://example.test/chain/16")).body == b"hello from the public web"


async def test_wrong_content_type_is_refused(fetcher: Fetcher) -> None:
    with pytest.raises(FetchRefused, match="content type image/png is not text"):
        await fetcher.fetch("http://example.test/png")


async def test_oversized_bodies_are_refused_or_cut_at_the_cap(site: Site, canary: Canary) -> None:
    fetcher = Fetcher(network=Network(FakeResolver(NAMES), router(site, canary)), max_bytes=5 * 1024 * 1024)
    try:
        with pytest.raises(FetchRefused, match="over the 5,242,880-byte cap"):
            await fetcher.fetch("http://example.test/big-declared")
        streamed = await fetcher.fetch("http://example.test/big")
        bomb = await fetcher.fetch("http://example.test/bomb")
    finally:
        await fetcher.aclose()
    assert streamed.truncated and len(streamed.body) == 5 * 1024 * 1024
    assert bomb.truncated and len(bomb.body) == 5 * 1024 * 1024  # 64 MiB inside ~64 KiB of gzip: bounded
    assert canary.connections == 0


async def test_a_drip_feed_is_cut_at_the_deadline(fetcher: Fetcher) -> None:
    with pytest.raises(FetchFailed, match="gave up: no complete answer within 3 s"):
        await fetcher.fetch("http://example.test/drip")


async def test_the_canary_counts_what_reaches_it() -> None:
    """Self-test of the harness: a connection that does reach the canary is counted (so zero means zero)."""
    import httpcore2

    canary = Canary()
    backend = httpcore2.AnyIOBackend()

    async def to_canary(address: str, port: int, timeout: float | None) -> httpcore2.AsyncNetworkStream:  # noqa: ASYNC109
        return await backend.connect_tcp("127.0.0.1", canary.port, timeout=timeout)

    fetcher = Fetcher(network=Network(FakeResolver({"public.test": [PUBLIC_SITE]}), to_canary))
    try:
        with pytest.raises(FetchRefused, match="content type none"):
            await fetcher.fetch("http://public.test/")
    finally:
        await fetcher.aclose()
        canary.close()
    assert canary.connections == 1


async def test_a_public_address_that_does_not_answer_is_a_readable_failure() -> None:
    import httpcore2

    from tests.servers import free_port

    closed = free_port()
    backend = httpcore2.AnyIOBackend()

    async def nowhere(address: str, port: int, timeout: float | None) -> httpcore2.AsyncNetworkStream:  # noqa: ASYNC109
        return await backend.connect_tcp("127.0.0.1", closed, timeout=timeout)

    fetcher = Fetcher(network=Network(FakeResolver({"down.test": [PUBLIC_SITE]}), nowhere))
    try:
        with pytest.raises(FetchFailed) as info:
            await fetcher.fetch("http://down.test/")
    finally:
        await fetcher.aclose()
    assert str(info.value) == "the fetch failed: ConnectError"


async def test_tls_is_verified_against_the_url_host_while_connecting_to_the_checked_address() -> None:
    site = TlsSite()
    resolver = FakeResolver({"example.test": [PUBLIC_SITE], "other.test": [PUBLIC_SITE]})
    trusted = Fetcher(network=Network(resolver, site.connector(), site.trusting_context()))
    system = Fetcher(network=Network(resolver, site.connector()))
    try:
        page = await trusted.fetch("https://example.test/page")
        assert (page.url, page.body) == ("https://example.test/page", b"hello over TLS")
        # Same address, same server, but the certificate does not name other.test: no page.
        with pytest.raises(FetchFailed) as mismatch:
            await trusted.fetch("https://other.test/page")
        assert str(mismatch.value) == (
            "the fetch failed: the site's TLS certificate was not accepted "
            "(Hostname mismatch, certificate is not valid for 'other.test')"
        )
        # And a CA the system does not trust is not trusted by default.
        with pytest.raises(FetchFailed) as untrusted:
            await system.fetch("https://example.test/page")
        assert str(untrusted.value) == (
            "the fetch failed: the site's TLS certificate was not accepted (unable to get local issuer certificate)"
        )
    finally:
        await trusted.aclose()
        await system.aclose()
        site.close()
