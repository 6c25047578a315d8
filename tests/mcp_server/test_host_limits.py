"""What a host keeps of a tool result: a result for Codex fits what Codex passes whole to its model, unless the
output budget was set explicitly; other hosts get the configured budget. Over the MCP SDK's own client, in
memory and over stdio, with the client named as each host names itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters
from mcp_types import Implementation

from fusion_mcp.config import load_settings
from fusion_mcp.mcp_server.host_limits import HOST_KEEPS
from fusion_mcp.mcp_server.server import create_server
from tests.conftest import child_env, console_script, sim_env
from tests.fakes.provider_sim import ProviderSim
from tests.helpers import TOOL, structured, text

pytestmark = pytest.mark.anyio
PANEL = [f"x/m{i}-len6000" for i in range(3)]  # 18,000 characters of answers: over Codex's keep, under 24,000
CODEX = Implementation(name="codex-mcp-client", version="0.171.0")


def sizes(result: Any) -> tuple[int, int]:
    """(the text block's characters, the structured content's compact JSON characters)."""
    compact = json.dumps(result.structured_content, ensure_ascii=False, separators=(",", ":"))
    return len(text(result)), len(compact)


async def call(sim: ProviderSim, tmp_path: Path, info: Implementation | None, **extra: str) -> Any:
    env = sim_env(sim, FUSION_HOME=str(tmp_path), **extra)
    async with Client(create_server(load_settings(environ=env)), client_info=info) as client:
        return await client.call_tool(TOOL, {"prompt": "q", "analysis_models": PANEL})


async def test_a_result_for_codex_fits_what_codex_keeps(sim: ProviderSim, tmp_path: Path) -> None:
    result = await call(sim, tmp_path, CODEX)
    keep = HOST_KEEPS["codex-mcp-client"]
    assert all(size <= keep for size in sizes(result))
    data = structured(result)
    assert [r["trimmed"] for r in data["responses"]] == [True] * 3
    assert {r["full_chars"] for r in data["responses"]} == {6000}


@pytest.mark.parametrize(
    ("info", "extra"),
    [
        (Implementation(name="claude-code", version="2.1.332"), {}),
        (None, {}),
        (CODEX, {"FUSION_MAX_OUTPUT_CHARS": "24000"}),  # set explicitly: the user's choice wins
    ],
    ids=["another-host", "unnamed", "codex-with-an-explicit-budget"],
)
async def test_other_hosts_and_explicit_budgets_get_the_whole_budget(
    sim: ProviderSim, tmp_path: Path, info: Implementation | None, extra: dict[str, str]
) -> None:
    result = await call(sim, tmp_path, info, **extra)
    data = structured(result)
    assert not any(r.get("trimmed") for r in data["responses"])
    assert [len(r["content"]) for r in data["responses"]] == [6000] * 3
    assert all(size <= 24_000 for size in sizes(result))


async def test_codex_over_stdio_on_the_2026_protocol_is_recognised(sim: ProviderSim, tmp_path: Path) -> None:
    """The client's name travels in each request's _meta on the 2026-07-28 protocol: the budget follows it."""
    params = StdioServerParameters(
        command=console_script(), args=[], env=child_env(**sim_env(sim, FUSION_HOME=str(tmp_path)))
    )
    async with Client(params, client_info=CODEX, mode="2026-07-28") as client:
        result = await client.call_tool(TOOL, {"prompt": "q", "analysis_models": PANEL})
    assert all(size <= HOST_KEEPS["codex-mcp-client"] for size in sizes(result))
    assert all(r["trimmed"] for r in structured(result)["responses"])
