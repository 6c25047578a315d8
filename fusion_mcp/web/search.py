"""Web search backends behind one small interface, and the policy every backend gets.

A backend turns a query into hits. :class:`Search` adds what the model should not have to care about:
results normalised to ``{title, url, snippet}`` and capped, a short-lived cache, a minimum interval
between queries (ddgs scrapes public engines that rate-limit), one retry, and a clean
:class:`SearchUnavailable` when it still fails. Backend URLs and keys come from configuration only; a
model chooses the query and the number of results, nothing else.
"""

from __future__ import annotations

import html
import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import anyio.to_thread
import httpx2

from ..config import Settings
from ..core.errors import redact
from ..core.text import one_line
from .extract import MAX_URL_CHARS

log = logging.getLogger(__name__)
MAX_RESULTS = 10
TITLE_CHARS = 200
SNIPPET_CHARS = 600
_STATUS_NOTES = {
    401: " (the key was rejected)",
    403: " (refused; a SearXNG instance needs JSON output enabled)",
    429: " (rate limited)",
}
_TAGS = re.compile(r"<[^>]{0,200}>")


@dataclass(frozen=True)
class Hit:
    title: str
    url: str
    snippet: str


class SearchUnavailable(Exception):
    """The search did not work; ``str()`` says why without secrets, for the model to read."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class Backend(Protocol):
    name: str

    async def search(self, query: str, max_results: int) -> list[dict[str, Any]]:
        """Raw results as dicts with some of title/url/href/snippet/content/description/body."""
        ...


class SearXNG:
    """A SearXNG instance: ``GET {base}/search?q=...&format=json`` (JSON output must be enabled in it)."""

    name = "searxng"

    def __init__(self, http: httpx2.AsyncClient, base_url: str) -> None:
        self._http = http
        self._url = f"{base_url.rstrip('/')}/search"

    async def search(self, query: str, max_results: int) -> list[dict[str, Any]]:
        data = await _get_json(self._http, "GET", self._url, self.name, params={"q": query, "format": "json"})
        return _list(data.get("results"))


class Brave:
    """Brave Search API: ``GET .../web/search?q=...`` with ``X-Subscription-Token``."""

    name = "brave"

    def __init__(self, http: httpx2.AsyncClient, url: str, key: str) -> None:
        self._http = http
        self._url = url
        self._headers = {"X-Subscription-Token": key, "Accept": "application/json"}

    async def search(self, query: str, max_results: int) -> list[dict[str, Any]]:
        params = {"q": query, "count": str(max_results)}
        data = await _get_json(self._http, "GET", self._url, self.name, params=params, headers=self._headers)
        web = data.get("web")
        return _list(web.get("results") if isinstance(web, dict) else None)


class Tavily:
    """Tavily: ``POST /search`` with a bearer key and ``{query, max_results}``."""

    name = "tavily"

    def __init__(self, http: httpx2.AsyncClient, url: str, key: str) -> None:
        self._http = http
        self._url = url
        self._headers = {"Authorization": f"Bearer {key}"}

    async def search(self, query: str, max_results: int) -> list[dict[str, Any]]:
        body = {"query": query, "max_results": max_results}
        data = await _get_json(self._http, "POST", self._url, self.name, json=body, headers=self._headers)
        return _list(data.get("results"))


class DDGS:
    """The ``ddgs`` package (no key): scrapes public engines, synchronous, so it runs in a worker thread.

    ``proxy`` and ``verify`` are passed through to ddgs (it also reads ``DDGS_PROXY``); ``engine`` is its
    ``backend`` argument ("auto" lets ddgs pick among the engines it knows).
    """

    name = "ddgs"

    def __init__(
        self, *, engine: str = "auto", timeout_s: int = 5, proxy: str | None = None, verify: bool | str = True
    ) -> None:
        self._engine = engine
        self._timeout = timeout_s
        self._proxy = proxy
        self._verify = verify

    async def search(self, query: str, max_results: int) -> list[dict[str, Any]]:
        return await anyio.to_thread.run_sync(self._search, query, max_results, abandon_on_cancel=True)

    def _search(self, query: str, max_results: int) -> list[dict[str, Any]]:
        from ddgs import DDGS as Client  # imported on first use: it loads lxml and a Rust HTTP client
        from ddgs.exceptions import DDGSException

        try:
            client = Client(proxy=self._proxy, timeout=self._timeout, verify=self._verify)
            return client.text(query, max_results=max_results, backend=self._engine)
        except DDGSException as exc:
            # "No results found." is how ddgs reports both an empty answer and a blocked one.
            raise SearchUnavailable(f"ddgs: {one_line(str(exc), 200)}") from None


class Search:
    """A backend with normalised, capped results, a cache, a minimum interval and one retry."""

    def __init__(
        self,
        backend: Backend,
        *,
        min_interval_s: float = 0.0,
        cache_ttl_s: float = 600.0,
        cache_size: int = 256,
        retry_delay_s: float = 1.0,
        secrets: tuple[str, ...] = (),
    ) -> None:
        self.backend = backend
        self._min_interval = min_interval_s
        self._ttl = cache_ttl_s
        self._size = cache_size
        self._retry_delay = retry_delay_s
        self._secrets = secrets
        self._cache: OrderedDict[tuple[str, int], tuple[float, list[Hit]]] = OrderedDict()
        self._gate = anyio.Lock()
        self._last = -float("inf")

    async def search(self, query: str, max_results: int) -> list[Hit]:
        query = " ".join(query.split())
        max_results = max(1, min(MAX_RESULTS, max_results))
        key = (query.lower(), max_results)
        cached = self._cache.get(key)
        if cached is not None and time.monotonic() - cached[0] < self._ttl:
            self._cache.move_to_end(key)
            return cached[1]
        problem = "no answer"
        for attempt in range(2):
            if attempt:
                await anyio.sleep(self._retry_delay)
            try:
                hits = normalise(await self._paced(query, max_results), max_results)
            except SearchUnavailable as exc:
                problem = str(exc)
                if not exc.retryable:
                    break
            except (httpx2.HTTPError, ValueError) as exc:
                problem = f"{self.backend.name}: {type(exc).__name__}"
            else:
                self._cache[key] = (time.monotonic(), hits)
                while len(self._cache) > self._size:
                    self._cache.popitem(last=False)
                return hits
            log.info("search attempt %d failed: %s", attempt + 1, redact(problem, self._secrets))
        raise SearchUnavailable(redact(problem, self._secrets))

    async def _paced(self, query: str, max_results: int) -> list[dict[str, Any]]:
        if self._min_interval <= 0:
            return await self.backend.search(query, max_results)
        # Queries from every member of every run share one backend: space them out, one at a time.
        async with self._gate:
            wait = self._last + self._min_interval - time.monotonic()
            if wait > 0:
                await anyio.sleep(wait)
            try:
                return await self.backend.search(query, max_results)
            finally:
                self._last = time.monotonic()


def normalise(raw: list[dict[str, Any]], max_results: int) -> list[Hit]:
    """Keep http(s) results with a URL, one per URL, tags and entities removed, lengths capped."""
    hits: list[Hit] = []
    seen: set[str] = set()
    for item in raw:
        url = str(item.get("url") or item.get("href") or "").strip()
        if not url.startswith(("http://", "https://")) or len(url) > MAX_URL_CHARS or url in seen:
            continue
        seen.add(url)
        snippet = item.get("snippet") or item.get("content") or item.get("description") or item.get("body") or ""
        hits.append(Hit(_plain(item.get("title") or url, TITLE_CHARS), url, _plain(snippet, SNIPPET_CHARS)))
        if len(hits) == max_results:
            break
    return hits


def make_search(settings: Settings, http: httpx2.AsyncClient) -> Search:
    """The backend ``FUSION_SEARCH`` names, or the first configured one, else ddgs (best effort)."""
    name = settings.search_backend
    secrets = settings.secrets
    if name == "searxng" and settings.searxng_url:
        return Search(SearXNG(http, settings.searxng_url), secrets=secrets)
    if name == "brave" and settings.brave_api_key:
        return Search(Brave(http, settings.brave_url, settings.brave_api_key.get_secret_value()), secrets=secrets)
    if name == "tavily" and settings.tavily_api_key:
        return Search(Tavily(http, settings.tavily_url, settings.tavily_api_key.get_secret_value()), secrets=secrets)
    return Search(DDGS(), min_interval_s=1.0, secrets=secrets)


async def _get_json(http: httpx2.AsyncClient, method: str, url: str, name: str, **kwargs: Any) -> dict[str, Any]:
    try:
        response = await http.request(method, url, **kwargs)
    except httpx2.TimeoutException:
        raise SearchUnavailable(f"{name} did not answer in time") from None
    except httpx2.HTTPError as exc:
        raise SearchUnavailable(f"{name} could not be reached ({type(exc).__name__})") from None
    if response.status_code != 200:
        status = response.status_code
        detail = _STATUS_NOTES.get(status, "")
        raise SearchUnavailable(f"{name} answered HTTP {status}{detail}", retryable=status not in (401, 403))
    try:
        data = response.json()
    except ValueError:
        raise SearchUnavailable(f"{name} answered with something that is not JSON") from None
    if not isinstance(data, dict):
        raise SearchUnavailable(f"{name} answered with JSON that is not an object")
    return data


def _list(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _plain(value: Any, limit: int) -> str:
    """Markup-free, single-line text of at most ``limit`` characters."""
    return one_line(html.unescape(_TAGS.sub("", str(value))), limit - 1, "…")
