"""``fusion-mcp serve`` at the command line: its arguments, a port it cannot have, what it says when it serves."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator

import pytest

from tests import servers
from tests.conftest import child_env, console_script, sim_env
from tests.fakes.provider_sim import ProviderSim


def serve(sim: ProviderSim, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [console_script(), "serve", "--transport", "http", *args],
        env=child_env(**sim_env(sim)),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("port", ["99999", "0", "-1", "http"])
def test_a_port_out_of_range_is_an_argument_error(sim: ProviderSim, port: str) -> None:
    done = serve(sim, "--port", port)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.endswith(
        f"fusion-mcp serve: error: argument --port: must be a whole number from 1 to 65535 (got '{port}')\n"
    ), done.stderr


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port another program listens on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one process", "workers"])
def test_a_busy_port_is_named_with_a_hint_and_exit_1(sim: ProviderSim, taken_port: int, workers: list[str]) -> None:
    done = serve(sim, "--port", str(taken_port), *workers)
    assert done.returncode == 1
    # Nothing started, nothing else said: one line with what to do.
    assert done.stderr == (
        f"fusion-mcp: port {taken_port} on 127.0.0.1 is in use: stop the other server or pick another --port\n"
    )


def test_serve_says_where_it_serves(_http_server: servers.Running) -> None:
    base = _http_server.base
    said = _http_server.stderr
    assert said.count("fusion-mcp: serving") == 1
    assert f"fusion-mcp: serving {base}; Ctrl-C stops\n" in said
    assert f"  MCP (Streamable HTTP):   {base}/mcp\n" in said
    assert f"  OpenAI-compatible chat:  {base}/v1/chat/completions\n" in said
    assert f"  health:                  {base}/healthz\n" in said


def test_an_unknown_variable_is_warned_once_per_start_even_with_workers(sim: ProviderSim) -> None:
    with servers.http_server(sim_env(sim, FUSION_ANALYSYS_MODELS="a/x"), "--workers", "2") as running:
        pass
    warning = (
        "WARNING fusion_mcp: environment variable FUSION_ANALYSYS_MODELS is not a setting of fusion-mcp and is "
        "ignored; did you mean 'FUSION_ANALYSIS_MODELS'?"
    )
    assert running.stderr.count(warning) == 1, running.stderr


def test_the_stdio_server_started_from_a_terminal_says_what_it_is(sim: ProviderSim) -> None:
    import os
    import select
    import signal

    from fusion_mcp.cli.main import STDIO_HINT

    master, slave = os.openpty()
    try:
        with subprocess.Popen(
            [console_script()],
            env=child_env(**sim_env(sim)),
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ) as proc:
            assert proc.stderr is not None
            said = b""
            while STDIO_HINT.encode() not in said:
                ready, _, _ = select.select([proc.stderr], [], [], 30)
                assert ready and proc.poll() is None, said
                said += os.read(proc.stderr.fileno(), 65536)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=30) == 0
    finally:
        os.close(slave)
        os.close(master)
    assert said.decode().startswith(STDIO_HINT + "\n")


def test_the_stdio_server_a_host_launches_says_nothing_of_the_kind(sim: ProviderSim) -> None:
    from fusion_mcp.cli.main import STDIO_HINT

    done = subprocess.run(
        [console_script(), "serve"], env=child_env(**sim_env(sim)), input="", capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and STDIO_HINT not in done.stderr and done.stdout == ""


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback")
@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one process", "workers"])
def test_an_ipv6_host_is_served_on_ipv6_only(sim: ProviderSim, workers: list[str]) -> None:
    """Each address of --host gets a socket of its own family; an IPv6 one takes IPv6 only, as asyncio's does."""
    port = servers.free_port()
    with subprocess.Popen(
        [console_script(), "serve", "--transport", "http", "--host", "::1", "--port", str(port), *workers],
        env=child_env(**sim_env(sim)),
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    ) as proc:
        try:
            assert servers.wait_for_health(f"http://[::1]:{port}/healthz", proc)
            with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=5):
                pass
        finally:
            proc.terminate()
            proc.wait(timeout=15)
