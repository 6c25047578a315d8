"""Run slots (``FUSION_MAX_CONCURRENT``): a call that waits for one is told so, and its result says how long."""

from __future__ import annotations

import json
from itertools import pairwise
from typing import Any

import anyio
import pytest
from mcp import Client

from fusion_mcp.config import load_settings
from fusion_mcp.mcp_server.server import create_server
from tests.conftest import PANEL, sim_env
from tests.fakes.provider_sim import ProviderSim, Reply
from tests.helpers import TOOL, structured, wait_until

pytestmark = pytest.mark.anyio


async def test_a_queued_call_is_told_it_waits_and_its_result_says_how_long(sim: ProviderSim) -> None:
    # One slot; a member takes a moment (the analyst, the first member's id too, does not): the first run
    # holds the slot while the second call arrives.
    sim.scripts[PANEL[0]] = lambda body: Reply(latency=0.5) if body.get("stream") else Reply()
    settings = load_settings(environ=sim_env(sim, FUSION_MAX_CONCURRENT="1", FUSION_QUEUE_TIMEOUT_S="30"))
    results: dict[str, dict[str, Any]] = {}
    progress: dict[str, list[tuple[float, str]]] = {"first": [], "second": []}

    async with Client(create_server(settings)) as client:

        async def call(name: str) -> None:
            async def on_progress(value: float, total: float | None, message: str | None) -> None:
                progress[name].append((value, message or ""))

            result = await client.call_tool(TOOL, {"prompt": name}, progress_callback=on_progress)
            results[name] = structured(result)

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "first")
            await wait_until(lambda: len(sim.requests) >= 1)  # the first run holds the only slot
            tg.start_soon(call, "second")
        # The run history keeps the wait too: the record is written from the result the caller got.
        second = results["second"]["run_id"]
        record = json.loads((await client.read_resource(f"fusion://runs/{second}")).contents[0].text)

    assert record["result"]["timings"]["queued"] == results["second"]["timings"]["queued"]
    assert [results[n]["status"] for n in ("first", "second")] == ["ok", "ok"]
    assert results["first"]["timings"]["queued"] == 0
    assert results["second"]["timings"]["queued"] > 0
    assert progress["first"][0][1].startswith("fusion started")
    assert not any(m.startswith("waiting") for _, m in progress["first"])
    assert progress["second"][0] == (0.0, "waiting for a run slot: 1 run in progress")
    assert progress["second"][1][1].startswith("fusion started")
    # MCP: every progress notification's value rises, the queued one included.
    values = [v for v, _ in progress["second"]]
    assert all(later > earlier for earlier, later in pairwise(values)), values
