"""Replicas on one PostgreSQL: runs, the cache and the daily cap cross them; principals stay apart; a replica
killed mid-run leaves no half-written run; ``runs``, ``usage`` and ``doctor`` read the database from anywhere."""

from __future__ import annotations

import json
import logging
import re
import signal
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import psycopg
import pytest
from mcp import Client

from fusion_mcp.config import load_settings
from fusion_mcp.core.models import FusionRequest, FusionResult
from fusion_mcp.mcp_server.server import RESULT_TOOL_NAME, create_server
from fusion_mcp.store.postgres import PostgresStore
from tests import servers
from tests.conftest import API_KEY, PANEL, child_env, console_script, sim_env
from tests.fakes.provider_sim import ProviderSim, Reply, priced
from tests.helpers import TOOL, over_http, structured, wait_until

pytestmark = pytest.mark.anyio
ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdefgh"


def rows(url: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(query).fetchall()  # type: ignore[arg-type]


async def command(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    done = await anyio.run_process([console_script(), *args], env=child_env(**env), check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_replicas_share_runs_the_cache_and_the_daily_cap_and_keep_principals_apart(
    sim: ProviderSim, database_url: str
) -> None:
    """Two replicas on one database. Alice's runs on A are read on B (resource, result tool, a run still going
    on A watched from B), an identical call on B is A's cached answer, and the cap counts what she spent on A;
    Bob sees none of it and has a cap of his own. ($0.015 a day; a run spends $0.006, its worst case ~$0.0047.)"""
    sim.catalogue = [priced(m.lstrip("~")) for m in PANEL]
    sim.aliases = {m: priced(m.lstrip("~")) for m in PANEL}
    env = sim_env(
        sim,
        FUSION_DATABASE_URL=database_url,
        FUSION_CACHE="on",
        FUSION_HTTP_TOKENS=f"alice:{ALICE},bob:{BOB}",
        FUSION_DEADLINE_S="1",
        FUSION_RUN_DEADLINE_S="30",
        FUSION_MAX_COMPLETION_TOKENS="100",
        FUSION_PRINCIPAL_MAX_COST_USD_PER_DAY="0.015",
    )
    with servers.in_process(env) as a, servers.in_process(env) as b:
        async with over_http(a, ALICE) as alice_a:
            made = structured(await alice_a.call_tool(TOOL, {"prompt": "q"}))
            sim.script(PANEL[1], Reply(latency=2.5), Reply())
            slow = structured(await alice_a.call_tool(TOOL, {"prompt": "slow"}))
        assert made["status"] == "ok" and slow["status"] == "running"
        async with over_http(b, ALICE) as alice_b:
            record = json.loads((await alice_b.read_resource(f"fusion://runs/{made['run_id']}")).contents[0].text)
            listed = json.loads((await alice_b.read_resource("fusion://runs")).contents[0].text)
            found = structured(await alice_b.call_tool(RESULT_TOOL_NAME, {"run_id": made["run_id"]}))
            watched = slow
            for _ in range(20):  # B watches the database until A records the run as done
                if watched["status"] != "running":
                    break
                watched = structured(await alice_b.call_tool(RESULT_TOOL_NAME, {"run_id": slow["run_id"]}))
            cached = structured(await alice_b.call_tool(TOOL, {"prompt": "q"}))
            over = structured(await alice_b.call_tool(TOOL, {"prompt": "another question"}))
        async with over_http(b, BOB) as bob_b:
            hidden = structured(await bob_b.call_tool(RESULT_TOOL_NAME, {"run_id": made["run_id"], "wait_s": 0}))
            with pytest.raises(Exception, match=f"no run '{made['run_id']}' in the history"):
                await bob_b.read_resource(f"fusion://runs/{made['run_id']}")
            bobs = structured(await bob_b.call_tool(TOOL, {"prompt": "q"}))
    assert record["principal"] == "alice" and record["result"] == made
    assert [r["run_id"] for r in listed] == [slow["run_id"], made["run_id"]] and listed[0]["status"] == "running"
    assert found == made
    assert watched["status"] == "ok" and watched["run_id"] == slow["run_id"] and len(watched["responses"]) == 3
    assert cached["cached"] is True and cached["analysis"] == made["analysis"]
    assert over["failure_reason"] == "cost_limit"
    assert over["error"].startswith("daily cost cap: alice has spent $0.0120 today (UTC); this run's worst-case")
    assert hidden["failure_reason"] == "run_not_found"
    assert bobs["status"] == "ok" and bobs.get("cached") is not True
    assert len(sim.requests) == 12  # alice's two runs and bob's: the cached and the refused call sent nothing
    usage = rows(database_url, "SELECT principal, count(DISTINCT run_id), sum(cost) FROM fusion_usage GROUP BY 1")
    assert sorted(usage) == [("alice", 3, pytest.approx(0.012)), ("bob", 1, pytest.approx(0.006))]


async def test_a_replica_killed_mid_run_leaves_no_half_written_run(sim: ProviderSim, database_url: str) -> None:
    """SIGKILL a server with a long run in flight, and ``ask`` with a run that ends with its call: each leaves
    its complete running row (which reads back as a valid record, the first written when the run started, the
    second while its members worked), no usage, and reservations that expire with their deadlines. ``runs``
    reads them from the database."""
    sim.script(PANEL[1], Reply(latency=60))
    env = sim_env(
        sim,
        FUSION_DATABASE_URL=database_url,
        FUSION_DEADLINE_S="1",
        FUSION_RUN_DEADLINE_S="120",
        FUSION_PRINCIPAL_MAX_COST_USD_PER_DAY="5",
    )
    with servers.http_server(env) as server:
        async with over_http(server.base) as client:
            running = structured(await client.call_tool(TOOL, {"prompt": "killed while running"}))
        assert running["status"] == "running"
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=15)
        pid = server.proc.pid
    asked = len(sim.requests)
    async with await anyio.open_process([console_script(), "ask", "killed mid-run"], env=child_env(**env)) as ask:
        # Killed once its members are at work and its running row is in (written beside them, off the way to
        # the answer; a run killed before it has no row, and gave no answer either).
        await wait_until(lambda: len(sim.requests) >= asked + 3, 20)
        await wait_until(lambda: rows(database_url, "SELECT count(*) FROM fusion_runs") == [(2,)], 20)
        ask.kill()
        await ask.wait()
    now = time.time()

    ((asked_run,),) = [r for r in rows(database_url, "SELECT run_id FROM fusion_runs") if r[0] != running["run_id"]]
    assert sorted(rows(database_url, "SELECT run_id, status FROM fusion_runs")) == sorted(
        [(running["run_id"], "running"), (asked_run, "running")]
    )
    assert rows(database_url, "SELECT count(*) FROM fusion_usage") == [(0,)]
    reservations = rows(database_url, "SELECT principal, expires FROM fusion_reservations ORDER BY expires")
    assert [p for p, _ in reservations] == ["local", "local"]
    assert now + 120 < reservations[0][1] <= now + 120 + 300 + 60  # the long run's deadline, and a margin
    assert now + 3600 < reservations[1][1] <= now + 3600 + 300 + 60  # ask has no deadline of its own: the most
    store = PostgresStore(database_url)
    try:
        record = await store.run(running["run_id"], "local")
    finally:
        await store.aclose()
    assert record is not None and record["owner"]["pid"] == pid
    assert FusionResult.model_validate(record["result"]).status == "running"
    assert FusionRequest.model_validate(record["request"]).prompt == "killed while running"
    store = PostgresStore(database_url)
    try:
        asked_record = await store.run(asked_run, "local")
    finally:
        await store.aclose()
    assert asked_record is not None and asked_record["owner"]["pid"] == ask.pid
    assert FusionRequest.model_validate(asked_record["request"]).prompt == "killed mid-run"
    code, out, _ = await command("runs", env=env)
    assert code == 0 and "  running  killed while running" in out and "  running  killed mid-run" in out


async def test_runs_usage_and_doctor_read_postgresql_from_any_machine(sim: ProviderSim, database_url: str) -> None:
    env = sim_env(sim, FUSION_DATABASE_URL=database_url, FUSION_HOME="/nonexistent/never-created")
    async with Client(create_server(load_settings(environ=env))) as client:
        made = structured(await client.call_tool(TOOL, {"prompt": "recorded in postgres"}))
    code, listing, _ = await command("runs", env=env)
    assert code == 0 and listing.startswith(made["run_id"]) and "3 models  ok  recorded in postgres" in listing
    code, shown, _ = await command("runs", made["run_id"], "--json", env=env)
    assert code == 0 and json.loads(shown)["result"] == made
    code, usage, _ = await command("usage", "--since", "1h", "--by", "model", env=env)
    assert code == 0, usage
    assert usage.splitlines()[1:] == [
        "model                            runs  requests  prompt tokens  completion tokens        cost",
        "~anthropic/claude-opus-latest       1         2            200                100     $0.0030",
        "~google/gemini-pro-latest           1         1            100                 50     $0.0015",
        "~openai/gpt-latest                  1         1            100                 50     $0.0015",
        "total                               1         4            400                200     $0.0060",
    ]
    code, doctor, _ = await command("doctor", env=env)
    parts = urlsplit(database_url)
    where = f"postgresql://{parts.username}@{parts.hostname}:{parts.port}{parts.path}"
    line = next(x for x in doctor.splitlines() if " database: " in x)
    assert code == 0, doctor
    assert re.fullmatch(
        rf"ok   database: {re.escape(where)}: PostgreSQL \d+\.\d+.*, schema version 1 \(this release's: 1\), "
        r"pool of 8 \(cache off; history 1000 runs\)",
        line,
    ), line


async def test_a_database_that_refuses_or_is_down_is_reported_without_its_password(
    sim: ProviderSim, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    password = "Wrong-Password-0123456789"
    parts = urlsplit(database_url)
    wrong = urlunsplit(parts._replace(netloc=f"{parts.username}:{password}@{parts.hostname}:{parts.port}"))
    code, out, err = await command("doctor", env=sim_env(sim, FUSION_DATABASE_URL=wrong))
    line = next(x for x in out.splitlines() if " database: " in x)
    assert code == 1 and line.startswith(
        f"FAIL database: cannot reach PostgreSQL (postgresql://{parts.username}@{parts.hostname}:{parts.port}"
        f"{parts.path}): connection failed: "
    )
    assert f'password authentication failed for user "{parts.username}"' in line
    assert line.endswith(
        "-> fix: check FUSION_DATABASE_URL (host, port, database, role and password) and that the server accepts "
        "this role"
    )
    assert password not in out + err
    code, _, err = await command("runs", env=sim_env(sim, FUSION_DATABASE_URL=wrong))
    assert code == 1 and err.startswith("fusion-mcp: cannot reach PostgreSQL (") and password not in err

    # A server whose database is down still answers; it says so in the log, and the cap refuses to guess.
    down = urlunsplit(parts._replace(netloc=f"{parts.username}:{password}@127.0.0.1:9"))
    caplog.set_level(logging.INFO)
    for cap in ("", "5"):
        env = sim_env(
            sim,
            FUSION_DATABASE_URL=down,
            FUSION_PRINCIPAL_MAX_COST_USD_PER_DAY=cap,
            FUSION_CACHE="on",
            FUSION_DEADLINE_S="5",
            FUSION_RUN_DEADLINE_S="10",
        )
        async with Client(create_server(load_settings(environ=env))) as client:
            result = structured(await client.call_tool(TOOL, {"prompt": "q"}))
            if not cap:
                other = structured(await client.call_tool(RESULT_TOOL_NAME, {"run_id": "fus_elsewhere", "wait_s": 0}))
                with pytest.raises(Exception, match="the run history cannot be read right now: cannot reach"):
                    await client.read_resource("fusion://runs")
        if not cap:
            assert result["status"] == "ok"
            assert other["failure_reason"] == "unexpected_error" and other["error"].startswith(
                "the run history cannot be read right now (cannot reach PostgreSQL (postgresql://"
            )
        else:
            assert result["failure_reason"] == "cost_limit" and result["error"].startswith(
                "the daily cost cap (FUSION_PRINCIPAL_MAX_COST_USD_PER_DAY) cannot be checked, so nothing is spent: "
                "cannot reach PostgreSQL (postgresql://"
            )
    assert "the store is not available yet (tried again on each use): cannot reach PostgreSQL (" in caplog.text
    assert "not recorded: cannot reach PostgreSQL" in caplog.text
    assert "cache not read: cannot reach PostgreSQL" in caplog.text and "not cached: cannot reach" in caplog.text
    assert password not in caplog.text and API_KEY not in caplog.text
