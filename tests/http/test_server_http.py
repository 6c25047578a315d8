"""``fusion-mcp serve --transport http`` exactly as the README starts it, driven by the SDK's client."""

from __future__ import annotations

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from fusion_mcp.providers.client import DEPTH_HEADER
from tests.conftest import API_KEY, PANEL
from tests.fakes.provider_sim import ProviderSim, Reply
from tests.helpers import TOOL, dump, structured

pytestmark = pytest.mark.anyio


def test_healthz_says_only_liveness_and_version(http_server: str) -> None:
    response = httpx2.get(f"{http_server}/healthz")
    assert response.status_code == 200
    assert set(response.json()) == {"status", "version"} and response.json()["status"] == "ok"


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_call_over_streamable_http_with_progress(sim: ProviderSim, http_server: str, mode: str) -> None:
    progress: list[str] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append(message or "")

    async with Client(f"{http_server}/mcp", mode=mode) as client:  # type: ignore[arg-type]
        result = await client.call_tool(TOOL, {"prompt": "q"}, progress_callback=on_progress)
    data = structured(result)
    assert data["status"] == "ok" and [r["model"] for r in data["responses"]] == list(PANEL)
    assert progress[0].startswith("fusion started") and progress[-1].startswith("analysis ready")
    assert all(r.headers[DEPTH_HEADER] == "1" for r in sim.requests)
    assert API_KEY not in dump(result)


@pytest.mark.parametrize("depth", ["1", "3", "garbage"])
async def test_depth_header_refuses_nested_calls_without_upstream_requests(
    sim: ProviderSim, http_server: str, depth: str
) -> None:
    async with (
        httpx2.AsyncClient(headers={DEPTH_HEADER: depth}) as http,
        Client(streamable_http_client(f"{http_server}/mcp", http_client=http), mode="legacy") as client,
    ):
        result = await client.call_tool(TOOL, {"prompt": "q"})
    assert result.is_error and structured(result)["failure_reason"] == "fusion_invocation_capped"
    assert sim.requests == []


async def test_depth_zero_header_is_a_top_level_call(sim: ProviderSim, http_server: str) -> None:
    sim.script(PANEL[0], Reply(content="first"))
    async with (
        httpx2.AsyncClient(headers={DEPTH_HEADER: "0"}) as http,
        Client(streamable_http_client(f"{http_server}/mcp", http_client=http), mode="legacy") as client,
    ):
        result = await client.call_tool(TOOL, {"prompt": "q"})
    assert structured(result)["responses"][0]["content"] == "first"


def test_foreign_host_header_is_refused(http_server: str) -> None:
    response = httpx2.post(
        f"{http_server}/mcp",
        headers={
            "Host": "evil.example",
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
        },
        content=b"{}",
    )
    assert response.status_code == 421
