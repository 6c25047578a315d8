"""``fusion-mcp doctor``: check the set-up before spending anything, one line per check with a fix."""

from __future__ import annotations

import os
import re
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio
import httpx2

from ..config import KEYS_PAGE, LOCAL_SERVER_HINT, Endpoint, Settings, shown_url
from ..core.lenses import model_of
from ..providers.catalogue import CatalogueClient, without_tools
from ..providers.client import auth_headers, new_http_client
from ..store import StoreError, open_store


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        status = "ok  " if self.ok else "FAIL"
        fix = f" -> fix: {self.fix}" if not self.ok and self.fix else ""
        return f"{status} {self.name}: {self.detail}{fix}"


async def run_checks(settings: Settings, timeout_s: float) -> list[Check]:
    """Every check, in order; ``timeout_s`` bounds each request to the provider (``doctor --timeout``)."""
    async with new_http_client() as http:
        checks = [await _key(http, settings, timeout_s), await _reachable(http, settings, timeout_s)]
        checks += [await _provider(http, settings, endpoint, timeout_s) for endpoint in settings.providers.values()]
        checks += await _models(http, settings, timeout_s)
        checks.append(_web(settings))
        checks += await _tool_support(http, settings, timeout_s)
    checks.append(await _store(settings))
    checks += [_files(settings), _runs(settings)]
    return checks


def _files(settings: Settings) -> Check:
    if not settings.files_roots:
        return Check(
            "files",
            True,
            "only inside the client's MCP roots (a stdio host that declares them); set FUSION_FILES_ROOTS for "
            "HTTP clients and hosts without roots",
        )
    roots = ", ".join(str(r) for r in settings.files_roots)
    unreadable = [str(r) for r in settings.files_roots if not os.access(r, os.R_OK | os.X_OK)]
    if unreadable:
        return Check("files", False, f"cannot read {', '.join(unreadable)}", "fix FUSION_FILES_ROOTS or permissions")
    return Check("files", True, f"roots {roots}; {settings.files_max_bytes:,} bytes a call (FUSION_FILES_MAX_BYTES)")


def _runs(settings: Settings) -> Check:
    if not settings.long_runs:
        return Check("runs", True, f"end with their call ({settings.deadline_s:g} s, FUSION_DEADLINE_S)")
    return Check(
        "runs",
        True,
        f"may outlive their call: {settings.deadline_s:g} s a call, {settings.run_deadline:g} s a run "
        "(FUSION_RUN_DEADLINE_S); openrouter_fusion_result and MCP tasks serve the rest",
    )


def _uses_default(settings: Settings) -> bool:
    """Some configured model (the panel's or the analyst's) is on the default provider."""
    panel, analyst = settings.models_for()
    return any(not settings.route(model_of(m))[0].named for m in (*panel, analyst))


async def _key(http: httpx2.AsyncClient, settings: Settings, timeout_s: float) -> Check:
    if settings.api_key is None:
        if settings.is_openrouter and settings.providers and not _uses_default(settings):
            return Check("key", True, "OPENROUTER_API_KEY is not set; no configured model is on the default provider")
        if settings.is_openrouter:
            return Check(
                "key",
                False,
                "OPENROUTER_API_KEY is not set",
                f"create a key at {KEYS_PAGE} and put it in the server's environment (or a host entry's env), "
                f"or use a local server instead: {LOCAL_SERVER_HINT}",
            )
        return Check("key", True, "no key set (fine for a local server that needs none)")
    try:
        with anyio.fail_after(timeout_s):
            response = await http.get(f"{settings.base_url}/key", headers=auth_headers(settings))
    except (httpx2.HTTPError, TimeoutError) as exc:
        why, _ = unreachable(exc, settings.base_url, timeout_s)
        return Check("key", False, f"could not ask {shown_url(settings.base_url)}/key: {why}", "see 'reach'")
    if response.status_code in (401, 403):
        return Check(
            "key",
            False,
            f"the key was rejected (HTTP {response.status_code})",
            "create a new key and set OPENROUTER_API_KEY",
        )
    if response.status_code == 404:
        return Check("key", True, "this provider has no /key endpoint: the key is checked on the first call")
    if response.status_code != 200:
        return Check("key", False, f"GET /key answered HTTP {response.status_code}", "try again later")
    try:
        data = response.json().get("data") or {}
    except ValueError:
        data = {}
    limit = data.get("limit")
    usage = data.get("usage")
    spent = f", used ${usage:g}" if isinstance(usage, int | float) else ""
    cap = f" of a ${limit:g} limit" if isinstance(limit, int | float) else ""
    return Check("key", True, f"accepted{spent}{cap}")


async def _reachable(http: httpx2.AsyncClient, settings: Settings, timeout_s: float) -> Check:
    try:
        with anyio.fail_after(timeout_s):
            response = await http.get(f"{settings.base_url}/models")
    except (httpx2.HTTPError, TimeoutError) as exc:
        why, fix = unreachable(exc, settings.base_url, timeout_s)
        return Check("reach", False, f"cannot reach {shown_url(settings.base_url)}: {why}", fix)
    return Check("reach", True, f"{shown_url(settings.base_url)} answers (HTTP {response.status_code} for /models)")


async def _provider(http: httpx2.AsyncClient, settings: Settings, endpoint: Endpoint, timeout_s: float) -> Check:
    """One configured provider: reached at its base URL, its key set and not refused (``/models`` with it)."""
    name = f"provider {endpoint.name}"
    if endpoint.key_missing:
        return Check(
            name,
            False,
            f"no key: {endpoint.api_key_env} is not set",
            f"set {endpoint.api_key_env} in the server's environment (or the entry's api_key_env)",
        )
    try:
        with anyio.fail_after(timeout_s):
            response = await http.get(f"{endpoint.base_url}/models", headers=auth_headers(endpoint))
    except (httpx2.HTTPError, TimeoutError) as exc:
        why, fix = unreachable(exc, endpoint.base_url, timeout_s)
        return Check(name, False, f"cannot reach {shown_url(endpoint.base_url)}: {why}", fix)
    if response.status_code in (401, 403):
        where = endpoint.api_key_env or "the entry's api_key"
        return Check(
            name,
            False,
            f"{shown_url(endpoint.base_url)}: the key was rejected (HTTP {response.status_code})",
            f"check {where}",
        )
    key = "no key (fine for a local server)" if endpoint.api_key is None else "key sent"
    served = f"; serves {', '.join(endpoint.models)}" if endpoint.models else ""
    return Check(
        name, True, f"{shown_url(endpoint.base_url)} answers (HTTP {response.status_code} for /models), {key}{served}"
    )


def unreachable(exc: BaseException, url: str, timeout_s: float) -> tuple[str, str]:
    """Why a request to ``url`` got no answer, and what to do: the name, the connection, TLS or the time."""
    parts = urlsplit(url)
    host = parts.hostname or url
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if isinstance(exc, TimeoutError | httpx2.TimeoutException):
        return (
            f"no answer within {timeout_s:g} s",
            f"check that the server at {host}:{port} is up and not overloaded, and that no firewall drops the "
            "connection; doctor --timeout waits longer",
        )
    for cause in _causes(exc):
        if isinstance(cause, socket.gaierror):
            return f"the name {host} does not resolve", "check the host name in OPENROUTER_BASE_URL, and DNS"
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (
                f"TLS failed: the certificate of {host} is not trusted ({cause.verify_message})",
                "a company CA goes in SSL_CERT_FILE; check that OPENROUTER_BASE_URL names the right host",
            )
        if isinstance(cause, ssl.SSLError):
            return (
                f"TLS failed ({cause.reason or cause})",
                "a server that speaks plain HTTP needs http:// in OPENROUTER_BASE_URL",
            )
        if isinstance(cause, ConnectionRefusedError):
            return (
                f"connection refused: nothing listens on {host}:{port}",
                "start the local server, or check the port in OPENROUTER_BASE_URL",
            )
    return type(exc).__name__, "check OPENROUTER_BASE_URL, the network, or that the local server is running"


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it was raised from, innermost last, through exception groups too: anyio raises one
    ``OSError`` from a group of the attempts when a name (``localhost``) resolves to several addresses."""
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        if isinstance(seen, BaseExceptionGroup):
            for inner in seen.exceptions:
                yield from _causes(inner)
        seen = seen.__cause__ or seen.__context__


async def _models(http: httpx2.AsyncClient, settings: Settings, timeout_s: float) -> list[Check]:
    client = CatalogueClient(http, settings, timeout_s)
    if settings.providers:
        return await _routed_models(client, settings)
    catalogue = await client.get()
    if catalogue.problem is not None:
        return [Check("models", False, f"model ids not checked: {catalogue.problem}", "see 'reach' above")]
    if catalogue.models is None:
        return [Check("models", True, "the provider publishes no catalogue: model ids are checked on the first call")]
    checks = []
    panel, analyst = settings.models_for()
    # A model under several lenses is one model to check.
    roles = dict.fromkeys([*(("panel", model_of(m)) for m in panel), ("analyst", analyst)])
    for role, model in roles:
        known, _, _ = await client.lookup(model)
        if known:
            checks.append(Check(f"model {model}", True, f"known ({role})"))
        else:
            close = catalogue.closest(model)
            hint = f"did you mean {', '.join(close)}?" if close else "pick an id from the provider's model list"
            setting = "FUSION_ANALYSIS_MODELS" if role == "panel" else "FUSION_MODEL"
            checks.append(
                Check(f"model {model}", False, f"not in the provider's catalogue ({role})", f"{hint} ({setting})")
            )
    return checks


async def _routed_models(client: CatalogueClient, settings: Settings) -> list[Check]:
    """Each configured model at its own provider's catalogue (providers configured)."""
    checks = []
    panel, analyst = settings.models_for()
    setting = {"panel": "FUSION_ANALYSIS_MODELS", "analyst": "FUSION_MODEL"}
    for role, model in dict.fromkeys([*(("panel", model_of(m)) for m in panel), ("analyst", analyst)]):
        known, _, catalogue = await client.lookup(model)
        where = f"{role}, provider {catalogue.provider}"
        if catalogue.problem is not None:
            fix = (
                f"see 'provider {catalogue.provider}' above" if catalogue.provider != "default" else "see 'reach' above"
            )
            checks.append(Check(f"model {model}", False, f"not checked ({where}): {catalogue.problem}", fix))
        elif catalogue.models is None:
            checks.append(
                Check(
                    f"model {model}", True, f"not checked ({where} publishes no catalogue): checked on the first call"
                )
            )
        elif known:
            checks.append(Check(f"model {model}", True, f"known ({where})"))
        else:
            close = catalogue.closest(model)
            hint = f"did you mean {', '.join(close)}?" if close else "pick an id from the provider's model list"
            checks.append(
                Check(f"model {model}", False, f"not in {catalogue.whose} ({role})", f"{hint} ({setting[role]})")
            )
    return checks


def _web(settings: Settings) -> Check:
    mode = settings.web_mode
    if mode == "off":
        return Check("web tools", True, "off (FUSION_WEB_TOOLS): the panel answers from its own knowledge")
    if mode == "openrouter":
        return Check("web tools", True, "openrouter: OpenRouter's server-side web search and fetch")
    search = settings.search_backend
    detail = {
        "searxng": f"SearXNG at {_without_userinfo(settings.searxng_url or '')}",
        "brave": "Brave Search API",
        "tavily": "Tavily API",
        "ddgs": "ddgs, best effort (no key; set FUSION_SEARXNG_URL, BRAVE_API_KEY or TAVILY_API_KEY for a steady one)",
    }[search]
    ports = ", ".join(map(str, settings.fetch_ports))
    provenance = "any URL" if settings.fetch_any_url else "URLs from the question or earlier results only"
    return Check("web tools", True, f"local: search via {detail}; guarded fetch on ports {ports}, {provenance}")


def _without_userinfo(url: str) -> str:
    """A URL as printed: a user name or password in it (basic auth in front of SearXNG) is masked."""
    return re.sub(r"//[^/@]*@", "//***@", url)


async def _tool_support(http: httpx2.AsyncClient, settings: Settings, timeout_s: float) -> list[Check]:
    if settings.web_mode == "off":
        return []
    panel, analyst = settings.models_for()
    silent = await without_tools(CatalogueClient(http, settings, timeout_s), (*map(model_of, panel), analyst))
    return [
        Check(
            f"tools {model}",
            False,
            "the catalogue lists no tool support: this model will answer without web tools",
            "pick a model with tool support, or accept answers from its own knowledge",
        )
        for model in silent
    ]


async def _store(settings: Settings) -> Check:
    """The store opens (the schema created or migrated) and answers; PostgreSQL's versions are reported."""
    store = open_store(settings)
    shared = settings.database_url is not None
    name = "database" if shared else "cache"
    fix = (
        "check FUSION_DATABASE_URL (host, port, database, role and password) and that the server accepts this role"
        if shared
        else "set FUSION_HOME to a writable directory"
    )
    try:
        await store.open()
        status = await store.status()
        await store.recent(1)
    except StoreError as exc:
        return Check(name, False, str(exc), fix)
    finally:
        await store.aclose()
    if settings.caching:
        state = f"cache on, {settings.cache_ttl_s:g} s"
    else:
        state = "cache off" if not settings.cache else "cache off (FUSION_CACHE_TTL_S=0)"
    cap = settings.principal_max_cost_usd_per_day
    limits = f"history {settings.history_max_runs} runs" + (f", ${cap:g} a day per principal" if cap else "")
    if shared:
        return Check(
            name,
            True,
            f"{status.location}: {status.server}, schema version {status.schema} (this release's: {status.latest}), "
            f"pool of {settings.database_pool} ({state}; {limits})",
        )
    return Check(name, True, f"{status.location} ({state}; {limits})")
