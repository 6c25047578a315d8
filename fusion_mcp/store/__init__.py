"""The store: result cache, run history, usage per principal and the daily cap's reservations.

Two implementations of one interface, :class:`Store`:

- :class:`~fusion_mcp.store.sqlite.SqliteStore`, the embedded default: one file under ``FUSION_HOME``,
  no set-up, shared only by processes on one machine;
- :class:`~fusion_mcp.store.postgres.PostgresStore`, when ``FUSION_DATABASE_URL`` is set: PostgreSQL,
  shared by replicas on any number of machines (the ``[postgres]`` extra).

The cache answers an identical call (prompt, context, panel, analyst, tool budget, web mode, token cap,
temperature) within its TTL with the stored result, marked ``cached``, and no upstream request. Only
successful runs are cached. The history keeps every run's full record — request, result and each model's
transcript, each long text (a file's material) once — with every secret redacted before it is written; an
answer from the cache is recorded as a pointer to the run it came from. It is bounded by age, and by count
and size shared evenly by the principals that have runs in it, so no client's traffic pushes out another's
runs. Stored results carry the version of the result's shape (``RESULT_SCHEMA``): a result of another
version, or one that no longer validates, is a cache miss, never an error, so an upgrade cannot break a call.

A new backend implements :class:`~fusion_mcp.store.base.Store` in a module of its own here and is chosen
in :func:`open_store`.

May import: :mod:`fusion_mcp.config`, :mod:`fusion_mcp.core` (and its database driver). Never the engine,
the providers, the web tools or a front end.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..config import POSTGRES_EXTRA, ConfigError, Settings
from .base import (
    Retention,
    Spend,
    Store,
    StoreError,
    StoreStatus,
    UsageBy,
    UsageRow,
    UsageTotal,
    cache_key,
    expand_texts,
    is_complete,
    qualified,
    share_texts,
)

__all__ = [
    "Retention",
    "Spend",
    "Store",
    "StoreError",
    "StoreStatus",
    "UsageBy",
    "UsageRow",
    "UsageTotal",
    "cache_key",
    "default_home",
    "expand_texts",
    "is_complete",
    "open_store",
    "qualified",
    "share_texts",
]


def default_home() -> Path:
    """``$XDG_CACHE_HOME/fusion-mcp``, else ``~/.cache/fusion-mcp``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fusion-mcp"


def open_store(settings: Settings) -> Store:
    """The store the settings name, not yet opened (no I/O here): PostgreSQL at ``FUSION_DATABASE_URL`` when
    it is set, else the SQLite file in ``FUSION_HOME``. Call :meth:`Store.open` next.

    Raises :class:`~fusion_mcp.config.settings.ConfigError` when the URL is set but psycopg is not installed.
    """
    retention = Retention.of(settings)
    if settings.database_url is None:
        from .sqlite import SqliteStore

        return SqliteStore(settings.home or default_home(), secrets=settings.secrets, retention=retention)
    try:
        from .postgres import PostgresStore
    except ImportError:
        raise ConfigError(POSTGRES_EXTRA) from None
    return PostgresStore(
        settings.database_url.get_secret_value(),
        pool_size=settings.database_pool,
        secrets=settings.secrets,
        retention=retention,
    )
