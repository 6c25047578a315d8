"""The fusion service every front end shares: one per process, from prepared request to recorded result.

It owns what lives as long as the process — the provider connection pool, the model catalogue, the web
tools, the store (cache and run history), the run slots (``FUSION_MAX_CONCURRENT``) and the runs
themselves, which live in its task group rather than in the caller's — and runs one call the same way
whoever asked: :meth:`FusionService.prepare` applies the rules of :mod:`~fusion_mcp.engine.admission`,
:meth:`FusionService.run` takes a run slot, reads the call's files, checks the catalogue, then answers
from the cache or runs the pipeline and records the run; :meth:`FusionService.result` finds a run again
(see :mod:`~fusion_mcp.engine.live`). It knows the store, not the protocol.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup
from pydantic import SecretStr, ValidationError

from ..config import Settings
from ..core.callers import LOCAL_PRINCIPAL
from ..core.errors import Redactor, live_secret, redact
from ..core.lenses import model_of
from ..core.limits import MAX_DEADLINE_S
from ..core.models import FusionArgs, FusionRequest, FusionResult, TokenUsage, Usage, new_run_id
from ..core.progress import DeltaSink, EventSink, ProgressEvent
from ..core.text import plural
from ..providers.catalogue import CatalogueClient
from ..providers.client import Provider, ProviderPools
from ..store import Store, StoreError, UsageRow, cache_key, is_complete, open_store, qualified
from ..web.network import SYSTEM_NETWORK, Network
from ..web.toolbox import open_web_tools
from . import daily_cap
from .admission import FusionRefused, prepare, request_models
from .catalogue_check import check_catalogue
from .live import HEARTBEAT_S, KEEP_FINISHED, LiveRun, lost_message, owner, resume_instructions
from .material import Material, read_material, without_image_data
from .pipeline import run_fusion

if TYPE_CHECKING:  # the web tools are loaded when first used (web.toolbox)
    from ..web.toolbox import WebBox

log = logging.getLogger(__name__)
CHECK_MODELS_AFTER_S = 1.0
"""Seconds after start the configured model ids are checked against the provider's catalogue."""
CHECK_MODELS_TASK = "fusion check configured models"
LENT_WRITERS_PER_RUN = 4
"""Chat writer slots for lent keys per run slot of theirs (a turn is a few writer requests around one run)."""


async def start_store(settings: Settings) -> Store | None:
    """The store the settings name, opened; None (logged) when it cannot be: fusion still works without one.

    A shared store (PostgreSQL) that cannot be reached yet is kept all the same: each use tries it again, so
    a replica that starts before its database serves the cache and history once the database is up.
    """
    store = open_store(settings)
    try:
        await store.open()
    except StoreError as exc:
        if store.shared:
            log.warning("the store is not available yet (tried again on each use): %s", exc)
            return store
        log.warning("no cache or run history: %s", exc)
        await store.aclose()
        return None
    return store


def provider_identity(settings: Settings, models: tuple[str, ...] = ()) -> str:
    """Which provider and account answer: the base URL and a fingerprint of the key (never the key itself);
    with providers configured, each of ``models``' provider, in order (its name, base URL and key's fingerprint).

    A cached result is served only for the same ones: another account may see other models or prices, and a
    member moved to another provider answers otherwise.
    """
    if settings.providers:
        return "\n".join(f"{model} {settings.route(model)[0].identity()}" for model in models)
    key = settings.api_key.get_secret_value() if settings.api_key is not None else ""
    return f"{settings.base_url} {hashlib.sha256(key.encode()).hexdigest()[:32]}"


class FusionService:
    """Runs fusions for every front end of one process; open it with :meth:`open`."""

    def __init__(
        self,
        settings: Settings,
        pools: ProviderPools,
        web: WebBox | None,
        store: Store | None,
        runs: TaskGroup,
    ) -> None:
        self.settings = settings
        self.pools = pools
        self.http = pools.shared
        """Provider connections for everything but runs: the catalogue, chat writer requests."""
        self.catalogue = CatalogueClient(self.http, settings, pools=pools.providers)
        self.web = web
        self.store = store
        self.limiter = anyio.CapacityLimiter(settings.max_concurrent)
        self.writers = anyio.CapacityLimiter(settings.max_chat_requests)
        """Chat writer requests in flight at once (``FUSION_MAX_CHAT_REQUESTS``): each holds one pooled connection."""
        lent = settings.pass_through_max_concurrent
        self.lent_limiter = anyio.CapacityLimiter(lent)
        """Runs of callers who pay with their own key, all of them together (``FUSION_PASS_THROUGH_MAX_CONCURRENT``):
        slots apart from the token holders', so keys nobody vouched for cannot take the server's."""
        self.lent_writers = anyio.CapacityLimiter(min(settings.max_chat_requests, LENT_WRITERS_PER_RUN * lent))
        self._provider_identity = provider_identity(settings)
        self._runs = runs
        """Where every run lives: as long as the service, not as long as the call that started it."""
        self._live: dict[str, LiveRun] = {}
        self._ended: deque[str] = deque()
        """The runs of :attr:`_live` that ended, oldest end first: past ``KEEP_FINISHED`` the oldest go."""
        self._caching: dict[str, FusionResult] = {}
        """Results answered and not yet in the cache (their record comes first): an identical call meanwhile is
        answered from here, as it would be a moment later from the store."""

    @classmethod
    @asynccontextmanager
    async def open(
        cls, settings: Settings, network: Network = SYSTEM_NETWORK, *, check_models: bool = False
    ) -> AsyncIterator[FusionService]:
        """Open the pool, web tools and store; close them on exit.

        ``check_models`` logs, in the background, the configured model ids the provider does not know
        (what a long-running server does at start). ``network`` is how web fetches resolve and connect.
        Runs still going when the service closes are stopped, and those that had outlived their call are
        recorded as lost, with what they had finished.
        """
        store = await start_store(settings)
        # Runs have pools of their own, sized for every member and the analyst; chat writer requests (and the
        # catalogue's few) share another, so writers can never starve a run of connections.
        pools = ProviderPools(settings.max_concurrent, settings.max_chat_requests + 4, settings.providers)
        try:
            async with (
                _closing(pools),
                open_web_tools(settings, network) as web,
                anyio.create_task_group() as tg,
            ):
                service = cls(settings, pools, web, store, tg)
                if check_models:
                    tg.start_soon(service._check_configured_models, name=CHECK_MODELS_TASK)
                tg.start_soon(service._heartbeat)
                try:
                    yield service
                finally:
                    tg.cancel_scope.cancel()
        finally:
            if store is not None:
                with anyio.CancelScope(shield=True):
                    await store.aclose()

    def settings_for(self, api_key: SecretStr | None) -> Settings:
        """The settings a caller's requests go out with: the server's, or with the caller's own provider key.

        The caller's key then also counts as a secret, so every error that echoes it is redacted.
        """
        return self.settings if api_key is None else self.settings.model_copy(update={"api_key": api_key})

    def prepare(self, args: FusionArgs, *, depth: int, api_key: SecretStr | None = None) -> FusionRequest:
        """The call's request, or :class:`~fusion_mcp.engine.admission.FusionRefused` (see :func:`admission.prepare`).

        ``api_key`` is the caller's own provider key (``FUSION_PASS_THROUGH_KEY``), used instead of the server's;
        such a caller gets none of the server's own resources unless the operator allows it.
        """
        return prepare(args, self.settings_for(api_key), depth=depth, lent=api_key is not None)

    def slots(self, api_key: SecretStr | None) -> tuple[anyio.CapacityLimiter, anyio.CapacityLimiter]:
        """(run slots, chat writer slots) of a caller: a lent key's, or the token holders'."""
        return (self.limiter, self.writers) if api_key is None else (self.lent_limiter, self.lent_writers)

    async def run(
        self,
        request: FusionRequest,
        *,
        run_id: str | None = None,
        on_event: EventSink | None = None,
        principal: str = LOCAL_PRINCIPAL,
        wait_s: float | None = None,
        fresh: bool = False,
        api_key: SecretStr | None = None,
        max_cost_usd: float | None = None,
        on_delta: DeltaSink | None = None,
        budget: daily_cap.Budget | None = None,
    ) -> FusionResult:
        """Run a prepared request; every outcome is a result, only cancellation propagates.

        Takes a run slot (waiting up to ``FUSION_QUEUE_TIMEOUT_S``, else ``server_busy``), reads the call's
        files, checks the catalogue (``invalid_model``, ``cost_limit``), then answers from the cache or runs.
        Time spent waiting counts against the request's deadline. ``principal`` owns the run: it is recorded
        with it, the cache serves a principal only what was computed for it, and only it finds the run again.
        ``fresh`` runs even when the cache holds an answer (and then caches the new one). ``api_key``, the
        caller's own provider key (``FUSION_PASS_THROUGH_KEY``), pays for the run instead of the server's.
        ``max_cost_usd`` is what is left of a chat turn's ``FUSION_MAX_COST_USD`` (the setting itself by default).
        ``on_delta`` sees the members' text as it streams (unredacted: the caller redacts what it sends on).
        ``budget`` caps a group of runs of the caller's (``eval --max-cost``), reserved before the run spends.

        Without ``wait_s`` the caller waits for the result, and cancelling the caller stops the run. With
        ``wait_s`` (a run that may outlive its call) the run is recorded as running at once; a run not done
        after ``wait_s`` comes back as a ``running`` result with what has finished, and goes on in the
        background — its caller's cancellation does not stop it — until :meth:`result` finds it done.
        """
        live = self._start(
            request,
            run_id or new_run_id(),
            principal,
            durable=wait_s is not None,
            on_event=on_event,
            settings=self.settings_for(api_key),
            on_delta=on_delta,
        )
        live.fresh = fresh
        live.max_cost_usd = self.settings.max_cost_usd if max_cost_usd is None else max_cost_usd
        live.budget = budget
        try:
            done = await live.wait(wait_s, on_event, stop_with_caller=wait_s is None)
        except anyio.get_cancelled_exc_class():
            log.info("run %s: its caller was cancelled%s", live.run_id, "" if wait_s is None else "; it goes on")
            raise
        finally:
            if on_delta is not None and on_delta in live.delta_listeners:
                live.delta_listeners.remove(on_delta)
        found = live.result if done and live.result is not None else live.snapshot(self.settings.deadline_s)
        return _redacted(found, live.secrets)

    def start(
        self,
        request: FusionRequest,
        *,
        run_id: str,
        principal: str,
        api_key: SecretStr | None = None,
        on_event: EventSink | None = None,
        on_delta: DeltaSink | None = None,
    ) -> None:
        """Start a run nobody waits on yet (an MCP task, a run the web lab shows): recorded as running, found with
        :meth:`result`, stopped with :meth:`stop`. ``on_event`` and ``on_delta`` follow it from its start to its end
        (the lab's watchers come and go; what they missed is kept for them there)."""
        self._start(
            request,
            run_id,
            principal,
            durable=True,
            on_event=on_event,
            settings=self.settings_for(api_key),
            on_delta=on_delta,
        )

    async def estimate(self, request: FusionRequest) -> FusionRequest:
        """``request`` checked as a run would check it before spending (its files read, unknown ids, tool and image
        support) with its worst-case cost in ``cost_estimate``, without running it: what a person sees before
        running (the lab's ask form). Raises :class:`FusionRefused` (``invalid_arguments`` for a file,
        ``invalid_model``, ``cost_limit``) as the run would.

        The look-ups take a run slot, as a run's do, so a flood of estimates cannot query the provider without
        bound (the catalogue is cached: most take no request at all)."""
        taken = False
        with anyio.move_on_after(self.settings.queue_timeout_s):
            await self.limiter.acquire()
            taken = True
        if not taken:
            raise FusionRefused(
                "server_busy",
                f"server busy: every run slot (FUSION_MAX_CONCURRENT) is taken and none came free within "
                f"{self.settings.queue_timeout_s:g} s; try again shortly",
            )
        try:
            if request.files:  # read as the run reads them: their text counts, and a file out of bounds is named
                material = await read_material(
                    request, self.settings.files_max_bytes, cache_marker=self.settings.is_openrouter
                )
                request = request.model_copy(update={"attachments": material.attachments})
            return await check_catalogue(self.catalogue, request, self.settings.max_cost_usd)
        finally:
            self.limiter.release()

    async def result(
        self, run_id: str, principal: str, *, wait_s: float, on_event: EventSink | None = None
    ) -> FusionResult:
        """A run's result, waiting up to ``wait_s`` for one still going; ``running`` again if it is not done.

        Runs of this process are waited on (their progress goes to ``on_event``); the history answers for the
        rest: a finished run's result, a run another process is still working on (watched until done or
        ``wait_s``), or ``run_lost`` when the process that ran it is gone. Another principal's run, like one
        that never existed or has expired, is ``run_not_found``.
        """
        live = self._live.get(run_id)
        if live is not None and live.principal == principal:
            done = await live.wait(wait_s, on_event, stop_with_caller=False)
            found = live.result if done and live.result is not None else live.snapshot(self.settings.deadline_s)
            return _redacted(found, live.secrets)
        found = await self._recorded(run_id, principal)
        with anyio.move_on_after(wait_s):
            while found.status == "running":  # another process is at it: watch the history
                await anyio.sleep(0.5)
                found = await self._recorded(run_id, principal)
        return found  # from the history, redacted when it was written

    async def reserve_turn(self, principal: str, turn_id: str, worst_case: float | None) -> bool:
        """Grow a chat turn's reservation under ``principal``'s daily cap to ``worst_case`` (what its writer has
        spent so far plus its next request's worst case), or raise :class:`FusionRefused` (``cost_limit``); the
        same atomic reservation runs take, so a burst of chat requests cannot pass the cap. False when no cap
        applies (none set). Callers paying with their own key are not capped: do not call it for them."""
        cap = self.settings.principal_max_cost_usd_per_day
        if cap is None:
            return False
        # A turn lives for its writer requests and at most one run: it cannot outlast both deadlines.
        lasts = self.settings.deadline_s + self.settings.run_deadline
        await daily_cap.reserve(self.store, principal, turn_id, worst_case, cap, lasts_s=lasts, what="chat turn")
        return True

    async def writer_spent(
        self, principal: str, turn_id: str, model: str, requests: int, used: TokenUsage, *, reserved: bool = False
    ) -> None:
        """Record what a chat request's writer spent (``requests`` requests to ``model``) as ``principal``'s usage,
        releasing the turn's reservation (``reserved``) in the same transaction."""
        if self.store is None or (requests == 0 and not reserved):
            return
        row = UsageRow(
            run_id=turn_id,
            principal=principal,
            created=time.time(),
            model=qualified(model, self.settings.provider_name(model)),
            role="writer",
            requests=requests,
            prompt_tokens=used.prompt_tokens,
            completion_tokens=used.completion_tokens,
            cost=used.cost,
        )
        with anyio.CancelScope(shield=True):
            try:
                await self.store.settle(turn_id, principal, [row] if requests else [])
            except Exception as exc:  # it runs as the turn ends: never hide why the turn ended
                log.warning("chat %s: the writer's usage is not recorded: %s", turn_id, exc)

    def stop(self, run_id: str, principal: str, reason: str) -> bool:
        """Stop one of ``principal``'s runs of this process; False when there is no such run going."""
        live = self._live.get(run_id)
        if live is None or live.principal != principal or live.done.is_set():
            return False
        live.stop(reason)
        return True

    async def record_written(self, run_id: str, principal: str) -> None:
        """Wait until ``principal``'s run ``run_id``, if this process has it and it has finished, has its record
        written (or its record failed): the caller has its result a moment before, and may read the record next."""
        live = self.live(run_id, principal)
        if live is not None and live.done.is_set():
            if self.store is not None:
                self.store.hurry()
            await live.end_handled.wait()

    async def records_written(self, principal: str) -> None:
        """Wait until every finished run of ``principal``'s this process has has its record written (or its
        record failed): a listing of the history just after an answer lists that run as it ended."""
        pending = [v for v in self._live.values() if v.principal == principal and v.done.is_set() and not v.ended]
        if pending and self.store is not None:
            self.store.hurry()
        for live in pending:
            await live.end_handled.wait()

    def live(self, run_id: str, principal: str) -> LiveRun | None:
        """``principal``'s run ``run_id`` if this process has it (running or recently finished)."""
        live = self._live.get(run_id)
        return live if live is not None and live.principal == principal else None

    def _start(
        self,
        request: FusionRequest,
        run_id: str,
        principal: str,
        *,
        durable: bool,
        on_event: EventSink | None,
        settings: Settings | None = None,
        on_delta: DeltaSink | None = None,
    ) -> LiveRun:
        live = LiveRun(run_id, principal, request, durable, settings=settings or self.settings)
        if on_event is not None:
            live.listeners.append(on_event)  # before it starts: the caller sees every event
        if on_delta is not None:
            live.delta_listeners.append(on_delta)
        self._live[run_id] = live
        self._runs.start_soon(self._background, live, name=f"fusion run {run_id}")
        return live

    async def _background(self, live: LiveRun) -> None:
        """One run, start to record, in the service's task group."""
        transcripts: dict[str, list[dict[str, Any]]] = {}
        lent = live.settings.api_key if live.settings is not self.settings else None
        # A run may outlive its call: its lent key stays a secret of the process (for the log) as long as it runs.
        with live_secret(lent.get_secret_value() if lent is not None else None):
            await self._lifetime(live, transcripts)

    async def _lifetime(self, live: LiveRun, transcripts: dict[str, list[dict[str, Any]]]) -> None:
        try:
            with live.scope:
                if live.durable:  # the run starts once its row is in: it does not wait for company
                    await self._record(live, live.snapshot(self.settings.deadline_s), {}, owner(), urgent=True)
                live.result = await self._run_now(live, transcripts)
        finally:
            with anyio.CancelScope(shield=True):
                await self._settle(live, transcripts)

    async def _settle(self, live: LiveRun, transcripts: dict[str, list[dict[str, Any]]]) -> None:
        """Record a run's end: its result (handed to its callers first), or — stopped from outside, or by the
        service closing — why it ended. Then it keeps its result, not its stream (:meth:`LiveRun.release`)."""
        if live.result is None:
            live.result = self._stopped(live)
            if live.durable:
                await self._record(live, live.result, transcripts, spent=live.spent())
            else:
                await self._drop_early_row(live)
        elif self.store is not None and (live.to_record or live.durable):
            await self._answer_then_record(live, transcripts)
        else:
            await self._drop_early_row(live)
        if not live.settled:
            await self._settle_usage(live)
        live.ended = True
        live.end_handled.set()
        live.release()
        live.done.set()
        _freeze_once()
        self._ended.append(live.run_id)
        while len(self._ended) > KEEP_FINISHED:  # a run's end costs the same however many runs are kept
            kept = self._live.get(run_id := self._ended.popleft())
            if kept is not None and kept.ended:
                del self._live[run_id]

    async def _answer_then_record(self, live: LiveRun, transcripts: dict[str, list[dict[str, Any]]]) -> None:
        """Hand the result to its callers, then write its record (with its usage and the release of its
        reservation, in one transaction), then its cache entry. A run without a running row gets one first —
        small: its request and this process as its owner — so a crash between the two leaves it in the history
        as lost, never missing; a record that fails leaves that row, no longer renewed, to read as lost. Until
        its cache entry is written, an identical call is answered from :attr:`_caching`."""
        assert live.result is not None
        if live.row_written is not None and not live.row_written.is_set():
            # Written while the members worked: ready long before this (waiting on a set event would still
            # yield a turn of the event loop before the answer goes out), unless the run ended at once.
            if self.store is not None:
                self.store.hurry()
            await live.row_written.wait()
        if not live.row:
            await self._record(live, live.running_row(self.settings.deadline_s), {}, owner(), urgent=True)
        key = live.cache_key if live.cache_key is not None and is_complete(live.result) else None
        if key is not None:
            self._caching[key] = live.result
        live.done.set()
        try:
            await self._record(live, live.result, without_image_data(transcripts), cached_from=live.cached_from)
            if key is not None:
                await self._remember(key, live.result, live.secrets)
        finally:
            if key is not None and self._caching.get(key) is live.result:
                del self._caching[key]

    async def _early_row(self, live: LiveRun) -> None:
        """A run that ends with its call needs a running row before its answer (see :meth:`_answer_then_record`):
        written while its members work, so the answer does not wait on the store behind other runs' writes."""
        assert live.row_written is not None
        try:
            await self._record(live, live.running_row(self.settings.deadline_s), {}, owner())
        finally:
            live.row_written.set()

    async def _drop_early_row(self, live: LiveRun) -> None:
        """A run stopped, or ended in a way that is not recorded, before its answer leaves no row."""
        if live.row_written is None or self.store is None:
            return
        self.store.hurry()
        await live.row_written.wait()
        if live.row:
            with anyio.CancelScope(shield=True):
                try:
                    await self.store.drop_running(live.run_id)
                    live.row = False
                except StoreError as exc:
                    log.warning("run %s: its running row stays (it will read as lost): %s", live.run_id, exc)

    def _stopped(self, live: LiveRun) -> FusionResult:
        """The result of a run that ended without one: stopped from outside, or by the service closing."""
        if live.stop_reason:
            return FusionResult.failure(live.run_id, "cancelled", f"the run was {live.stop_reason}")
        elapsed = time.time() - live.started
        return live.snapshot(self.settings.deadline_s).model_copy(
            update={
                "status": "error",
                "failure_reason": "run_lost",
                "error": f"the server shut down {elapsed:.0f} s into the run, before it finished; what had "
                "finished is kept here; run the call again for the rest",
                "pending": None,
                "instructions": None,
            }
        )

    async def _run_now(self, live: LiveRun, transcripts: dict[str, list[dict[str, Any]]]) -> FusionResult:
        run_id, request = live.run_id, live.request
        arrived = anyio.current_time()
        lent = live.settings is not self.settings
        limiter = self.lent_limiter if lent else self.limiter
        queued = await self._acquire(live, limiter)
        if queued is None:
            own = "FUSION_PASS_THROUGH_MAX_CONCURRENT, for callers paying with their own key"
            setting = own if lent else "FUSION_MAX_CONCURRENT"
            result = FusionRefused(
                "server_busy",
                f"server busy: {plural(limiter.borrowed_tokens, 'fusion run')} in progress "
                f"({setting}) and none finished within {self.settings.queue_timeout_s:g} s; try again shortly",
            ).result(run_id)
            return await self._refused(live, _queued(result, anyio.current_time() - arrived))
        try:
            material = None
            if request.files:
                material = await read_material(
                    request, self.settings.files_max_bytes, cache_marker=self.settings.is_openrouter
                )
                request = request.model_copy(update={"attachments": material.attachments})
            cap, configured = live.max_cost_usd, self.settings.max_cost_usd
            request = await check_catalogue(
                self.catalogue, request, cap, left_of=configured if cap != configured else None
            )
            request = _less_waiting(request, anyio.current_time() - arrived)
            live.request = request
            result = _queued(await self._fuse(live, material, transcripts), queued)
        except FusionRefused as refused:
            log.info("run %s refused before spending: %s", run_id, refused.message)
            return await self._refused(live, _queued(refused.result(run_id), queued))
        except Exception as exc:
            log.exception("run %s failed unexpectedly", run_id)
            message = redact(f"unexpected error: {type(exc).__name__}: {exc}", live.secrets)
            result = await self._refused(
                live, _queued(FusionRefused("unexpected_error", message).result(run_id), queued)
            )
        finally:
            limiter.release()
        log.info("run %s for %s finished: %s in %.1f s", run_id, live.principal, result.status, result.timings.total)
        return result

    async def _refused(self, live: LiveRun, result: FusionResult) -> FusionResult:
        """A run that never got going: recorded (once its caller has it) only when its running row needs replacing."""
        return result

    async def _record(
        self,
        live: LiveRun,
        result: FusionResult,
        transcripts: dict[str, Any],
        run_owner: dict[str, Any] | None = None,
        *,
        spent: Usage | None = None,
        cached_from: str | None = None,
        urgent: bool = False,
    ) -> None:
        """Write ``live``'s record: running (with its owner), or its end with its usage (``spent``, else the
        result's) and the release of its reservation, in one transaction; an answer from the cache records
        the run it came from (``cached_from``) instead of a copy of its result. A failure is logged.
        ``urgent``: something waits on it (see :meth:`Store.save_run`)."""
        if self.store is None:
            return
        # A full disk or a database outage must not lose the answer the caller is waiting for (nor stop a run
        # that is starting).
        with anyio.CancelScope(shield=True):
            try:
                await self.store.save_run(
                    live.request,
                    result,
                    transcripts,
                    live.principal,
                    run_owner,
                    spent=spent,
                    secrets=live.secrets,
                    cached_from=cached_from,
                    urgent=urgent,
                )
            except Exception as exc:
                if result.status == "running":
                    log.warning("run %s not recorded as running: %s", result.run_id, exc)
                elif live.row:
                    log.warning("run %s not recorded (the history will show it as lost): %s", result.run_id, exc)
                else:
                    log.warning("run %s not recorded: %s", result.run_id, exc)
                return
        if result.status != "running":
            live.settled = True
        elif run_owner is not None:
            live.row = True

    async def _settle_usage(self, live: LiveRun) -> None:
        """A run that ends without a record (one that ended with its call): write what it spent, and release
        its reservation, so usage and the daily cap count it."""
        if live.result is not None and live.result.cached:
            spent = Usage()  # a cached answer's usage is the first run's: this one cost nothing
        elif live.result is not None and live.result.usage.models:
            spent = live.result.usage
        else:
            spent = live.spent()
        if self.store is None or not (live.reserved or spent.models):
            return
        with anyio.CancelScope(shield=True):
            try:
                await self.store.settle(live.run_id, live.principal, spent)
            except Exception as exc:
                log.warning("run %s: its usage is not recorded: %s", live.run_id, exc)

    async def _acquire(self, live: LiveRun, limiter: anyio.CapacityLimiter) -> float | None:
        """Take a run slot, waiting up to ``FUSION_QUEUE_TIMEOUT_S``: the seconds waited (0 when one was free),
        None when none came free. A call that waits is told so first (a ``queued`` event)."""
        try:
            limiter.acquire_nowait()
            return 0.0
        except anyio.WouldBlock:
            pass
        arrived, running = anyio.current_time(), limiter.borrowed_tokens
        log.info("run %s queued: %s in progress", live.run_id, plural(running, "fusion run"))
        panel = live.request.analysis_models
        await live.emit(ProgressEvent("queued", 0.0, len(panel) + 2, 0.0, panel=panel, running=running))
        with anyio.move_on_after(self.settings.queue_timeout_s):
            await limiter.acquire()
            return max(anyio.current_time() - arrived, 1e-6)  # it waited: never reported as 0
        log.warning("run %s refused: %s in progress", live.run_id, plural(limiter.borrowed_tokens, "run"))
        return None

    async def _fuse(
        self, live: LiveRun, material: Material | None, transcripts: dict[str, list[dict[str, Any]]]
    ) -> FusionResult:
        """Answer from the cache when an identical call succeeded recently; otherwise run and record."""
        store, request, run_id, principal, settings = (
            self.store,
            live.request,
            live.run_id,
            live.principal,
            live.settings,
        )
        # With a TTL of 0 nothing is looked up: a look-up racing the previous run's entry (written after its
        # answer, in the same instant) would find it fresh.
        caching, key = store is not None and self.settings.caching, ""
        if caching:
            if settings is self.settings and not settings.providers:
                identity = self._provider_identity
            else:
                identity = provider_identity(settings, request_models(request))
            key = cache_key(request, principal=principal, provider=identity)
        if caching and not live.fresh:
            hit = self._caching.get(key) or await self._cached(key)
            if hit is not None:
                log.info("run %s answered from the cache (first run %s)", run_id, hit.run_id)
                live.to_record, live.cached_from = True, hit.run_id  # its record: a pointer, not a copy
                return hit.model_copy(update={"run_id": run_id, "cached": True})
        cap = self.settings.principal_max_cost_usd_per_day
        if cap is not None and settings is self.settings:  # after the cache: an answer from it costs nothing
            lasts = request.deadline_s or MAX_DEADLINE_S
            await daily_cap.reserve(store, principal, run_id, request.cost_estimate, cap, lasts_s=lasts)
            live.reserved = True
        if live.budget is not None:  # after the daily cap's: under one name, this one stays
            lasts = request.deadline_s or MAX_DEADLINE_S
            await daily_cap.reserve_budget(store, principal, live.budget, run_id, request.cost_estimate, lasts_s=lasts)
            live.reserved = True
        if store is not None and not live.durable and not live.row:
            live.row_written = anyio.Event()
            self._runs.start_soon(self._early_row, live, name=f"fusion row {run_id}")
        with self.pools.lease() as http:
            result = await run_fusion(
                request,
                Provider(http, settings, pools=self.pools.providers),
                on_event=live.emit,
                run_id=run_id,
                transcripts=transcripts,
                web=self.web,
                material=material,
                outcomes=live.outcomes,
                analyst_turns=live.analyst_turns,
                # Only a caller that asked for the panel's text (it listens from the start) puts a call on
                # every streamed piece; the others' members stream straight into their outcomes.
                on_delta=live.delta if live.delta_listeners else None,
            )
        spent, cap = result.usage.total.cost, self.settings.max_cost_usd
        if cap is not None and spent is not None and spent > cap:
            # The estimate is a worst case, so this means prices or usage differ from the catalogue's.
            log.warning("run %s cost $%.4f, over FUSION_MAX_COST_USD=$%g", run_id, spent, cap)
        if caching:
            live.cache_key = key  # cached once its caller has it, after its record
        live.to_record = True  # once its caller has it
        return result

    async def _cached(self, key: str) -> FusionResult | None:
        """The cache's answer, or None; a store that fails is a miss (logged), never a failed call."""
        assert self.store is not None
        try:
            return await self.store.cached(key)
        except StoreError as exc:
            log.warning("cache not read: %s", exc)
            return None

    async def _remember(self, key: str, result: FusionResult, secrets: tuple[str, ...]) -> None:
        assert self.store is not None
        with anyio.CancelScope(shield=True):
            try:
                await self.store.remember(key, result, secrets=secrets)
            except StoreError as exc:
                log.warning("run %s not cached: %s", result.run_id, exc)

    async def _recorded(self, run_id: str, principal: str) -> FusionResult:
        """What the history says of a run this process does not have."""
        try:
            record = await self.store.run(run_id, principal) if self.store is not None else None
        except StoreError as exc:
            return FusionResult.failure(
                run_id, "unexpected_error", f"the run history cannot be read right now ({exc}); try again shortly"
            )
        if record is None:
            return FusionResult.failure(
                run_id,
                "run_not_found",
                f"no run {run_id!r} of yours is known here: it may never have existed, have expired from the run "
                "history (FUSION_HISTORY_MAX_RUNS, FUSION_HISTORY_MAX_DAYS), or belong to another client",
            )
        try:
            result = FusionResult.model_validate(record["result"])
        except (KeyError, ValidationError):
            return FusionResult.failure(
                run_id,
                "run_not_found",
                f"run {run_id!r} was recorded by another release of fusion-mcp; read it with "
                f"'fusion-mcp runs show {run_id} --json'",
            )
        if result.status != "running":
            return result
        why = lost_message(record)
        if why is not None:
            lost = FusionResult.failure(run_id, "run_lost", why)
            try:
                request = FusionRequest.model_validate(record["request"])
            except (KeyError, ValidationError):
                return lost
            if self.store is not None:  # so the history stops listing it as running
                try:
                    await self.store.save_run(request, lost, {}, principal, settle=False)
                except StoreError as exc:
                    log.warning("run %s not recorded as lost: %s", run_id, exc)
            return lost
        return result.model_copy(
            update={
                "instructions": "The run is going on in another server process. "
                + resume_instructions(run_id, self.settings.deadline_s)
            }
        )

    async def _heartbeat(self) -> None:
        """Tell the history, now and then, that this process is still working on its durable runs."""
        while True:
            await anyio.sleep(HEARTBEAT_S)
            going = [r.run_id for r in self._live.values() if r.row and not r.ended]
            if going and self.store is not None:
                try:
                    await self.store.heartbeat(going)
                except Exception as exc:  # a busy or full disk must not stop the runs themselves
                    log.warning("could not renew the heartbeat of runs in flight: %s", exc)

    async def _check_configured_models(self) -> None:
        """Say in the log which configured model ids the provider does not know.

        Off the start-up path: a host waits for the server's first answer (``initialize``, ``tools/list``)
        while this would import the HTTP stack and fetch the catalogue on the same core. A call meanwhile
        fetches the catalogue itself, and the check then reads it from the cache.
        """
        if self.settings.api_key is None and self.settings.is_openrouter and not self.settings.providers:
            return
        await anyio.sleep(CHECK_MODELS_AFTER_S)
        for model in dict.fromkeys((*map(model_of, self.settings.analysis_models), self.settings.model)):
            known, _, found = await self.catalogue.lookup(model)
            if not known:
                close = found.closest(model)
                hint = f" (closest: {', '.join(close)})" if close else ""
                log.warning("configured model %r is not in %s%s", model, found.whose, hint)


_FROZEN: list[bool] = []


def _freeze_once() -> None:
    """After the process's first run: what start-up and that run loaded (modules, schemas, validators, the web
    stack) lives as long as the process, so it leaves the collector's sight and a full collection walks only
    what later calls make (~55 ms each, once per ~150 calls, before). Garbage first: it would stay for good."""
    if not _FROZEN:
        _FROZEN.append(True)
        gc.collect()
        gc.freeze()


def _redacted(result: FusionResult, secrets: tuple[str, ...]) -> FusionResult:
    """``result`` with every secret removed from every value: a model or provider that echoes the key it was
    sent (into an answer, an error message) must not hand it to the client."""
    redactor = Redactor(secrets)
    if not redactor:
        return result
    try:
        if not redactor.in_json(result.model_dump_json()):
            return result
    except ValueError:  # a string JSON cannot carry (a lone surrogate from a model): the walk decides
        pass
    data = result.model_dump()
    clean = redactor.value(data)
    return result if clean == data else FusionResult.model_validate(clean)


def _queued(result: FusionResult, seconds: float) -> FusionResult:
    """``result`` saying how long its call waited for a run slot (``timings.queued``)."""
    if seconds <= 0:
        return result
    timings = result.timings.model_copy(update={"queued": max(round(seconds, 3), 0.001)})
    return result.model_copy(update={"timings": timings})


def _less_waiting(request: FusionRequest, waited: float) -> FusionRequest:
    """``request`` with the time already spent taken off its deadline (and its reserve kept within it)."""
    if request.deadline_s is None or waited <= 0:
        return request
    left = max(1.0, request.deadline_s - waited)
    reserve = request.analyst_reserve_s
    return request.model_copy(
        update={"deadline_s": left, "analyst_reserve_s": None if reserve is None else min(reserve, left / 2)}
    )


@asynccontextmanager
async def _closing(pools: ProviderPools) -> AsyncIterator[ProviderPools]:
    try:
        yield pools
    finally:
        await pools.aclose()
