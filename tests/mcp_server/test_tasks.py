"""Long runs served as MCP tasks (the 2026-era ``io.modelcontextprotocol/tasks`` extension) to clients that ask."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from fusion_mcp.config import load_settings
from fusion_mcp.mcp_server.server import create_server
from fusion_mcp.mcp_server.tasks import EXTENSION
from tests.conftest import API_KEY, PANEL, sim_env
from tests.fakes.provider_sim import ProviderSim, Reply
from tests.fakes.tasks_client import GetTask, TaskIdParams, TasksClient, TaskState
from tests.helpers import TOOL, dump, structured, wait_until

pytestmark = pytest.mark.anyio
A, B, C = PANEL
LONG = {"FUSION_DEADLINE_S": "1", "FUSION_RUN_DEADLINE_S": "30"}


async def call(sim: ProviderSim, tasks: TasksClient, args: dict[str, Any], mode: str = "auto", **env: str):
    server = create_server(load_settings(environ=sim_env(sim, **(LONG | env))))
    async with Client(server, extensions=[tasks], mode=mode) as client:  # type: ignore[arg-type]
        return await client.call_tool(TOOL, args)


async def test_a_long_run_is_served_as_a_task_and_settles_with_the_whole_result(sim: ProviderSim) -> None:
    sim.script(B, Reply(latency=2, echo_auth=True))  # a model echoing the key: the task's result has it redacted
    tasks = TasksClient()
    result = await call(sim, tasks, {"prompt": "q"})
    assert API_KEY not in dump(result) and "(the request said: Bearer [redacted])" in dump(result)
    (created,) = tasks.created
    extra = created.model_extra or {}
    assert created.status == "working" and created.task_id.startswith("fus_")
    assert extra["pollIntervalMs"] == 1000 and extra["ttlMs"] == 30 * 86400 * 1000
    assert extra["createdAt"].endswith("Z") and extra["statusMessage"] == "started"
    working = [p for p in tasks.polls if p.status == "working"]
    assert working and any(
        p.status_message == f"2/3 answered: {C} in" or "answered" in (p.status_message or "") for p in working
    )
    assert tasks.polls[-1].status == "completed"
    data = structured(result)
    assert not result.is_error and data["status"] == "ok" and data["run_id"] == created.task_id
    assert [r["model"] for r in data["responses"]] == list(PANEL)
    assert not any(r.get("truncated") for r in data["responses"]) and "analysis" in data


async def test_refused_calls_and_calls_without_the_extension_are_plain_results(sim: ProviderSim) -> None:
    tasks = TasksClient()
    refused = await call(sim, tasks, {"prompt": "  "})
    assert structured(refused)["failure_reason"] == "invalid_arguments" and tasks.created == []
    # A 2025-11-25 client cannot be given a task (the SDK serves no tasks/* there): the running result instead.
    sim.script(B, Reply(latency=3))
    legacy = await call(sim, tasks, {"prompt": "q"}, mode="legacy")
    assert structured(legacy)["status"] == "running" and tasks.created == []
    # Runs that cannot outlive their call need no task: the extension is not even offered.
    sim.reset()
    short = create_server(load_settings(environ=sim_env(sim)))
    async with Client(short, extensions=[TasksClient()]) as client:
        assert EXTENSION not in (client.server_capabilities.extensions or {})
        assert structured(await client.call_tool(TOOL, {"prompt": "q"}))["status"] == "ok"


async def test_cancelling_a_task_stops_its_run_and_closes_its_requests(sim: ProviderSim, tmp_path: Path) -> None:
    sim.script(B, Reply(latency=60))
    tasks = TasksClient(cancel_when=lambda state: (state.status_message or "").startswith("2/3 answered"))
    result = await call(sim, tasks, {"prompt": "q"}, FUSION_HOME=str(tmp_path))
    assert tasks.polls[-1].status == "cancelled"
    assert tasks.polls[-1].status_message == "the run was cancelled by the client (tasks/cancel)"
    assert result.is_error and result.structured_content == {"task": "cancelled"}
    await wait_until(lambda: sim.disconnects == [B])
    with sqlite3.connect(tmp_path / "fusion.sqlite3") as db:
        (status,) = db.execute("SELECT status FROM runs").fetchone()
    assert status == "error:cancelled"


async def test_an_unknown_task_is_an_invalid_params_error(sim: ProviderSim) -> None:
    server = create_server(load_settings(environ=sim_env(sim, **LONG)))
    async with Client(server, extensions=[TasksClient()]) as client:
        assert EXTENSION in (client.server_capabilities.extensions or {})
        with pytest.raises(MCPError) as info:
            await client.session.send_request(GetTask(params=TaskIdParams(taskId="fus_nope")), TaskState)
    assert info.value.code == -32602
    assert info.value.error.message.startswith("no task 'fus_nope': no run 'fus_nope' of yours is known here")
