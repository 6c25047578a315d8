"""The web tools load when first used: a server started with them off never imports the fetcher or lxml."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import child_env, sim_env
from tests.fakes.provider_sim import ProviderSim

WEB_MODULES = (
    "lxml",
    "trafilatura",
    "ddgs",
    "h2",
    "fusion_mcp.web.fetch",
    "fusion_mcp.web.search",
    "fusion_mcp.web.tools",
)
SCRIPT = f"""
import sys

import anyio
from mcp import Client

from fusion_mcp.config import load_settings
from fusion_mcp.mcp_server.server import create_server


async def main() -> None:
    async with Client(create_server(load_settings())) as client:
        result = await client.call_tool("openrouter_fusion", {{"prompt": "q"}})
    print("STATUS", result.structured_content["status"], file=sys.stderr)


anyio.run(main)
web = {WEB_MODULES!r}
print("LOADED", sorted(m for m in sys.modules if m in web or m.split(".")[0] in web), file=sys.stderr)
"""


@pytest.mark.parametrize(
    ("web_tools", "loaded"),
    [
        ("off", []),
        # Ours: the tool box opens with the service; lxml and ddgs wait for the first page or search.
        ("local", ["fusion_mcp.web.fetch", "fusion_mcp.web.search", "fusion_mcp.web.tools"]),
    ],
)
def test_the_stdio_server_imports_the_web_tools_only_when_they_are_on(
    sim: ProviderSim, web_tools: str, loaded: list[str]
) -> None:
    env = child_env(**sim_env(sim, FUSION_WEB_TOOLS=web_tools))
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60)
    assert "STATUS ok" in out.stderr, out.stderr
    assert f"LOADED {loaded!r}" in out.stderr, out.stderr
