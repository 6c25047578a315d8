"""``fusion-mcp serve --transport http --workers 2``: both protocol eras, sessions that cross workers,
cancellation, a worker that dies, and stopping — against the real command, with real concurrent clients."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests import servers
from tests.conftest import PANEL, child_env, console_script, shared_env, sim_env
from tests.fakes.provider_sim import ProviderSim, Reply
from tests.helpers import INIT, LEGACY, MCP_HEADERS, TOOL, structured, wait_for, wait_until

BAD_SIGNS = ("Traceback", "Exception in ASGI", "Task exception was never retrieved")


def slow_when_asked(sim: ProviderSim) -> None:
    """Members answer at once, except to a prompt containing "slow", which they think about for 30 s."""
    for model in PANEL:
        sim.scripts[model] = lambda body: Reply(latency=30) if "slow" in json.dumps(body["messages"]) else Reply()


@pytest.fixture(scope="module")
def _workers(_sim: ProviderSim) -> Iterator[servers.Running]:
    with servers.http_server(shared_env(_sim), "--workers", "2") as running:
        yield running


@pytest.fixture
def workers(sim: ProviderSim, _workers: servers.Running) -> Iterator[servers.Running]:
    """One ``--workers 2`` server for the module; each test's part of its log must be clean."""
    slow_when_asked(sim)
    logged = len(_workers.stderr)
    yield _workers
    new = _workers.stderr[logged:]
    assert not [s for s in BAD_SIGNS if s in new], new


@asynccontextmanager
async def on_worker(
    base: str, wanted: int | None = None, avoid: int | None = None
) -> AsyncIterator[httpx2.AsyncClient]:
    """A client whose one connection landed on worker ``wanted`` (or on any worker but ``avoid``)."""
    for _ in range(200):
        client = httpx2.AsyncClient(
            base_url=base, headers=MCP_HEADERS, timeout=30, limits=httpx2.Limits(max_connections=1)
        )
        worker = (await client.get("/healthz")).json()["worker"]
        if (wanted is None or worker == wanted) and worker != avoid:
            try:
                yield client
            finally:
                await client.aclose()
            return
        await client.aclose()
    pytest.fail("the kernel never put a connection on the wanted worker")


async def open_session(base: str) -> tuple[str, int]:
    """A 2025-era session, and the worker that holds it."""
    async with on_worker(base) as http:
        worker = (await http.get("/healthz")).json()["worker"]
        init = await http.post("/mcp", json=INIT)
        session = init.headers["mcp-session-id"]
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        await http.post("/mcp", json=note, headers={"mcp-session-id": session, "mcp-protocol-version": LEGACY})
    return session, worker


def events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:") and line[5:].strip()]


def call(prompt: str, call_id: int = 2) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": call_id,
        "method": "tools/call",
        "params": {"name": TOOL, "arguments": {"prompt": prompt}, "_meta": {"progressToken": "p"}},
    }


def no_keepalive() -> httpx2.AsyncClient:
    """Every request on a new connection, so a session's requests land on either worker."""
    timeout = httpx2.Timeout(30, read=300)
    return httpx2.AsyncClient(timeout=timeout, limits=httpx2.Limits(max_keepalive_connections=0))


@pytest.mark.anyio
async def test_a_session_request_on_the_other_worker_is_relayed_with_progress_and_result(
    sim: ProviderSim, workers: servers.Running
) -> None:
    session, home = await open_session(workers.base)
    assert session.startswith(f"w{home}.")
    headers = {"mcp-session-id": session, "mcp-protocol-version": LEGACY}
    async with on_worker(workers.base, avoid=home) as elsewhere:
        response = await elsewhere.post("/mcp", json=call("relayed"), headers=headers)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        sent = events(response.text)
        listed = await elsewhere.post("/mcp", json={"jsonrpc": "2.0", "id": 3, "method": "tools/list"}, headers=headers)
    progress = [e for e in sent if e.get("method") == "notifications/progress"]
    assert [p["params"]["progress"] for p in progress] == sorted(p["params"]["progress"] for p in progress)
    assert any("1/3 answered" in p["params"]["message"] for p in progress)
    result = sent[-1]["result"]
    assert result["structuredContent"]["status"] == "ok" and len(result["structuredContent"]["responses"]) == 3
    assert TOOL in [t["name"] for t in events(listed.text)[-1]["result"]["tools"]]
    # The session's id is the same on both workers' answers: the client never sees the SDK's own.
    assert response.headers.get("mcp-session-id", session) == session


@pytest.mark.anyio
async def test_session_ids_no_worker_holds_get_404(workers: servers.Running) -> None:
    session, home = await open_session(workers.base)
    untagged = session.split(".", 1)[1]
    other = f"w{1 - home}.{untagged}"  # a real SDK id, under the wrong worker's tag: that worker has no such session
    for wrong in (untagged, "w7." + untagged, other, "x.y.z"):
        async with on_worker(workers.base) as http:
            note = {"jsonrpc": "2.0", "id": 9, "method": "tools/list"}
            response = await http.post(
                "/mcp", json=note, headers={"mcp-session-id": wrong, "mcp-protocol-version": LEGACY}
            )
        assert response.status_code == 404, wrong


@pytest.mark.anyio
async def test_both_eras_run_concurrently_across_two_workers(sim: ProviderSim, workers: servers.Running) -> None:
    """Three 2025-era clients (every request on a new connection, so their sessions cross workers) and
    three 2026-era clients, two calls each, all at once."""
    results: dict[str, list[dict[str, Any]]] = {}
    progress: dict[str, int] = {}

    async def client(name: str, mode: str) -> None:
        http = no_keepalive() if mode == "legacy" else None
        transport = streamable_http_client(f"{workers.base}/mcp", http_client=http)
        async with Client(transport, mode=mode) as c:
            for n in range(2):

                async def on_progress(done: float, total: float | None, message: str | None) -> None:
                    progress[name] = progress.get(name, 0) + 1

                result = await c.call_tool(TOOL, {"prompt": f"{name} call {n}"}, progress_callback=on_progress)
                results.setdefault(name, []).append(structured(result))
        if http is not None:
            await http.aclose()

    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(client, f"legacy{i}", "legacy")
            tg.start_soon(client, f"modern{i}", "auto")
    assert sorted(results) == sorted([f"legacy{i}" for i in range(3)] + [f"modern{i}" for i in range(3)])
    for name, answers in results.items():
        assert [a["status"] for a in answers] == ["ok", "ok"], name
        assert all(len(a["responses"]) == 3 for a in answers), name
        assert progress.get(name, 0) >= 2 * 4, name  # members, analyst: each call reports its steps


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_cancelling_a_call_closes_its_upstream_requests_through_two_workers(
    sim: ProviderSim, workers: servers.Running, mode: str
) -> None:
    """2025 era: the SDK sends notifications/cancelled (on a new connection: either worker); 2026 era: it
    closes the call's stream. Either way the run stops and every member's request is closed."""
    http = no_keepalive() if mode == "legacy" else None
    async with Client(streamable_http_client(f"{workers.base}/mcp", http_client=http), mode=mode) as c:
        async with anyio.create_task_group() as tg:
            tg.start_soon(c.call_tool, TOOL, {"prompt": f"slow {mode}"})
            await wait_until(lambda: len(sim.requests) == 3, 15)
            tg.cancel_scope.cancel()
        await wait_until(lambda: len(sim.disconnects) == 3, 15)
    if http is not None:
        await http.aclose()
    assert sorted(sim.disconnects) == sorted(PANEL) and len(sim.requests) == 3


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["notification", "dropped stream"])
async def test_cancelling_a_relayed_call_reaches_the_worker_that_runs_it(
    sim: ProviderSim, workers: servers.Running, how: str
) -> None:
    session, home = await open_session(workers.base)
    headers = {"mcp-session-id": session, "mcp-protocol-version": LEGACY}
    async with on_worker(workers.base, avoid=home) as elsewhere:
        async with elsewhere.stream("POST", "/mcp", json=call("slow relayed", 5), headers=headers):
            await wait_until(lambda: len(sim.requests) == 3, 15)
            if how == "notification":
                async with on_worker(workers.base, avoid=home) as other:
                    note = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 5}}
                    assert (await other.post("/mcp", json=note, headers=headers)).status_code == 202
                await wait_until(lambda: len(sim.disconnects) == 3, 15)
        # "dropped stream": the relayed response stream is closed here, with the run in flight.
        await wait_until(lambda: len(sim.disconnects) == 3, 15)
    assert sorted(sim.disconnects) == sorted(PANEL)


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a parent that does not reap is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_dead_worker_is_restarted_and_the_supervisor_stops_them_all(sim: ProviderSim) -> None:
    with servers.http_server(sim_env(sim), "--workers", "2") as running:
        first = children(running.proc.pid)
        assert len(first) == 2
        os.kill(first[0], signal.SIGKILL)
        wait_for(lambda: len(set(children(running.proc.pid)) - set(first)) == 1, 15)
        seen: set[int] = set()
        wait_for(lambda: seen.add(httpx2.get(f"{running.base}/healthz").json()["worker"]) or seen == {0, 1}, 20)
        later = children(running.proc.pid)
        running.proc.send_signal(signal.SIGTERM)
        assert running.proc.wait(timeout=20) == 0
        assert not any(alive(pid) for pid in later)
        with pytest.raises(httpx2.TransportError):
            httpx2.get(f"{running.base}/healthz", timeout=1)
        assert "worker 0 exited with status -9; restarting it" in running.stderr


@pytest.mark.anyio
async def test_a_restarted_worker_s_new_sessions_are_relayed_to_at_once(sim: ProviderSim) -> None:
    slow_when_asked(sim)
    with servers.http_server(sim_env(sim), "--workers", "2") as running:
        session, home = await open_session(running.base)
        tools = {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}

        async def relayed(session: str) -> int:
            async with on_worker(running.base, avoid=home) as elsewhere:
                headers = {"mcp-session-id": session, "mcp-protocol-version": LEGACY}
                return (await elsewhere.post("/mcp", json=tools, headers=headers)).status_code

        assert await relayed(session) == 200  # the other worker now knows the way to this one
        (pid,) = [p for p in children(running.proc.pid) if f"--worker-index\0{home}\0" in cmdline(p)]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: len(children(running.proc.pid)) == 2 and pid not in children(running.proc.pid), 15)
        for _ in range(50):  # a session on the restarted worker (the kernel picks the worker per connection)
            session, worker = await open_session(running.base)
            if worker == home:
                break
        assert worker == home
        # Relayed to the worker's new port on the first try (not to the dead one's, which answers 404).
        assert await relayed(session) == 200


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_text()


def test_workers_of_a_killed_supervisor_stop_too(sim: ProviderSim) -> None:
    with servers.http_server(sim_env(sim), "--workers", "2") as running:
        pids = children(running.proc.pid)
        running.proc.kill()
        running.proc.wait(timeout=5)
        wait_for(lambda: not any(alive(pid) for pid in pids), 15)


def test_a_supervisor_that_is_pid_1_keeps_its_workers(sim: ProviderSim, tmp_path: Path) -> None:
    """A container started with ``CMD ["fusion-mcp", "serve", ..., "--workers", "4"]`` makes the supervisor pid 1."""
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        pytest.skip("needs unshare(1) and root to start the supervisor as pid 1 of a new pid namespace")
    port = servers.free_port()
    command = [unshare, "--pid", "--fork", "--mount-proc", console_script(), "serve", "--transport", "http"]
    log = tmp_path / "stderr.log"
    with (
        log.open("wb") as sink,
        subprocess.Popen(
            [*command, "--port", str(port), "--workers", "2"],
            env=child_env(**sim_env(sim)),
            stdin=subprocess.DEVNULL,
            stderr=sink,
        ) as proc,
    ):
        seen: set[int] = set()

        def both_answered() -> bool:
            try:
                seen.add(httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=1).json()["worker"])
            except httpx2.TransportError:
                pass
            return seen == {0, 1}

        try:
            wait_for(both_answered, 20)
        finally:
            (supervisor,) = children(proc.pid)  # pid 1 in its namespace
            os.kill(supervisor, signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
    assert "restarting" not in log.read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--transport", "http", "--workers", "0"],
            "--workers: must be a whole number from 1 to 64, or auto (got '0')",
        ),
        (["--transport", "http", "--workers", "many"], "--workers: must be a whole number from 1 to 64, or auto"),
        (["--workers", "2"], "fusion-mcp: --workers needs --transport http"),
    ],
)
def test_bad_workers_arguments_are_named(args: list[str], message: str) -> None:
    done = subprocess.run(
        [console_script(), "serve", *args],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2 and message in done.stderr, done.stderr


def test_the_supervisor_alone_says_where_the_workers_serve(workers: servers.Running) -> None:
    said = workers.stderr
    assert said.count("fusion-mcp: serving") == 1, said
    assert f"fusion-mcp: serving {workers.base} with 2 workers; Ctrl-C stops\n" in said
    assert f"  MCP (Streamable HTTP):   {workers.base}/mcp\n" in said
    assert f"  OpenAI-compatible chat:  {workers.base}/v1/chat/completions\n" in said


def test_a_busy_port_is_reported_at_once(sim: ProviderSim) -> None:
    with servers.http_server(sim_env(sim)) as running:
        port = running.base.rsplit(":", 1)[1]
        done = subprocess.run(
            [console_script(), "serve", "--transport", "http", "--port", port, "--workers", "2"],
            env=child_env(**sim_env(sim)),
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 1
    busy = f"fusion-mcp: port {port} on 127.0.0.1 is in use: stop the other server or pick another --port"
    assert busy in done.stderr
