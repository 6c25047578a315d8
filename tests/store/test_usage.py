"""Usage per principal and the daily cap, on both stores: every front end (MCP, ``ask``, the chat endpoint)
gets the same ``cost_limit`` refusal, the chat writer's requests count, and ``fusion-mcp usage`` reports it."""

from __future__ import annotations

import json
import re
import subprocess
import time
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client

from fusion_mcp.cli.main import since_epoch, usage_table
from fusion_mcp.config import load_settings
from fusion_mcp.engine.daily_cap import duration, refusal, utc_day
from fusion_mcp.mcp_server.server import create_server
from fusion_mcp.store import Spend, UsageTotal
from tests import servers
from tests.conftest import ANALYST, PANEL, child_env, console_script, sim_env
from tests.fakes.provider_sim import ProviderSim, Reply, priced
from tests.helpers import TOOL, over_http, structured, wait_until
from tests.store.test_store import Raw

pytestmark = pytest.mark.anyio
RESETS = r"it resets at 00:00 UTC, in (\d+ h )?\d+ min|it resets at 00:00 UTC, in less than a minute"


def priced_catalogue(sim: ProviderSim) -> None:
    """Prices for every model: a run of "q" with 100-token answers has a worst case of about $0.0047."""
    sim.catalogue = [priced(m.lstrip("~")) for m in PANEL]
    sim.aliases = {m: priced(m.lstrip("~")) for m in PANEL}


def rows(env: dict[str, str], query: str) -> list[tuple[Any, ...]]:
    return Raw(env).rows(query)


def script(env: dict[str, str], ddl: str) -> None:
    Raw(env).script(ddl, ddl)


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [console_script(), *args], env=child_env(**env), capture_output=True, text=True, timeout=60, check=False
    )


async def test_the_daily_cap_refuses_the_run_that_would_pass_it_on_every_front_end(
    sim: ProviderSim, store_env: dict[str, str]
) -> None:
    """$0.007 a day: the first run (worst case ~$0.0047) spends $0.006 (four requests at $0.0015); the next run
    would pass the cap, the cached answer still comes (it is free), one writer request takes the spend to
    $0.0075, and then the chat endpoint refuses outright."""
    priced_catalogue(sim)
    env = sim_env(
        sim,
        **store_env,
        FUSION_CACHE="on",
        FUSION_MAX_COMPLETION_TOKENS="100",
        FUSION_PRINCIPAL_MAX_COST_USD_PER_DAY="0.007",
    )
    with servers.in_process(env) as base:
        async with over_http(base) as mcp:
            first = structured(await mcp.call_tool(TOOL, {"prompt": "q"}))
            refused = await mcp.call_tool(TOOL, {"prompt": "another question"})
            cached = structured(await mcp.call_tool(TOOL, {"prompt": "q"}))
        assert first["status"] == "ok" and first["usage"]["total"]["cost"] == pytest.approx(0.006)
        assert refused.is_error and structured(refused)["failure_reason"] == "cost_limit"
        message = structured(refused)["error"]
        assert re.fullmatch(
            r"daily cost cap: local has spent \$0\.0060 today \(UTC\); this run's worst-case estimate, \$0\.00\d\d, "
            r"would take it past FUSION_PRINCIPAL_MAX_COST_USD_PER_DAY=\$0\.007; use a cheaper preset or fewer "
            rf"models, or wait: ({RESETS})",
            message,
        ), message
        assert cached["status"] == "ok" and cached["cached"] is True
        assert len(sim.requests) == 4  # nothing was sent for the refused run, nor for the cached one

        by_ask = run("ask", "another question", "--json", env=env)
        assert by_ask.returncode == 1, by_ask.stderr
        assert json.loads(by_ask.stdout)["failure_reason"] == "cost_limit"
        assert json.loads(by_ask.stdout)["error"].startswith("daily cost cap: local has spent $0.0060 today (UTC);")

        chat = {"model": "openrouter/fusion", "messages": [{"role": "user", "content": "hello"}]}
        answered = httpx2.post(f"{base}/v1/chat/completions", json=chat, timeout=60)
        over = httpx2.post(f"{base}/v1/chat/completions", json=chat, timeout=60)
    assert answered.status_code == 200 and answered.json()["usage"]["cost"] == pytest.approx(0.0015)
    assert over.status_code == 402, over.text
    error = over.json()["error"]
    assert error["code"] == "cost_limit" and re.fullmatch(
        r"daily cost cap reached: local has spent \$0\.0075 today \(UTC\), and "
        rf"FUSION_PRINCIPAL_MAX_COST_USD_PER_DAY is \$0\.007; ({RESETS})",
        error["message"],
    ), error["message"]
    assert len(sim.requests) == 5  # the one writer request

    usage = run("usage", "--json", env=env)
    assert usage.returncode == 0, usage.stderr
    report = json.loads(usage.stdout)
    assert report["by"] == "principal" and report["principal"] is None
    assert report["rows"] == [
        {"key": "local", "runs": 2, "requests": 5, "prompt_tokens": 500, "completion_tokens": 250, "cost": 0.0075}
    ]
    assert report["total"] == {k: v for k, v in report["rows"][0].items() if k != "key"}
    by_model = json.loads(run("usage", "--by", "model", "--json", env=env).stdout)["rows"]
    # The writer is the analyst's model: a panel request, an analyst request and a writer request of two runs.
    assert by_model[0] == {
        "key": PANEL[0],
        "runs": 2,
        "requests": 3,
        "prompt_tokens": 300,
        "completion_tokens": 150,
        "cost": 0.0045,
    }


async def test_a_caller_paying_with_its_own_key_is_counted_but_not_capped(
    sim: ProviderSim, store_env: dict[str, str]
) -> None:
    own_key = "sk-or-v1-CALLERS-OWN-KEY-0123456789"
    env = sim_env(
        sim,
        **store_env,
        FUSION_PASS_THROUGH_KEY="true",
        FUSION_PASS_THROUGH_KEY_PREFIX="sk-or-",
        FUSION_PRINCIPAL_MAX_COST_USD_PER_DAY="0.001",
    )
    chat = {"model": "openrouter/fusion", "messages": [{"role": "user", "content": "hello"}]}
    headers = {"Authorization": f"Bearer {own_key}"}
    with servers.in_process(env) as base:
        replies = [httpx2.post(f"{base}/v1/chat/completions", json=chat, headers=headers, timeout=60) for _ in "ab"]
        server_paid = httpx2.post(f"{base}/v1/chat/completions", json=chat, timeout=60)
        server_paid_again = httpx2.post(f"{base}/v1/chat/completions", json=chat, timeout=60)
    assert [r.status_code for r in replies] == [200, 200]  # over the cap by now, but on its own account
    assert server_paid.status_code == 200 and server_paid_again.status_code == 402
    rows = json.loads(run("usage", "--json", env=env).stdout)["rows"]
    assert {r["key"]: (r["requests"], r["cost"]) for r in rows} == {
        next(r["key"] for r in rows if r["key"].startswith("key:")): (2, 0.003),
        "local": (1, 0.0015),
    }
    assert own_key not in json.dumps(rows)


def test_the_usage_command_reads_its_options_and_says_what_is_wrong(sim: ProviderSim, tmp_path: Any) -> None:
    env = sim_env(sim, FUSION_HOME=str(tmp_path))
    empty = run("usage", "--since", "2024-01-31", "--by", "day", env=env)
    assert empty.returncode == 0 and empty.stdout == "no usage since 2024-01-31 00:00 UTC\n"
    bad = run("usage", "--since", "last week", env=env)
    assert bad.returncode == 2 and bad.stderr == (
        "fusion-mcp: --since 'last week': give 30m, 24h, 7d (minutes, hours, days ago) or a date YYYY-MM-DD\n"
    )
    wrong = run("usage", "--by", "team", env=env)
    assert wrong.returncode == 2 and "argument --by: invalid choice: 'team'" in wrong.stderr


def test_since_and_the_usage_table() -> None:
    now = 1_800_000_000.0
    assert since_epoch("30m", now) == now - 1800 and since_epoch("24h", now) == now - 86400
    assert since_epoch(" 7D ", now) == now - 7 * 86400 and since_epoch("1.5d", now) == now - 1.5 * 86400
    assert time.strftime("%Y-%m-%d %H:%M", time.gmtime(since_epoch("2027-01-15", now))) == "2027-01-15 00:00"
    rows = [
        UsageTotal(key="alice", runs=12, requests=48, prompt_tokens=120_000, completion_tokens=30_500, cost=1.23456),
        UsageTotal(key="ci-agent", runs=3, requests=12, prompt_tokens=9_000, completion_tokens=2_000, cost=0.05),
    ]
    total = UsageTotal(key="total", runs=15, requests=60, prompt_tokens=129_000, completion_tokens=32_500, cost=1.28456)
    assert usage_table(rows, total, "principal", 1_800_000_000.0).splitlines() == [
        "usage since 2027-01-15 08:00 UTC",
        "principal    runs  requests  prompt tokens  completion tokens        cost",
        "alice          12        48        120,000             30,500     $1.2346",
        "ci-agent        3        12          9,000              2,000     $0.0500",
        "total          15        60        129,000             32,500     $1.2846",
    ]


def test_the_refusal_says_what_was_spent_the_cap_and_when_it_resets() -> None:
    now = 1_800_000_000.0  # 2027-01-15 08:00 UTC: 16 h to midnight
    start, end = utc_day(now)
    assert (start, end - start) == (now - 8 * 3600, 86400)
    assert [duration(s) for s in (18_720, 3_600, 59, 61)] == ["5 h 12 min", "1 h 0 min", "less than a minute", "1 min"]
    spent = refusal("alice", Spend(spent=4.5, reserved=0.75, admitted=False), 0.5, 5.0, now)
    assert spent.reason == "cost_limit" and spent.message == (
        "daily cost cap reached: alice has spent $4.5000 today (UTC) with $0.7500 more reserved by runs in progress, "
        "and FUSION_PRINCIPAL_MAX_COST_USD_PER_DAY is $5; it resets at 00:00 UTC, in 16 h 0 min"
    )
    would = refusal("alice", Spend(spent=4.0, reserved=0.0, admitted=False), 1.25, 5.0, now + 3 * 3600 + 48 * 60)
    assert would.message == (
        "daily cost cap: alice has spent $4.0000 today (UTC); this run's worst-case estimate, $1.2500, would take it "
        "past FUSION_PRINCIPAL_MAX_COST_USD_PER_DAY=$5; use a cheaper preset or fewer models, or wait: it resets at "
        "00:00 UTC, in 12 h 12 min"
    )


UNRECORDABLE = {
    "sqlite": "CREATE TRIGGER fault BEFORE INSERT ON runs WHEN NEW.prompt_head = 'unrecordable' "
    "BEGIN SELECT RAISE(ABORT, 'injected fault'); END;",
    "postgres": "CREATE FUNCTION fault() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF NEW.prompt_head = "
    "'unrecordable' THEN RAISE EXCEPTION 'injected fault'; END IF; RETURN NEW; END $$; "
    "CREATE TRIGGER fault BEFORE INSERT ON fusion_runs FOR EACH ROW EXECUTE FUNCTION fault();",
}


async def test_runs_that_leave_no_record_still_count_what_they_spent(
    sim: ProviderSim, store_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """A run cancelled by its caller is not in the history, nor one whose record the database refused; what
    their models used is in usage all the same, and their reservations are released."""
    env = sim_env(sim, **store_env, FUSION_PRINCIPAL_MAX_COST_USD_PER_DAY="5")
    sim.script(PANEL[2], Reply(latency=30), Reply())
    async with Client(create_server(load_settings(environ=env))) as client:
        two_answered = anyio.Event()

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            if (message or "").startswith("2/3 answered"):
                two_answered.set()

        async with anyio.create_task_group() as tg:  # the client cancels once two members have answered
            tg.start_soon(lambda: client.call_tool(TOOL, {"prompt": "cancelled"}, progress_callback=on_progress))
            await two_answered.wait()
            tg.cancel_scope.cancel()
        # The run settles in the service's task group once stopped: its usage rows appear.
        await wait_until(lambda: rows(env, "SELECT count(*) FROM {usage}") == [(3,)])
        script(env, UNRECORDABLE["postgres" if "FUSION_DATABASE_URL" in env else "sqlite"])
        unrecorded = structured(await client.call_tool(TOOL, {"prompt": "unrecordable"}))
    assert unrecorded["status"] == "ok" and f"run {unrecorded['run_id']} not recorded: " in caplog.text
    assert "injected fault" in caplog.text
    assert rows(env, "SELECT run_id FROM {runs}") == []
    spent = rows(env, "SELECT run_id, count(*), sum(requests), sum(cost) FROM {usage} GROUP BY run_id")
    assert sorted((n, requests, round(cost, 6)) for _, n, requests, cost in spent) == [
        # The cancelled run: the two members that answered; the third's request was cut before it reported any.
        (3, 2, 0.003),
        (4, 4, 0.006),  # the unrecorded one: three members and the analyst, in full
    ]
    assert rows(env, "SELECT * FROM {reservations}") == []


async def test_a_run_cancelled_during_its_analysis_counts_the_analysts_requests(
    sim: ProviderSim, store_env: dict[str, str]
) -> None:
    env = sim_env(sim, **store_env, FUSION_PRINCIPAL_MAX_COST_USD_PER_DAY="5")
    assert ANALYST == PANEL[0]  # one script: its panel answer, an analysis that is no JSON, a repair that takes long
    sim.script(ANALYST, Reply(), Reply(content="not JSON"), Reply(latency=30))
    async with Client(create_server(load_settings(environ=env))) as client:
        async with anyio.create_task_group() as tg:  # cancelled once the repair has been asked for
            tg.start_soon(lambda: client.call_tool(TOOL, {"prompt": "cancelled while analysing"}))
            await wait_until(lambda: len(sim.requests_for(ANALYST)) == 3)
            tg.cancel_scope.cancel()
        await wait_until(lambda: rows(env, "SELECT count(*) FROM {usage}") == [(4,)])
    spent = rows(env, "SELECT model, role, requests, cost FROM {usage} ORDER BY role, model")
    # The first analysis request is counted; the repair was cut before it reported any usage.
    assert [(m, r, n, round(c, 6)) for m, r, n, c in spent] == [
        (ANALYST, "analyst", 1, 0.0015),
        *sorted((m, "panel", 1, 0.0015) for m in PANEL),
    ]
    assert rows(env, "SELECT * FROM {reservations}") == []
