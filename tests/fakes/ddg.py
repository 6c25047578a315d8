"""A loopback fake of DuckDuckGo's HTML search endpoint that the real ``ddgs`` package reaches over the wire.

Why it exists: our search backend calls ``ddgs``, which drives ``primp`` (a Rust HTTP client that impersonates
browsers) against ``https://html.duckduckgo.com/html/``. Tests run without internet, and mocking ``ddgs`` itself
would skip the parts most likely to break: proxy and TLS plumbing, ddgs's HTML parsing and its post-processing of
results. So the fake sits where the network would be, and talks only on 127.0.0.1:

* an HTTP proxy on an ephemeral loopback port. ``DDGS(proxy=fake.proxy_url, verify=fake.ca_path)`` makes primp
  tunnel HTTPS through it with ``CONNECT``;
* ``CONNECT html.duckduckgo.com:443`` gets ``200`` and the fake terminates TLS itself, with a certificate for that
  name signed by a throwaway ``trustme`` CA (the PEM at ``fake.ca_path``). Every other CONNECT, and any
  plain-HTTP proxy request, gets ``403`` and is recorded, so a test can assert that nothing else was contacted;
* behind the TLS, a minimal HTTP/1.1 server answers ``POST /html/`` (``GET /html/?q=`` too) with a page laid out
  like DuckDuckGo's, built from ``fake.results``.

Usage::

    with ddg_fake() as fake:
        fake.results = [("asyncio docs", "https://docs.python.org/3/library/asyncio.html", "python asyncio I/O")]
        hits = DDGS(proxy=fake.proxy_url, verify=fake.ca_path, timeout=5).text("python asyncio", backend="duckduckgo")
        assert hits[0]["href"] == "https://docs.python.org/3/library/asyncio.html"
        assert fake.queries == ["python asyncio"]

What ddgs 9.16 does to the results (script results that survive it):

* one ``text()`` call with ``backend="duckduckgo"`` sends one request, page 1, whatever ``max_results`` is;
* results with the same href are merged into one (the one with the longer body wins);
* results are **reordered** by ``SimpleFilterRanker``: hrefs containing ``wikipedia.org`` first, then results
  whose title *and* body contain a query word (3+ characters), then title only, body only, neither. To keep the
  scripted order, put a query word in every title and snippet (or in none);
* hrefs are percent-decoded (``%20`` becomes ``+``); titles and bodies have whitespace collapsed, then anything
  looking like a tag (``<...>``) stripped and HTML entities decoded *again* (so ``"a <b> c"`` comes back as
  ``"a c"`` and ``"&amp;"`` as ``"&"``); hrefs starting with ``https://duckduckgo.com/y.js?`` (ads) are dropped.

Scripted failures: with ``fake.fail_next = n`` the next n searches get ``fake.fail_status`` (429 unless changed;
200 gives an empty results page) and no results. ddgs treats any non-200 like an empty page, so ``DDGS.text``
raises ``ddgs.exceptions.DDGSException("No results found.")`` either way (not ``RatelimitException``).
``fake.delay_s`` holds each search reply back that long: past the ``DDGS(timeout=...)`` primp gives up and
``DDGS.text`` raises ``ddgs.exceptions.TimeoutException`` (a ``DDGSException``) after about that timeout.
``close()`` cuts a pending delay short; the client then sees a ``DDGSException`` (connection closed).

Things outside the fake that decide whether ddgs reaches it (checked with ddgs 9.16.1 / primp 2.0.1):

* with ``proxy=None``, ddgs uses ``DDGS_PROXY`` and primp then honours ``HTTPS_PROXY``/``https_proxy``/``ALL_PROXY``;
  an explicit ``proxy=`` wins over all of them, and ``NO_PROXY`` does not bypass it. Without any proxy primp
  resolves DNS itself and fails fast here (no network), so a test that forgets the proxy errors, it does not hang;
* ``PRIMP_CA_BUNDLE`` adds trusted CAs even with ``verify=True``; with plain ``verify=True`` and no such variable
  the fake's certificate is rejected (``invalid peer certificate: UnknownIssuer``), so pass ``verify=fake.ca_path``;
* pin ``backend="duckduckgo"``: ``"auto"`` (and unknown names such as the disabled ``"bing"``, which fall back to
  it) also tries wikipedia, grokipedia, yahoo, brave, startpage and mojeek. The fake refuses those (see
  ``fake.refused``) but ddgs still returns the DuckDuckGo results;
* primp offers ``h2`` in ALPN and uses it when the server accepts, hence the http/1.1-only ALPN here.
"""

from __future__ import annotations

import html
import shutil
import socket
import socketserver
import ssl
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Self
from urllib.parse import parse_qs, urlsplit

import trustme

DDG_HOST = "html.duckduckgo.com"
"""The only host the proxy will tunnel to: the one ddgs's ``duckduckgo`` text engine posts to."""

_MAX_LINE = 16 * 1024  # request line / header line cap; real requests are far below it
_MAX_HEADERS = 100
_MAX_BODY = 1024 * 1024
_IDLE_TIMEOUT_S = 30.0  # backstop only: close() shuts connections down long before this fires

# Errors that just mean "this connection is over": the client went away or failed the handshake, close() cut it,
# the idle backstop fired (ssl.SSLError and TimeoutError are OSErrors), or it spoke garbage (ValueError).
_CONNECTION_ERRORS = (OSError, ValueError)

Result = tuple[str, str, str]
"""A scripted search result: ``(title, url, snippet)``."""


@dataclass(frozen=True)
class RecordedRequest:
    """One HTTP request the fake's DuckDuckGo side received (after TLS), for assertions on headers or fields."""

    method: str
    target: str
    headers: dict[str, str]
    """Header names lower-cased; repeated headers joined with ``", "``."""
    form: dict[str, str]
    """Form fields of the body (or query parameters of a GET), first value of each."""


class _ProxyServer(socketserver.ThreadingTCPServer):
    # Non-daemon handler threads plus block_on_close make server_close() join them, so close() really waits for
    # every connection to finish and nothing outlives the fake.
    daemon_threads = False
    block_on_close = True
    allow_reuse_address = False

    def __init__(self, fake: FakeDuckDuckGo) -> None:
        self.fake = fake
        super().__init__(("127.0.0.1", 0), _ProxyHandler)


class _ProxyHandler(socketserver.BaseRequestHandler):
    server: _ProxyServer
    request: socket.socket

    def handle(self) -> None:
        fake = self.server.fake
        sock = self.request
        sock.settimeout(_IDLE_TIMEOUT_S)
        # A dup of the connection's socket lets close() shut the connection down from another thread whatever
        # object the handler is blocked in (the plain socket, or the SSLSocket that replaces it after CONNECT).
        guard = sock.dup()
        try:
            if not fake._track(guard):
                return
            try:
                self._handle(fake, sock)
            except _CONNECTION_ERRORS:
                pass
        finally:
            fake._untrack(guard)
            guard.close()

    def _handle(self, fake: FakeDuckDuckGo, sock: socket.socket) -> None:
        head = _read_proxy_head(sock)
        if head is None:
            return
        method, target = head
        if method.upper() != "CONNECT":
            fake._record_refused(f"{method} {target}")
            sock.sendall(_FORBIDDEN)
            return
        fake._record_connect(target)
        if target.lower() != f"{DDG_HOST}:443":
            fake._record_refused(f"CONNECT {target}")
            sock.sendall(_FORBIDDEN)
            return
        sock.sendall(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        # wrap_socket takes the file descriptor over from ``sock``; socketserver's later close of ``sock`` is a
        # no-op, and the ``with`` closes the TLS socket.
        with fake._ssl_context.wrap_socket(sock, server_side=True) as tls, tls.makefile("rb") as rfile:
            fake._serve_http(tls, rfile)


_FORBIDDEN = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def _read_proxy_head(sock: socket.socket) -> tuple[str, str] | None:
    """Read the proxy request's head from the raw socket; return ``(method, target)``, None on EOF/garbage.

    Reads with plain recv, not a buffered file, so no byte of the TLS handshake that follows a CONNECT can end up
    stuck in a Python buffer instead of reaching the SSL layer (clients wait for our 200 before sending it anyway).
    """
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk or len(data) > _MAX_LINE * 4:
            return None
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    if rest:  # bytes before our reply: not a client we understand
        return None
    parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
    if len(parts) != 3:
        return None
    return parts[0], parts[1]


def _read_head(rfile: BinaryIO) -> tuple[str, str, dict[str, str]] | None:
    """Parse one request head from the TLS stream: ``(method, target, headers)``; None if the client closed cleanly.

    Header names are lower-cased and repeated headers joined with ``", "``.
    """
    line = rfile.readline(_MAX_LINE)
    while line in (b"\r\n", b"\n"):  # tolerate stray CRLFs between keep-alive requests (RFC 9112 §2.2)
        line = rfile.readline(_MAX_LINE)
    if not line:
        return None
    parts = line.decode("latin-1").split()
    if len(parts) != 3:
        raise ValueError(f"bad request line {line!r}")
    method, target, _version = parts
    headers: dict[str, str] = {}
    for _ in range(_MAX_HEADERS):
        raw = rfile.readline(_MAX_LINE)
        if raw in (b"\r\n", b"\n", b""):
            break
        name, _, value = raw.decode("latin-1").partition(":")
        key = name.strip().lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    return method.upper(), target, headers


def _read_body(rfile: BinaryIO, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = b""
        while True:
            size = int(rfile.readline(_MAX_LINE).split(b";", 1)[0].strip(), 16)
            if size == 0:
                while rfile.readline(_MAX_LINE) not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return body
            body += rfile.read(size)
            rfile.readline(_MAX_LINE)  # the CRLF after each chunk
            if len(body) > _MAX_BODY:
                raise ValueError("body too large")
    length = int(headers.get("content-length", "0") or "0")
    if length > _MAX_BODY:
        raise ValueError("body too large")
    body = rfile.read(length)
    if len(body) != length:
        raise ValueError("truncated body")
    return body


def render_results_page(query: str, results: list[Result]) -> str:
    """Render results the way html.duckduckgo.com lays them out, reduced to what ddgs's parser reads.

    ddgs takes every ``div`` whose class contains ``body`` as one result: title from ``.//h2//text()``, href from
    the *direct* child ``a`` (the snippet link, as on the real page), body from that ``a``'s text. So the snippet
    ``a`` is always emitted, even for an empty snippet, or the result would lose its href; and no other element
    on the page may have ``body`` in its class.
    """
    esc = html.escape
    items = "".join(
        f"""
<div class="result results_links results_links_deep web-result">
  <div class="links_main links_deep result__body">
    <h2 class="result__title"><a rel="nofollow" class="result__a" href="{esc(url)}">{esc(title)}</a></h2>
    <div class="result__extras"><div class="result__extras__url">
      <a class="result__url" href="{esc(url)}">{esc(url)}</a>
    </div></div>
    <a class="result__snippet" href="{esc(url)}">{esc(snippet)}</a>
    <div class="clear"></div>
  </div>
</div>"""
        for title, url, snippet in results
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(query)} at DuckDuckGo</title></head>
<body><div id="links" class="results">{items}
</div></body></html>
"""


class FakeDuckDuckGo:
    """The proxy + fake DuckDuckGo. Use through :func:`ddg_fake`, or ``with FakeDuckDuckGo() as fake``.

    Scriptable at any time, also while ddgs is running (read once per request, under a lock):

    * ``results``: list of ``(title, url, snippet)`` every search returns;
    * ``fail_next``: the next n searches fail with ``fail_status`` (default 429) and no results;
    * ``delay_s``: seconds to hold each search reply back (interrupted by close()).

    Recorded, in arrival order: ``queries`` (the ``q`` of each search), ``connects`` (every CONNECT target as
    ``host:port``, tunnelled or not), ``refused`` (``"METHOD target"`` of every proxy request answered 403) and
    ``requests`` (every search request with its headers and form fields).
    """

    def __init__(self, results: list[Result] | None = None) -> None:
        self.results: list[Result] = list(results or [])
        self.fail_next = 0
        self.fail_status = 429
        self.delay_s = 0.0
        self.queries: list[str] = []
        self.connects: list[str] = []
        self.refused: list[str] = []
        self.requests: list[RecordedRequest] = []

        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._tmpdir = Path(tempfile.mkdtemp(prefix="ddg-fake-"))
        self._server: _ProxyServer | None = None
        self._thread: threading.Thread | None = None

        self.ca_path = str(self._tmpdir / "ca.pem")
        try:
            # A fresh CA per fake: nothing trusts it but the clients handed ``ca_path``, and it dies with the fake.
            ca = trustme.CA()
            ca.cert_pem.write_to_path(self.ca_path)
            self._ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ca.issue_cert(DDG_HOST).configure_cert(self._ssl_context)
            # Only HTTP/1.1: the server side below speaks nothing else, and primp offers h2 and takes it whenever
            # the server accepts it (then fails on our HTTP/1.1 reply); advertising just http/1.1 settles ALPN on it.
            self._ssl_context.set_alpn_protocols(["http/1.1"])
            self._server = _ProxyServer(self)
        except BaseException:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            raise
        self.port: int = self._server.server_address[1]
        self.proxy_url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="ddg-fake-proxy", daemon=True
        )
        self._thread.start()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop accepting, cut every open connection, wait for all handler threads, delete the CA file. Idempotent."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._server = self._thread = None
        server.shutdown()  # serve_forever returns: no new connections after this
        with self._lock:
            self._stopping.set()
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)  # wakes a handler blocked in recv/handshake/delay on this connection
            except OSError:
                pass
        server.server_close()  # closes the listener and joins the handler threads
        thread.join()
        shutil.rmtree(self._tmpdir, ignore_errors=True)

    # --- called from handler threads -------------------------------------------------------------------------

    def _track(self, conn: socket.socket) -> bool:
        with self._lock:
            if self._stopping.is_set():  # accepted just before close(): don't start serving it
                return False
            self._conns.add(conn)
            return True

    def _untrack(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.discard(conn)

    def _record_connect(self, target: str) -> None:
        with self._lock:
            self.connects.append(target)

    def _record_refused(self, line: str) -> None:
        with self._lock:
            self.refused.append(line)

    def _serve_http(self, tls: ssl.SSLSocket, rfile: BinaryIO) -> None:
        """Answer requests on one tunnelled connection until the client closes it or asks to."""
        while not self._stopping.is_set():
            try:
                head = _read_head(rfile)
                if head is None:
                    return
                method, target, headers = head
                if headers.get("expect", "").lower() == "100-continue":
                    tls.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")  # else such a client would sit out its wait
                body = _read_body(rfile, headers)
            except ValueError:
                tls.sendall(_response(400, "bad request", keep_alive=False))
                return
            if method == "POST":
                fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
            else:
                fields = parse_qs(urlsplit(target).query, keep_blank_values=True)
            request = RecordedRequest(method, target, headers, {k: v[0] for k, v in fields.items()})
            answer = self._answer(request)
            if answer is None:  # close() interrupted the delay: drop the connection, as a dying server would
                return
            status, page = answer
            keep_alive = headers.get("connection", "").lower() != "close"
            tls.sendall(_response(status, page, keep_alive=keep_alive))
            if not keep_alive:
                return

    def _answer(self, request: RecordedRequest) -> tuple[int, str] | None:
        """``(status, page)`` for one request, or None when the fake was closed while the reply was held back."""
        path = urlsplit(request.target).path
        if path.rstrip("/") != "/html" or request.method not in ("GET", "POST"):
            return 404, "<html><body>not found</body></html>"
        query = request.form.get("q", "")
        with self._lock:
            self.queries.append(query)
            self.requests.append(request)
            failing = self.fail_next > 0
            if failing:
                self.fail_next -= 1
            results, delay, fail_status = list(self.results), self.delay_s, self.fail_status
        # close() shuts the connection down only after setting _stopping, so without this check a reply woken by
        # it could still slip out in between, and the client would get results from a closed fake.
        if delay > 0 and self._stopping.wait(delay):
            return None
        if failing:
            return fail_status, render_results_page(query, [])
        return 200, render_results_page(query, results)


_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 429: "Too Many Requests"}


def _response(status: int, page: str, *, keep_alive: bool) -> bytes:
    body = page.encode("utf-8")
    # Always identity-encoded with an exact Content-Length: valid whatever Accept-Encoding the client sent, and the
    # simplest framing for a keep-alive client to reuse the connection.
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        "Content-Type: text/html; charset=UTF-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n"
        "\r\n"
    )
    return head.encode("latin-1") + body


@contextmanager
def ddg_fake(results: list[Result] | None = None) -> Iterator[FakeDuckDuckGo]:
    """Run a :class:`FakeDuckDuckGo` for the duration of the block; everything is shut down and joined on exit."""
    fake = FakeDuckDuckGo(results)
    try:
        yield fake
    finally:
        fake.close()
