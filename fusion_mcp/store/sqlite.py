"""The embedded store: one SQLite file under ``FUSION_HOME``, no set-up.

The schema is versioned by ``PRAGMA user_version`` and migrated at open under ``BEGIN IMMEDIATE``, so two
processes opening one new file do not both migrate it. Writes that belong together (a run's record, its
usage rows and the release of its reservation; a reservation and the sums it is checked against) are one
``BEGIN IMMEDIATE`` transaction: SQLite's write lock makes them atomic for every process on the machine.

SQLite calls are short and run in a worker thread so the event loop never waits on the disk.
"""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio

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
    Write,
    admits,
    check_schema,
    usage_total,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

DB_NAME = "fusion.sqlite3"
TABLES = (
    """CREATE TABLE IF NOT EXISTS runs (
        run_id TEXT PRIMARY KEY,
        created REAL NOT NULL,
        prompt_head TEXT NOT NULL,
        panel TEXT NOT NULL,
        status TEXT NOT NULL,
        cost REAL,
        seconds REAL NOT NULL,
        cached INTEGER NOT NULL DEFAULT 0,
        record TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS runs_created ON runs(created)",
    "CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, created REAL NOT NULL, result TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS cache_created ON cache(created)",
)
"""The first release's tables (``PRAGMA user_version`` 0, which it never set, counts as version 1)."""
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1 -> 2: each stored result says which shape of FusionResult it has.
    (
        "ALTER TABLE runs ADD COLUMN schema INTEGER NOT NULL DEFAULT 1",
        "ALTER TABLE cache ADD COLUMN schema INTEGER NOT NULL DEFAULT 1",
    ),
    # 2 -> 3: each run belongs to the principal that asked (runs recorded before belong to the local one),
    # and its record's size is kept, so the history can be held to FUSION_HISTORY_MAX_MB.
    (
        "ALTER TABLE runs ADD COLUMN principal TEXT NOT NULL DEFAULT 'local'",
        "CREATE INDEX IF NOT EXISTS runs_principal ON runs(principal, created)",
        "ALTER TABLE runs ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0",
        "UPDATE runs SET bytes = length(CAST(record AS BLOB))",
    ),
    # 3 -> 4: a run that may outlive its call is recorded as running at its start; its process renews this.
    ("ALTER TABLE runs ADD COLUMN heartbeat REAL",),
    # 4 -> 5: usage per principal, kept apart from the history (trimming it loses no spending), and the
    # reservations of the daily cap; the cache keeps its entries' sizes as the history does.
    (
        "ALTER TABLE cache ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0",
        "UPDATE cache SET bytes = length(CAST(result AS BLOB))",
        """CREATE TABLE usage (
            run_id TEXT NOT NULL,
            principal TEXT NOT NULL,
            created REAL NOT NULL,
            model TEXT NOT NULL,
            role TEXT NOT NULL,
            requests INTEGER NOT NULL,
            prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            cost REAL
        )""",
        "CREATE INDEX usage_run ON usage(run_id)",
        "CREATE INDEX usage_principal ON usage(principal, created)",
        "CREATE INDEX usage_created ON usage(created)",
        """CREATE TABLE reservations (
            run_id TEXT PRIMARY KEY,
            principal TEXT NOT NULL,
            created REAL NOT NULL,
            expires REAL NOT NULL,
            cost REAL NOT NULL
        )""",
        "CREATE INDEX reservations_principal ON reservations(principal)",
        # What the history still holds of earlier spending counts too: each finished, uncached run's usage
        # as its record has it, a model under several lenses counted once.
        """INSERT INTO usage (run_id, principal, created, model, role, requests, prompt_tokens,
                              completion_tokens, cost)
        SELECT run_id, principal, created, model, role, SUM(requests), SUM(prompt_tokens),
               SUM(completion_tokens), SUM(cost)
        FROM (
            SELECT r.run_id, r.principal, r.created,
                   CASE WHEN instr(json_extract(m.value, '$.model'), '#') > 0
                        THEN substr(json_extract(m.value, '$.model'), 1,
                                    instr(json_extract(m.value, '$.model'), '#') - 1)
                        ELSE json_extract(m.value, '$.model') END AS model,
                   json_extract(m.value, '$.role') AS role,
                   COALESCE(json_extract(m.value, '$.requests'), 0) AS requests,
                   COALESCE(json_extract(m.value, '$.prompt_tokens'), 0) AS prompt_tokens,
                   COALESCE(json_extract(m.value, '$.completion_tokens'), 0) AS completion_tokens,
                   json_extract(m.value, '$.cost') AS cost
            FROM runs AS r,
                 json_each(CASE WHEN json_valid(r.record) THEN r.record ELSE '{}' END, '$.result.usage.models') AS m
            WHERE r.status != 'running' AND r.cached = 0
        )
        WHERE model IS NOT NULL AND role IN ('panel', 'analyst')
        GROUP BY run_id, principal, created, model, role""",
    ),
)
"""Applied in order, each in the transaction that sets the version it reaches."""
LATEST = 1 + len(MIGRATIONS)
INDEXES = (
    # What a record's trim weighs of every row, in one index: the columns added after ``record`` sit behind
    # its overflow pages, so without it each trim reads every record whole (~40 ms a call at 1,000 runs).
    "CREATE INDEX IF NOT EXISTS runs_weight ON runs(principal, created, run_id, status, bytes)",
)
"""Made at every open, after the migrations: an index changes no version, so an older release at the same
version opens the file as before (and SQLite keeps the index up to date whoever writes)."""

_TRIM_RUNS = """
WITH grouped AS (
    SELECT run_id, created, bytes, status,
           CASE WHEN substr(principal, 1, 4) = 'key:' THEN 'key:' ELSE principal END AS grp
    FROM runs
), ranked AS (
    SELECT run_id, status, row_number() OVER w AS n, sum(bytes) OVER w AS kept,
           row_number() OVER (PARTITION BY grp, status = 'running' ORDER BY created DESC, run_id DESC) AS newest,
           (SELECT count(DISTINCT grp) FROM grouped) AS shares
    FROM grouped WINDOW w AS (PARTITION BY grp ORDER BY created DESC, run_id DESC)
)
DELETE FROM runs WHERE created < :oldest OR run_id IN (
    SELECT run_id FROM ranked
    WHERE status != 'running' AND newest > 1 AND (n * shares > :max_runs OR kept * shares > :max_bytes)
)"""
"""The history's age, and each principal's share of its count and size (see :class:`~.base.Retention`):
``n`` and ``kept`` count a share's rows newest first, running ones included; a running row, or a share's
newest finished one (``newest`` 1), is never deleted for count or size."""
_PUT_RUN = f"INSERT OR REPLACE INTO runs ({', '.join(RUN_COLUMNS)}) VALUES ({', '.join('?' * len(RUN_COLUMNS))})"
_RUNS_HELD = """
SELECT count(*), COALESCE(sum(bytes), 0),
       count(DISTINCT CASE WHEN substr(principal, 1, 4) = 'key:' THEN 'key:' ELSE principal END), min(created)
FROM runs"""
"""What :data:`_TRIM_RUNS` weighs, for the whole history at once: within its bounds, no share can be over."""
_TRIM_CACHE = """
DELETE FROM cache WHERE created < :expired OR key IN (
    SELECT key FROM (
        SELECT key, row_number() OVER w AS n, sum(bytes) OVER w AS kept
        FROM cache WINDOW w AS (ORDER BY created DESC, key DESC)
    ) WHERE n > :max_entries OR kept > :max_bytes
)"""
_SPEND = """
SELECT (SELECT COALESCE(SUM(cost), 0) FROM usage WHERE principal = :principal AND created >= :since),
       (SELECT COALESCE(SUM(cost), 0) FROM reservations
        WHERE principal = :principal AND run_id != :run_id AND expires >= :now)"""
_GROUPS = {
    "principal": "principal",
    "model": "model",
    # The provider a row's model names (PROVIDER:ID, see usage_rows), else the default one.
    "provider": "CASE WHEN instr(model, ':') > 1 AND substr(model, 1, 1) GLOB '[a-z]' "
    "AND substr(model, 1, instr(model, ':') - 1) NOT GLOB '*[^a-z0-9-]*' "
    "THEN substr(model, 1, instr(model, ':') - 1) ELSE 'default' END",
    # Whole UTC days since the epoch; shown as dates.
    "day": f"CAST(created / {DAY_S} AS INTEGER)",
    "all": "'total'",
}


def _private_home(home: Path) -> None:
    """``home`` exists and only its owner can list or enter it (0700), whatever the umask.

    A directory that holds anything but our database (someone pointed ``FUSION_HOME`` at a shared place) is
    not changed, only reported: its other contents are not ours to lock away. The database files are 0600
    either way.
    """
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = home.stat().st_mode & 0o777
    if mode & 0o077 == 0:
        return
    if any(not p.name.startswith(DB_NAME) for p in home.iterdir()):
        log.warning(
            "%s is shared (mode %o): the run history files in it are private, the directory is left as is", home, mode
        )
        return
    home.chmod(0o700)
    log.warning("%s was readable by others (mode %o): tightened to 700", home, mode)


def _private_file(path: Path, *, create: bool = True) -> None:
    """``path`` readable and writable by its owner only (0600): created so if missing, tightened if looser."""
    if create and not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    if not path.exists():
        return
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        path.chmod(0o600)
        log.warning("%s was readable by others (mode %o): tightened to 600", path, mode)


_HOLDS = (
    "instr(lower(prompt_head), ?) > 0 OR (json_valid(record) AND ("
    "instr(lower(coalesce(json_extract(record, '$.request.prompt'), '')), ?) > 0 "
    "OR instr(lower(coalesce(json_extract(record, '$.request.context'), '')), ?) > 0 "
    "OR EXISTS (SELECT 1 FROM json_each(record, '$.result.responses') AS a "
    "WHERE instr(lower(coalesce(json_extract(a.value, '$.content'), '')), ?) > 0)))"
)
"""A run whose question, context or an answer holds the search text (four ``?``, the text in lower case)."""


class SqliteStore(Store):
    """The store of one ``FUSION_HOME``: the file ``fusion.sqlite3`` in it, private to its owner."""

    def __init__(self, home: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.home = home
        self.path = home / DB_NAME
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    @property
    def location(self) -> str:
        return str(self.path)

    async def open(self) -> None:
        await self._call(lambda db: None)

    async def aclose(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    async def status(self) -> StoreStatus:
        version = await self._call(lambda db: db.execute("PRAGMA user_version").fetchone()[0])
        return StoreStatus(self.location, f"SQLite {sqlite3.sqlite_version}", version, LATEST)

    @property
    def _db(self) -> sqlite3.Connection:
        """The connection, opened (and migrated) on first use and again after :meth:`aclose`; callers hold
        the lock."""
        if self._conn is None:
            _private_home(self.home)
            _private_file(self.path)
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            try:
                _wal(conn)
                # WAL's own recommendation: a commit is not synced to disk (the log is, at each checkpoint), so
                # a run's record costs no fsync on the way to its caller's next call. A crash of the process
                # loses nothing; a power cut may take the last records back (the file stays consistent).
                conn.execute("PRAGMA synchronous=NORMAL")
                _migrate(conn, self.location)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
            for suffix in ("-wal", "-shm"):  # SQLite gives them the database's mode; older files may differ
                _private_file(self.path.with_name(self.path.name + suffix), create=False)
        return self._conn

    async def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def locked() -> T:
            with self._lock:
                return work(self._db)

        try:
            return await anyio.to_thread.run_sync(locked)
        except StoreError:
            raise
        except (sqlite3.Error, OSError) as exc:
            raise self._failed("the SQLite store failed", exc) from None

    # -- the dialect ---------------------------------------------------------------------------------

    async def _cache_get(self, key: str, fresh_after: float) -> tuple[str, int] | None:
        return await self._call(
            lambda db: db.execute(
                "SELECT result, schema FROM cache WHERE key = ? AND created >= ?", (key, fresh_after)
            ).fetchone()
        )

    async def _cache_drop(self, key: str) -> None:
        await self._call(lambda db: db.execute("DELETE FROM cache WHERE key = ?", (key,)))

    async def _cache_put(self, key: str, created: float, text: str, size: int) -> None:
        limits = self.retention

        def put(db: sqlite3.Connection) -> None:
            with _transaction(db):
                db.execute(
                    "INSERT OR REPLACE INTO cache (key, created, result, schema, bytes) VALUES (?, ?, ?, ?, ?)",
                    (key, created, text, RESULT_SCHEMA, size),
                )
                db.execute(
                    _TRIM_CACHE,
                    {
                        "expired": created - limits.cache_ttl_s,
                        "max_entries": limits.max_cache_entries,
                        "max_bytes": limits.max_bytes / 10,
                    },
                )
            db.execute("PRAGMA incremental_vacuum")

        await self._call(put)

    async def _commit(self, run: RunRow | None, run_id: str, usage: list[UsageRow] | None) -> None:
        await self._call(lambda db: _commit(db, [(run, run_id, usage)]))

    async def _commit_many(self, writes: list[Write]) -> None:
        """One trip to the store's thread and one transaction for the whole batch: its records, then the trim
        in a savepoint of its own, so a trim that fails is undone alone (and logged: the records are safe, the
        next write trims again). Few statements, since each one lets the event loop's thread take the
        interpreter back and forth, and one commit, since each writes the log's index."""
        trims = [write.row.created for write in writes if write.trims and write.row is not None]

        def commit_and_trim(db: sqlite3.Connection) -> sqlite3.Error | None:
            failed, deleted = None, 0
            with _transaction(db):
                _put(db, [(write.row, write.run_id, write.usage) for write in writes])
                if trims:
                    db.execute("SAVEPOINT trim")
                    try:
                        deleted = self._trim_in(db, max(trims))
                    except sqlite3.Error as exc:
                        db.execute("ROLLBACK TO trim")
                        failed = exc
                    db.execute("RELEASE trim")
            if deleted:
                db.execute("PRAGMA incremental_vacuum")
            return failed

        failed = await self._call(commit_and_trim)
        if failed is not None:
            log.warning("retention not applied this time: %s", self._failed("the SQLite store failed", failed))

    async def _trim_runs(self, now: float) -> None:
        def trim(db: sqlite3.Connection) -> None:
            with _transaction(db):
                deleted = self._trim_in(db, now)
            if deleted:
                db.execute("PRAGMA incremental_vacuum")

        await self._call(trim)

    def _trim_in(self, db: sqlite3.Connection, now: float) -> int:
        """Hold the history to its bounds (in the caller's transaction); the rows deleted, whose pages the
        caller then gives back to the file system (``incremental_vacuum``)."""
        limits = self.retention
        deleted = 0
        count, size, shares, first = db.execute(_RUNS_HELD).fetchone()
        # Nothing can go while the whole history, times its shares, is within both bounds and none of it is
        # too old: one pass without sorting tells, where the trim itself ranks every row.
        if (
            count * shares > limits.max_runs
            or size * shares > limits.max_bytes
            or (first is not None and first < now - limits.max_age_days * DAY_S)
        ):
            deleted += db.execute(
                _TRIM_RUNS,
                {
                    "oldest": now - limits.max_age_days * DAY_S,
                    "max_runs": limits.max_runs,
                    "max_bytes": limits.max_bytes,
                },
            ).rowcount
        return (
            deleted + db.execute("DELETE FROM usage WHERE created < ?", (now - limits.usage_max_days * DAY_S,)).rowcount
        )

    async def _trim_usage(self, now: float) -> None:
        oldest = now - self.retention.usage_max_days * DAY_S
        await self._call(lambda db: db.execute("DELETE FROM usage WHERE created < ?", (oldest,)))

    async def _drop_running(self, run_id: str) -> None:
        await self._call(lambda db: db.execute("DELETE FROM runs WHERE run_id = ? AND status = 'running'", (run_id,)))

    async def _heartbeat(self, run_ids: list[str], now: float) -> None:
        marks = ",".join("?" * len(run_ids))
        await self._call(
            lambda db: db.execute(
                f"UPDATE runs SET heartbeat = ? WHERE status = 'running' AND run_id IN ({marks})", (now, *run_ids)
            )
        )

    async def _recent(self, limit: int, principal: str | None, text: str | None) -> list[tuple[Any, ...]]:
        return await self._call(
            lambda db: db.execute(
                "SELECT run_id, created, prompt_head, panel, status, cost, seconds, cached FROM runs "
                f"WHERE (? IS NULL OR principal = ?) AND (? IS NULL OR {_HOLDS}) ORDER BY created DESC LIMIT ?",
                (principal, principal, text, *[text] * 4, limit),
            ).fetchall()
        )

    async def _run(self, run_id: str, principal: str | None) -> tuple[str, float | None] | None:
        return await self._call(
            lambda db: db.execute(
                "SELECT record, heartbeat FROM runs WHERE run_id = ? AND (? IS NULL OR principal = ?)",
                (run_id, principal, principal),
            ).fetchone()
        )

    async def _usage(self, since: float, by: UsageBy, principal: str | None) -> list[UsageTotal]:
        group = _GROUPS[by]
        order = "key" if by == "day" else "cost DESC, key"
        rows = await self._call(
            lambda db: db.execute(
                f"SELECT {group} AS key, COUNT(DISTINCT CASE WHEN role != 'writer' THEN run_id END), "
                "SUM(requests), SUM(prompt_tokens), SUM(completion_tokens), COALESCE(SUM(cost), 0) AS cost "
                "FROM usage WHERE created >= ? AND (? IS NULL OR principal = ?) "
                f"GROUP BY key ORDER BY {order}",
                (since, principal, principal),
            ).fetchall()
        )
        return [usage_total(by, row) for row in rows]

    async def _reserve(
        self, principal: str, run_id: str, estimate: float, cap: float, since: float, now: float, expires: float
    ) -> Spend:
        def reserve(db: sqlite3.Connection) -> Spend:
            # BEGIN IMMEDIATE: no other process writes between the sums and the reservation.
            with _transaction(db):
                db.execute("DELETE FROM reservations WHERE expires < ?", (now,))
                spent, reserved = db.execute(
                    _SPEND, {"principal": principal, "since": since, "run_id": run_id, "now": now}
                ).fetchone()
                admitted = admits(spent, reserved, estimate, cap)
                if admitted:
                    db.execute(
                        "INSERT OR REPLACE INTO reservations (run_id, principal, created, expires, cost) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (run_id, principal, now, expires, estimate),
                    )
            return Spend(spent=spent, reserved=reserved, admitted=admitted)

        return await self._call(reserve)

    async def _spending(self, principal: str, since: float, now: float) -> Spend:
        spent, reserved = await self._call(
            lambda db: db.execute(_SPEND, {"principal": principal, "since": since, "run_id": "", "now": now}).fetchone()
        )
        return Spend(spent=spent, reserved=reserved, admitted=False)


def _commit(db: sqlite3.Connection, writes: list[tuple[RunRow | None, str, list[UsageRow] | None]]) -> None:
    """Each write as :meth:`Store._commit` describes one, all in one transaction."""
    with _transaction(db):
        _put(db, writes)


def _put(db: sqlite3.Connection, writes: list[tuple[RunRow | None, str, list[UsageRow] | None]]) -> None:
    """:func:`_commit`'s writes, in the caller's transaction."""
    for run, run_id, usage in writes:
        if run is not None:
            db.execute(_PUT_RUN, run.columns())
        if usage is not None:
            db.execute("DELETE FROM usage WHERE run_id = ?", (run_id,))
            # One statement for a run's rows: executemany would step, and hand the interpreter over, per row.
            for start in range(0, len(usage), _USAGE_ROWS_PER_INSERT):
                chunk = usage[start : start + _USAGE_ROWS_PER_INSERT]
                db.execute(_insert_usage(len(chunk)), [value for row in chunk for value in row.columns()])
            db.execute("DELETE FROM reservations WHERE run_id = ?", (run_id,))


_USAGE_ROWS_PER_INSERT = 100
"""9 parameters a row: 900 a statement, within the 999 of SQLite before 3.32."""


@functools.cache
def _insert_usage(rows: int) -> str:
    values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?)"] * rows)
    return (
        "INSERT INTO usage (run_id, principal, created, model, role, requests, prompt_tokens, completion_tokens, "
        f"cost) VALUES {values}"
    )


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on any error: all of it or none of it."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _wal(conn: sqlite3.Connection, wait_s: float = 10.0) -> None:
    """Put the file in WAL mode (it stays so).

    Switching takes the file for a moment and SQLite's busy timeout does not wait for that: processes that
    open one new file together (``--workers``, replicas on one machine) take turns here instead.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _migrate(conn: sqlite3.Connection, location: str) -> None:
    """Create the tables, or bring an older database up to this release's version, atomically.

    ``BEGIN IMMEDIATE`` takes the write lock first, so two processes opening one new file do not both
    migrate it; the version is read again under the lock.
    """
    # Only a new, empty file takes this: pages freed by trimming then go back to the file system.
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    with _transaction(conn):
        version = max(1, conn.execute("PRAGMA user_version").fetchone()[0])
        check_schema(version, LATEST, location)
        for statement in TABLES:
            conn.execute(statement)
        for steps in MIGRATIONS[version - 1 :]:
            for statement in steps:
                conn.execute(statement)
        for statement in INDEXES:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {LATEST}")
