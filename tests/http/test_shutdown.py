"""Clean endings: a host closing stdin or signalling the stdio server, an HTTP server stopped, an HTTP client
cancelling mid-panel."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.conftest import PANEL, child_env, console_script, sim_env
from tests.fakes.provider_sim import ProviderSim, Reply
from tests.helpers import TOOL, wait_for, wait_until
from tests.servers import free_port

BAD_SIGNS = ("Traceback", "unclosed", "Task was destroyed", "never awaited", "Exception ignored")
INIT = (
    '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25",'
    '"capabilities":{},"clientInfo":{"name":"t","version":"1"}}}\n'
    '{"jsonrpc":"2.0","method":"notifications/initialized"}\n'
)
CALL = (
    '{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"openrouter_fusion","arguments":{"prompt":"q"}}}\n'
)


@contextmanager
def stdio_server_mid_call(sim: ProviderSim) -> Iterator[subprocess.Popen[str]]:
    """The stdio server as a host starts it, with a call in flight: every member's request reached upstream."""
    for model in PANEL:
        sim.script(model, Reply(latency=30))
    with subprocess.Popen(
        [console_script()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(**sim_env(sim, PYTHONWARNINGS="always", PYTHONDEVMODE="1")),
        text=True,
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        proc.stdin.write(INIT + CALL)
        proc.stdin.flush()
        wait_for(lambda: len(sim.requests) == 3)
        try:
            yield proc
        finally:
            proc.kill()


def test_closing_stdin_mid_run_exits_cleanly_and_closes_upstream(sim: ProviderSim) -> None:
    with stdio_server_mid_call(sim) as proc:
        assert proc.stdin is not None and proc.stderr is not None
        proc.stdin.close()
        returncode = proc.wait(timeout=15)
        stderr = proc.stderr.read()
    assert returncode == 0
    assert not [s for s in BAD_SIGNS if s in stderr], stderr
    wait_for(lambda: len(sim.disconnects) == 3)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_call_stops_the_stdio_server_promptly_and_closes_upstream(
    sim: ProviderSim, stop: signal.Signals
) -> None:
    """Hosts stop a server with SIGINT, then SIGTERM after a wait (Claude Code does); either must end it.
    Stdin stays open, as a host keeps it: only the signal may end the server."""
    with stdio_server_mid_call(sim) as proc:
        assert proc.stderr is not None
        proc.send_signal(stop)
        returncode = proc.wait(timeout=10)  # a hang detector, not a timing: before this fix it never exited
        stderr = proc.stderr.read()
    assert returncode == 0, stderr
    # It exited because its service had closed, not because the grace period (STOP_GRACE_S) ran out.
    assert "did not close within" not in stderr, stderr
    assert not [s for s in BAD_SIGNS if s in stderr], stderr
    assert f"stopping on {stop.name}: runs in progress are cancelled" in stderr
    wait_for(lambda: len(sim.disconnects) == 3)
    assert sorted(sim.disconnects) == sorted(PANEL)


def test_stopping_the_http_server_mid_run_exits_cleanly(sim: ProviderSim) -> None:
    import httpx2

    for model in PANEL:
        sim.script(model, Reply(latency=30))
    port = free_port()
    with subprocess.Popen(
        [console_script(), "serve", "--transport", "http", "--port", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=child_env(**sim_env(sim, PYTHONWARNINGS="always", PYTHONDEVMODE="1")),
        text=True,
    ) as proc:
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx2.get(f"{base}/healthz", timeout=1).status_code == 200
            except httpx2.TransportError:
                return False

        wait_for(up, 20)

        async def start_call() -> None:
            async with Client(f"{base}/mcp", mode="legacy") as client, anyio.create_task_group() as tg:

                async def call() -> None:
                    with pytest.raises(MCPError):  # the server went away mid-call: the client says so
                        await client.call_tool(TOOL, {"prompt": "q"})

                tg.start_soon(call)
                await wait_until(lambda: len(sim.requests) == 3)
                proc.send_signal(signal.SIGINT)
                with anyio.move_on_after(15):
                    await anyio.to_thread.run_sync(proc.wait)
                tg.cancel_scope.cancel()

        anyio.run(start_call)
        returncode = proc.wait(timeout=15)
        stderr = proc.stderr.read() if proc.stderr else ""
    assert returncode == 0, stderr
    assert not [s for s in BAD_SIGNS if s in stderr], stderr
    wait_for(lambda: len(sim.disconnects) == 3)


@pytest.mark.anyio
async def test_cancelling_over_http_mid_panel_closes_every_upstream_request(
    sim: ProviderSim,
    http_server: str,
) -> None:
    for model in PANEL:
        sim.script(model, Reply(latency=30))
    async with Client(f"{http_server}/mcp", mode="legacy") as client, anyio.create_task_group() as tg:
        tg.start_soon(client.call_tool, TOOL, {"prompt": "q"})
        await wait_until(lambda: len(sim.requests) == 3)
        tg.cancel_scope.cancel()
    await wait_until(lambda: len(sim.disconnects) == 3)
    assert sorted(sim.disconnects) == sorted(PANEL) and len(sim.requests) == 3
