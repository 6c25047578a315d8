"""``mcp.json`` is a working host entry: launched as a host would, it serves the tool."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters

from tests.conftest import REPO, child_env, console_script, sim_env
from tests.fakes.provider_sim import ProviderSim
from tests.helpers import TOOL, structured

pytestmark = pytest.mark.anyio


async def test_mcp_json_entry_launches_the_server(sim: ProviderSim) -> None:
    entry = json.loads((REPO / "mcp.json").read_text())["mcpServers"]["fusion"]
    assert set(entry["env"]) == {"OPENROUTER_API_KEY"}
    # The entry names the console script; resolve it the way a host's PATH lookup would.
    command = shutil.which(entry["command"], path=str(Path(console_script()).parent))
    assert command is not None
    params = StdioServerParameters(command=command, args=entry["args"], env=child_env(**sim_env(sim)))
    async with Client(params, mode="legacy") as client:
        assert [t.name for t in (await client.list_tools()).tools] == [TOOL]
        assert structured(await client.call_tool(TOOL, {"prompt": "q"}))["status"] == "ok"
