"""Streamable HTTP for shared use, against ``fusion-mcp serve`` started as the README shows."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests import servers
from tests.conftest import API_KEY, PANEL, child_env, console_script, shared_env, sim_env
from tests.fakes.provider_sim import ProviderSim, Reply
from tests.helpers import INIT, MCP_HEADERS, TOOL, structured, wait_until

TOKEN = "tok-0123456789-abcdef-SECRET"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def _shared(_sim: ProviderSim) -> Iterator[servers.Running]:
    with servers.http_server(shared_env(_sim, FUSION_HTTP_TOKEN=TOKEN), host="0.0.0.0") as running:
        yield running


@pytest.fixture
def shared(sim: ProviderSim, _shared: servers.Running) -> Iterator[servers.Running]:
    """Bound to every interface, with a token: the shared-use set-up (one server for the module)."""
    logged = len(_shared.stderr)
    yield _shared
    new = _shared.stderr[logged:]
    assert TOKEN not in new and API_KEY not in new
    assert "Traceback" not in new, new


def post(base: str, body: bytes | dict, **headers: str) -> httpx2.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx2.post(f"{base}/mcp", content=content, headers={**MCP_HEADERS, **headers}, timeout=10)


def test_no_token_or_a_wrong_one_gets_401_with_www_authenticate(shared: servers.Running) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": TOKEN}):
        response = post(shared.base, INIT, **headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == 'Bearer realm="fusion-mcp"'
        assert TOKEN not in response.text
    assert post(shared.base, INIT, **AUTH).status_code == 200


def test_healthz_is_open_and_says_only_liveness_and_version(shared: servers.Running) -> None:
    response = httpx2.get(f"{shared.base}/healthz")
    assert response.status_code == 200 and set(response.json()) == {"status", "version"}


def test_foreign_host_gets_421_and_foreign_origin_403(shared: servers.Running) -> None:
    assert post(shared.base, INIT, Host="attacker.example", **AUTH).status_code == 421
    assert post(shared.base, INIT, Origin="http://attacker.example", **AUTH).status_code == 403
    assert post(shared.base, INIT, Origin="http://localhost:3000", **AUTH).status_code == 200


def test_bodies_over_one_mib_are_refused_before_parsing(shared: servers.Running) -> None:
    big = b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"pad": "' + b"x" * (2 * 2**20) + b'"}}'
    assert post(shared.base, big, **AUTH).status_code == 413

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    chunked = httpx2.post(f"{shared.base}/mcp", content=chunks(), headers={**MCP_HEADERS, **AUTH}, timeout=10)
    assert chunked.status_code == 413


@pytest.mark.anyio
async def test_authorized_client_calls_the_tool_and_the_token_goes_nowhere(
    sim: ProviderSim, shared: servers.Running
) -> None:
    async with (
        httpx2.AsyncClient(headers=AUTH) as http,
        Client(streamable_http_client(f"{shared.base}/mcp", http_client=http), mode="legacy") as client,
    ):
        data = structured(await client.call_tool(TOOL, {"prompt": "q"}))
    assert data["status"] == "ok" and TOKEN not in json.dumps(data)
    assert sim.requests and all(TOKEN not in json.dumps(r.headers) + json.dumps(r.body) for r in sim.requests)


def test_refuses_to_listen_beyond_loopback_without_a_token(sim: ProviderSim) -> None:
    out = subprocess.run(
        [console_script(), "serve", "--transport", "http", "--host", "0.0.0.0", "--port", str(servers.free_port())],
        env=child_env(**sim_env(sim)),
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 2
    assert out.stderr.startswith("fusion-mcp: refusing to listen on 0.0.0.0 without FUSION_HTTP_TOKEN")


@pytest.mark.anyio
@pytest.mark.parametrize(("queue_s", "second"), [("0.3", "server_busy"), ("10", "ok")])
async def test_concurrency_cap_and_queue_timeout(sim: ProviderSim, queue_s: str, second: str) -> None:
    # Members take a second (the analyst, the first member's id too, does not): a run holds its slot ~1 s.
    sim.scripts[PANEL[0]] = lambda body: Reply(latency=1) if body.get("stream") else Reply()
    env = sim_env(sim, FUSION_MAX_CONCURRENT="1", FUSION_QUEUE_TIMEOUT_S=queue_s)
    results: dict[str, dict] = {}
    with servers.http_server(env) as running:

        async def call(name: str) -> None:
            async with Client(f"{running.base}/mcp", mode="legacy") as client:
                result = await client.call_tool(TOOL, {"prompt": name})
                results[name] = structured(result) | {"is_error": result.is_error}

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "first")
            await wait_until(lambda: len(sim.requests) >= 1)
            tg.start_soon(call, "second")
    assert results["first"]["status"] == "ok"
    if second == "server_busy":
        assert results["second"]["is_error"] and results["second"]["failure_reason"] == "server_busy"
        assert results["second"]["error"].startswith("server busy: 1 fusion run in progress (FUSION_MAX_CONCURRENT)")
        assert results["second"]["timings"]["queued"] > 0  # it waited the queue's time out
        assert not any(r.body["messages"][-1]["content"].endswith("second") for r in sim.requests)
    else:
        assert results["second"]["status"] == "ok"


@pytest.mark.anyio
async def test_a_run_whose_client_is_gone_is_cancelled(sim: ProviderSim, http_server: str) -> None:
    """A client that drops the SSE stream without sending notifications/cancelled still frees the run."""
    for model in PANEL:
        sim.script(model, Reply(latency=30))
    async with httpx2.AsyncClient(base_url=http_server, headers=MCP_HEADERS, timeout=10) as http:
        init = await http.post("/mcp", json=INIT)
        session = {"mcp-session-id": init.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
        await http.post("/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session)
        call = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": TOOL, "arguments": {"prompt": "q"}},
        }
        async with http.stream("POST", "/mcp", json=call, headers=session):
            await wait_until(lambda: len(sim.requests) == 3)
        # The response stream is closed here, with the run still in flight.
    await wait_until(lambda: len(sim.disconnects) == 3, 15)


@pytest.mark.anyio
async def test_stateless_mode_serves_both_protocol_eras(sim: ProviderSim) -> None:
    with servers.http_server(sim_env(sim), "--stateless") as running:
        for mode in ("auto", "legacy"):
            async with Client(f"{running.base}/mcp", mode=mode) as client:
                data = structured(await client.call_tool(TOOL, {"prompt": "q"}))
            assert data["status"] == "ok" and len(data["responses"]) == 3, mode
