"""Soak: 200 sequential and 50 concurrent fusions with seeded random faults (slow; CI runs it).

The server must keep answering, every call must return a well-formed result that accounts for every
panel model, resident memory must stay bounded, and no task or upstream connection may be left behind.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from fusion_mcp.config import load_settings
from fusion_mcp.core.models import FusionResult
from fusion_mcp.engine.service import CHECK_MODELS_TASK
from fusion_mcp.mcp_server.server import create_server
from tests.conftest import sim_env
from tests.fakes.provider_sim import ProviderSim, Reply
from tests.helpers import TOOL, structured, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
SEED = 20261124
MEMBER_FAULTS = [
    [Reply()],
    [Reply(latency=0.05)],
    [Reply(status=500)],
    [Reply(status=429, retry_after="0"), Reply()],
    [Reply(status=503, retry_after="0")],
    [Reply(content="cut short", stream_error="crash")],
    [Reply(raw=b"<html/>", content_type="text/html")],
    [Reply(content="")],
    [Reply(content="drip " * 20, chunk_delay=0.002)],
    [Reply(status=402)],
]
ANALYST_FAULTS = [[Reply()]] * 6 + [[Reply(content="{broken")], [Reply(status=503, retry_after="0")]]


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def connections_to(port: int) -> int:
    """Established TCP connections from this process's side to ``port`` (the simulator)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                count += 1
    return count


def script_call(sim: ProviderSim, rng: random.Random, tag: str) -> dict[str, Any]:
    panel = [f"soak/{tag}-m{j}" for j in range(rng.randint(1, 4))]
    analyst = f"soak/{tag}-judge"
    for model in panel:
        sim.scripts[model] = list(rng.choice(MEMBER_FAULTS))
    sim.scripts[analyst] = list(rng.choice(ANALYST_FAULTS))
    return {"prompt": f"question {tag}", "analysis_models": panel, "model": analyst}


def check(data: dict[str, Any], args: dict[str, Any]) -> None:
    result = FusionResult.model_validate(data)
    seen = [r.model for r in result.responses] + [f.model for f in result.failed_models]
    assert sorted(seen) == sorted(args["analysis_models"])
    assert (result.status == "error") == (not result.responses)
    if result.status == "ok":
        assert (result.analysis is None) != (result.analysis_error is None)


def no_runs() -> bool:
    return not [t for t in asyncio.all_tasks() if t.get_name().startswith("fusion run ")]


def tasks() -> int:
    """The tasks alive, but the start-up check of the configured models (it ends a second after start)."""
    return len([t for t in asyncio.all_tasks() if t.get_name() != CHECK_MODELS_TASK])


async def test_soak(sim: ProviderSim) -> None:
    rng = random.Random(SEED)
    server = create_server(load_settings(environ=sim_env(sim, FUSION_DEADLINE_S="20", FUSION_LOG_LEVEL="WARNING")))
    async with Client(server) as client:
        for i in range(10):  # warm-up: imports, pools, caches
            args = script_call(sim, rng, f"warm{i}")
            check(structured(await client.call_tool(TOOL, args)), args)
        await wait_until(no_runs)  # each run's task ends once its record is written, just after its answer
        tasks_before = tasks()
        rss_before = rss_mib()

        for i in range(200):
            args = script_call(sim, rng, f"seq{i}")
            check(structured(await client.call_tool(TOOL, args)), args)

        async def one(i: int) -> None:
            args = script_call(sim, rng, f"par{i}")
            check(structured(await client.call_tool(TOOL, args)), args)

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(one, i)

        rss_after = rss_mib()
        print(f"soak: rss {rss_before:.1f} -> {rss_after:.1f} MiB")
        await wait_until(no_runs)
        assert tasks() == tasks_before
        # 260 runs keep no state: growth beyond allocator noise would be a leak.
        assert rss_after - rss_before < 64, (rss_before, rss_after)
        statuses = {structured(await client.call_tool(TOOL, script_call(sim, rng, "last")))["status"]}
        assert statuses <= {"ok", "error"}
    assert connections_to(sim.port) == 0
