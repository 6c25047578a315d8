"""A third-party client: the MCP Inspector CLI lists and calls the tool over stdio and Streamable HTTP.

``.ci/run`` installs Node 22 and the Inspector and sets ``FUSION_INSPECTOR`` to its ``mcp-inspector``
binary. Elsewhere these tests skip, except under CI, where a missing Inspector is a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator

import pytest

from tests import servers
from tests.conftest import API_KEY, PANEL, child_env, console_script, sim_env
from tests.fakes.provider_sim import ProviderSim, Reply
from tests.helpers import ANALYSIS_KEYS

INSPECTOR = os.environ.get("FUSION_INSPECTOR", "")
pytestmark = pytest.mark.inspector


@pytest.fixture(autouse=True)
def _need_inspector() -> Iterator[None]:
    if not INSPECTOR or not os.path.exists(INSPECTOR):
        if os.environ.get("CI"):
            pytest.fail("FUSION_INSPECTOR is not set to the mcp-inspector binary; .ci/run installs it")
        pytest.skip("the MCP Inspector CLI is not installed (set FUSION_INSPECTOR)")
    yield


def inspector(*args: str, exit_code: int = 0) -> dict:
    """Run the Inspector CLI; it exits 5 when the tool result has ``isError``."""
    env = child_env(MCP_INSPECTOR_SECRET_STORE="memory")
    out = subprocess.run(
        [INSPECTOR, "--cli", *args], env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )
    assert out.returncode == exit_code, out.stderr[-2000:]
    return json.loads(out.stdout)


def stdio_target(sim: ProviderSim, **env: str) -> list[str]:
    pairs = [f"{k}={v}" for k, v in sim_env(sim, **env).items()]
    return [console_script(), *[a for p in pairs for a in ("-e", p)]]


def test_inspector_lists_the_tool_over_stdio(sim: ProviderSim) -> None:
    listed = inspector(*stdio_target(sim), "--method", "tools/list")
    (tool,) = listed["tools"]
    assert tool["name"] == "openrouter_fusion" and "outputSchema" in tool
    assert tool["annotations"]["readOnlyHint"] is True


def test_inspector_calls_the_tool_over_stdio(sim: ProviderSim) -> None:
    result = inspector(
        *stdio_target(sim), "--method", "tools/call", "--tool-name", "openrouter_fusion", "--tool-arg", "prompt=6*7?"
    )
    data = result["structuredContent"]
    assert data["status"] == "ok" and [r["model"] for r in data["responses"]] == list(PANEL)
    assert set(data["analysis"]) == ANALYSIS_KEYS
    assert "## Consensus" in result["content"][0]["text"]
    assert API_KEY not in json.dumps(result)


def test_inspector_over_http_with_and_without_a_depth_header(sim: ProviderSim, http_server: str) -> None:
    url = f"{http_server}/mcp"
    call = [
        "--transport",
        "http",
        "--method",
        "tools/call",
        "--tool-name",
        "openrouter_fusion",
        "--tool-arg",
        "prompt=q",
    ]
    ok = inspector(url, *call)
    assert ok["structuredContent"]["status"] == "ok"
    sim.reset()
    nested = inspector(url, *call, "--header", "x-openrouter-fusion-depth: 1", exit_code=5)
    assert nested["isError"] is True
    assert nested["structuredContent"]["failure_reason"] == "fusion_invocation_capped"
    assert sim.requests == []


def test_inspector_over_http_with_a_token(sim: ProviderSim) -> None:
    token = "inspector-token-0123456789"
    with servers.http_server(sim_env(sim, FUSION_HTTP_TOKEN=token), host="0.0.0.0") as running:
        url = f"{running.base}/mcp"
        call = ["--transport", "http", "--method", "tools/call", "--tool-name", "openrouter_fusion"]
        call += ["--tool-arg", "prompt=q"]
        ok = inspector(url, *call, "--header", f"Authorization: Bearer {token}")
        assert ok["structuredContent"]["status"] == "ok"
        sim.reset()
        nested = inspector(
            url,
            *call,
            "--header",
            f"Authorization: Bearer {token}",
            "--header",
            "x-openrouter-fusion-depth: 1",
            exit_code=5,
        )
        assert nested["structuredContent"]["failure_reason"] == "fusion_invocation_capped" and sim.requests == []
        env = child_env(MCP_INSPECTOR_SECRET_STORE="memory")
        refused = subprocess.run(
            [INSPECTOR, "--cli", url, "--transport", "http", "--method", "tools/list"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        # Without the token the Inspector is told to authenticate (it reads the 401 + WWW-Authenticate).
        assert refused.returncode != 0 and "auth_required" in refused.stdout + refused.stderr
    assert token not in running.stderr


def test_inspector_settles_a_long_run_served_as_an_mcp_task(sim: ProviderSim) -> None:
    """A 2026-era client declaring the tasks extension gets a task and polls it to the end: the whole
    result, though the slow member took longer than one call may (1 s), where other clients get running."""
    sim.script(PANEL[1], Reply(latency=3))
    target = stdio_target(sim, FUSION_DEADLINE_S="1", FUSION_RUN_DEADLINE_S="30")
    call = ["--method", "tools/call", "--tool-name", "openrouter_fusion", "--tool-arg", "prompt=q"]
    data = inspector(*target, "--protocol-era", "modern", *call)["structuredContent"]
    assert data["status"] == "ok" and [r["model"] for r in data["responses"]] == list(PANEL)
    assert not any(r.get("truncated") for r in data["responses"]) and set(data["analysis"]) == ANALYSIS_KEYS
    sim.reset()
    sim.script(PANEL[1], Reply(latency=3))
    legacy = inspector(*target, "--protocol-era", "legacy", *call)["structuredContent"]
    assert legacy["status"] == "running" and legacy["pending"] == [PANEL[1]]
