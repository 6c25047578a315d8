"""Answer first, record after: the caller has its result while the record is still being written (a
PostgreSQL lock holds the write), the record follows, shutdown waits for it; a record that fails after the
answer is logged and leaves the run in the history as lost, never missing."""

from __future__ import annotations

import json
import re
import subprocess

import anyio
import psycopg
import pytest
from mcp import Client

from fusion_mcp.config import load_settings
from fusion_mcp.mcp_server.server import RESULT_TOOL_NAME, create_server
from fusion_mcp.store import open_store
from tests.conftest import PANEL, child_env, console_script, sim_env
from tests.fakes.provider_sim import ProviderSim, Reply
from tests.helpers import TOOL, call_then_cancel, structured, wait_until
from tests.store.test_store import Raw

pytestmark = pytest.mark.anyio
LONG_RUNS = {"FUSION_DEADLINE_S": "20", "FUSION_RUN_DEADLINE_S": "30"}
"""Runs that may outlive their call: their running row is written when they start."""
REFUSE_FINISHED = {
    "sqlite": "CREATE TRIGGER fault_insert BEFORE INSERT ON runs WHEN NEW.status <> 'running' "
    "BEGIN SELECT RAISE(ABORT, 'injected fault'); END; "
    "CREATE TRIGGER fault_update BEFORE UPDATE ON runs WHEN NEW.status <> 'running' "
    "BEGIN SELECT RAISE(ABORT, 'injected fault'); END;",
    "postgres": "CREATE FUNCTION fault() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF NEW.status <> 'running' "
    "THEN RAISE EXCEPTION 'injected fault'; END IF; RETURN NEW; END $$; "
    "CREATE TRIGGER fault BEFORE INSERT OR UPDATE ON fusion_runs FOR EACH ROW EXECUTE FUNCTION fault();",
}
"""The database takes a run's running row and refuses its end."""


async def open_schema(env: dict[str, str]) -> None:
    store = open_store(load_settings(environ=env))
    try:
        await store.open()
    finally:
        await store.aclose()


@pytest.mark.parametrize("long_runs", [False, True], ids=["ends-with-call", "may-outlive-call"])
async def test_the_caller_has_its_result_while_the_record_waits_and_shutdown_waits_for_it(
    sim: ProviderSim, database_url: str, long_runs: bool
) -> None:
    """A transaction holds ``fusion_reservations`` (EXCLUSIVE: reads pass, writes wait), so the run's record —
    its row, usage rows and reservation release, in one transaction — cannot commit. The call answers all the
    same; meanwhile the history has the run as running; closing the server waits for the record, which is
    complete (status and usage) once the lock is released."""
    env = sim_env(sim, FUSION_DATABASE_URL=database_url, **(LONG_RUNS if long_runs else {}))
    raw = Raw(env)
    await open_schema(env)
    answered, close, closed = anyio.Event(), anyio.Event(), anyio.Event()
    found: dict[str, str] = {}

    async def serve() -> None:
        async with Client(create_server(load_settings(environ=env))) as client:
            result = structured(await client.call_tool(TOOL, {"prompt": "answer first"}))
            found.update(run_id=result["run_id"], status=result["status"])
            answered.set()
            await close.wait()
        closed.set()

    with psycopg.connect(database_url) as lock:
        lock.execute("LOCK TABLE fusion_reservations IN EXCLUSIVE MODE")
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve)
            try:
                with anyio.fail_after(30):
                    await answered.wait()
                run_id = found["run_id"]
                assert found["status"] == "ok"
                assert raw.rows("SELECT status FROM {runs} WHERE run_id = ?", run_id) == [("running",)]
                close.set()
                await anyio.sleep(0.5)  # the server is closing: it waits for the record
                assert not closed.is_set()
                assert raw.rows("SELECT status FROM {runs} WHERE run_id = ?", run_id) == [("running",)]
            finally:
                lock.rollback()  # whatever happened: a server stopping must not wait on the test forever
    assert raw.rows("SELECT status FROM {runs} WHERE run_id = ?", run_id) == [("ok",)]
    assert raw.rows("SELECT count(*), sum(requests) FROM {usage} WHERE run_id = ?", run_id) == [(4, 4)]


async def test_a_record_that_fails_after_the_answer_is_logged_and_the_run_reads_as_lost(
    sim: ProviderSim, store_env: dict[str, str]
) -> None:
    """``ask`` answers, then the database refuses the run's record: the log says so, in these words, and the
    run is in the history as running, owned by the ``ask`` process (what it spent is in usage all the same);
    once that process is gone, the result tool says it was lost (and, the database taking records again,
    records it so), and ``fusion-mcp runs ID`` shows it lost."""
    env = sim_env(sim, **store_env)
    await open_schema(env)
    raw = Raw(env)
    raw.script(REFUSE_FINISHED["sqlite"], REFUSE_FINISHED["postgres"])
    asked = subprocess.run(  # noqa: ASYNC221 - nothing else runs meanwhile
        [console_script(), "ask", "--json", "answered, then lost"],
        env=child_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert asked.returncode == 0, asked.stderr
    result = json.loads(asked.stdout)
    run_id = result["run_id"]
    assert result["status"] == "ok" and len(result["responses"]) == len(PANEL)
    logged = [line for line in asked.stderr.splitlines() if "not recorded" in line]
    assert len(logged) == 1
    assert re.search(rf"run {run_id} not recorded \(the history will show it as lost\): .*injected fault", logged[0]), (
        logged
    )
    assert raw.rows("SELECT status FROM {runs} WHERE run_id = ?", run_id) == [("running",)]
    assert raw.rows("SELECT count(*) FROM {usage} WHERE run_id = ?", run_id) == [(4,)]  # what it spent counts

    raw.script("DROP TRIGGER fault_insert; DROP TRIGGER fault_update;", "DROP TRIGGER fault ON fusion_runs;")
    async with Client(create_server(load_settings(environ=env | LONG_RUNS))) as client:  # offers the result tool
        lost = structured(await client.call_tool(RESULT_TOOL_NAME, {"run_id": run_id, "wait_s": 0}))
    assert lost["status"] == "error" and lost["failure_reason"] == "run_lost"
    assert re.fullmatch(
        r"the server that was running it \(process \d+ on .+, last heard from .+ UTC\) stopped before it "
        r"finished — a restart, a crash or a kill ends the runs in flight, and what they had done is lost; run "
        r"the call again",
        lost["error"],
    ), lost["error"]
    assert raw.rows("SELECT status FROM {runs} WHERE run_id = ?", run_id) == [("error:run_lost",)]
    shown = subprocess.run(  # noqa: ASYNC221
        [console_script(), "runs", run_id], env=child_env(**env), capture_output=True, text=True, check=False
    )
    assert shown.returncode == 0 and "stopped before it finished" in " ".join(shown.stdout.split())


async def test_the_cache_entry_is_written_after_the_answer(sim: ProviderSim, database_url: str) -> None:
    """A transaction holds the cache table (EXCLUSIVE: the cache read before a run passes, the write after it
    waits): the call answers all the same, and an identical call meanwhile is answered from the result waiting
    to be cached; once the lock goes, the entry is written (closing the server waits for it), and another server
    answers from it."""
    env = sim_env(sim, FUSION_DATABASE_URL=database_url, FUSION_CACHE="on")
    raw = Raw(env)
    await open_schema(env)
    question = {"prompt": "cached after the answer"}
    async with Client(create_server(load_settings(environ=env))) as client:
        with psycopg.connect(database_url) as lock:
            lock.execute("LOCK TABLE fusion_cache IN EXCLUSIVE MODE")
            try:
                with anyio.fail_after(30):
                    first = structured(await client.call_tool(TOOL, question))
                    assert first["status"] == "ok" and not first.get("cached")
                    assert raw.rows("SELECT count(*) FROM {cache}") == [(0,)]
                    meanwhile = structured(await client.call_tool(TOOL, question))
                    assert raw.rows("SELECT count(*) FROM {cache}") == [(0,)]
            finally:
                lock.rollback()
    assert raw.rows("SELECT count(*) FROM {cache}") == [(1,)]  # the server closed once its writes were done
    assert meanwhile["cached"] is True and meanwhile["responses"] == first["responses"]
    assert len(sim.requests) == len(PANEL) + 1  # the first call's members and analyst, once
    async with Client(create_server(load_settings(environ=env))) as client:
        again = structured(await client.call_tool(TOOL, question))
    assert again["cached"] is True and again["responses"] == first["responses"]
    assert len(sim.requests) == len(PANEL) + 1


async def test_the_running_row_is_written_while_the_members_work(sim: ProviderSim, store_env: dict[str, str]) -> None:
    """A run that ends with its call has its running row before its answer, written while its members work
    (not on the way to the answer, behind other runs' records): the row is there while a slow member is still
    being waited for, before the deadline cuts it; the answer then replaces it."""
    env = sim_env(sim, **store_env, FUSION_DEADLINE_S="3")
    raw = Raw(env)
    await open_schema(env)
    sim.script(PANEL[1], Reply(latency=30))
    found: dict[str, str] = {}
    async with Client(create_server(load_settings(environ=env))) as client, anyio.create_task_group() as tg:

        async def call() -> None:
            found.update(structured(await client.call_tool(TOOL, {"prompt": "row while working"})))

        tg.start_soon(call)
        await wait_until(lambda: raw.rows("SELECT status FROM {runs}") == [("running",)], limit_s=20)
        assert not found and sim.disconnects == []  # the slow member is still being waited for
    assert raw.rows("SELECT run_id, status FROM {runs}") == [(found["run_id"], found["status"])]
    assert sim.disconnects == [PANEL[1]]  # cut at the deadline, after the row was seen


async def test_a_cancelled_run_whose_row_cannot_be_deleted_is_logged_and_reads_as_lost(
    sim: ProviderSim, store_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """A run its caller cancels has its running row deleted; a database that refuses the delete leaves it,
    said so in the log, and the row (no longer renewed) is the run's trace as lost."""
    env = sim_env(sim, **store_env)
    raw = Raw(env)
    await open_schema(env)
    raw.script(
        "CREATE TRIGGER keep_rows BEFORE DELETE ON runs BEGIN SELECT RAISE(ABORT, 'injected fault'); END;",
        "CREATE FUNCTION keep() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'injected fault'; "
        "END $$; CREATE TRIGGER keep_rows BEFORE DELETE ON fusion_runs FOR EACH ROW EXECUTE FUNCTION keep();",
    )
    sim.script(PANEL[1], Reply(latency=30))
    async with Client(create_server(load_settings(environ=env))) as client:
        await call_then_cancel(client, lambda: raw.rows("SELECT status FROM {runs}") == [("running",)], "cancelled")
        await wait_until(lambda: "its running row stays" in caplog.text, limit_s=20)
    (line,) = [r.getMessage() for r in caplog.records if "its running row stays" in r.getMessage()]
    assert re.fullmatch(r"run fus_[0-9a-f]+: its running row stays \(it will read as lost\): .*injected fault.*", line)
    assert raw.rows("SELECT status FROM {runs}") == [("running",)]
