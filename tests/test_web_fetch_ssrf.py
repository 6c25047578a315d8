"""The guarded fetcher through its real HTTP path: hostile URLs refused, the canary never reached, limits held.

No real DNS: a fake resolver answers names from a table and IP literals the way glibc does. Connections
to the one public fake address go to a loopback site; anything else would land on the canary.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from fusion_mcp.web.fetch import Fetcher, FetchFailed, FetchRefused, Network
from tests.fakes.web import PUBLIC_SITE, Canary, FakeResolver, Site, TlsSite, router

pytestmark = pytest.mark.anyio

NAMES = {
    "example.test": [PUBLIC_SITE],
    "localhost": ["127.0.0.1"],
    "metadata.google.internal": ["169.254.169.254"],
    "internal.test": ["10.0.0.5"],
    "v6-loopback.test": ["::1"],
    "mapped.test": ["::ffff:10.0.0.5"],
    "mixed.test": [PUBLIC_SITE, "10.0.0.5"],
    "rebind.test": [[PUBLIC_SITE], ["127.0.0.1"]],  # public on the first lookup, loopback after
    "empty.test": [],
}


@pytest.fixture
async def fetcher(site: Site, canary: Canary) -> AsyncIterator[Fetcher]:
    f = Fetcher(network=Network(FakeResolver(NAMES), router(site, canary)), deadline_s=3)
    yield f
    await f.aclose()
    assert canary.connections == 0, "a refused fetch reached the network"


HOSTILE = {
    # loopback in every spelling
    "http://127.0.0.1/": "address is not public (127.0.0.1)",
    "http://localhost/": "address is not public (127.0.0.1)",
    "http://2130706433/": "address is not public (127.0.0.1)",
    "http://0x7f000001/": "address is not public (127.0.0.1)",
    "http://0x7f.1/": "address is not public (127.0.0.1)",
    "http://0177.0.0.1/": "is not a valid URL",  # httpx2's parser already rejects leading-zero octets
    "http://017700000001/": "address is not public (127.0.0.1)",
    "http://127.1/": "address is not public (127.0.0.1)",
    "http://127.0.0.1./": "address is not public (127.0.0.1)",
    "http://[::1]/": "address is not public",
    "http://[::ffff:127.0.0.1]/": "carries 127.0.0.1",
    "http://[::ffff:7f00:1]/": "carries 127.0.0.1",
    "http://[::127.0.0.1]/": "carries 127.0.0.1",
    "http://[0:0:0:0:0:ffff:7f00:0001]/": "carries 127.0.0.1",
    "http://0.0.0.0/": "address is not public (0.0.0.0)",
    "http://0/": "address is not public (0.0.0.0)",
    # cloud metadata
    "http://169.254.169.254/latest/meta-data/": "address is not public (169.254.169.254)",
    "http://metadata.google.internal/computeMetadata/v1/": "address is not public (169.254.169.254)",
    "http://100.100.100.200/latest/meta-data/": "address is not public (100.100.100.200)",
    "http://168.63.129.16/": "address is not public (168.63.129.16)",
    "http://[fd00:ec2::254]/": "address is not public",
    # private and reserved ranges
    "http://10.0.0.1/": "address is not public (10.0.0.1)",
    "http://172.16.0.1/": "address is not public (172.16.0.1)",
    "http://172.31.255.255/": "address is not public (172.31.255.255)",
    "http://192.168.1.1/": "address is not public (192.168.1.1)",
    "http://100.64.0.1/": "address is not public (100.64.0.1)",
    "http://192.0.0.192/": "address is not public (192.0.0.192)",
    "http://198.18.0.1/": "address is not public (198.18.0.1)",
    "http://224.0.0.1/": "address is not public (224.0.0.1)",
    "http://240.0.0.1/": "address is not public (240.0.0.1)",
    "http://255.255.255.255/": "address is not public (255.255.255.255)",
    "http://[fe80::1]/": "address is not public",
    "http://[fc00::1]/": "address is not public",
    "http://[fec0::1]/": "address is not public",
    "http://[ff02::1]/": "address is not public",
    "http://[2002:7f00:1::1]/": "carries 127.0.0.1",
    "http://[64:ff9b::a00:1]/": "carries 10.0.0.1",
    "http://[64:ff9b:1::a00:1]/": "carries 10.0.0.1",
    "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/": "address is not public",
    # names that resolve to private addresses, mixed answers, errors
    "http://internal.test/": "address is not public (10.0.0.5)",
    "http://v6-loopback.test/": "address is not public",
    "http://mapped.test/": "carries 10.0.0.5",
    "http://mixed.test/": "address is not public (10.0.0.5)",
    "http://no-such-host.test/": "could not be resolved",
    "http://empty.test/": "has no address",
    # redirects to private addresses, other schemes, odd ports, userinfo; chains and loops
    "http://example.test/to-private": "address is not public (127.0.0.1)",
    "http://example.test/to-metadata": "address is not public (169.254.169.254)",
    "http://example.test/to-file": "only http and https URLs may be fetched, not file",
    "http://example.test/to-gopher": "only http and https URLs may be fetched, not gopher",
    "http://example.test/to-port": "port 6379 is not allowed",
    "http://example.test/to-userinfo": "URLs with a user name or password are not fetched",
    "http://example.test/chain/0": "more than 5 redirects",
    "http://example.test/loop": "more than 5 redirects",
    # userinfo and fragment tricks, schemes, ports
    "http://user:pass@example.test/page": "URLs with a user name or password are not fetched",
    "http://example.test@127.0.0.1/": "URLs with a user name or password are not fetched",
    "http://127.0.0.1#@example.test/": "address is not public (127.0.0.1)",
    "http://127.0.0.1\\@example.test/": "",
    "file:///etc/passwd": "only http and https URLs may be fetched, not file",
    "ftp://example.test/": "only http and https URLs may be fetched, not ftp",
    "gopher://example.test:70/": "only http and https URLs may be fetched, not gopher",
    "data:text/plain,hello": "only http and https URLs may be fetched",
    "javascript:alert(1)": "only http and https URLs may be fetched",
    "http://example.test:22/": "port 22 is not allowed",
    "http://example.test:8080/page": "port 8080 is not allowed",
    "http://example.test:6379/": "port 6379 is not allowed",
    "http:///page": "",
}


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
