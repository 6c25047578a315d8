"""What every store does the same way, whatever its database: the interface, and everything but SQL.

A store holds four things: the result cache, the run history, usage (one row per model of every run that
ended, kept apart from the history so trimming it loses no spending), and reservations (the worst-case
cost of runs in flight, for the daily cap per principal). :class:`Store` builds every row here — the run
record with its shared texts (or, for an answer from the cache, a pointer to the run it came from), each
secret redacted before anything is written, usage rows from a result, cache entries and their checks on the
way back — and leaves the backends only the SQL of their dialect.

Every backend failure surfaces as :class:`StoreError`, one line without secrets.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

import anyio
import anyio.lowlevel
from pydantic import BaseModel, ConfigDict, ValidationError

from ..config import Settings
from ..core.callers import LOCAL_PRINCIPAL
from ..core.errors import Redactor, redact, redact_value
from ..core.lenses import model_of
from ..core.models import RESULT_SCHEMA, FusionRequest, FusionResult, Usage

log = logging.getLogger("fusion_mcp.store")

UsageRole = Literal["panel", "analyst", "writer"]
UsageBy = Literal["principal", "model", "provider", "day", "all"]
"""How usage is grouped; ``all`` is one group, ``total`` (runs counted once however many models they asked)."""
DAY_S = 86400.0
COMPANY_S = 0.005
"""How long a record nobody waits on waits for others to share its transaction (see :meth:`Store._write`):
short beside any run, long beside the moment between one call's answer and the next call's start."""


class StoreError(Exception):
    """The store could not do what was asked; ``str()`` is one line that names the store, without secrets."""


@dataclass(frozen=True)
class Retention:
    """How much a store keeps; each limit is enforced in SQL on every write of its table.

    The history's count and size are totals shared evenly by the principals that have runs in it (every
    lent-key principal, ``key:...``, counting together as one): a principal past its share loses its oldest
    finished runs, so one client's traffic cannot push another's runs out. Running rows, and each share's
    newest finished run, are kept whatever their size.
    """

    cache_ttl_s: float = 3600.0
    max_runs: int = 1000
    max_age_days: float = 30.0
    max_bytes: int = 500 * 2**20
    """The run history's records, in bytes; the cache is held to a tenth of it."""
    max_cache_entries: int = 500
    usage_max_days: float = 400.0

    @classmethod
    def of(cls, settings: Settings) -> Retention:
        return cls(
            cache_ttl_s=settings.cache_ttl_s,
            max_runs=settings.history_max_runs,
            max_age_days=settings.history_max_days,
            max_bytes=int(settings.history_max_mb * 2**20),
            usage_max_days=settings.usage_max_days,
        )


@dataclass(frozen=True)
class RunRow:
    """One row of the run history, ready to write: ``record`` is the redacted JSON of the whole run."""

    run_id: str
    principal: str
    created: float
    prompt_head: str
    panel: str
    status: str
    cost: float | None
    seconds: float
    cached: bool
    record: str
    bytes: int
    heartbeat: float | None

    def columns(self) -> tuple[Any, ...]:
        """Its values in the order of :data:`RUN_COLUMNS`, the record's result schema included."""
        return (
            self.run_id,
            self.principal,
            self.created,
            self.prompt_head,
            self.panel,
            self.status,
            self.cost,
            self.seconds,
            self.cached,
            RESULT_SCHEMA,
            self.bytes,
            self.heartbeat,
            self.record,
        )


RUN_COLUMNS = (
    "run_id",
    "principal",
    "created",
    "prompt_head",
    "panel",
    "status",
    "cost",
    "seconds",
    "cached",
    "schema",
    "bytes",
    "heartbeat",
    "record",
)
"""The columns both backends write a run row to, in :meth:`RunRow.columns`' order."""


@dataclass(frozen=True)
class UsageRow:
    """What one model cost one principal in one run (or one chat request's writer)."""

    run_id: str
    principal: str
    created: float
    model: str
    role: UsageRole
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost: float | None
    """USD; None when the provider reported none."""

    def columns(self) -> tuple[Any, ...]:
        """Its values in the order both backends' ``INSERT`` names the columns (the fields' order)."""
        return (
            self.run_id,
            self.principal,
            self.created,
            self.model,
            self.role,
            self.requests,
            self.prompt_tokens,
            self.completion_tokens,
            self.cost,
        )


@dataclass(eq=False)
class Write:
    """One run's record on its way to the store: built (redacted, serialised) when its batch is written."""

    run_id: str
    build: Callable[[], tuple[RunRow, list[UsageRow] | None]]
    trims: bool
    """It ends a run: the history's trim follows its batch."""
    urgent: bool = False
    """Someone waits on it now (a call's answer, a run's start): its batch is written at once."""
    row: RunRow | None = None
    usage: list[UsageRow] | None = None
    finished: bool = False
    error: Exception | None = None
    wake: anyio.Event | None = None
    """Set when it is written, or when its caller is to write the batches waiting (see :meth:`Store._write`);
    made only for a write that waits on another's batch (most become the writer of their own)."""

    def woken(self) -> None:
        if self.wake is not None:
            self.wake.set()


class UsageTotal(BaseModel):
    """Totals of one group of usage rows (a principal, a model or a UTC day) as ``fusion-mcp usage`` shows them."""

    model_config = ConfigDict(defer_build=True)  # built by ``usage``, not at every start
    key: str
    runs: int = 0
    """Fusion runs (a chat request's writer is not a run)."""
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    """USD the provider reported; rows without a reported cost count 0."""


@dataclass(frozen=True)
class Spend:
    """A principal's spending today, as a reservation found it."""

    spent: float
    """USD recorded today (UTC) across every process that shares the store."""
    reserved: float
    """Worst-case USD of its runs still in flight (other than the one asking)."""
    admitted: bool
    """The run's reservation was taken: spent + reserved + its estimate stays within the cap."""


@dataclass(frozen=True)
class StoreStatus:
    """What ``fusion-mcp doctor`` reports of a store."""

    location: str
    server: str
    schema: int
    latest: int


def admits(spent: float, reserved: float, estimate: float, cap: float) -> bool:
    """Whether a run of worst case ``estimate`` fits under ``cap``: nothing left (spend and reservations at the
    cap) refuses even a run whose estimate is unknown (counted as 0)."""
    return spent + reserved < cap and spent + reserved + estimate <= cap


def check_schema(found: int, latest: int, location: str) -> None:
    """Refuse a database a newer release has migrated: this one would misread what it wrote."""
    if found > latest:
        raise StoreError(
            f"{location} has schema version {found}, newer than this release's {latest}: upgrade fusion-mcp "
            "(every process that shares a store must run a release that knows its schema)"
        )


class Store(ABC):
    """The cache, run history, usage and reservations; :func:`~fusion_mcp.store.open_store` picks the backend.

    Create, then :meth:`open` (creates or migrates the schema), use, and :meth:`aclose`. Every method may
    raise :class:`StoreError`.
    """

    shared: ClassVar[bool] = False
    """Other machines may share it, and it may come back after an outage: a store that fails to open stays
    in use (each call tries again) instead of being dropped for the process's life."""

    def __init__(
        self, *, secrets: tuple[str, ...] = (), retention: Retention | None = None, company_s: float = COMPANY_S
    ) -> None:
        self._secrets = secrets
        self.retention = retention or Retention()
        self.company_s = company_s
        """How long a record nobody waits on waits for others to share its transaction (:data:`COMPANY_S`)."""
        self._waiting: list[Write] = []
        self._writer = False
        self._company: anyio.Event | None = None
        """Set to end the gathering of the batch being formed (see :meth:`hurry`)."""

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the store is, for messages: a file path, or a database URL without its password."""

    @abstractmethod
    async def open(self) -> None:
        """Create the schema, or migrate it to this release's version, atomically."""

    @abstractmethod
    async def aclose(self) -> None:
        """Close the store's connections; :meth:`open` may be called again afterwards."""

    @abstractmethod
    async def status(self) -> StoreStatus:
        """The database server's version and the schema's, read from the database."""

    # -- cache ---------------------------------------------------------------------------------------

    async def cached(self, key: str) -> FusionResult | None:
        """The result cached under ``key`` within the TTL, or None.

        A result of another :data:`~fusion_mcp.core.models.RESULT_SCHEMA`, or one that no longer validates, is a
        miss and its row is dropped: an upgrade cannot break a call.
        """
        row = await self._cache_get(key, time.time() - self.retention.cache_ttl_s)
        if row is None:
            return None
        text, schema = row
        try:
            if schema != RESULT_SCHEMA:
                raise ValueError(f"schema {schema}, not {RESULT_SCHEMA}")
            return FusionResult.model_validate_json(text)
        except (ValueError, ValidationError) as exc:
            log.debug("cache entry %s dropped: %s", key[:12], str(exc).splitlines()[0])
            await self._cache_drop(key)
            return None

    async def remember(self, key: str, result: FusionResult, *, secrets: tuple[str, ...] = ()) -> None:
        """Cache a complete result (see :func:`is_complete`); anything less is never served again. ``secrets``
        are redacted beside the store's own (a key a caller lent for this run)."""
        if not is_complete(result):
            return
        text = Redactor((*self._secrets, *secrets)).compact(result.model_dump(mode="json"))
        await self._cache_put(key, time.time(), text, len(text.encode()))

    # -- history and usage ---------------------------------------------------------------------------

    async def save_run(
        self,
        request: FusionRequest,
        result: FusionResult,
        transcripts: dict[str, list[dict[str, Any]]],
        principal: str = LOCAL_PRINCIPAL,
        owner: dict[str, Any] | None = None,
        *,
        spent: Usage | None = None,
        secrets: tuple[str, ...] = (),
        settle: bool = True,
        cached_from: str | None = None,
        urgent: bool = False,
    ) -> None:
        """Record a run, replacing an earlier record of it; ``secrets`` are redacted beside the store's own.

        A ``running`` result (a run that may outlive its call, at its start) names its ``owner`` process and
        gets a heartbeat. Any other result is the run's end: its usage rows (from ``spent``, else the
        result's usage; a cached result's cost nothing) are written with it and its reservation released, in
        one transaction — the run is recorded completely or not at all. ``settle=False`` writes the record only:
        a run found lost, whose spend nobody knows, keeps its reservation counting until it expires.

        ``cached_from`` names the run (of the same principal) whose cached result answered this one: the record
        is then only that pointer, and :meth:`run` reads the original's request and result through it, so a
        client repeating a call does not copy its result into the history each time.

        ``urgent``: someone waits on this record (an answer, a run's start), so it does not wait for company
        (see :meth:`_write`).
        """
        secrets = (*self._secrets, *secrets)

        def build() -> tuple[RunRow, list[UsageRow] | None]:
            body: dict[str, Any]
            if cached_from is not None:
                # The cache is per principal, so the run it names is this principal's too.
                body = {"cached_from": cached_from}
            else:
                # Redacted before sharing: a secret cut in two where a shared text begins would escape redaction.
                shared, texts = share_texts(redact_value(transcripts, secrets))
                body = {"request": request.model_dump(mode="json"), "result": result.to_json()}
                body |= {"transcripts": shared, "texts": texts}
                if owner is not None:
                    body["owner"] = owner
            row = self._run_row(request, result, body, principal, secrets)
            usage = None
            if result.status != "running" and settle:
                usage = usage_rows(result.run_id, principal, row.created, spent or result.usage, free=result.cached)
            return row, usage

        # A running row is never trimmed and its end comes soon: that record trims for both (each trim ranks
        # the whole history, and a run that ends with its call writes a running row first).
        await self._write(Write(result.run_id, build, trims=result.status != "running", urgent=urgent))

    async def settle(self, run_id: str, principal: str, spent: Usage | Iterable[UsageRow]) -> None:
        """Write what a run that leaves no record spent (one stopped with its caller), and release its
        reservation, in one transaction; also the way a chat request's writer usage is written."""
        now = time.time()
        rows = list(spent) if not isinstance(spent, Usage) else usage_rows(run_id, principal, now, spent)
        await self._commit(None, run_id, rows)
        await self._trim(self._trim_usage, now)

    async def heartbeat(self, run_ids: list[str]) -> None:
        """Say these running runs are still being worked on (see :data:`fusion_mcp.engine.live.LOST_AFTER_S`)."""
        if run_ids:
            await self._heartbeat(run_ids, time.time())

    async def drop_running(self, run_id: str) -> None:
        """Delete ``run_id``'s row if it is still ``running``: a run stopped before its answer leaves none."""
        await self._drop_running(run_id)

    async def recent(
        self, limit: int = 20, principal: str | None = None, *, text: str | None = None
    ) -> list[dict[str, Any]]:
        """The latest runs, newest first: ``principal``'s only, or everyone's when None (the operator's view).

        ``text`` keeps the runs whose question, context or an answer holds it, letters in any case (only ASCII
        ones on SQLite, whose ``lower`` folds no other); an answer from the cache, whose record points to its
        original, is matched on the first 120 characters of its question. What was redacted is not found."""
        keys = ("run_id", "created", "prompt_head", "panel", "status", "cost", "seconds", "cached")
        rows = await self._recent(limit, principal, text.lower() if text else None)
        return [dict(zip(keys, row, strict=True)) | {"cached": bool(row[7])} for row in rows]

    async def run(self, run_id: str, principal: str | None = None) -> dict[str, Any] | None:
        """One run's record; another principal's run is None, exactly as a run that does not exist.

        An answer from the cache reads as the run it came from: that run's request and result, with this
        run's id and ``cached``; once that run has left the history, its result is ``run_not_found`` saying so.
        """
        row = await self._run(run_id, principal)
        if row is None:
            return None
        record: dict[str, Any] = expand_texts(json.loads(row[0]))
        original = record.get("cached_from")
        if isinstance(original, str):
            return await self._through_pointer(record, original)
        if row[1] is not None:
            record["heartbeat"] = row[1]  # a running row: when its process last said it was at it
        return record

    async def usage(self, since: float, by: UsageBy, principal: str | None = None) -> list[UsageTotal]:
        """Usage since ``since`` (epoch seconds) grouped ``by`` principal, model, UTC day or all together,
        largest cost first (days: in order); ``principal`` narrows it to one. No usage: no rows."""
        return await self._usage(since, by, principal)

    # -- the daily cap -------------------------------------------------------------------------------

    async def reserve(
        self, principal: str, run_id: str, estimate: float, *, cap: float, since: float, expires: float
    ) -> Spend:
        """Reserve ``estimate`` USD for a run if ``principal``'s spend since ``since`` plus its runs in flight
        plus it stays within ``cap``, and nothing is left over when it has already reached the cap.

        Atomic across every process that shares the store: two runs asking at once are counted one after the
        other. Reservations past ``expires`` belong to processes that died; they are dropped here.
        """
        return await self._reserve(principal, run_id, estimate, cap, since, time.time(), expires)

    async def spending(self, principal: str, since: float) -> Spend:
        """``principal``'s recorded spend since ``since`` and its live reservations (nothing reserved)."""
        return await self._spending(principal, since, time.time())

    async def _write(self, write: Write) -> None:
        """Write ``write`` with whatever other writes are waiting, in one batch (a group commit).

        Runs that end together (a wave of callers), and one call's record with the next call's running row,
        would each pay a transaction and a trip to the database's thread or connection; instead the first
        becomes the writer: it waits for company (:meth:`_gather`), then writes every waiting record in one
        :meth:`_commit_many`. A writer whose own record is written hands the rest to the next waiting one, so
        no run's task is kept writing others' records. Shielded: a record being written is written whatever
        happens to its caller (each write takes milliseconds).
        """
        with anyio.CancelScope(shield=True):
            self._waiting.append(write)
            if write.urgent:
                self.hurry()
            if self._writer:
                write.wake = anyio.Event()
                await write.wake.wait()  # written, or made the writer
            if not write.finished:
                self._writer = True
                await self._gather()
                batch, self._waiting = self._waiting, []
                try:
                    await self._flush(batch)
                finally:
                    if self._waiting:
                        self._waiting[0].woken()
                    else:
                        self._writer = False
        if write.error is not None:
            raise write.error

    async def _gather(self) -> None:
        """Let the records that come along join the batch: for up to :attr:`company_s` while nobody waits on
        any of them (a record goes to the history after its answer; a running row is written long before its
        run ends), else for one turn of the event loop, in which ready answers go out first."""
        if any(write.urgent for write in self._waiting):
            await anyio.lowlevel.checkpoint()
            return
        self._company = company = anyio.Event()
        try:
            with anyio.move_on_after(self.company_s):
                await company.wait()
        finally:
            self._company = None

    def hurry(self) -> None:
        """Someone now waits on a record that is waiting for company: write the batch at once."""
        if self._company is not None:
            self._company.set()

    async def _flush(self, batch: list[Write]) -> None:
        """Build and write ``batch``; a batch that fails is written again one record at a time, so one bad
        record fails alone."""
        ready: list[Write] = []
        for write in batch:  # one record that cannot be built (a bug) fails alone
            try:
                write.row, write.usage = write.build()
                ready.append(write)
            except Exception as exc:
                write.error = exc
        try:
            try:
                if ready:
                    await self._commit_many(ready)
            except Exception as exc:
                if len(ready) == 1:
                    ready[0].error = exc
                else:
                    for write in ready:
                        try:
                            await self._commit_many([write])
                        except Exception as one:
                            write.error = one
        finally:
            for write in batch:
                write.finished = True
                write.woken()

    # -- what each backend writes in its dialect -----------------------------------------------------

    @abstractmethod
    async def _cache_get(self, key: str, fresh_after: float) -> tuple[str, int] | None: ...

    @abstractmethod
    async def _cache_drop(self, key: str) -> None: ...

    @abstractmethod
    async def _cache_put(self, key: str, created: float, text: str, size: int) -> None:
        """Write an entry, then hold the cache to its TTL, entry count and a tenth of the history's bytes."""

    @abstractmethod
    async def _commit(self, run: RunRow | None, run_id: str, usage: list[UsageRow] | None) -> None:
        """In one transaction: upsert ``run`` (if any); if ``usage`` is not None, replace ``run_id``'s usage
        rows with it and delete ``run_id``'s reservation."""

    async def _commit_many(self, writes: list[Write]) -> None:
        """Each of ``writes`` as :meth:`_commit` writes one, then, if one of them ends a run, the history's trim
        (a trim that fails is logged: the records are safe). A backend that can writes them in one transaction
        and one trip."""
        for write in writes:
            assert write.row is not None
            await self._commit(write.row, write.run_id, write.usage)
        trims = [write.row.created for write in writes if write.trims and write.row is not None]
        if trims:
            await self._trim(self._trim_runs, max(trims))

    @abstractmethod
    async def _drop_running(self, run_id: str) -> None: ...

    @abstractmethod
    async def _trim_runs(self, now: float) -> None:
        """Hold the history to its age, count and size, and usage to its age."""

    @abstractmethod
    async def _trim_usage(self, now: float) -> None:
        """Hold usage to its age."""

    @abstractmethod
    async def _heartbeat(self, run_ids: list[str], now: float) -> None: ...

    @abstractmethod
    async def _recent(self, limit: int, principal: str | None, text: str | None) -> list[tuple[Any, ...]]:
        """Rows of (run_id, created, prompt_head, panel, status, cost, seconds, cached); ``text`` (lower case)
        as :meth:`recent` says."""

    @abstractmethod
    async def _run(self, run_id: str, principal: str | None) -> tuple[str, float | None] | None:
        """(record, heartbeat) of one run."""

    @abstractmethod
    async def _usage(self, since: float, by: UsageBy, principal: str | None) -> list[UsageTotal]: ...

    @abstractmethod
    async def _reserve(
        self, principal: str, run_id: str, estimate: float, cap: float, since: float, now: float, expires: float
    ) -> Spend: ...

    @abstractmethod
    async def _spending(self, principal: str, since: float, now: float) -> Spend: ...

    # -- shared ----------------------------------------------------------------------------------------

    async def _trim(self, trim: Callable[[float], Awaitable[None]], now: float) -> None:
        # The record is already safe: a trim that fails (a busy database) is retried by the next write.
        try:
            await trim(now)
        except StoreError as exc:
            log.warning("retention not applied this time: %s", exc)

    def _run_row(
        self,
        request: FusionRequest,
        result: FusionResult,
        body: dict[str, Any],
        principal: str,
        secrets: tuple[str, ...],
    ) -> RunRow:
        """The history row of ``result``: the listing's columns, and the record — ``body`` after the fields
        every record starts with — as redacted JSON."""
        now = time.time()
        record = {"schema": RESULT_SCHEMA, "run_id": result.run_id, "principal": principal, "created": now, **body}
        text = Redactor(secrets).compact(record)
        return RunRow(
            run_id=result.run_id,
            principal=principal,
            created=now,
            prompt_head=redact(request.prompt[:120], secrets),
            panel=",".join(request.analysis_models),
            status=result.status if result.status != "error" else f"error:{result.failure_reason}",
            cost=result.usage.total.cost,
            seconds=result.timings.total,
            cached=result.cached,
            record=text,
            bytes=len(text.encode()),
            heartbeat=now if result.status == "running" else None,
        )

    async def _through_pointer(self, pointer: dict[str, Any], original: str) -> dict[str, Any]:
        """The record of an answer from the cache, read through its original run (see :meth:`run`)."""
        run_id = pointer["run_id"]
        row = await self._run(original, pointer.get("principal"))
        source = expand_texts(json.loads(row[0])) if row is not None else {}
        record = {k: v for k, v in pointer.items() if k != "cached_from"}
        if isinstance(source.get("result"), dict):
            record["request"] = source.get("request")
            record["result"] = source["result"] | {"run_id": run_id, "cached": True}
        else:  # gone (trimmed, expired), or not a run's full record
            record["result"] = FusionResult.failure(run_id, "run_not_found", cache_gone(run_id, original)).to_json()
        record["transcripts"] = {"cached_from": [{"run_id": original}]}
        return record

    def _failed(self, what: str, exc: BaseException) -> StoreError:
        """``exc`` as a :class:`StoreError`: one line, naming the store, every secret removed."""
        detail = " ".join(str(exc).split()) or type(exc).__name__
        return StoreError(redact(f"{what} ({self.location}): {detail}", self._secrets))


def cache_gone(run_id: str, original: str) -> str:
    """Why an answer from the cache can no longer be read: the run it came from has left the history."""
    return (
        f"run {run_id!r} was answered from the cache of run {original!r}, which has since left the run history "
        "(FUSION_HISTORY_MAX_RUNS, FUSION_HISTORY_MAX_MB, FUSION_HISTORY_MAX_DAYS); make the call again for a "
        "new answer"
    )


def usage_rows(run_id: str, principal: str, created: float, usage: Usage, *, free: bool = False) -> list[UsageRow]:
    """One row per model and role (a model under several lenses is one model); ``free`` (a cached result)
    keeps the rows, so the run counts, with nothing spent. With providers configured a row's model names its
    provider, ``PROVIDER:ID`` (``local:qwen3:8b``, ``default:~openai/gpt-latest``), however the call spelt it."""
    merged: dict[tuple[str, str], UsageRow] = {}
    for m in usage.models:
        key = (qualified(model_of(m.model), m.provider), m.role)
        old = merged.get(key)
        cost = None if free else m.cost
        if old is not None:
            costs = [c for c in (old.cost, cost) if c is not None]
            cost = round(sum(costs), 10) if costs else None
        merged[key] = UsageRow(
            run_id=run_id,
            principal=principal,
            created=created,
            model=key[0],
            role=m.role,
            requests=(0 if free else m.requests) + (old.requests if old else 0),
            prompt_tokens=(0 if free else m.prompt_tokens) + (old.prompt_tokens if old else 0),
            completion_tokens=(0 if free else m.completion_tokens) + (old.completion_tokens if old else 0),
            cost=0.0 if free else cost,
        )
    return list(merged.values())


def qualified(model: str, provider: str | None) -> str:
    """A usage row's model: ``PROVIDER:ID`` when providers are configured (``provider`` is then set), however the
    call spelt it; the id as it was otherwise. ``usage --by provider`` groups by that prefix."""
    return model if provider is None else f"{provider}:{model.removeprefix(f'{provider}:')}"


def usage_total(by: UsageBy, row: tuple[Any, ...]) -> UsageTotal:
    """A usage group as the backends select it: (key, runs, requests, prompt, completion, cost); a day's
    key is its number since the epoch, shown as a date."""
    key, runs, requests, prompt, completion, cost = row
    if by == "day":
        key = datetime.fromtimestamp(int(key) * DAY_S, UTC).strftime("%Y-%m-%d")
    return UsageTotal(
        key=str(key),
        runs=int(runs or 0),
        requests=int(requests or 0),
        prompt_tokens=int(prompt or 0),
        completion_tokens=int(completion or 0),
        cost=round(float(cost or 0.0), 10),
    )


def cache_key(request: FusionRequest, *, principal: str, provider: str) -> str:
    """Everything that changes what a run would answer or who may see it, and nothing else.

    ``provider`` names the base URL and a fingerprint of the key (another account may see other models);
    ``principal`` keeps one client's answers from another, and from telling what another asked.
    """
    material = {
        "schema": RESULT_SCHEMA,
        "principal": principal,
        "provider": provider,
        "prompt": request.prompt,
        "context": request.context,
        "panel": list(request.analysis_models),
        "analyst": request.model,
        "max_tool_calls": request.max_tool_calls,
        "max_completion_tokens": request.max_completion_tokens,
        "temperature": request.temperature,
        "final_answer": request.final_answer,
        "web": request.web_tools,
        "lenses": request.lenses,
        "guests": [g.model_dump() for g in request.guests],
        "min_answers": request.min_answers,
        "solo": request.solo,
        "system": request.system_prompt,
        "files": [(a.path, a.sha256) for a in request.attachments],
        "images": list(request.image_models),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def is_complete(result: FusionResult) -> bool:
    """Worth serving again: every member answered in full and the analysis is there."""
    return (
        result.status == "ok"
        and result.analysis is not None
        and not result.failed_models
        and not any(r.truncated for r in result.responses)
    )


SHARED_TEXT_CHARS = 256
"""Texts at least this long are candidates for storing once per record: a message text that recurs across a
run's transcripts (the question, with its context, in every member's conversation), and every text part of a
message (the files' material, first in each member's user message, and inside the analyst's)."""

Shared = str | dict[str, Any]
"""A stored text: itself, ``{"$text": i}`` (the record's ``texts[i]``), or ``{"$join": [...]}`` (strings
and ``{"$text": i}`` to be joined: a message with a shared text inside it)."""


def share_texts(transcripts: dict[str, list[dict[str, Any]]]) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """Transcripts with each long, repeated text stored once, and the texts.

    A message text that recurs whole becomes ``{"$text": i}``; so does each long text part (a list content's
    ``{"type": "text", "text": ...}``), wherever it recurs: whole in another member's message, or inside a
    longer message (the analyst reads the files' material inside its question), which becomes ``{"$join":
    [...]}``. ``i`` indexes the returned texts, each of them distinct: within one record an index is shorter
    than a digest, and the reader of records written before text parts were shared reads these too.
    """
    counts: dict[str, int] = {}
    parts: dict[str, None] = {}  # long text parts, in order of first appearance
    for messages in transcripts.values():
        for message in messages:
            content = message.get("content")
            if isinstance(content, str) and len(content) >= SHARED_TEXT_CHARS:
                counts[content] = counts.get(content, 0) + 1
            for text in _part_texts(content):
                parts[text] = None
    texts = list(dict.fromkeys([*parts, *(text for text, n in counts.items() if n > 1)]))
    index = {text: i for i, text in enumerate(texts)}
    inside = sorted(parts, key=len, reverse=True)  # the longest first: one inside another is found whole
    shared = {name: [_shared_message(m, index, inside) for m in messages] for name, messages in transcripts.items()}
    return shared, texts


def _part_texts(content: object) -> list[str]:
    """The long texts of a list content's text parts."""
    if not isinstance(content, list):
        return []
    texts = (part.get("text") for part in content if isinstance(part, dict))
    return [t for t in texts if isinstance(t, str) and len(t) >= SHARED_TEXT_CHARS]


def _shared_message(message: dict[str, Any], index: dict[str, int], inside: list[str]) -> dict[str, Any]:
    content = message.get("content")
    if isinstance(content, str) and len(content) >= SHARED_TEXT_CHARS:
        return message | {"content": _shared(content, index, inside)}
    if isinstance(content, list) and _part_texts(content):
        parts = [
            part | {"text": {"$text": index[part["text"]]}}
            if isinstance(part, dict) and isinstance(part.get("text"), str) and part["text"] in index
            else part
            for part in content
        ]
        return message | {"content": parts}
    return message


def _shared(text: str, index: dict[str, int], inside: list[str]) -> Shared:
    """``text`` as stored: a reference when it is shared whole, a join when shared texts lie inside it."""
    if text in index:
        return {"$text": index[text]}
    pieces: list[Shared] = [text]
    for part in inside:
        if len(part) >= len(text):
            continue
        pieces = [p for piece in pieces for p in _split(piece, part, index[part])]
    return text if len(pieces) == 1 else {"$join": pieces}


def _split(piece: Shared, part: str, i: int) -> list[Shared]:
    """``piece`` with each occurrence of ``part`` replaced by ``{"$text": i}`` (empty strings left out)."""
    if not isinstance(piece, str) or part not in piece:
        return [piece]
    pieces: list[Shared] = []
    for n, chunk in enumerate(piece.split(part)):
        if n:
            pieces.append({"$text": i})
        if chunk:
            pieces.append(chunk)
    return pieces


def expand_texts(record: dict[str, Any]) -> dict[str, Any]:
    """A stored record as it was written: shared texts put back into every message and text part that had them."""
    texts = record.pop("texts", None)
    if not texts:
        return record

    def expanded(value: Shared) -> Shared:
        if isinstance(value, dict) and isinstance(value.get("$text"), int):
            return str(texts[value["$text"]])
        if isinstance(value, dict) and isinstance(value.get("$join"), list):
            return "".join(str(expanded(piece)) for piece in value["$join"])
        return value

    for messages in record.get("transcripts", {}).values():
        for message in messages:
            content = message.get("content")
            if isinstance(content, dict):
                message["content"] = expanded(content)
            elif isinstance(content, list):
                for part in content:
                    if isinstance(part, dict) and isinstance(part.get("text"), dict):
                        part["text"] = expanded(part["text"])
    return record
