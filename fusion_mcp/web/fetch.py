"""The guarded fetcher: what a panel model may read from the web, and nothing it may not.

A model's ``web_fetch`` call is untrusted (a page it read can tell it what to fetch), and the server fetches
from its own network position, so every URL is treated as an SSRF attempt until proven otherwise:

- URLs: http/https only, no userinfo, ports 80/443 unless configured; redirects followed by hand, at most
  five hops, each vetted again; no proxy from the environment; no retries.
- Addresses: decided on resolved addresses in the HTTP client's network backend, never on URL text. Every
  answer must be public (``addresses.refusal``), a failed lookup refuses (fail closed), and the connection
  goes to exactly the address that was checked — a resolver that answers public, then private, cannot
  move it. TLS still verifies the certificate against the URL's host name.
- Limits: connect timeout, an overall deadline per fetch (a 1-byte-per-second drip cannot hold it), a cap on
  *decoded* bytes (a gzip bomb stays bounded), a content-type allow-list.
"""

from __future__ import annotations

import http.cookiejar
import re
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass

import anyio
import httpcore2
import httpx2

from ..core.tls import default_tls
from .addresses import refusal
from .network import SYSTEM_NETWORK, Connector, Resolver, system_resolve
from .network import Network as Network  # where tests and benchmarks have always named it

TEXT_TYPES = (
    "text/html",
    "application/xhtml+xml",
    "text/plain",
    "application/json",
    "application/xml",
    "text/xml",
    "text/markdown",
)
REDIRECTS = frozenset({301, 302, 303, 307, 308})
_TOKEN = re.compile(r"[^a-z0-9.+/-]")


class FetchRefused(Exception):
    """The fetch was not allowed; ``str()`` is what the model reads ("refused: ...")."""


class FetchFailed(Exception):
    """The fetch was allowed but did not work; ``str()`` is what the model reads."""


class GuardedBackend(httpcore2.AsyncNetworkBackend):
    """httpcore2's network backend with the address policy: resolve, check every answer, connect to it."""

    def __init__(self, resolve: Resolver = system_resolve, connect: Connector | None = None) -> None:
        self._resolve = resolve
        self._connect = connect
        self._inner = httpcore2.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore2's interface
        local_address: str | None = None,
        socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        try:
            with anyio.fail_after(timeout or 5):
                addresses = await self._resolve(host.rstrip("."), port)
        except Exception as exc:
            raise FetchRefused(f"refused: {host} could not be resolved ({type(exc).__name__})") from None
        if not addresses:
            raise FetchRefused(f"refused: {host} has no address")
        for address in addresses:
            reason = refusal(address)
            if reason is not None:
                raise FetchRefused(f"refused: {reason}")
        if self._connect is not None:
            return await self._connect(addresses[0], port, timeout)
        return await self._inner.connect_tcp(
            addresses[0], port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


_ERRORS: tuple[tuple[type[Exception], type[httpx2.TransportError]], ...] = (
    # Most specific first: the first match wins.
    (httpcore2.ConnectTimeout, httpx2.ConnectTimeout),
    (httpcore2.ReadTimeout, httpx2.ReadTimeout),
    (httpcore2.WriteTimeout, httpx2.WriteTimeout),
    (httpcore2.PoolTimeout, httpx2.PoolTimeout),
    (httpcore2.TimeoutException, httpx2.TimeoutException),
    (httpcore2.ConnectError, httpx2.ConnectError),
    (httpcore2.ReadError, httpx2.ReadError),
    (httpcore2.WriteError, httpx2.WriteError),
    (httpcore2.NetworkError, httpx2.NetworkError),
    (httpcore2.RemoteProtocolError, httpx2.RemoteProtocolError),
    (httpcore2.LocalProtocolError, httpx2.LocalProtocolError),
    (httpcore2.ProtocolError, httpx2.ProtocolError),
    (httpcore2.UnsupportedProtocol, httpx2.UnsupportedProtocol),
)


@contextmanager
def _as_httpx_errors() -> Iterator[None]:
    """httpcore2's exceptions as httpx2's, as httpx2's own transport maps them (others pass through)."""
    try:
        yield
    except Exception as exc:
        for source, target in _ERRORS:
            if isinstance(exc, source):
                raise target(str(exc)) from exc
        raise


class _Body(httpx2.AsyncByteStream):
    def __init__(self, stream: AsyncIterable[bytes]) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx_errors():
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            await close()


class GuardedTransport(httpx2.AsyncBaseTransport):
    """An httpx2 transport over an httpcore2 pool whose network backend is :class:`GuardedBackend`.

    httpx2's own transport takes no network backend, so this is the small part of it we need, written on
    the two libraries' public interfaces: no proxy, no retries, HTTP/1.1.
    """

    def __init__(self, network: Network, max_connections: int) -> None:
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=network.ssl_context or default_tls(),
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            retries=0,
            network_backend=GuardedBackend(network.resolve, network.connect),
        )

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        assert isinstance(request.stream, httpx2.AsyncByteStream)
        url = httpcore2.URL(
            scheme=request.url.raw_scheme, host=request.url.raw_host, port=request.url.port, target=request.url.raw_path
        )
        core = httpcore2.Request(
            method=request.method,
            url=url,
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _as_httpx_errors():
            response = await self._pool.handle_async_request(core)
        assert isinstance(response.stream, AsyncIterable)
        return httpx2.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_Body(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


@dataclass
class Fetched:
    url: str
    """The final URL, after redirects."""
    status: int
    content_type: str
    encoding: str | None
    """The charset the server declared, if any."""
    body: bytes
    truncated: bool
    """The body went past the byte cap and was cut there."""


class Fetcher:
    """Fetches one URL at a time under the policy above. One per process; close with :meth:`aclose`."""

    def __init__(
        self,
        *,
        network: Network = SYSTEM_NETWORK,
        allowed_ports: Iterable[int] = (80, 443),
        max_bytes: int = 5 * 1024 * 1024,
        deadline_s: float = 20.0,
        connect_timeout_s: float = 5.0,
        max_redirects: int = 5,
        user_agent: str = "fusion-mcp",
    ) -> None:
        self.allowed_ports = frozenset(allowed_ports)
        self.max_bytes = max_bytes
        self.deadline_s = deadline_s
        self.max_redirects = max_redirects
        self._client = httpx2.AsyncClient(
            transport=GuardedTransport(network, max_connections=16),
            trust_env=False,
            follow_redirects=False,
            # No cookies kept: one client serves every run and every user, and a cookie one page set must not
            # ride along on another run's fetch (a credential, and a way to track across users).
            cookies=http.cookiejar.CookieJar(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[])),
            timeout=httpx2.Timeout(connect=connect_timeout_s, read=deadline_s, write=10, pool=connect_timeout_s),
            headers={"User-Agent": user_agent, "Accept-Encoding": "gzip, deflate", "Accept": ", ".join(TEXT_TYPES)},
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    def check_url(self, url: str) -> httpx2.URL:
        """The URL rules that need no network: scheme, userinfo, host, port. Raises :class:`FetchRefused`."""
        try:
            parsed = httpx2.URL(url)
        except Exception:
            raise FetchRefused(f"refused: {url[:200]!r} is not a valid URL") from None
        if parsed.scheme not in ("http", "https"):
            raise FetchRefused(f"refused: only http and https URLs may be fetched, not {parsed.scheme or 'this'}")
        if parsed.userinfo:
            raise FetchRefused("refused: URLs with a user name or password are not fetched")
        if not parsed.host:
            raise FetchRefused("refused: the URL has no host")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        if port not in self.allowed_ports:
            raise FetchRefused(
                f"refused: port {port} is not allowed (only {', '.join(map(str, sorted(self.allowed_ports)))})"
            )
        return parsed.copy_with(fragment=None)

    async def fetch(self, url: str) -> Fetched:
        """GET ``url`` and its redirects; raise :class:`FetchRefused` or :class:`FetchFailed` with a reason."""
        try:
            with anyio.fail_after(self.deadline_s):
                return await self._follow(url)
        except TimeoutError:
            raise FetchFailed(f"gave up: no complete answer within {self.deadline_s:g} s") from None
        except httpx2.HTTPError as exc:
            detail = str(exc)
            if "CERTIFICATE_VERIFY_FAILED" in detail:
                # "Hostname mismatch, ..." or "unable to get local issuer certificate": worth telling the model.
                reason = detail.split("certificate verify failed:", 1)[-1].split("(_ssl", 1)[0].strip(" .")
                raise FetchFailed(f"the fetch failed: the site's TLS certificate was not accepted ({reason})") from None
            raise FetchFailed(f"the fetch failed: {type(exc).__name__}") from None

    async def _follow(self, url: str) -> Fetched:
        current = self.check_url(url)
        for _ in range(self.max_redirects + 1):
            async with self._client.stream("GET", current) as response:
                if response.status_code in REDIRECTS and "location" in response.headers:
                    try:
                        target = str(current.join(response.headers["location"]))
                    except httpx2.InvalidURL:
                        raise FetchRefused("refused: the page redirected to an invalid URL") from None
                    current = self.check_url(target)
                    continue
                return await self._read(str(current), response)
        raise FetchRefused(f"refused: more than {self.max_redirects} redirects")

    async def _read(self, url: str, response: httpx2.Response) -> Fetched:
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in TEXT_TYPES:
            # The header is the site's to write: only a token-shaped, short version reaches the model.
            shown = _TOKEN.sub("", content_type)[:60] or "none"
            raise FetchRefused(f"refused: content type {shown} is not text this tool reads")
        length = response.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            raise FetchRefused(f"refused: the page is {int(length):,} bytes, over the {self.max_bytes:,}-byte cap")
        chunks: list[bytes] = []
        size = 0
        truncated = False
        # aiter_bytes yields *decoded* bytes in bounded pieces, so a compressed bomb stops at the cap too; closed
        # here when the cap stops it, not left to the garbage collector (see providers.client._sse_events).
        async with aclosing(response.aiter_bytes()) as pieces:
            async for chunk in pieces:
                size += len(chunk)
                if size > self.max_bytes:
                    chunks.append(chunk[: len(chunk) - (size - self.max_bytes)])
                    truncated = True
                    break
                chunks.append(chunk)
        body = b"".join(chunks)
        return Fetched(url, response.status_code, content_type, response.charset_encoding, body, truncated)
