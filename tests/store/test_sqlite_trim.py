"""The SQLite history's trim runs on every record, so it must not read the records: the columns it weighs
(principal, bytes) were added after ``record`` and sit behind its overflow pages. A covering index holds
them; the query plans say they are read from it, on a new file and on one an older release made."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from fusion_mcp.config import load_settings
from fusion_mcp.store import open_store
from fusion_mcp.store.sqlite import _RUNS_HELD, _TRIM_RUNS, DB_NAME, MIGRATIONS, TABLES

pytestmark = pytest.mark.anyio
PARAMS = {"oldest": 0.0, "max_runs": 1000, "max_bytes": 1e9}


def plan(path: Path, query: str, params: dict[str, float] | None = None) -> str:
    with sqlite3.connect(path) as db:
        return " | ".join(row[-1] for row in db.execute(f"EXPLAIN QUERY PLAN {query}", params or {}))


async def opened(home: Path) -> None:
    store = open_store(load_settings(environ={"FUSION_HOME": str(home)}))
    await store.open()
    await store.aclose()


@pytest.mark.parametrize("start", ["new", "version-5"])
async def test_the_trim_reads_the_covering_index_not_the_records(tmp_path: Path, start: str) -> None:
    path = tmp_path / DB_NAME
    if start == "version-5":  # a file the release before this index made, at the same schema version
        with sqlite3.connect(path) as db:
            for statement in TABLES + tuple(s for step in MIGRATIONS for s in step):
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {1 + len(MIGRATIONS)}")
        assert "runs_weight" not in plan(path, _RUNS_HELD)
    await opened(tmp_path)
    assert "SCAN runs USING COVERING INDEX runs_weight" in plan(path, _RUNS_HELD)
    trim = plan(path, _TRIM_RUNS, PARAMS)
    assert "SCAN runs USING COVERING INDEX runs_weight" in trim
    assert "SCAN runs " not in trim.replace("SCAN runs USING COVERING INDEX runs_weight", "")
