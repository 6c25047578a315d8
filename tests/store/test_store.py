"""The store suite, run on both backends: SQLite (a fresh ``FUSION_HOME``) and PostgreSQL (a fresh database).

Cache, history, usage, reservations, retention, atomic run records, schema versions and errors, each
checked through the store's interface and, where it matters, in the tables themselves.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import psycopg
import pytest
from anyio import wait_all_tasks_blocked

from fusion_mcp.core.models import Analysis, FusionRequest, FusionResult, ModelUsage, PanelResponse, TokenUsage, Usage
from fusion_mcp.store import Retention, Store, StoreError, UsageRow, open_store
from fusion_mcp.store.postgres import PostgresStore
from fusion_mcp.store.sqlite import LATEST, MIGRATIONS, TABLES, SqliteStore

pytestmark = pytest.mark.anyio
SECRET = "sk-or-v1-STORE-SECRET-0123456789abcdef"
DAY = 86400.0


def make(env: dict[str, str], **retention: Any) -> Store:
    """A store of ``env``'s backend with these retention limits (not opened)."""
    limits = Retention(**retention)
    if "FUSION_HOME" in env:
        return SqliteStore(Path(env["FUSION_HOME"]), secrets=(SECRET,), retention=limits)
    return PostgresStore(env["FUSION_DATABASE_URL"], secrets=(SECRET,), retention=limits)


@asynccontextmanager
async def opened(env: dict[str, str], **retention: Any) -> AsyncIterator[Store]:
    store = make(env, **retention)
    await store.open()
    try:
        yield store
    finally:
        await store.aclose()


class Raw:
    """Plain SQL on a test's database, beside the store (as an operator, or another release, would).

    Queries name tables ``{runs}``, ``{cache}``, ``{usage}``, ``{reservations}`` and take ``?`` parameters.
    """

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.postgres = "FUSION_DATABASE_URL" in env

    def _sql(self, query: str) -> str:
        prefix = "fusion_" if self.postgres else ""
        names = {t: prefix + t for t in ("runs", "cache", "usage", "reservations")}
        query = query.format(**names)
        return query.replace("?", "%s") if self.postgres else query

    def rows(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        if self.postgres:
            with psycopg.connect(self.env["FUSION_DATABASE_URL"], autocommit=True) as conn:
                cur = conn.execute(self._sql(query), params)  # type: ignore[arg-type]
                return cur.fetchall() if cur.description else []
        with sqlite3.connect(Path(self.env["FUSION_HOME"]) / "fusion.sqlite3", isolation_level=None) as conn:
            return conn.execute(self._sql(query), params).fetchall()

    def execute(self, query: str, *params: Any) -> None:
        self.rows(query, *params)

    def script(self, sqlite: str, postgres: str) -> None:
        """Dialect-specific DDL (a trigger): one script per backend."""
        if self.postgres:
            with psycopg.connect(self.env["FUSION_DATABASE_URL"], autocommit=True) as conn:
                conn.execute(postgres)  # type: ignore[arg-type]
        else:
            with sqlite3.connect(Path(self.env["FUSION_HOME"]) / "fusion.sqlite3") as conn:
                conn.executescript(sqlite)


def request(prompt: str = "what is 6*7?", panel: tuple[str, ...] = ("a/x", "b/y")) -> FusionRequest:
    return FusionRequest(prompt=prompt, analysis_models=panel, model="j/z", max_tool_calls=2, max_completion_tokens=99)


def usage(*rows: tuple[str, str, int, float | None]) -> Usage:
    """(model, role, requests, cost) rows, 100 prompt and 10 completion tokens a request."""
    models = [
        ModelUsage(model=m, role=role, requests=n, prompt_tokens=100 * n, completion_tokens=10 * n, cost=cost)  # type: ignore[arg-type]
        for m, role, n, cost in rows
    ]
    costs = [c for *_, c in rows if c is not None]
    return Usage(models=models, total=TokenUsage(cost=round(sum(costs), 10) if costs else None))


SPENT = usage(("a/x", "panel", 1, 0.01), ("b/y", "panel", 1, 0.02), ("j/z", "analyst", 2, 0.03))
ANALYSIS = Analysis(consensus=["42"], contradictions=[], partial_coverage=[], unique_insights=[], blind_spots=[])


def result(run_id: str, spent: Usage = SPENT, **fields: Any) -> FusionResult:
    answers = [PanelResponse(model="a/x", content="42"), PanelResponse(model="b/y", content="forty-two")]
    return FusionResult(
        **{"status": "ok", "run_id": run_id, "analysis": ANALYSIS, "responses": answers} | fields, usage=spent
    )


async def test_the_history_is_searched_in_questions_contexts_and_answers_for_its_principal_only(
    store_env: dict[str, str],
) -> None:
    long = "a long preamble that fills the listing's head of one hundred and twenty characters " * 2
    asked = [
        (request(long + "about the Borrow Checker"), result("fus_1")),
        (request("q").model_copy(update={"context": "notes on the BORROW checker"}), result("fus_2")),
        (request("q"), result("fus_3", responses=[PanelResponse(model="a/x", content="the borrow checker")])),
        (request("q"), result("fus_4")),
        (request(f"the borrow checker and {SECRET}"), result("fus_5")),
    ]
    async with opened(store_env) as store:
        for asked_request, answered in asked:
            await store.save_run(asked_request, answered, {}, "alice")
            await anyio.sleep(0.01)  # created apart: the listing's order is theirs
        await store.save_run(request("the borrow checker"), result("fus_6"), {}, "bob")
        # An answer from the cache is a pointer: it is found by its listing's head (its question's start).
        await store.save_run(request("the borrow checker, again"), result("fus_7"), {}, "alice", cached_from="fus_1")
        found = [r["run_id"] for r in await store.recent(10, "alice", text="borrow checker")]
        assert found == ["fus_7", "fus_5", "fus_3", "fus_2", "fus_1"]
        assert [r["run_id"] for r in await store.recent(2, "alice", text="Borrow CHECKER")] == ["fus_7", "fus_5"]
        assert [r["run_id"] for r in await store.recent(10, "bob", text="borrow")] == ["fus_6"]
        assert await store.recent(10, "alice", text=SECRET) == []  # redacted before it was written
        assert await store.recent(10, "alice", text="nowhere at all") == []
        assert len(await store.recent(10, None, text="borrow")) == 6  # the operator's view


# --- cache -------------------------------------------------------------------------------------------------


async def test_the_cache_serves_complete_results_within_its_ttl_and_drops_rows_it_cannot_read(
    store_env: dict[str, str],
) -> None:
    raw = Raw(store_env)
    async with opened(store_env) as store:
        await store.remember("k1", result("fus_1"))
        await store.remember("k2", result("fus_2", failed_models=[{"model": "c/z", "error": "boom"}]))
        hit = await store.cached("k1")
        assert hit == result("fus_1")
        assert await store.cached("k2") is None  # a run with a failed member is never served again
        raw.execute("UPDATE {cache} SET created = created - 7200 WHERE key = 'k1'")
        assert await store.cached("k1") is None  # past the TTL (3600 s)
        raw.execute("UPDATE {cache} SET created = created + 7200, schema = 1 WHERE key = 'k1'")
        assert await store.cached("k1") is None  # another release's shape: a miss, and the row goes
        assert raw.rows("SELECT key FROM {cache}") == []
        await store.remember("k3", result("fus_3"))
        raw.execute("UPDATE {cache} SET result = '{{\"status\": \"ok\"}}' WHERE key = 'k3'")
        assert await store.cached("k3") is None  # this release's version, but it no longer validates
        assert raw.rows("SELECT key FROM {cache}") == []


async def test_the_cache_is_held_to_its_entries_and_a_tenth_of_the_history_size(store_env: dict[str, str]) -> None:
    raw = Raw(store_env)
    async with opened(store_env, max_cache_entries=2) as store:
        for i in range(3):
            await store.remember(f"k{i}", result(f"fus_{i}"))
        assert sorted(k for (k,) in raw.rows("SELECT key FROM {cache}")) == ["k1", "k2"]
        ((size,),) = raw.rows("SELECT bytes FROM {cache} WHERE key = 'k2'")
    async with opened(store_env, max_bytes=int(size * 10 * 1.5)) as store:  # room for one entry
        await store.remember("k3", result("fus_3"))
        assert raw.rows("SELECT key FROM {cache}") == [("k3",)]


# --- history ------------------------------------------------------------------------------------------------


async def test_a_run_reads_back_whole_for_its_principal_only_with_every_secret_redacted(
    store_env: dict[str, str],
) -> None:
    raw = Raw(store_env)
    long_question = "the question with its context, long enough to be shared " * 8
    transcripts = {
        "a/x": [{"role": "user", "content": long_question}, {"role": "assistant", "content": f"key {SECRET}"}],
        "b/y": [{"role": "user", "content": long_question}, {"role": "assistant", "content": "forty-two"}],
    }
    leaked = result("fus_1", responses=[PanelResponse(model="a/x", content=f"echo {SECRET}")])
    async with opened(store_env) as store:
        await store.save_run(request(f"q {SECRET}"), leaked, transcripts, "alice")
        record = await store.run("fus_1", "alice")
        assert await store.run("fus_1", "bob") is None  # another principal's run is unknown, not forbidden
        assert (await store.run("fus_1"))["run_id"] == "fus_1"  # the operator's view
        assert [r["run_id"] for r in await store.recent(10, "alice")] == ["fus_1"]
        assert await store.recent(10, "bob") == []
        (row,) = await store.recent()
    assert record is not None and record["principal"] == "alice" and "heartbeat" not in record
    assert record["transcripts"]["b/y"][0]["content"] == long_question  # stored once, read back in place
    assert record["transcripts"]["a/x"][1]["content"] == "key [redacted]"
    assert record["request"]["prompt"] == "q [redacted]"
    assert record["result"]["responses"][0]["content"] == "echo [redacted]"
    assert row["prompt_head"] == "q [redacted]" and row["panel"] == "a/x,b/y" and row["cost"] == 0.06
    assert row["status"] == "ok" and row["cached"] is False
    ((text,),) = raw.rows("SELECT record FROM {runs}")
    assert SECRET not in text and text.count(long_question) == 1
    everything = json.dumps(raw.rows("SELECT * FROM {runs}") + raw.rows("SELECT * FROM {usage}"), default=str)
    assert SECRET not in everything


async def test_a_running_row_has_an_owner_and_a_heartbeat_and_no_usage_until_its_end(
    store_env: dict[str, str],
) -> None:
    raw = Raw(store_env)
    owner = {"host": "h", "pid": 1, "process": "p"}
    running = FusionResult(status="running", run_id="fus_1", pending=["a/x"])
    async with opened(store_env) as store:
        await store.save_run(request(), running, {}, "alice", owner)
        raw.execute("UPDATE {runs} SET heartbeat = 1 WHERE run_id = 'fus_1'")
        await store.heartbeat(["fus_1", "fus_unknown"])
        record = await store.run("fus_1", "alice")
        assert raw.rows("SELECT run_id FROM {usage}") == []
        await store.save_run(request(), result("fus_1"), {}, "alice")
        done = await store.run("fus_1", "alice")
        await store.heartbeat(["fus_1"])  # a finished run takes no heartbeat
    assert record is not None and record["owner"] == owner and record["result"]["status"] == "running"
    assert record["heartbeat"] > time.time() - 60
    assert done is not None and done["result"]["status"] == "ok" and "heartbeat" not in done and "owner" not in done
    assert raw.rows("SELECT heartbeat FROM {runs}") == [(None,)]
    assert sorted(raw.rows("SELECT model, role, requests FROM {usage}")) == [
        ("a/x", "panel", 1),
        ("b/y", "panel", 1),
        ("j/z", "analyst", 2),
    ]


async def test_the_history_is_held_to_its_count_age_and_size_and_usage_outlives_it(store_env: dict[str, str]) -> None:
    raw = Raw(store_env)
    async with opened(store_env, max_runs=3) as store:
        for i in range(5):
            await store.save_run(request(f"q{i}"), result(f"fus_{i}"), {}, "alice")
        assert [r["run_id"] for r in await store.recent()] == ["fus_4", "fus_3", "fus_2"]
        raw.execute("UPDATE {runs} SET created = created - 40 * 86400 WHERE run_id = 'fus_2'")
        raw.execute("UPDATE {usage} SET created = created - 401 * 86400 WHERE run_id = 'fus_0'")
        await store.save_run(request("q5"), result("fus_5"), {}, "alice")
        assert [r["run_id"] for r in await store.recent()] == ["fus_5", "fus_4", "fus_3"]
        (total,) = await store.usage(0, "all")
        ((size,),) = raw.rows("SELECT bytes FROM {runs} WHERE run_id = 'fus_5'")
    # Trimming the history by count and age kept every run's usage; only usage's own age (400 days) ends it.
    assert total.runs == 5 and total.cost == pytest.approx(5 * 0.06)
    async with opened(store_env, max_bytes=int(size * 2.5)) as store:
        await store.save_run(request("q6"), result("fus_6"), {}, "alice")
        assert [r["run_id"] for r in await store.recent()] == ["fus_6", "fus_5"]


def kept(raw: Raw) -> dict[str, list[str]]:
    """The history's run ids per principal, newest first."""
    found: dict[str, list[str]] = {}
    for principal, run_id in raw.rows("SELECT principal, run_id FROM {runs} ORDER BY created DESC, run_id DESC"):
        found.setdefault(principal, []).append(run_id)
    return found


async def test_each_principal_keeps_its_share_of_the_history_and_key_holders_share_one(
    store_env: dict[str, str],
) -> None:
    """Six runs shared by the principals with runs: Bob's ten trim only his own, down to his share; then lent
    keys (two of them, one share) shrink the key holders' share and each other principal's to two."""
    raw = Raw(store_env)
    async with opened(store_env, max_runs=6) as store:
        for i in range(2):
            await store.save_run(request(), result(f"fus_a{i}"), {}, "alice")
        for i in range(10):
            await store.save_run(request(), result(f"fus_b{i}"), {}, "bob")
        assert kept(raw) == {"bob": ["fus_b9", "fus_b8", "fus_b7"], "alice": ["fus_a1", "fus_a0"]}
        for i in range(6):
            await store.save_run(request(), result(f"fus_k{i}"), {}, f"key:{i % 2:016d}")
    assert kept(raw) == {
        f"key:{1:016d}": ["fus_k5"],
        f"key:{0:016d}": ["fus_k4"],
        "bob": ["fus_b9", "fus_b8"],
        "alice": ["fus_a1", "fus_a0"],
    }


async def test_running_rows_and_each_principals_newest_run_survive_trimming(store_env: dict[str, str]) -> None:
    """Running rows count towards a share but are never trimmed (writing one trims nothing: the next finished
    record does); a record larger than a whole share of the size stays until its principal writes a newer
    one, and never costs another principal its newest."""
    raw = Raw(store_env)
    running = FusionResult(status="running", run_id="", pending=["a/x"])
    async with opened(store_env, max_runs=2) as store:
        for i in range(2):
            await store.save_run(request(), result(f"fus_f{i}"), {}, "alice")
        for i in range(3):
            await store.save_run(request(), running.model_copy(update={"run_id": f"fus_r{i}"}), {}, "alice", {})
        assert kept(raw) == {"alice": ["fus_r2", "fus_r1", "fus_r0", "fus_f1", "fus_f0"]}
        await store.save_run(request(), result("fus_f2"), {}, "alice")
        assert kept(raw) == {"alice": ["fus_f2", "fus_r2", "fus_r1", "fus_r0"]}
    big = {"a/x": [{"role": "tool", "content": "a long page " * 2000}]}
    async with opened(store_env, max_bytes=1000) as store:
        await store.save_run(request(), result("fus_big1"), big, "bob")
        assert kept(raw)["bob"] == ["fus_big1"]
        await store.save_run(request(), result("fus_big2"), big, "bob")
        await store.save_run(request(), result("fus_a"), {}, "carol")
    assert kept(raw) == {"carol": ["fus_a"], "bob": ["fus_big2"], "alice": ["fus_f2", "fus_r2", "fus_r1", "fus_r0"]}
    ((size,),) = raw.rows("SELECT bytes FROM {runs} WHERE run_id = 'fus_big2'")
    assert size > 20_000


async def test_an_answer_from_the_cache_is_a_pointer_that_reads_as_its_original(store_env: dict[str, str]) -> None:
    """Its row is small and lists and counts as before; it reads as the original's request and result with
    its own id; once the original has left the history, it reads as run_not_found saying so."""
    raw = Raw(store_env)
    transcripts = {"a/x": [{"role": "user", "content": "what is 6*7?"}, {"role": "assistant", "content": "42"}]}
    original = result("fus_1", responses=[PanelResponse(model="a/x", content="42 " * 500)])
    served = original.model_copy(update={"run_id": "fus_2", "cached": True})
    async with opened(store_env, max_runs=2) as store:
        await store.save_run(request("what is 6*7?"), original, transcripts, "alice")
        await store.save_run(request("what is 6*7?"), served, {}, "alice", cached_from="fus_1")
        record = await store.run("fus_2", "alice")
        assert await store.run("fus_2") == record  # the operator's view
        assert await store.run("fus_2", "bob") is None
        listed = await store.recent(1)
        (alices,) = await store.usage(0, "principal")
        await store.save_run(request("another"), result("fus_3"), {}, "alice")  # fus_1 leaves the history
        gone = await store.run("fus_2", "alice")
    ((size,),) = raw.rows("SELECT bytes FROM {runs} WHERE run_id = 'fus_2'")
    assert size < 200
    assert record is not None and {k: v for k, v in record.items() if k != "created"} == {
        "schema": 3,
        "run_id": "fus_2",
        "principal": "alice",
        "request": request("what is 6*7?").model_dump(mode="json"),
        "result": served.to_json(),
        "transcripts": {"cached_from": [{"run_id": "fus_1"}]},
    }
    assert [(r["run_id"], r["status"], r["cached"], r["cost"]) for r in listed] == [("fus_2", "ok", True, 0.06)]
    assert (alices.runs, alices.requests, alices.cost) == (2, 4, pytest.approx(0.06))  # the cached run is free
    why = (
        "run 'fus_2' was answered from the cache of run 'fus_1', which has since left the run history "
        "(FUSION_HISTORY_MAX_RUNS, FUSION_HISTORY_MAX_MB, FUSION_HISTORY_MAX_DAYS); make the call again for a "
        "new answer"
    )
    assert gone is not None and gone["result"] == FusionResult.failure("fus_2", "run_not_found", why).to_json()
    assert "request" not in gone and gone["transcripts"] == {"cached_from": [{"run_id": "fus_1"}]}


async def test_file_material_is_stored_once_per_record_and_reads_back_exactly(store_env: dict[str, str]) -> None:
    """The material block, a text part of every member's user message and inside the analyst's, is stored
    once; the transcripts read back as written. A record of the previous release (shared whole messages only)
    still reads."""
    raw = Raw(store_env)
    material = "<material>\n" + "".join(f"line {i} of the attached file\n" for i in range(2000)) + "</material>"
    question = "the question, long enough to be shared too " * 8
    member = [
        {"role": "system", "content": "you are a member"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": material, "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": question},
            ],
        },
    ]
    transcripts = {
        "a/x": [*member, {"role": "assistant", "content": "42"}],
        "b/y": [*member, {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]}],
        "analyst:j/z": [
            {"role": "system", "content": "you are the analyst"},
            {"role": "user", "content": f"<question>\n{question}\n</question>\n\n{material}\n\n{material}\nCompare"},
            {"role": "assistant", "content": "{}"},
        ],
    }
    old = {"run_id": "fus_old", "result": result("fus_old").to_json()}
    old |= {"transcripts": {"a/x": [{"role": "user", "content": {"$text": 0}}]}, "texts": [question]}
    async with opened(store_env) as store:
        await store.save_run(request(), result("fus_1"), transcripts, "alice")
        record = await store.run("fus_1", "alice")
        raw.execute(
            "INSERT INTO {runs} (run_id, principal, created, prompt_head, panel, status, cost, seconds, cached, "
            "schema, bytes, record) VALUES ('fus_old', 'alice', ?, 'q', 'a/x', 'ok', NULL, 1.0, ?, 3, 0, ?)",
            time.time() - 60,
            False,
            json.dumps(old),
        )
        older = await store.run("fus_old", "alice")
    ((text, size),) = raw.rows("SELECT record, bytes FROM {runs} WHERE run_id = 'fus_1'")
    assert text.count("line 1999 of the attached file") == 1 and text.count(question) == 1
    assert size < len(json.dumps(material)) + len(question) + 3000
    assert record is not None and record["transcripts"] == transcripts
    assert older is not None and older["transcripts"] == {"a/x": [{"role": "user", "content": question}]}


async def test_a_secret_across_the_edge_of_a_shared_text_is_redacted(store_env: dict[str, str]) -> None:
    """A message holding a shared text is stored in pieces: a secret that began before the shared text and
    ended inside it would be in neither piece, and whole again on reading, had it not been redacted first."""
    head, tail = SECRET[:20], SECRET[20:]
    part = tail + " and the rest of the attached file" * 10
    transcripts = {
        "a/x": [{"role": "user", "content": [{"type": "text", "text": part}, {"type": "text", "text": "q"}]}],
        "analyst:j/z": [{"role": "user", "content": f"the key is {head}{part} as I said"}],
    }
    async with opened(store_env) as store:
        await store.save_run(request(), result("fus_1"), transcripts, "alice")
        record = await store.run("fus_1", "alice")
    assert record is not None and SECRET not in json.dumps(record)
    assert record["transcripts"]["analyst:j/z"][0]["content"].startswith("the key is [redacted] and the rest")


# --- usage --------------------------------------------------------------------------------------------------


async def test_usage_rows_per_model_and_role_totalled_by_principal_model_and_day(store_env: dict[str, str]) -> None:
    raw = Raw(store_env)
    lenses = usage(("a/x#skeptic", "panel", 1, 0.01), ("a/x#optimist", "panel", 2, None), ("j/z", "analyst", 1, 0.02))
    writer = UsageRow("chatcmpl-1", "alice", time.time(), "w/r", "writer", 2, 50, 5, 0.004)
    async with opened(store_env) as store:
        await store.save_run(request(), result("fus_1", lenses), {}, "alice")
        await store.save_run(request(), result("fus_2", cached=True), {}, "alice")  # from the cache: free
        await store.save_run(request(), result("fus_3"), {}, "bob")
        await store.settle("chatcmpl-1", "alice", [writer])
        by_principal = await store.usage(0, "principal")
        by_model = await store.usage(0, "model")
        by_day = await store.usage(0, "day")
        alices = await store.usage(0, "model", "alice")
        later = await store.usage(time.time() + 60, "principal")
    # A model under two lenses is one row; a cost the provider did not report is none, not zero.
    assert sorted(
        raw.rows("SELECT model, role, requests, prompt_tokens, cost FROM {usage} WHERE run_id = 'fus_1'")
    ) == [
        ("a/x", "panel", 3, 300, 0.01),
        ("j/z", "analyst", 1, 100, 0.02),
    ]
    assert sorted(raw.rows("SELECT model, requests, cost FROM {usage} WHERE run_id = 'fus_2'")) == [
        ("a/x", 0, 0.0),
        ("b/y", 0, 0.0),
        ("j/z", 0, 0.0),
    ]
    assert [(t.key, t.runs, t.requests, t.cost) for t in by_principal] == [
        ("bob", 1, 4, pytest.approx(0.06)),
        ("alice", 2, 6, pytest.approx(0.034)),  # the writer's requests count, but it is not a run
    ]
    assert [(t.key, t.runs, t.cost) for t in by_model] == [
        ("j/z", 3, pytest.approx(0.05)),
        ("a/x", 3, pytest.approx(0.02)),  # a tie on cost: by name
        ("b/y", 2, pytest.approx(0.02)),
        ("w/r", 0, pytest.approx(0.004)),
    ]
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert [(t.key, t.runs, t.prompt_tokens, t.completion_tokens) for t in by_day] == [(today, 3, 850, 85)]
    assert [t.key for t in alices] == ["j/z", "a/x", "w/r", "b/y"] and later == []


async def test_settling_a_run_without_a_record_writes_its_usage_and_releases_its_reservation(
    store_env: dict[str, str],
) -> None:
    raw = Raw(store_env)
    async with opened(store_env) as store:
        await store.reserve("alice", "fus_1", 0.5, cap=1.0, since=0, expires=time.time() + 600)
        assert raw.rows("SELECT run_id, cost FROM {reservations}") == [("fus_1", 0.5)]
        await store.settle("fus_1", "alice", usage(("a/x", "panel", 1, 0.01)))
        spend = await store.spending("alice", 0)
        assert await store.run("fus_1") is None
    assert raw.rows("SELECT run_id FROM {reservations}") == []
    assert (spend.spent, spend.reserved) == (pytest.approx(0.01), 0)


# --- one transaction per run ----------------------------------------------------------------------------------

FAULT_SQLITE = """
CREATE TRIGGER fault BEFORE INSERT ON usage WHEN NEW.run_id LIKE 'fus_bad%'
BEGIN SELECT RAISE(ABORT, 'injected fault'); END;
"""
FAULT_POSTGRES = """
CREATE FUNCTION fault() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN IF NEW.run_id LIKE 'fus_bad%' THEN RAISE EXCEPTION 'injected fault'; END IF; RETURN NEW; END $$;
CREATE TRIGGER fault BEFORE INSERT ON fusion_usage FOR EACH ROW EXECUTE FUNCTION fault();
"""


async def test_a_run_is_recorded_completely_or_not_at_all(store_env: dict[str, str]) -> None:
    """The database refuses a run's usage rows: neither its record nor anything else of it is written."""
    raw = Raw(store_env)
    async with opened(store_env) as store:
        raw.script(FAULT_SQLITE, FAULT_POSTGRES)
        running = FusionResult(status="running", run_id="fus_bad", pending=["a/x"])
        await store.save_run(request(), running, {}, "alice", {"host": "h", "pid": 1})
        await store.reserve("alice", "fus_bad", 0.5, cap=1.0, since=0, expires=time.time() + 600)
        with pytest.raises(StoreError, match="injected fault"):
            await store.save_run(request(), result("fus_bad"), {}, "alice")
        with pytest.raises(StoreError, match="injected fault"):
            await store.save_run(request(), result("fus_bad_new"), {}, "alice")
        kept = await store.run("fus_bad", "alice")
        assert await store.run("fus_bad_new") is None
        await store.save_run(request(), result("fus_good"), {}, "alice")  # the store goes on
    # The running row is as it was, whole and readable; the run's end left nothing, not even a release.
    assert kept is not None and FusionResult.model_validate(kept["result"]).status == "running"
    assert FusionRequest.model_validate(kept["request"]) == request()
    assert raw.rows("SELECT run_id, status FROM {runs} ORDER BY run_id") == [
        ("fus_bad", "running"),
        ("fus_good", "ok"),
    ]
    assert {r for (r,) in raw.rows("SELECT run_id FROM {usage}")} == {"fus_good"}
    assert raw.rows("SELECT run_id FROM {reservations}") == [("fus_bad",)]


async def test_records_written_together_fail_one_by_one(store_env: dict[str, str]) -> None:
    """Runs that end together are written as one batch; the database refusing one of them fails that one
    alone, with its error, and the others are recorded whole."""
    raw = Raw(store_env)
    outcomes: dict[str, str] = {}

    async def save(run_id: str) -> None:
        try:
            await store.save_run(request(), result(run_id), {}, "alice")
            outcomes[run_id] = "recorded"
        except StoreError as exc:
            outcomes[run_id] = str(exc)

    async with opened(store_env) as store:
        raw.script(FAULT_SQLITE, FAULT_POSTGRES)
        async with anyio.create_task_group() as tg:
            for run_id in ("fus_ok1", "fus_bad", "fus_ok2", "fus_ok3"):
                tg.start_soon(save, run_id)
        await store.save_run(request(), result("fus_ok4"), {}, "alice")  # the writer was handed on and let go
    assert {k: v for k, v in outcomes.items() if v == "recorded"}.keys() == {"fus_ok1", "fus_ok2", "fus_ok3"}
    assert "injected fault" in outcomes["fus_bad"]
    assert raw.rows("SELECT run_id FROM {runs} ORDER BY run_id") == [(f"fus_ok{i}",) for i in range(1, 5)]
    assert sorted({r for (r,) in raw.rows("SELECT run_id FROM {usage}")}) == [f"fus_ok{i}" for i in range(1, 5)]


async def test_a_record_nobody_waits_on_waits_for_company_until_one_someone_waits_on_comes(
    store_env: dict[str, str],
) -> None:
    """Records nobody waits on (a run's record after its answer, a running row long before its end) wait to
    share a transaction; one that someone waits on (an answer, a run's start) ends the wait for all of them.
    (Company is given a minute here: without the urgent record, this test would hang until ``fail_after``.)"""
    raw = Raw(store_env)
    limits = Retention()
    if "FUSION_HOME" in store_env:
        store: Store = SqliteStore(Path(store_env["FUSION_HOME"]), retention=limits, company_s=60)
    else:
        store = PostgresStore(store_env["FUSION_DATABASE_URL"], retention=limits, company_s=60)
    await store.open()
    try:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for run_id in ("fus_after1", "fus_after2"):
                    tg.start_soon(store.save_run, request(), result(run_id), {}, "alice")
                await wait_all_tasks_blocked()
                assert raw.rows("SELECT run_id FROM {runs}") == []  # waiting for company
                await store.save_run(request(), result("fus_waited", status="running"), {}, "alice", urgent=True)
                assert raw.rows("SELECT run_id FROM {runs} ORDER BY run_id") == [
                    ("fus_after1",),
                    ("fus_after2",),
                    ("fus_waited",),
                ]
    finally:
        await store.aclose()


# --- the daily cap's reservations ------------------------------------------------------------------------------


async def test_reservations_from_two_stores_at_once_never_pass_the_cap(store_env: dict[str, str]) -> None:
    """Two processes (two stores, two connections) reserve for one principal at once: the cap holds."""
    admitted: list[str] = []
    expires = time.time() + 600
    async with opened(store_env) as a, opened(store_env) as b:

        async def ask(store: Store, run_id: str) -> None:
            spend = await store.reserve("alice", run_id, 0.3, cap=1.0, since=0, expires=expires)
            if spend.admitted:
                admitted.append(run_id)

        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(ask, (a, b)[i % 2], f"fus_{i}")
        other = await b.reserve("bob", "fus_bob", 0.3, cap=1.0, since=0, expires=expires)
        await a.save_run(request(), result(admitted[0], usage(("a/x", "panel", 1, 0.1))), {}, "alice")
        after = await b.spending("alice", 0)
    assert len(admitted) == 3  # 0.9 of 1.0: a fourth 0.3 would pass it
    assert other.admitted  # another principal has a cap of its own
    # The record replaced its reservation with what it cost.
    assert (after.spent, after.reserved) == (pytest.approx(0.1), pytest.approx(0.6))


async def test_a_reservation_past_its_expiry_counts_no_more_and_a_spent_cap_refuses_any_run(
    store_env: dict[str, str],
) -> None:
    raw = Raw(store_env)
    async with opened(store_env) as store:
        dead = await store.reserve("alice", "fus_dead", 0.9, cap=1.0, since=0, expires=time.time() - 1)
        fresh = await store.reserve("alice", "fus_1", 0.9, cap=1.0, since=0, expires=time.time() + 600)
        await store.save_run(request(), result("fus_1", usage(("a/x", "panel", 1, 1.0))), {}, "alice")
        spent = await store.reserve("alice", "fus_2", 0.0, cap=1.0, since=0, expires=time.time() + 600)
        tomorrow = await store.reserve("alice", "fus_3", 0.0, cap=1.0, since=time.time() + 1, expires=time.time() + 60)
    assert dead.admitted and fresh.admitted and (fresh.spent, fresh.reserved) == (0, 0)  # the dead one expired
    assert not spent.admitted and spent.spent == pytest.approx(1.0)  # no estimate, but nothing is left
    assert tomorrow.admitted  # spend before `since` (yesterday) does not count
    assert raw.rows("SELECT run_id FROM {reservations}") == [("fus_3",)]


# --- schema versions ---------------------------------------------------------------------------------------------


async def test_stores_opening_together_create_the_schema_once_and_a_newer_one_is_refused(
    store_env: dict[str, str],
) -> None:
    raw = Raw(store_env)
    stores = [make(store_env) for _ in range(3)]
    try:
        async with anyio.create_task_group() as tg:
            for store in stores:
                tg.start_soon(store.open)
        status = await stores[0].status()
    finally:
        for store in stores:
            await store.aclose()
    assert status.schema == status.latest
    if raw.postgres:
        assert raw.rows("SELECT version FROM fusion_schema") == [(1,)]
        raw.execute("INSERT INTO fusion_schema (version) VALUES (99)")
    else:
        raw.execute("PRAGMA user_version = 99")
    store = make(store_env)
    try:
        with pytest.raises(StoreError) as refused:
            await store.open()
    finally:
        await store.aclose()
    assert str(refused.value) == (
        f"{store.location} has schema version 99, newer than this release's {status.latest}: upgrade fusion-mcp "
        "(every process that shares a store must run a release that knows its schema)"
    )


async def test_an_sqlite_history_of_release_4_gains_usage_from_the_runs_it_holds(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "fusion.sqlite3", isolation_level=None) as db:
        for statement in (*TABLES, *(s for steps in MIGRATIONS[:3] for s in steps)):
            db.execute(statement)
        db.execute("PRAGMA user_version = 4")
        for run_id, status, cached in (("fus_1", "ok", 0), ("fus_2", "running", 0), ("fus_3", "ok", 1)):
            spent = usage(
                ("a/x#skeptic", "panel", 1, 0.01), ("a/x#optimist", "panel", 1, 0.02), ("j/z", "analyst", 1, 0.03)
            )
            record = {"result": result(run_id, spent).to_json()}
            db.execute(
                "INSERT INTO runs (run_id, created, prompt_head, panel, status, cost, seconds, cached, record, "
                "principal) VALUES (?, 1000, 'q', 'a/x', ?, 0.06, 1, ?, ?, 'alice')",
                (run_id, status, cached, json.dumps(record)),
            )
    store = SqliteStore(tmp_path)
    try:
        await store.open()
        totals = await store.usage(0, "model")
        status = await store.status()
    finally:
        await store.aclose()
    assert status.schema == LATEST == 5
    # Only the finished, uncached run spent anything; its lenses are one model.
    assert [(t.key, t.runs, t.requests, t.cost) for t in totals] == [
        ("a/x", 1, 2, pytest.approx(0.03)),
        ("j/z", 1, 1, pytest.approx(0.03)),
    ]


# --- errors ------------------------------------------------------------------------------------------------------


async def test_an_unusable_home_is_a_store_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "home").write_text("a file where the directory should be")
    store = SqliteStore(tmp_path / "home")
    with pytest.raises(StoreError, match=r"^the SQLite store failed \(.*/home/fusion.sqlite3\): \[Errno 17\]"):
        await store.open()


def with_parts(url: str, *, password: str | None = None, port: int | None = None) -> str:
    parts = urlsplit(url)
    user = parts.username or ""
    secret = password if password is not None else parts.password or ""
    netloc = f"{user}:{secret}@{parts.hostname}:{port if port is not None else parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


async def test_postgresql_errors_name_the_database_and_never_the_password(database_url: str) -> None:
    password = "WRONG-password-0123456789"
    wrong = with_parts(database_url, password=password)
    closed = with_parts(database_url, port=9)
    real = urlsplit(database_url).password or ""
    for url, why in ((wrong, "password authentication failed"), (closed, "Connection refused")):
        store = PostgresStore(url, secrets=(url, password, real))
        with pytest.raises(StoreError) as failed:
            await store.open()
        message = str(failed.value)
        assert message.startswith(f"cannot reach PostgreSQL ({store.location}): connection failed: ")
        assert why in message and "\n" not in message
        assert password not in message and real not in message and ":" + real not in store.location
        # For a while calls fail at once with the same error, instead of each waiting for a connection.
        with pytest.raises(StoreError) as again:
            await store.recent()
        assert str(again.value) == message
        await store.aclose()


async def test_a_busy_pool_is_reported_as_busy_and_the_next_call_is_served(database_url: str) -> None:
    store = PostgresStore(database_url, pool_size=1)
    await store.open()
    await store.recent()  # the schema exists: the lock below has a table to take
    async with await psycopg.AsyncConnection.connect(database_url) as locker:
        await locker.execute("LOCK TABLE fusion_runs IN ACCESS EXCLUSIVE MODE")  # held until the commit
        async with anyio.create_task_group() as tg:
            tg.start_soon(store.recent)  # takes the only connection and waits on the lock
            for _ in range(200):  # until PostgreSQL shows it waiting
                waiting = await (await locker.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")).fetchone()
                if waiting and waiting[0]:
                    break
                await anyio.sleep(0.05)
            try:
                with pytest.raises(StoreError) as busy:
                    await store.recent()
            finally:
                await locker.commit()
    assert str(busy.value) == (
        f"no free connection to PostgreSQL ({store.location}) within 5 s: all 1 connections "
        "(FUSION_DATABASE_POOL) are busy"
    )
    # Busy is not down: the next call is served, not failed at once.
    assert await store.recent() == []
    await store.aclose()


async def test_open_store_picks_the_backend_from_the_settings(database_url: str, tmp_path: Path) -> None:
    from fusion_mcp.config import load_settings

    sqlite = open_store(load_settings(environ={"FUSION_HOME": str(tmp_path)}))
    shared = open_store(load_settings(environ={"FUSION_DATABASE_URL": database_url, "FUSION_HOME": str(tmp_path)}))
    parts = urlsplit(database_url)
    assert isinstance(sqlite, SqliteStore) and sqlite.location == str(tmp_path / "fusion.sqlite3")
    assert isinstance(shared, PostgresStore) and shared.shared and not sqlite.shared
    assert shared.location == f"postgresql://{parts.username}@{parts.hostname}:{parts.port}{parts.path}"


async def test_a_run_with_more_usage_rows_than_one_statement_takes_has_every_one_written(
    store_env: dict[str, str],
) -> None:
    rows = [UsageRow("chatcmpl-1", "alice", time.time(), f"m/{i}", "writer", 1, 10, 1, 0.001) for i in range(250)]
    async with opened(store_env) as store:
        await store.settle("chatcmpl-1", "alice", rows)
        [total] = await store.usage(0, "principal")
    assert (total.key, total.requests, total.prompt_tokens, total.cost) == ("alice", 250, 2500, 0.25)
    assert Raw(store_env).rows("SELECT count(DISTINCT model) FROM {usage}") == [(250,)]


REFUSE_DELETING_USAGE = {
    "sqlite": "CREATE TRIGGER refuse BEFORE DELETE ON usage BEGIN SELECT RAISE(ABORT, 'deleting usage refused'); END;",
    "postgres": "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "RAISE EXCEPTION 'deleting usage refused'; END $$; "
    "CREATE TRIGGER refuse BEFORE DELETE ON fusion_usage FOR EACH ROW EXECUTE FUNCTION refuse();",
}
"""The database refuses what a trim deletes (as a full disk or an operator's lock would): only the trim fails."""


async def test_a_trim_that_fails_leaves_the_records_it_came_with_written_and_is_logged(
    store_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    raw = Raw(store_env)
    async with opened(store_env, usage_max_days=30) as store:
        await store.save_run(request(), result("fus_0"), {}, "alice")
        old = time.time() - 40 * DAY  # past FUSION_USAGE_MAX_DAYS: the next trim deletes it
        raw.execute("UPDATE {usage} SET created = ? WHERE run_id = 'fus_0'", old)
        raw.script(REFUSE_DELETING_USAGE["sqlite"], REFUSE_DELETING_USAGE["postgres"])
        with caplog.at_level("WARNING", logger="fusion_mcp"):
            # Both records in one batch (the first waits for company), and the trim after them.
            async with anyio.create_task_group() as tg:
                tg.start_soon(store.save_run, request(), result("fus_1"), {}, "alice")
                await wait_all_tasks_blocked()
                tg.start_soon(functools.partial(store.save_run, request(), result("fus_2"), {}, "bob", urgent=True))
        for run_id, principal in (("fus_1", "alice"), ("fus_2", "bob")):
            found = await store.run(run_id, principal)
            assert found is not None and found["result"]["status"] == "ok"
    assert raw.rows("SELECT run_id, count(*) FROM {usage} GROUP BY run_id ORDER BY run_id") == [
        ("fus_0", 3),  # still there: the trim was undone
        ("fus_1", 3),
        ("fus_2", 3),
    ]
    backend, context = (
        ("PostgreSQL", " CONTEXT: PL/pgSQL function refuse() line 1 at RAISE") if raw.postgres else ("SQLite", "")
    )
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"retention not applied this time: the {backend} store failed ({store.location}): "
        f"deleting usage refused{context}"
    ]
