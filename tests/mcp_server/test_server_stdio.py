"""The console script as a host launches it: a subprocess speaking MCP over stdio."""

from __future__ import annotations

import subprocess
import sys

import pytest
from mcp import Client, StdioServerParameters

from fusion_mcp.providers.client import DEPTH_HEADER
from tests.conftest import ANALYST, API_KEY, PANEL, child_env, console_script, sim_env
from tests.fakes.provider_sim import ProviderSim, Reply
from tests.helpers import ANALYSIS_KEYS, TOOL, structured

pytestmark = pytest.mark.anyio


def stdio(sim: ProviderSim, **env: str) -> Client:
    params = StdioServerParameters(command=console_script(), args=[], env=child_env(**sim_env(sim, **env)))
    return Client(params, mode="legacy")


async def test_three_member_panel_over_stdio_returns_every_field(sim: ProviderSim) -> None:
    async with stdio(sim) as client:
        assert [t.name for t in (await client.list_tools()).tools] == [TOOL]
        result = await client.call_tool(TOOL, {"prompt": "What is 6*7?"})
    data = structured(result)
    assert data["status"] == "ok" and not result.is_error
    assert set(data["analysis"]) == ANALYSIS_KEYS
    assert [r["model"] for r in data["responses"]] == list(PANEL)
    assert data["failed_models"] == [] and data["analyst_model"] == ANALYST
    assert data["usage"]["total"]["cost"] > 0 and data["timings"]["total"] > 0 and data["run_id"].startswith("fus_")
    assert all(r.headers[DEPTH_HEADER] == "1" for r in sim.requests)


async def test_failures_over_stdio(sim: ProviderSim) -> None:
    sim.script(PANEL[1], Reply(status=502, error_message="model down"))
    async with stdio(sim) as client:
        one_failed = structured(await client.call_tool(TOOL, {"prompt": "q"}))
        for model in PANEL:
            sim.script(model, Reply(status=502, error_message="model down"))
        all_failed = await client.call_tool(TOOL, {"prompt": "q"})
    assert one_failed["status"] == "ok"
    assert one_failed["failed_models"] == [{"model": PANEL[1], "error": "HTTP 502: model down", "status_code": 502}]
    assert all_failed.is_error and structured(all_failed)["failure_reason"] == "all_panels_failed"


async def test_broken_analyst_json_twice_over_stdio(sim: ProviderSim) -> None:
    sim.scripts[ANALYST] = lambda body: Reply(content="{broken") if "response_format" in body else Reply()
    async with stdio(sim) as client:
        data = structured(await client.call_tool(TOOL, {"prompt": "q"}))
    assert "analysis" not in data and data["analysis_error"]["reason"] == "judge_not_valid_json"
    assert len(data["responses"]) == 3


async def test_nested_stdio_server_refuses_without_upstream_requests(sim: ProviderSim) -> None:
    async with stdio(sim, FUSION_DEPTH="1") as client:
        result = await client.call_tool(TOOL, {"prompt": "q"})
    assert result.is_error and structured(result)["failure_reason"] == "fusion_invocation_capped"
    assert sim.requests == []


def test_stderr_logs_never_carry_the_key(sim: ProviderSim) -> None:
    """Drive one call by hand over raw JSON-RPC lines and read everything the process wrote."""
    for model in PANEL:
        sim.script(model, Reply(status=401, error_message="bad key", echo_auth=True))
    lines = [
        '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25",'
        '"capabilities":{},"clientInfo":{"name":"t","version":"1"}}}',
        '{"jsonrpc":"2.0","method":"notifications/initialized"}',
        '{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"openrouter_fusion","arguments":{"prompt":"q"}}}',
    ]
    with subprocess.Popen(
        [console_script()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(**sim_env(sim, FUSION_LOG_LEVEL="DEBUG")),
        text=True,
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        proc.stdin.write(lines[0] + "\n")
        proc.stdin.flush()
        first = proc.stdout.readline()
        proc.stdin.write(lines[1] + "\n" + lines[2] + "\n")
        proc.stdin.flush()
        second = proc.stdout.readline()
        proc.stdin.close()
        stderr = proc.stderr.read()
        proc.wait(timeout=20)
    assert '"id":1' in first.replace(" ", "") and "all_panels_failed" in second
    assert "the API key was rejected" in second
    assert API_KEY not in first + second + stderr
    assert "run fus_" in stderr  # the log did say something about the run
    assert proc.returncode == 0


@pytest.mark.parametrize(
    ("env", "line"),
    [
        (
            {"FUSION_MAX_TOOL_CALLS": "0"},
            "invalid setting FUSION_MAX_TOOL_CALLS='0': must be a whole number from 1 to 16",
        ),
        (
            {"FUSION_ANALYSIS_MODELS": ",".join(f"m/{i}" for i in range(9))},
            "invalid setting FUSION_ANALYSIS_MODELS=",
        ),
        ({"FUSION_MAX_COMPLETION_TOKENS": "lots"}, "invalid setting FUSION_MAX_COMPLETION_TOKENS='lots'"),
        ({"OPENROUTER_BASE_URL": "ftp://x"}, "invalid setting OPENROUTER_BASE_URL='ftp://x': must be an http://"),
    ],
)
def test_bad_settings_stop_the_process_with_one_line(env: dict[str, str], line: str) -> None:
    proc = subprocess.run(
        [console_script()], env=child_env(**env), capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("fusion-mcp: " + line), proc.stderr


def test_version_and_help() -> None:
    version = subprocess.run([console_script(), "--version"], capture_output=True, text=True, timeout=30)
    assert version.returncode == 0 and version.stdout.startswith("fusion-mcp 0.")
    for args in ([], ["serve"], ["ask"]):
        out = subprocess.run([console_script(), *args, "--help"], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and "usage: fusion-mcp" in out.stdout
    module = subprocess.run([sys.executable, "-m", "fusion_mcp", "--version"], capture_output=True, text=True)
    assert module.stdout == version.stdout
