"""Runs longer than the call: ``running`` within the call's wait, ``openrouter_fusion_result`` for the rest,
the run deadline, client disconnects, another principal, and a server restart."""

from __future__ import annotations

import json
import signal
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from fusion_mcp.config import load_settings
from fusion_mcp.core.models import FusionArgs
from fusion_mcp.engine.service import FusionService
from fusion_mcp.mcp_server.server import RESULT_TOOL_NAME, create_server
from fusion_mcp.store.sqlite import SqliteStore
from tests import servers
from tests.conftest import API_KEY, PANEL, sim_env
from tests.fakes.provider_sim import ProviderSim, Reply
from tests.helpers import TOOL, over_http, structured, text, wait_until

pytestmark = pytest.mark.anyio
A, B, C = PANEL
LONG = {"FUSION_DEADLINE_S": "1.5", "FUSION_RUN_DEADLINE_S": "30"}
ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdefgh"


@asynccontextmanager
async def client(sim: ProviderSim, **env: str) -> AsyncIterator[Client]:
    async with Client(create_server(load_settings(environ=sim_env(sim, **env)))) as c:
        yield c


async def until_done(c: Client, run_id: str, limit: int = 30) -> dict[str, Any]:
    """Call the result tool until the run is no longer running (each call waits up to the call deadline)."""
    for _ in range(limit):
        data = structured(await c.call_tool(RESULT_TOOL_NAME, {"run_id": run_id}))
        if data["status"] != "running":
            return data
    raise AssertionError(f"run {run_id} still running after {limit} result calls")


async def test_a_run_slower_than_the_call_returns_running_then_its_complete_result(sim: ProviderSim) -> None:
    sim.script(B, Reply(latency=2.5))
    sim.script(C, Reply(content="a long considered answer " * 20, latency=2.5))
    progress: list[str] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append(message or "")

    async with client(sim, **LONG) as c:
        first = await c.call_tool(TOOL, {"prompt": "q"}, progress_callback=on_progress)
        running = structured(first)
        assert not first.is_error and running["status"] == "running"
        assert running["pending"] == [B, C]
        assert running["responses"] == [{"model": A, "content": f"Answer from {A}: the answer is 42."}]
        assert running["instructions"].startswith(
            f'The fusion is still running in the background. Call openrouter_fusion_result with run_id "'
            f'{running["run_id"]}"'
        )
        assert "analysis" not in running and running["failed_models"] == []
        assert text(first).startswith(f"**Fusion still running** (run {running['run_id']}, ")
        # Progress reached the first call while it waited: the start and the member that answered.
        assert progress[0].startswith("fusion started") and any(m.startswith("1/3 answered") for m in progress)
        done = await until_done(c, running["run_id"])
    assert done["status"] == "ok" and done["run_id"] == running["run_id"]
    assert [r["model"] for r in done["responses"]] == list(PANEL)
    assert not any(r.get("truncated") for r in done["responses"])  # nobody was cut at the call's deadline
    assert done["responses"][2]["content"] == "a long considered answer " * 20
    assert set(done) >= {"analysis", "usage", "timings"} and "pending" not in done and "instructions" not in done
    assert sim.disconnects == []


async def test_a_run_that_fits_the_call_never_says_running(sim: ProviderSim) -> None:
    async with client(sim, **LONG) as c:
        data = structured(await c.call_tool(TOOL, {"prompt": "q"}))
    assert data["status"] == "ok" and "analysis" in data


async def test_the_background_run_is_bounded_by_the_run_deadline(sim: ProviderSim) -> None:
    sim.script(C, Reply(latency=60))
    env = {"FUSION_DEADLINE_S": "1", "FUSION_RUN_DEADLINE_S": "3"}
    async with client(sim, **env) as c:
        running = structured(await c.call_tool(TOOL, {"prompt": "q"}))
        assert running["status"] == "running" and running["pending"] == [C]
        done = await until_done(c, running["run_id"])
    assert done["status"] == "ok" and "analysis" in done
    (failed,) = done["failed_models"]
    assert failed["model"] == C and failed["error"].startswith("no answer within the deadline (")
    assert failed["error"].endswith("into a 3 s run)")
    await wait_until(lambda: sim.disconnects == [C])  # its request was closed at the run's cut-off


async def test_a_cancelled_call_leaves_its_run_going_and_findable(sim: ProviderSim, tmp_path: Path) -> None:
    sim.script(A, Reply(latency=1))
    async with client(sim, FUSION_HOME=str(tmp_path), **LONG) as c:

        async def start() -> None:
            await c.call_tool(TOOL, {"prompt": "q"})

        async with anyio.create_task_group() as tg:
            tg.start_soon(start)
            await wait_until(lambda: len(sim.requests_for(A)) == 1)
            tg.cancel_scope.cancel()
        # The run was recorded as running when it started: the history names it.
        (row,) = json.loads((await c.read_resource("fusion://runs")).contents[0].text)
        assert row["status"] == "running"
        done = await until_done(c, row["run_id"])
    assert done["status"] == "ok" and [r["model"] for r in done["responses"]] == list(PANEL)
    assert sim.disconnects == []


async def test_an_unknown_run_is_not_found(sim: ProviderSim) -> None:
    async with client(sim, **LONG) as c:
        result = await c.call_tool(RESULT_TOOL_NAME, {"run_id": "fus_0000000000000000", "wait_s": 0})
    assert result.is_error
    assert structured(result) == {
        "status": "error",
        "run_id": "fus_0000000000000000",
        "error": "no run 'fus_0000000000000000' of yours is known here: it may never have existed, have expired "
        "from the run history (FUSION_HISTORY_MAX_RUNS, FUSION_HISTORY_MAX_DAYS), or belong to another client",
        "failure_reason": "run_not_found",
        "responses": [],
        "failed_models": [],
        "sources": [],
        "usage": {
            "models": [],
            "total": {"prompt_tokens": 0, "completion_tokens": 0, "reasoning_tokens": 0, "total_tokens": 0}
            | {"cost": None},
        },
        "timings": {"members": {}, "analyst": None, "total": 0.0, "queued": 0.0},
        "cached": False,
        "degraded": False,
    }


async def test_the_result_tool_is_listed_only_when_runs_may_outlive_calls(sim: ProviderSim) -> None:
    async with client(sim) as c:
        assert [t.name for t in (await c.list_tools()).tools] == [TOOL]
    async with client(sim, **LONG) as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
    assert set(tools) == {TOOL, RESULT_TOOL_NAME}
    assert "openrouter_fusion_result" in tools[TOOL].description
    assert tools[RESULT_TOOL_NAME].input_schema["required"] == ["run_id"]


def test_the_run_deadline_may_not_be_shorter_than_the_calls() -> None:
    from fusion_mcp.config import ConfigError

    with pytest.raises(ConfigError) as info:
        load_settings(environ={"FUSION_DEADLINE_S": "55", "FUSION_RUN_DEADLINE_S": "30"})
    assert str(info.value) == (
        "invalid setting FUSION_RUN_DEADLINE_S='30': must be a number of seconds from FUSION_DEADLINE_S to 3,600, "
        "or empty for FUSION_DEADLINE_S (runs end with the call)"
    )


async def test_runs_are_found_only_by_their_principal_and_a_restarted_server_reports_them_lost(
    sim: ProviderSim, tmp_path: Path
) -> None:
    sim.script(B, Reply(latency=60))
    env = sim_env(
        sim,
        FUSION_HOME=str(tmp_path),
        FUSION_HTTP_TOKENS=f"alice:{ALICE},bob:{BOB}",
        FUSION_PRINCIPAL_MAX_COST_USD_PER_DAY="5",
        **LONG,
    )
    with servers.http_server(env) as first:
        async with over_http(first.base, ALICE) as alice:
            killed = structured(await alice.call_tool(TOOL, {"prompt": "q"}))
        assert killed["status"] == "running"
        async with over_http(first.base, BOB) as bob:
            other = structured(await bob.call_tool(RESULT_TOOL_NAME, {"run_id": killed["run_id"], "wait_s": 0}))
        assert other["failure_reason"] == "run_not_found"  # another principal's run reads as unknown
        first.proc.kill()  # a crash: no chance to record anything
        first.proc.wait(timeout=15)

    with servers.http_server(env) as second:
        async with over_http(second.base, ALICE) as alice:
            crashed = structured(await alice.call_tool(RESULT_TOOL_NAME, {"run_id": killed["run_id"]}))
            stopped = structured(await alice.call_tool(TOOL, {"prompt": "again"}))
        async with over_http(second.base, BOB) as bob:
            hidden = structured(await bob.call_tool(RESULT_TOOL_NAME, {"run_id": killed["run_id"], "wait_s": 0}))
        assert stopped["status"] == "running"
        second.proc.send_signal(signal.SIGTERM)  # a graceful stop records what it loses
        second.proc.wait(timeout=15)
    for server in (first, second):  # neither the key nor a token in any log line, and no traceback
        assert API_KEY not in server.stderr and ALICE not in server.stderr and BOB not in server.stderr
        assert "Traceback" not in server.stderr, server.stderr
    assert crashed["status"] == "error" and crashed["failure_reason"] == "run_lost"
    assert crashed["error"].startswith(f"the server that was running it (process {first.proc.pid} on ")
    assert "stopped before it finished — a restart, a crash or a kill ends the runs in flight" in crashed["error"]
    assert hidden["failure_reason"] == "run_not_found"

    store = SqliteStore(tmp_path)
    try:
        record = await store.run(stopped["run_id"], "alice")
        assert await store.run(stopped["run_id"], "bob") is None
    finally:
        await store.aclose()
    assert record is not None
    lost = record["result"]
    assert lost["status"] == "error" and lost["failure_reason"] == "run_lost"
    assert lost["error"].startswith("the server shut down ")
    assert lost["error"].endswith("before it finished; what had finished is kept here; run the call again for the rest")
    assert [r["model"] for r in lost["responses"]] == [A, C]  # the answers it had are kept
    with sqlite3.connect(tmp_path / "fusion.sqlite3") as db:
        rows = dict(db.execute("SELECT run_id, status FROM runs").fetchall())
        reserved = db.execute("SELECT run_id FROM reservations").fetchall()
    # Found lost, the crashed run's row says so too (fusion-mcp runs no longer lists it as running).
    assert rows == {stopped["run_id"]: "error:run_lost", killed["run_id"]: "error:run_lost"}
    # What the crashed run spent is unknown: its reservation keeps counting against the cap until it expires.
    # The one stopped gracefully recorded what it had used instead.
    assert reserved == [(killed["run_id"],)]


async def test_a_run_of_another_live_process_is_watched_through_the_history(sim: ProviderSim, tmp_path: Path) -> None:
    """Two services on one FUSION_HOME (replicas of one machine): the one without the run waits for the
    other to record it, then answers with its result."""
    sim.script(B, Reply(latency=1.5))
    settings = load_settings(environ=sim_env(sim, FUSION_HOME=str(tmp_path), **LONG))
    async with FusionService.open(settings) as one, FusionService.open(settings) as other:
        request = one.prepare(FusionArgs(prompt="q", deadline_s=30), depth=0)
        running = await one.run(request, wait_s=0.2)
        assert running.status == "running"
        elsewhere = await other.result(running.run_id, "local", wait_s=0)
        assert elsewhere.status == "running" and elsewhere.instructions is not None
        assert elsewhere.instructions.startswith("The run is going on in another server process.")
        done = await other.result(running.run_id, "local", wait_s=30)
    assert done.status == "ok" and [r.model for r in done.responses] == list(PANEL)
    with sqlite3.connect(tmp_path / "fusion.sqlite3") as db:
        (status,) = db.execute("SELECT status FROM runs WHERE run_id = ?", (running.run_id,)).fetchone()
    assert status == "ok"


def test_a_running_row_is_lost_when_its_process_is_gone_or_silent() -> None:
    import os
    import socket
    import subprocess
    import sys
    import time

    from fusion_mcp.engine.live import LOST_AFTER_S, PROCESS, lost_message

    here, now = socket.gethostname(), time.time()
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(ended.stdout)

    def row(**owner: Any) -> dict[str, Any]:
        return {"owner": {"host": here, "pid": os.getpid(), "process": PROCESS} | owner, "heartbeat": now}

    assert lost_message(row()) is None  # this very process (another service in it) is alive
    assert lost_message(row(pid=os.getppid())) is None  # a live process on this host
    assert lost_message(row(host="elsewhere", pid=dead)) is None  # another host: its heartbeat decides
    gone = lost_message(row(pid=dead))
    assert gone is not None and gone.startswith(f"the server that was running it (process {dead} on {here}, last")
    assert lost_message(row(process="an earlier process with this pid")) is not None  # e.g. pid 1 in a container
    stale = row(host="elsewhere") | {"heartbeat": now - LOST_AFTER_S - 1}
    assert lost_message(stale) is not None and lost_message(row() | {"heartbeat": None}) is not None
