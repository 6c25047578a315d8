"""The fusion service every front end shares: one per process, from prepared request to recorded result.

It owns what lives as long as the process — the provider connection pool, the model catalogue, the web
tools, the store (cache and run history) and the run slots (``FUSION_MAX_CONCURRENT``) — and runs one call
the same way whoever asked: :meth:`FusionService.prepare` applies the rules of
:mod:`~fusion_mcp.admission`, :meth:`FusionService.run` takes a run slot, checks the catalogue, then
answers from the cache or runs the pipeline and records the run. It knows the store, not the protocol.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2
from pydantic import SecretStr

from .admission import FusionRefused, check_catalogue, prepare
from .catalogue import CatalogueClient
from .config import LOCAL_PRINCIPAL, Settings
from .errors import redact
from .limits import MAX_PANEL
from .models import FusionArgs, FusionRequest, FusionResult
from .pipeline import run_fusion
from .progress import EventSink
from .provider import Provider, new_http_client
from .run import new_run_id
from .store import Store, cache_key, default_home
from .web.fetch import SYSTEM_NETWORK, Network
from .web.tools import WebTools, open_web_tools

log = logging.getLogger(__name__)


def open_store(settings: Settings) -> Store | None:
    """The store of ``FUSION_HOME``, or None (logged) when it cannot be opened: fusion still works."""
    home = settings.home or default_home()
    try:
        return Store(
            home,
            secrets=settings.secrets,
            cache_ttl_s=settings.cache_ttl_s,
            max_runs=settings.history_max_runs,
            max_age_days=settings.history_max_days,
        )
    except Exception as exc:
        log.warning("no cache or run history: cannot open %s (%s)", home, exc)
        return None


def provider_identity(settings: Settings) -> str:
    """Which provider and account answer: the base URL and a fingerprint of the key (never the key itself).

    A cached result is served only for the same ones: another account may see other models or prices.
    """
    key = settings.api_key.get_secret_value() if settings.api_key is not None else ""
    return f"{settings.base_url} {hashlib.sha256(key.encode()).hexdigest()[:32]}"


class FusionService:
    """Runs fusions for every front end of one process; open it with :meth:`open`."""

    def __init__(
        self,
        settings: Settings,
        http: httpx2.AsyncClient,
        web: WebTools | None,
        store: Store | None,
    ) -> None:
        self.settings = settings
        self.http = http
        self.catalogue = CatalogueClient(http, settings)
        self.web = web
        self.store = store
        self.limiter = anyio.CapacityLimiter(settings.max_concurrent)
        self.writers = anyio.CapacityLimiter(settings.max_chat_requests)
        """Chat writer requests in flight at once (``FUSION_MAX_CHAT_REQUESTS``): each holds one pooled connection."""
        self._provider_identity = provider_identity(settings)

    @classmethod
    @asynccontextmanager
    async def open(
        cls, settings: Settings, network: Network = SYSTEM_NETWORK, *, check_models: bool = False
    ) -> AsyncIterator[FusionService]:
        """Open the pool, web tools and store; close them on exit.

        ``check_models`` logs, in the background, the configured model ids the provider does not know
        (what a long-running server does at start). ``network`` is how web fetches resolve and connect.
        """
        store = open_store(settings)
        # The pool holds a connection for every member and the analyst of every run allowed at once, and one
        # for every chat writer request: writers can never starve a run of connections.
        connections = settings.max_concurrent * (MAX_PANEL + 1) + settings.max_chat_requests
        try:
            async with (
                new_http_client(max_connections=connections) as http,
                open_web_tools(settings, network) as web,
                anyio.create_task_group() as tg,
            ):
                service = cls(settings, http, web, store)
                if check_models:
                    tg.start_soon(service._check_configured_models)
                try:
                    yield service
                finally:
                    tg.cancel_scope.cancel()
        finally:
            if store is not None:
                store.close()

    def settings_for(self, api_key: SecretStr | None) -> Settings:
        """The settings a caller's requests go out with: the server's, or with the caller's own provider key.

        The caller's key then also counts as a secret, so every error that echoes it is redacted.
        """
        return self.settings if api_key is None else self.settings.model_copy(update={"api_key": api_key})

    def prepare(self, args: FusionArgs, *, depth: int, api_key: SecretStr | None = None) -> FusionRequest:
        """The call's request, or :class:`~fusion_mcp.admission.FusionRefused` (see :func:`admission.prepare`).

        ``api_key`` is the caller's own provider key (``FUSION_PASS_THROUGH_KEY``), used instead of the server's.
        """
        return prepare(args, self.settings_for(api_key), depth=depth)

    async def run(
        self,
        request: FusionRequest,
        *,
        run_id: str | None = None,
        on_event: EventSink | None = None,
        principal: str = LOCAL_PRINCIPAL,
        api_key: SecretStr | None = None,
    ) -> FusionResult:
        """Run a prepared request within a run slot; every outcome is a result, only cancellation propagates.

        Waits up to ``FUSION_QUEUE_TIMEOUT_S`` for a slot (else ``server_busy``), then checks the catalogue
        (``invalid_model``, ``cost_limit``). Time spent waiting counts against the request's deadline: the
        caller's clock started with the call. ``principal`` owns the run: it is recorded with it, and the
        cache serves a principal only what was computed for it. ``api_key``, the caller's own provider key,
        pays for the run instead of the server's.
        """
        run_id = run_id or new_run_id()
        arrived = anyio.current_time()
        if not await self._acquire(run_id):
            return FusionRefused(
                "server_busy",
                f"server busy: {self.limiter.borrowed_tokens} fusion runs are in progress (FUSION_MAX_CONCURRENT) "
                f"and none finished within {self.settings.queue_timeout_s:g} s; try again shortly",
            ).result(run_id)
        try:
            request = await check_catalogue(self.catalogue, request, self.settings.max_cost_usd)
            request = _less_waiting(request, anyio.current_time() - arrived)
            result = await self._fuse(request, run_id, on_event, principal, self.settings_for(api_key))
        except FusionRefused as refused:
            log.info("run %s refused before spending: %s", run_id, refused.message)
            return refused.result(run_id)
        except anyio.get_cancelled_exc_class():
            log.info("run %s cancelled by the client", run_id)
            raise
        except Exception as exc:
            log.exception("run %s failed unexpectedly", run_id)
            message = redact(f"unexpected error: {type(exc).__name__}: {exc}", self.settings_for(api_key).secrets)
            result = FusionRefused("unexpected_error", message).result(run_id)
        finally:
            self.limiter.release()
        log.info("run %s for %s finished: %s in %.1f s", run_id, principal, result.status, result.timings.total)
        return result

    async def _acquire(self, run_id: str) -> bool:
        """Take a run slot, waiting up to ``FUSION_QUEUE_TIMEOUT_S``; False when none came free."""
        try:
            self.limiter.acquire_nowait()
            return True
        except anyio.WouldBlock:
            log.info("run %s queued: %d fusion runs in progress", run_id, self.limiter.borrowed_tokens)
        with anyio.move_on_after(self.settings.queue_timeout_s):
            await self.limiter.acquire()
            return True
        log.warning("run %s refused: %d runs in progress", run_id, self.limiter.borrowed_tokens)
        return False

    async def _fuse(
        self, request: FusionRequest, run_id: str, on_event: EventSink | None, principal: str, settings: Settings
    ) -> FusionResult:
        """Answer from the cache when an identical call succeeded recently; otherwise run and record."""
        store = self.store
        identity = self._provider_identity if settings is self.settings else provider_identity(settings)
        key = cache_key(request, principal=principal, provider=identity)
        if store is not None and self.settings.cache:
            hit = await store.cached(key)
            if hit is not None:
                log.info("run %s answered from the cache (first run %s)", run_id, hit.run_id)
                result = hit.model_copy(update={"run_id": run_id, "cached": True})
                await _record(store, request, result, {"cached_from": [{"run_id": hit.run_id}]}, principal)
                return result
        transcripts: dict[str, list[dict[str, Any]]] = {}
        provider = Provider(self.http, settings)
        result = await run_fusion(
            request, provider, on_event=on_event, run_id=run_id, transcripts=transcripts, web=self.web
        )
        spent, cap = result.usage.total.cost, self.settings.max_cost_usd
        if cap is not None and spent is not None and spent > cap:
            # The estimate is a worst case, so this means prices or usage differ from the catalogue's.
            log.warning("run %s cost $%.4f, over FUSION_MAX_COST_USD=$%g", run_id, spent, cap)
        if store is not None:
            if self.settings.cache:
                await store.remember(key, result)
            await _record(store, request, result, transcripts, principal)
        return result

    async def _check_configured_models(self) -> None:
        """Say in the log which configured model ids the provider does not know."""
        if self.settings.api_key is None and self.settings.is_openrouter:
            return
        for model in dict.fromkeys((*self.settings.analysis_models, self.settings.model)):
            known, _, found = await self.catalogue.lookup(model)
            if not known:
                close = found.closest(model)
                hint = f" (closest: {', '.join(close)})" if close else ""
                log.warning("configured model %r is not in the provider's catalogue%s", model, hint)


def _less_waiting(request: FusionRequest, waited: float) -> FusionRequest:
    """``request`` with the time already spent taken off its deadline (and its reserve kept within it)."""
    if request.deadline_s is None or waited <= 0:
        return request
    left = max(1.0, request.deadline_s - waited)
    reserve = request.analyst_reserve_s
    return request.model_copy(
        update={"deadline_s": left, "analyst_reserve_s": None if reserve is None else min(reserve, left / 2)}
    )


async def _record(
    store: Store, request: FusionRequest, result: FusionResult, transcripts: dict[str, Any], principal: str
) -> None:
    # A full disk must not lose the answer the caller is waiting for.
    with anyio.CancelScope(shield=True):
        try:
            await store.save_run(request, result, transcripts, principal)
        except Exception as exc:
            log.warning("run %s not recorded: %s", result.run_id, exc)
