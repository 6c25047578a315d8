"""The shared store: PostgreSQL at ``FUSION_DATABASE_URL``, for replicas on one machine or many.

psycopg 3 (async) with a :class:`psycopg_pool.AsyncConnectionPool` of at most ``FUSION_DATABASE_POOL``
connections, made on demand and checked before each use, so a database restart costs a reconnect, not a
replica. Imported only when the URL is set: the core install does not need psycopg.

The schema has its own versioned migrations, recorded in ``fusion_schema`` and applied at open in one
transaction under ``pg_advisory_xact_lock``: replicas starting together migrate once, the others wait and
find it done. Tables are prefixed ``fusion_`` so the store can share a database with others.

Writes that belong together are one transaction (a run's record, its usage rows and the release of its
reservation). A reservation for the daily cap takes a transaction-scoped advisory lock of its principal,
so two replicas reserving for one principal are counted one after the other; the sums it checks are read
in one statement, one snapshot, so a run recorded meanwhile is counted either as spent or as reserved,
never both and never neither.

When the database cannot be reached, calls fail at once with the last error for a few seconds
(:data:`RETRY_AFTER_S`) instead of each waiting out the pool's timeout; the store opens again by itself.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import anyio
import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ..core.models import RESULT_SCHEMA
from .base import (
    DAY_S,
    RUN_COLUMNS,
    RunRow,
    Spend,
    Store,
    StoreError,
    StoreStatus,
    UsageBy,
    UsageRow,
    UsageTotal,
    admits,
    check_schema,
    usage_total,
)

T = TypeVar("T")

CONNECT_TIMEOUT_S = 5
"""Seconds to establish one connection (libpq's ``connect_timeout``)."""
POOL_TIMEOUT_S = 5.0
"""Seconds a call waits for a pooled connection before it fails."""
RETRY_AFTER_S = 10.0
"""After the database could not be reached, calls fail at once with that error for this long."""
LOCKS = 0x66757369
"""The advisory-lock namespace of fusion-mcp ("fusi"); the second key says what is locked."""
SCHEMA_LOCK, TRIM_LOCK = 0, 1
"""Second keys of the schema migration and of retention; a principal's cap lock is ``hashtext`` of its name."""
CAP_LOCKS = LOCKS + 1
"""The namespace of the per-principal cap locks (kept apart from the fixed ones above)."""

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 0 -> 1: the run history, the cache, usage per principal and the reservations of the daily cap.
    (
        """CREATE TABLE fusion_runs (
            run_id text PRIMARY KEY,
            principal text NOT NULL,
            created double precision NOT NULL,
            prompt_head text NOT NULL,
            panel text NOT NULL,
            status text NOT NULL,
            cost double precision,
            seconds double precision NOT NULL,
            cached boolean NOT NULL,
            schema integer NOT NULL,
            bytes integer NOT NULL,
            heartbeat double precision,
            record text NOT NULL
        )""",
        "CREATE INDEX fusion_runs_created ON fusion_runs (created)",
        "CREATE INDEX fusion_runs_principal ON fusion_runs (principal, created)",
        """CREATE TABLE fusion_cache (
            key text PRIMARY KEY,
            created double precision NOT NULL,
            schema integer NOT NULL,
            bytes integer NOT NULL,
            result text NOT NULL
        )""",
        "CREATE INDEX fusion_cache_created ON fusion_cache (created)",
        """CREATE TABLE fusion_usage (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            run_id text NOT NULL,
            principal text NOT NULL,
            created double precision NOT NULL,
            model text NOT NULL,
            role text NOT NULL CHECK (role IN ('panel', 'analyst', 'writer')),
            requests integer NOT NULL,
            prompt_tokens bigint NOT NULL,
            completion_tokens bigint NOT NULL,
            cost double precision
        )""",
        "CREATE INDEX fusion_usage_run ON fusion_usage (run_id)",
        "CREATE INDEX fusion_usage_principal ON fusion_usage (principal, created)",
        "CREATE INDEX fusion_usage_created ON fusion_usage (created)",
        """CREATE TABLE fusion_reservations (
            run_id text PRIMARY KEY,
            principal text NOT NULL,
            created double precision NOT NULL,
            expires double precision NOT NULL,
            cost double precision NOT NULL
        )""",
        "CREATE INDEX fusion_reservations_principal ON fusion_reservations (principal)",
    ),
)
"""Applied in order, each in the transaction that records the version it reaches."""
LATEST = len(MIGRATIONS)

_VERSIONS = """CREATE TABLE IF NOT EXISTS fusion_schema (
    version integer PRIMARY KEY,
    applied timestamptz NOT NULL DEFAULT now()
)"""
_PUT_RUN = (
    f"INSERT INTO fusion_runs ({', '.join(RUN_COLUMNS)}) VALUES ({', '.join(['%s'] * len(RUN_COLUMNS))}) "
    "ON CONFLICT (run_id) DO UPDATE SET " + ", ".join(f"{c} = EXCLUDED.{c}" for c in RUN_COLUMNS[1:])
)
_TRIM_RUNS = """
WITH grouped AS (
    SELECT run_id, created, bytes, status,
           CASE WHEN substr(principal, 1, 4) = 'key:' THEN 'key:' ELSE principal END AS grp
    FROM fusion_runs
), ranked AS (
    SELECT run_id, status, row_number() OVER w AS n, sum(bytes) OVER w AS kept,
           row_number() OVER (PARTITION BY grp, status = 'running' ORDER BY created DESC, run_id DESC) AS newest,
           (SELECT count(DISTINCT grp) FROM grouped) AS shares
    FROM grouped WINDOW w AS (PARTITION BY grp ORDER BY created DESC, run_id DESC)
)
DELETE FROM fusion_runs WHERE created < %(oldest)s OR run_id IN (
    SELECT run_id FROM ranked
    WHERE status != 'running' AND newest > 1 AND (n * shares > %(max_runs)s OR kept * shares > %(max_bytes)s)
)"""
"""The history's age, and each principal's share of its count and size (see :class:`~.base.Retention`):
``n`` and ``kept`` count a share's rows newest first, running ones included; a running row, or a share's
newest finished one (``newest`` 1), is never deleted for count or size."""
_TRIM_CACHE = """
DELETE FROM fusion_cache WHERE created < %(expired)s OR key IN (
    SELECT key FROM (
        SELECT key, row_number() OVER w AS n, sum(bytes) OVER w AS kept
        FROM fusion_cache WINDOW w AS (ORDER BY created DESC, key DESC)
    ) AS ranked WHERE n > %(max_entries)s OR kept > %(max_bytes)s
)"""
_SPEND = """
SELECT (SELECT COALESCE(SUM(cost), 0) FROM fusion_usage WHERE principal = %(principal)s AND created >= %(since)s),
       (SELECT COALESCE(SUM(cost), 0) FROM fusion_reservations
        WHERE principal = %(principal)s AND run_id != %(run_id)s AND expires >= %(now)s)"""
_GROUPS = {
    "principal": "principal",
    "model": "model",
    # The provider a row's model names (PROVIDER:ID, see usage_rows), else the default one.
    "provider": "CASE WHEN model ~ '^[a-z][a-z0-9-]{0,31}:' THEN split_part(model, ':', 1) ELSE 'default' END",
    "day": f"floor(created / {DAY_S})::bigint",
    "all": "'total'",
}


def display_url(url: str) -> str:
    """The database a URL names, for messages: ``postgresql://user@host:port/dbname``, never the password."""
    try:
        parts = urlsplit(url)
        user = unquote(parts.username) + "@" if parts.username else ""
        host = parts.hostname or "localhost"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "postgresql://(a malformed URL)"
    return f"postgresql://{user}{host}{port}{parts.path}"


_HOLDS = (
    "strpos(lower(prompt_head), %(text)s) > 0 OR EXISTS (SELECT 1 FROM (SELECT record::jsonb AS r) AS j WHERE "
    "strpos(lower(coalesce(j.r -> 'request' ->> 'prompt', '')), %(text)s) > 0 "
    "OR strpos(lower(coalesce(j.r -> 'request' ->> 'context', '')), %(text)s) > 0 "
    "OR EXISTS (SELECT 1 FROM jsonb_array_elements(CASE WHEN jsonb_typeof(j.r -> 'result' -> 'responses') = 'array' "
    "THEN j.r -> 'result' -> 'responses' ELSE '[]'::jsonb END) AS a "
    "WHERE strpos(lower(coalesce(a ->> 'content', '')), %(text)s) > 0))"
)
"""A run whose question, context or an answer holds the search text (``%(text)s``, in lower case)."""


class PostgresStore(Store):
    """The store in one PostgreSQL database, shared by every process that has its URL."""

    shared = True

    def __init__(self, url: str, *, pool_size: int = 8, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._url = url
        self._pool_size = pool_size
        self._pool: AsyncConnectionPool | None = None
        self._opening: anyio.Lock | None = None
        self._down: tuple[float, StoreError] | None = None
        """(until when, why): the database could not be reached lately."""

    @property
    def location(self) -> str:
        return display_url(self._url)

    async def open(self) -> None:
        if self._pool is not None:
            return
        self._fail_fast()
        try:
            async with await self._connect() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCKS, SCHEMA_LOCK))
                await conn.execute(_VERSIONS)
                found = await _one(conn, "SELECT COALESCE(MAX(version), 0) FROM fusion_schema")
                check_schema(found, LATEST, self.location)
                for version, steps in enumerate(MIGRATIONS[found:], start=found + 1):
                    for statement in steps:
                        await conn.execute(statement)
                    await conn.execute("INSERT INTO fusion_schema (version) VALUES (%s)", (version,))
        except psycopg.OperationalError as exc:
            raise self._unreachable(exc) from None
        except psycopg.Error as exc:
            raise self._failed("cannot set up the PostgreSQL store", exc) from None
        pool: AsyncConnectionPool = AsyncConnectionPool(
            self._url,
            min_size=0,
            max_size=self._pool_size,
            kwargs=_connect_args(),
            check=AsyncConnectionPool.check_connection,
            timeout=POOL_TIMEOUT_S,
            name="fusion-mcp",
            open=False,
        )
        await pool.open()
        self._pool = pool

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def status(self) -> StoreStatus:
        try:
            async with await self._connect() as conn:
                server = await _one(conn, "SHOW server_version")
                exists = await _one(conn, "SELECT to_regclass('fusion_schema') IS NOT NULL")
                version = await _one(conn, "SELECT COALESCE(MAX(version), 0) FROM fusion_schema") if exists else 0
        except psycopg.OperationalError as exc:
            raise self._unreachable(exc) from None
        except psycopg.Error as exc:
            raise self._failed("cannot read the PostgreSQL store", exc) from None
        return StoreStatus(self.location, f"PostgreSQL {server}", version, LATEST)

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(self._url, **_connect_args())

    def _fail_fast(self) -> None:
        if self._down is not None:
            until, error = self._down
            if time.monotonic() < until:
                raise error
            self._down = None

    def _unreachable(self, exc: BaseException) -> StoreError:
        error = self._failed("cannot reach PostgreSQL", exc)
        self._down = (time.monotonic() + RETRY_AFTER_S, error)
        return error

    async def _do(self, work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
        """``work`` on a pooled connection, opening the store first if it is not open yet."""
        if self._pool is None:
            if self._opening is None:
                self._opening = anyio.Lock()
            async with self._opening:
                await self.open()
        assert self._pool is not None
        self._fail_fast()
        try:
            async with self._pool.connection() as conn:
                return await work(conn)
        except PoolTimeout:
            if self._pool.get_stats().get("pool_size", 0) >= self._pool_size:
                # Every connection is open and in use: the database is up, so the next call may well get one.
                raise StoreError(
                    f"no free connection to PostgreSQL ({self.location}) within {POOL_TIMEOUT_S:g} s: all "
                    f"{self._pool_size} connections (FUSION_DATABASE_POOL) are busy"
                ) from None
            error = StoreError(
                f"no connection to PostgreSQL ({self.location}) within {POOL_TIMEOUT_S:g} s: the server is down or "
                "unreachable"
            )
            self._down = (time.monotonic() + RETRY_AFTER_S, error)
            raise error from None
        except psycopg.Error as exc:
            raise self._failed("the PostgreSQL store failed", exc) from None

    # -- the dialect ---------------------------------------------------------------------------------

    async def _cache_get(self, key: str, fresh_after: float) -> tuple[str, int] | None:
        async def get(conn: psycopg.AsyncConnection[Any]) -> tuple[str, int] | None:
            cur = await conn.execute(
                "SELECT result, schema FROM fusion_cache WHERE key = %s AND created >= %s", (key, fresh_after)
            )
            return await cur.fetchone()

        return await self._do(get)

    async def _cache_drop(self, key: str) -> None:
        async def drop(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute("DELETE FROM fusion_cache WHERE key = %s", (key,))

        await self._do(drop)

    async def _cache_put(self, key: str, created: float, text: str, size: int) -> None:
        limits = self.retention

        async def put(conn: psycopg.AsyncConnection[Any]) -> None:
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO fusion_cache (key, created, schema, bytes, result) VALUES (%s, %s, %s, %s, %s) "
                    "ON CONFLICT (key) DO UPDATE SET created = EXCLUDED.created, schema = EXCLUDED.schema, "
                    "bytes = EXCLUDED.bytes, result = EXCLUDED.result",
                    (key, created, RESULT_SCHEMA, size, text),
                )
                await conn.execute(
                    _TRIM_CACHE,
                    {
                        "expired": created - limits.cache_ttl_s,
                        "max_entries": limits.max_cache_entries,
                        "max_bytes": limits.max_bytes / 10,
                    },
                )

        await self._do(put)

    async def _commit(self, run: RunRow | None, run_id: str, usage: list[UsageRow] | None) -> None:
        async def commit(conn: psycopg.AsyncConnection[Any]) -> None:
            async with conn.transaction():
                if run is not None:
                    await conn.execute(_PUT_RUN, run.columns())
                if usage is not None:
                    await conn.execute("DELETE FROM fusion_usage WHERE run_id = %s", (run_id,))
                    if usage:
                        async with conn.cursor() as cur:
                            await cur.executemany(
                                "INSERT INTO fusion_usage (run_id, principal, created, model, role, requests, "
                                "prompt_tokens, completion_tokens, cost) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                                [u.columns() for u in usage],
                            )
                    await conn.execute("DELETE FROM fusion_reservations WHERE run_id = %s", (run_id,))

        await self._do(commit)

    async def _trim_runs(self, now: float) -> None:
        limits = self.retention

        async def trim(conn: psycopg.AsyncConnection[Any]) -> None:
            async with conn.transaction():
                # One replica trims at a time; the others skip (the next write trims again).
                if not await _one(conn, "SELECT pg_try_advisory_xact_lock(%s, %s)", (LOCKS, TRIM_LOCK)):
                    return
                await conn.execute(
                    _TRIM_RUNS,
                    {
                        "oldest": now - limits.max_age_days * DAY_S,
                        "max_runs": limits.max_runs,
                        "max_bytes": limits.max_bytes,
                    },
                )
                await conn.execute(
                    "DELETE FROM fusion_usage WHERE created < %s", (now - limits.usage_max_days * DAY_S,)
                )

        await self._do(trim)

    async def _trim_usage(self, now: float) -> None:
        async def trim(conn: psycopg.AsyncConnection[Any]) -> None:
            oldest = now - self.retention.usage_max_days * DAY_S
            await conn.execute("DELETE FROM fusion_usage WHERE created < %s", (oldest,))

        await self._do(trim)

    async def _drop_running(self, run_id: str) -> None:
        async def drop(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute("DELETE FROM fusion_runs WHERE run_id = %s AND status = 'running'", (run_id,))

        await self._do(drop)

    async def _heartbeat(self, run_ids: list[str], now: float) -> None:
        async def beat(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute(
                "UPDATE fusion_runs SET heartbeat = %s WHERE status = 'running' AND run_id = ANY(%s)",
                (now, run_ids),
            )

        await self._do(beat)

    async def _recent(self, limit: int, principal: str | None, text: str | None) -> list[tuple[Any, ...]]:
        async def recent(conn: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            cur = await conn.execute(
                "SELECT run_id, created, prompt_head, panel, status, cost, seconds, cached FROM fusion_runs "
                "WHERE (%(principal)s::text IS NULL OR principal = %(principal)s) "
                f"AND (%(text)s::text IS NULL OR {_HOLDS}) ORDER BY created DESC LIMIT %(limit)s",
                {"principal": principal, "limit": limit, "text": text},
            )
            return await cur.fetchall()

        return await self._do(recent)

    async def _run(self, run_id: str, principal: str | None) -> tuple[str, float | None] | None:
        async def one(conn: psycopg.AsyncConnection[Any]) -> tuple[str, float | None] | None:
            cur = await conn.execute(
                "SELECT record, heartbeat FROM fusion_runs "
                "WHERE run_id = %(run_id)s AND (%(principal)s::text IS NULL OR principal = %(principal)s)",
                {"run_id": run_id, "principal": principal},
            )
            return await cur.fetchone()

        return await self._do(one)

    async def _usage(self, since: float, by: UsageBy, principal: str | None) -> list[UsageTotal]:
        group = _GROUPS[by]
        order = "key" if by == "day" else "cost DESC, key"

        async def usage(conn: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            cur = await conn.execute(
                f"SELECT {group} AS key, COUNT(DISTINCT CASE WHEN role != 'writer' THEN run_id END), "
                "SUM(requests), SUM(prompt_tokens), SUM(completion_tokens), COALESCE(SUM(cost), 0) AS cost "
                "FROM fusion_usage WHERE created >= %(since)s "
                "AND (%(principal)s::text IS NULL OR principal = %(principal)s) "
                f"GROUP BY key ORDER BY {order}",
                {"since": since, "principal": principal},
            )
            return await cur.fetchall()

        return [usage_total(by, row) for row in await self._do(usage)]

    async def _reserve(
        self, principal: str, run_id: str, estimate: float, cap: float, since: float, now: float, expires: float
    ) -> Spend:
        async def reserve(conn: psycopg.AsyncConnection[Any]) -> Spend:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (CAP_LOCKS, principal))
                await conn.execute("DELETE FROM fusion_reservations WHERE expires < %s", (now,))
                cur = await conn.execute(_SPEND, {"principal": principal, "since": since, "run_id": run_id, "now": now})
                spent, reserved = await cur.fetchone() or (0.0, 0.0)
                admitted = admits(spent, reserved, estimate, cap)
                if admitted:
                    await conn.execute(
                        "INSERT INTO fusion_reservations (run_id, principal, created, expires, cost) "
                        "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (run_id) DO UPDATE SET "
                        "principal = EXCLUDED.principal, expires = EXCLUDED.expires, cost = EXCLUDED.cost",
                        (run_id, principal, now, expires, estimate),
                    )
            return Spend(spent=float(spent), reserved=float(reserved), admitted=admitted)

        return await self._do(reserve)

    async def _spending(self, principal: str, since: float, now: float) -> Spend:
        async def spending(conn: psycopg.AsyncConnection[Any]) -> Spend:
            cur = await conn.execute(_SPEND, {"principal": principal, "since": since, "run_id": "", "now": now})
            spent, reserved = await cur.fetchone() or (0.0, 0.0)
            return Spend(spent=float(spent), reserved=float(reserved), admitted=False)

        return await self._do(spending)


def _connect_args() -> dict[str, Any]:
    return {"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S, "application_name": "fusion-mcp"}


async def _one(conn: psycopg.AsyncConnection[Any], query: str, params: tuple[Any, ...] | None = None) -> Any:
    cur = await conn.execute(query, params)
    row = await cur.fetchone()
    return row[0] if row is not None else None
