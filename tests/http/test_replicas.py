"""Two replicas behind a real nginx (the documented ``docs/nginx/fusion-mcp.conf``) on one PostgreSQL.

Runs, cache hits and ``fusion://runs`` reads cross replicas; principals stay apart across them; the daily
cost cap counts what a principal spent on either; 2025-era sessions are routed to their replica by the
session id's tag, 2026-era calls go anywhere; cancellation reaches the run through the proxy.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2
import psycopg
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests import nginx, servers
from tests.conftest import PANEL, fresh_database, sim_env
from tests.fakes.provider_sim import ProviderSim, Reply, priced
from tests.helpers import INIT, LEGACY, MCP_HEADERS, TOOL, structured, wait_until

pytestmark = pytest.mark.anyio  # one module: pytest runs it in one worker (--dist loadfile), on the ports nginx expects
PEOPLE = tuple(f"p{i}" for i in range(6))
# Every principal has its own daily cap: the tests that are not about it spend under separate names.
TOKENS = {name: f"{name}-token-0123456789abcdef" for name in ("alice", "bob", "carol", "erin", *PEOPLE)}


@dataclass
class Deployment:
    proxy: nginx.Nginx
    replicas: dict[str, servers.Running]
    database_url: str

    async def written(self, *run_ids: str, cached: bool = False) -> None:
        """Until the replica that answered each run has written its record (and, ``cached``, its cache entry):
        a replica answers first and records after, so another one may read the store a moment too early."""

        def done() -> bool:
            with psycopg.connect(self.database_url, autocommit=True) as conn:
                ended = conn.execute(
                    "SELECT count(*) FROM fusion_runs WHERE run_id = ANY(%s) AND status <> 'running'", (list(run_ids),)
                ).fetchone()
                entries = conn.execute(
                    "SELECT count(*) FROM fusion_cache WHERE result::text LIKE ANY(%s)",
                    ([f"%{run_id}%" for run_id in run_ids],),
                ).fetchone()
            return ended == (len(run_ids),) and (not cached or entries == (len(run_ids),))

        await wait_until(done)


def priced_catalogue(sim: ProviderSim) -> None:
    sim.catalogue = [priced(m.lstrip("~")) for m in PANEL]
    sim.aliases = {m: priced(m.lstrip("~")) for m in PANEL}


@pytest.fixture(scope="module")
def _proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[nginx.Nginx]:
    """The nginx ``.ci/run`` started, else one of our own (skipped without nginx, except under CI)."""
    started = nginx.from_environment()
    if started is not None:
        yield started
        return
    if nginx.binary() is None:
        reason = "nginx is not installed (apt-get install nginx; .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(f"CI runs the replica tests, but {reason}")
        pytest.skip(reason)
    directory = tmp_path_factory.mktemp("nginx")
    running = nginx.start(directory)
    try:
        yield running
    finally:
        nginx.stop(directory)


@pytest.fixture(scope="module")
def _deployment(_sim: ProviderSim, _proxy: nginx.Nginx, pg_admin: str) -> Iterator[Deployment]:
    priced_catalogue(_sim)  # before the replicas start: they read the catalogue (prices) then
    with fresh_database(pg_admin) as url:
        env = sim_env(
            _sim,
            FUSION_DATABASE_URL=url,
            FUSION_CACHE="on",
            FUSION_HTTP_TOKENS=",".join(f"{name}:{token}" for name, token in TOKENS.items()),
            FUSION_MAX_COMPLETION_TOKENS="100",
            # A run here spends $0.006 (its worst case, ~$0.0047, is what admission counts): two fit, not three.
            FUSION_PRINCIPAL_MAX_COST_USD_PER_DAY="0.015",
        )
        with (
            servers.http_server(dict(env, FUSION_REPLICA="a"), port=_proxy.replicas["a"]) as a,
            servers.http_server(dict(env, FUSION_REPLICA="b"), port=_proxy.replicas["b"]) as b,
        ):
            yield Deployment(_proxy, {"a": a, "b": b}, url)


@pytest.fixture
def deployment(sim: ProviderSim, _deployment: Deployment) -> Iterator[Deployment]:
    priced_catalogue(sim)
    for model in PANEL:
        sim.scripts[model] = lambda body: Reply(latency=30) if "slow" in json.dumps(body["messages"]) else Reply()
    logged = {name: len(r.stderr) for name, r in _deployment.replicas.items()}
    yield _deployment
    for name, replica in _deployment.replicas.items():
        new = replica.stderr[logged[name] :]
        assert "Traceback" not in new and not any(t in new for t in TOKENS.values()), new


@asynccontextmanager
async def client(base: str, principal: str, mode: str = "auto", keepalive: bool = True) -> AsyncIterator[Client]:
    limits = httpx2.Limits() if keepalive else httpx2.Limits(max_keepalive_connections=0)
    headers = {"Authorization": f"Bearer {TOKENS[principal]}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=120), limits=limits) as http,
        Client(streamable_http_client(f"{base}/mcp", http_client=http), mode=mode) as connected,
    ):
        yield connected


def replica_url(deployment: Deployment, name: str) -> str:
    return deployment.replicas[name].base


async def test_runs_cache_and_reads_cross_replicas_and_principals_stay_apart(
    sim: ProviderSim, deployment: Deployment
) -> None:
    async with client(deployment.proxy.url, "alice") as alice:
        made = structured(await alice.call_tool(TOOL, {"prompt": "shared question"}))
    assert made["status"] == "ok"
    await deployment.written(made["run_id"], cached=True)
    spent = len(sim.requests)
    for name in ("a", "b"):  # the run was made on one of them: both know it
        async with client(replica_url(deployment, name), "alice") as alice:
            record = json.loads((await alice.read_resource(f"fusion://runs/{made['run_id']}")).contents[0].text)
            again = structured(await alice.call_tool(TOOL, {"prompt": "shared question"}))
        assert record["principal"] == "alice" and record["result"] == made, name
        assert again["cached"] is True and again["analysis"] == made["analysis"] and again["run_id"] != made["run_id"]
        async with client(replica_url(deployment, name), "bob") as bob:
            with pytest.raises(Exception, match="no run"):
                await bob.read_resource(f"fusion://runs/{made['run_id']}")
            listed = json.loads((await bob.read_resource("fusion://runs")).contents[0].text)
        assert made["run_id"] not in {r["run_id"] for r in listed}, name
    assert len(sim.requests) == spent  # every later answer came from the cache A or B filled


async def test_the_daily_cap_counts_what_a_principal_spent_on_either_replica(
    sim: ProviderSim, deployment: Deployment
) -> None:
    results = []
    for name, prompt in (("a", "carol on a"), ("b", "carol on b")):
        async with client(replica_url(deployment, name), "carol") as carol:
            results.append(structured(await carol.call_tool(TOOL, {"prompt": prompt})))
    assert [r["status"] for r in results] == ["ok", "ok"]
    await deployment.written(*(r["run_id"] for r in results))  # their usage, in place of their reservations
    sent = len(sim.requests)
    for name in ("a", "b"):
        async with client(replica_url(deployment, name), "carol") as carol:
            over = structured(await carol.call_tool(TOOL, {"prompt": f"one more on {name}"}))
        assert over["failure_reason"] == "cost_limit", name
        assert over["error"].startswith("daily cost cap: carol has spent $0.0120 today (UTC)"), over["error"]
        assert "resets at 00:00 UTC" in over["error"]
    assert len(sim.requests) == sent  # refused before anything was sent


async def test_sessions_are_routed_to_their_replica_and_both_eras_work_through_nginx(
    sim: ProviderSim, deployment: Deployment
) -> None:
    headers = {**MCP_HEADERS, "Authorization": f"Bearer {TOKENS['alice']}"}
    async with httpx2.AsyncClient(base_url=deployment.proxy.url, headers=headers, timeout=30) as http:
        sessions = [(await http.post("/mcp", json=INIT)).headers["mcp-session-id"] for _ in range(4)]
        assert {s.split(".", 1)[0] for s in sessions} == {"a", "b"}  # new sessions are spread
        for session in sessions:
            ids = {"mcp-session-id": session, "mcp-protocol-version": LEGACY}
            note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            assert (await http.post("/mcp", json=note, headers=ids)).status_code == 202
            listed = await http.post("/mcp", json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, headers=ids)
            assert listed.status_code == 200, session
        # The wrong replica does not know the session, and says how to route it.
        wrong = "b" if sessions[0].startswith("a.") else "a"
        ids = {**headers, "mcp-session-id": sessions[0], "mcp-protocol-version": LEGACY}
        misrouted = await http.post(
            f"{replica_url(deployment, wrong)}/mcp", json={"jsonrpc": "2.0", "id": 3, "method": "ping"}, headers=ids
        )
    assert misrouted.status_code == 404
    assert "route on the session id's first tag" in deployment.replicas[wrong].stderr

    results: dict[str, dict[str, Any]] = {}

    async def one(name: str, mode: str, principal: str) -> None:
        progress = 0

        async def on_progress(done: float, total: float | None, message: str | None) -> None:
            nonlocal progress
            progress += 1

        async with client(deployment.proxy.url, principal, mode, keepalive=False) as c:
            result = await c.call_tool(TOOL, {"prompt": f"through nginx {name}"}, progress_callback=on_progress)
        results[name] = structured(result) | {"progress": progress}

    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(one, f"legacy{i}", "legacy", PEOPLE[2 * i])
            tg.start_soon(one, f"modern{i}", "auto", PEOPLE[2 * i + 1])
    assert len(results) == 6
    for name, data in results.items():
        assert data["status"] == "ok" and len(data["responses"]) == 3, name
        assert data["progress"] >= 4, name


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_cancelling_through_nginx_closes_the_runs_upstream_requests(
    sim: ProviderSim, deployment: Deployment, mode: str
) -> None:
    """2025 era: notifications/cancelled, routed to the session's replica; 2026 era: the closed stream, which
    nginx passes on by closing its connection to the replica."""
    async with client(deployment.proxy.url, "erin", mode, keepalive=False) as c:
        async with anyio.create_task_group() as tg:
            tg.start_soon(c.call_tool, TOOL, {"prompt": f"slow through nginx {mode}"})
            await wait_until(lambda: len(sim.requests) == 3, 15)
            tg.cancel_scope.cancel()
        await wait_until(lambda: len(sim.disconnects) == 3, 15)
    assert sorted(sim.disconnects) == sorted(PANEL)
