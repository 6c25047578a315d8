"""SQLite cache and run history, in one file under ``FUSION_HOME``.

The cache answers an identical call (prompt, context, panel, analyst, tool budget, web mode, token cap,
temperature) within its TTL with the stored result, marked ``cached``, and no upstream request. Only
successful runs are cached. The history keeps every run's full record — request, result and each model's
transcript — bounded by count and age, with every secret redacted before it is written.

Stored results carry the version of the result's shape (``RESULT_SCHEMA``), in the cache key and in
each row: a result of another version, or one that no longer validates, is a cache miss (the row is
dropped), never an error, so an upgrade cannot break a call.

SQLite calls are short and run in a worker thread so the event loop never waits on the disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import anyio
from pydantic import ValidationError

from .errors import redact, redact_value
from .models import RESULT_SCHEMA, FusionRequest, FusionResult

log = logging.getLogger(__name__)
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
)
"""Applied in order, each in one transaction with the version it reaches."""


DB_NAME = "fusion.sqlite3"


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


def default_home() -> Path:
    """``$XDG_CACHE_HOME/fusion-mcp``, else ``~/.cache/fusion-mcp``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fusion-mcp"


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


class Store:
    """The run history and the result cache of one ``FUSION_HOME``."""

    def __init__(
        self,
        home: Path,
        *,
        secrets: tuple[str, ...] = (),
        cache_ttl_s: float = 3600,
        max_runs: int = 1000,
        max_age_days: float = 30,
        max_bytes: int = 500 * 2**20,
        max_cache_entries: int = 500,
    ) -> None:
        self.path = home / DB_NAME
        _private_home(home)
        self._secrets = secrets
        self._ttl = cache_ttl_s
        self._max_runs = max_runs
        self._max_age_s = max_age_days * 86400
        self._max_bytes = max_bytes
        self._max_cache = max_cache_entries
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        with self._lock:
            self._db  # noqa: B018 - open now, so a bad FUSION_HOME shows at start, not on the first run

    @property
    def _db(self) -> sqlite3.Connection:
        """The connection, opened on first use and again after :meth:`close` (callers hold the lock)."""
        if self._conn is None:
            _private_file(self.path)
            self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            _migrate(self._conn)
            for suffix in ("-wal", "-shm"):  # SQLite gives them the database's mode; older files may differ
                _private_file(self.path.with_name(self.path.name + suffix), create=False)
        return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- cache ---------------------------------------------------------------------------------------

    async def cached(self, key: str) -> FusionResult | None:
        return await anyio.to_thread.run_sync(self._cached, key)

    def _cached(self, key: str) -> FusionResult | None:
        with self._lock:
            row = self._db.execute(
                "SELECT result, schema FROM cache WHERE key = ? AND created >= ?", (key, time.time() - self._ttl)
            ).fetchone()
        if row is None:
            return None
        try:
            if row[1] != RESULT_SCHEMA:
                raise ValueError(f"schema {row[1]}, not {RESULT_SCHEMA}")
            return FusionResult.model_validate_json(row[0])
        except (ValueError, ValidationError) as exc:
            # Written by another release: a miss, and the row goes so it is not read again.
            log.debug("cache entry %s dropped: %s", key[:12], str(exc).splitlines()[0])
            with self._lock:
                self._db.execute("DELETE FROM cache WHERE key = ?", (key,))
            return None

    async def remember(self, key: str, result: FusionResult) -> None:
        if not is_complete(result):
            return  # a failure or a degraded run is never cached: the next call should try again
        await anyio.to_thread.run_sync(self._remember, key, result)

    def _remember(self, key: str, result: FusionResult) -> None:
        text = json.dumps(redact_value(result.model_dump(mode="json"), self._secrets))
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO cache (key, created, result, schema) VALUES (?, ?, ?, ?)",
                (key, now, text, RESULT_SCHEMA),
            )
            self._db.execute("DELETE FROM cache WHERE created < ?", (now - self._ttl,))
            self._db.execute(
                "DELETE FROM cache WHERE key NOT IN (SELECT key FROM cache ORDER BY created DESC LIMIT ?)",
                (self._max_cache,),
            )
            self._trim_to_size()

    # -- history -------------------------------------------------------------------------------------

    async def save_run(
        self,
        request: FusionRequest,
        result: FusionResult,
        transcripts: dict[str, list[dict[str, Any]]],
        principal: str = "local",
        owner: dict[str, Any] | None = None,
    ) -> None:
        """Record a run. A ``running`` result (a run that may outlive its call, at its start) names its
        ``owner`` process and gets a heartbeat; the run's final record replaces it."""
        await anyio.to_thread.run_sync(self._save_run, request, result, transcripts, principal, owner)

    def _save_run(
        self,
        request: FusionRequest,
        result: FusionResult,
        transcripts: dict[str, list[dict[str, Any]]],
        principal: str,
        owner: dict[str, Any] | None,
    ) -> None:
        shared, texts = share_texts(transcripts)
        record = {
            "schema": RESULT_SCHEMA,
            "run_id": result.run_id,
            "principal": principal,
            "created": time.time(),
            "request": request.model_dump(mode="json"),
            "result": result.to_json(),
            "transcripts": shared,
            "texts": texts,
        }
        if owner is not None:
            record["owner"] = owner
        text = json.dumps(redact_value(record, self._secrets))
        now = record["created"]
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO runs (run_id, created, prompt_head, panel, status, cost, seconds, cached, "
                "record, schema, principal, bytes, heartbeat) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    result.run_id,
                    now,
                    redact(request.prompt[:120], self._secrets),
                    ",".join(request.analysis_models),
                    result.status if result.status != "error" else f"error:{result.failure_reason}",
                    result.usage.total.cost,
                    result.timings.total,
                    int(result.cached),
                    text,
                    RESULT_SCHEMA,
                    principal,
                    len(text.encode()),
                    now if result.status == "running" else None,
                ),
            )
            self._db.execute("DELETE FROM runs WHERE created < ?", (now - self._max_age_s,))
            self._db.execute(
                "DELETE FROM runs WHERE run_id NOT IN (SELECT run_id FROM runs ORDER BY created DESC LIMIT ?)",
                (self._max_runs,),
            )
            self._trim_to_size()

    def _trim_to_size(self) -> None:
        """Drop the oldest runs until the history's records fit ``max_bytes`` (callers hold the lock).

        The cache is held to a tenth of it the same way; its entries are copies of recent results.
        """
        for table, column, share in (("runs", "bytes", 1.0), ("cache", "length(result)", 0.1)):
            total = self._db.execute(f"SELECT COALESCE(SUM({column}), 0) FROM {table}").fetchone()[0]
            if total <= self._max_bytes * share:
                continue
            kept = 0
            for created, size in self._db.execute(f"SELECT created, {column} FROM {table} ORDER BY created DESC"):
                kept += size
                if kept > self._max_bytes * share:
                    self._db.execute(f"DELETE FROM {table} WHERE created <= ?", (created,))
                    break
        self._db.execute("PRAGMA incremental_vacuum")

    async def heartbeat(self, run_ids: list[str]) -> None:
        """Say these running runs are still being worked on (see :data:`fusion_mcp.live.LOST_AFTER_S`)."""
        await anyio.to_thread.run_sync(self._heartbeat, run_ids)

    def _heartbeat(self, run_ids: list[str]) -> None:
        marks = ",".join("?" * len(run_ids))
        with self._lock:
            self._db.execute(
                f"UPDATE runs SET heartbeat = ? WHERE status = 'running' AND run_id IN ({marks})",
                (time.time(), *run_ids),
            )

    async def recent(self, limit: int = 20, principal: str | None = None) -> list[dict[str, Any]]:
        """The latest runs, newest first: ``principal``'s only, or everyone's when None (the operator's view)."""
        return await anyio.to_thread.run_sync(self._recent, limit, principal)

    def _recent(self, limit: int, principal: str | None) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT run_id, created, prompt_head, panel, status, cost, seconds, cached FROM runs "
                "WHERE ? IS NULL OR principal = ? ORDER BY created DESC LIMIT ?",
                (principal, principal, limit),
            ).fetchall()
        keys = ("run_id", "created", "prompt_head", "panel", "status", "cost", "seconds", "cached")
        return [dict(zip(keys, row, strict=True)) | {"cached": bool(row[7])} for row in rows]

    async def run(self, run_id: str, principal: str | None = None) -> dict[str, Any] | None:
        """One run's record; another principal's run is None, exactly as a run that does not exist."""
        return await anyio.to_thread.run_sync(self._run, run_id, principal)

    def _run(self, run_id: str, principal: str | None) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT record, heartbeat FROM runs WHERE run_id = ? AND (? IS NULL OR principal = ?)",
                (run_id, principal, principal),
            ).fetchone()
        if row is None:
            return None
        record: dict[str, Any] = expand_texts(json.loads(row[0]))
        if row[1] is not None:
            record["heartbeat"] = row[1]  # a running row: when its process last said it was at it
        return record


SHARED_TEXT_CHARS = 256
"""Message texts at least this long that recur across a run's transcripts (the question, with its context,
in every member's conversation) are stored once."""


def share_texts(transcripts: dict[str, list[dict[str, Any]]]) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """Transcripts with each long, repeated message text replaced by ``{"$text": i}``, and the texts."""
    counts: dict[str, int] = {}
    for messages in transcripts.values():
        for message in messages:
            content = message.get("content")
            if isinstance(content, str) and len(content) >= SHARED_TEXT_CHARS:
                counts[content] = counts.get(content, 0) + 1
    texts = [text for text, n in counts.items() if n > 1]
    index = {text: i for i, text in enumerate(texts)}
    shared = {
        name: [
            m | {"content": {"$text": index[m["content"]]}}
            if isinstance(m.get("content"), str) and m["content"] in index
            else m
            for m in messages
        ]
        for name, messages in transcripts.items()
    }
    return shared, texts


def expand_texts(record: dict[str, Any]) -> dict[str, Any]:
    """A stored record as it was written: shared texts put back into every message that had them."""
    texts = record.pop("texts", None)
    if not texts:
        return record
    for messages in record.get("transcripts", {}).values():
        for message in messages:
            content = message.get("content")
            if isinstance(content, dict) and isinstance(content.get("$text"), int):
                message["content"] = texts[content["$text"]]
    return record


def _migrate(conn: sqlite3.Connection) -> None:
    """Create the tables, or bring an older database up to this release's version, atomically.

    ``BEGIN IMMEDIATE`` takes the write lock first, so two processes opening one new file do not both
    migrate it; the version is read again under the lock.
    """
    latest = 1 + len(MIGRATIONS)
    # Only a new, empty file takes this: pages freed by trimming then go back to the file system.
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = max(1, conn.execute("PRAGMA user_version").fetchone()[0])
        for statement in TABLES:
            conn.execute(statement)
        for steps in MIGRATIONS[version - 1 :]:
            for statement in steps:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {latest}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
