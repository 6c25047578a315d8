"""One spending gate for everything that spends: a chat request's writer requests reserve their worst case
through the same atomic reservation runs take, and ``FUSION_MAX_COST_USD`` bounds a chat turn as a whole.

Bursts of concurrent chat requests over real HTTP, on SQLite and on PostgreSQL, one process and two workers.
"""

from __future__ import annotations

import json
import re
from typing import Any

import anyio
import httpx2
import pytest

from tests import servers
from tests.conftest import PANEL, sim_env
from tests.fakes import writer
from tests.fakes.provider_sim import DEFAULT_USAGE, ProviderSim, Reply, priced
from tests.store.test_usage import RESETS, run

pytestmark = pytest.mark.anyio
WRITER = "acme/writer"
USER = {"role": "user", "content": "Which of A and B should we choose?"}
PLAIN = {"model": WRITER, "messages": [USER], "max_tokens": 1000}
WRITER_PRICES = {"prompt": 1e-6, "completion": 1e-5}
"""A writer request of 1,000 tokens of answer has a worst case of a little over $0.01."""


def prices(sim: ProviderSim) -> None:
    sim.catalogue = [priced(WRITER, **WRITER_PRICES), *(priced(m.lstrip("~")) for m in PANEL)]
    sim.aliases = {m: priced(m.lstrip("~")) for m in PANEL}


def worst_case(body: dict[str, Any], max_tokens: int) -> float:
    """A writer request's worst case as documented: its messages and tools (none: ``[]``) at 3.5 characters a
    token, and ``max_tokens`` of answer, at the catalogue's prices."""
    prompt = (len(json.dumps(body["messages"], ensure_ascii=False)) + len("[]")) / 3.5
    return prompt * WRITER_PRICES["prompt"] + max_tokens * WRITER_PRICES["completion"]


async def burst(base: str, body: dict[str, Any], n: int) -> list[httpx2.Response]:
    replies: list[httpx2.Response] = []
    async with httpx2.AsyncClient(base_url=base, timeout=60) as http, anyio.create_task_group() as tg:

        async def one() -> None:
            replies.append(await http.post("/v1/chat/completions", json=body))

        for _ in range(n):
            tg.start_soon(one)
    return replies


def spent_today(env: dict[str, str]) -> float:
    rows = json.loads(run("usage", "--json", env=env).stdout)["rows"]
    return sum(r["cost"] for r in rows)


async def test_a_burst_of_writer_requests_cannot_pass_the_daily_cap(
    sim: ProviderSim, store_env: dict[str, str]
) -> None:
    """Cap $0.035, each writer request's worst case ~$0.0100: of 16 requests at once, 3 go out (their
    reservations held while they take a second), 13 are refused before anything is sent."""
    prices(sim)
    sim.script(WRITER, Reply(content="answered", latency=1.0))
    env = sim_env(sim, **store_env, FUSION_PRINCIPAL_MAX_COST_USD_PER_DAY="0.035")
    with servers.in_process(env) as base:
        replies = await burst(base, PLAIN, 16)
    statuses = sorted(r.status_code for r in replies)
    assert statuses == [200] * 3 + [402] * 13
    estimate = worst_case(PLAIN, 1000)
    for refused in (r for r in replies if r.status_code == 402):
        error = refused.json()["error"]
        assert (error["type"], error["code"]) == ("insufficient_quota", "cost_limit")
        assert re.fullmatch(
            rf"daily cost cap: local has spent \$0\.0000 today \(UTC\) with \$(0\.03\d\d) more reserved by runs in "
            rf"progress; this chat turn's worst-case estimate, \${estimate:.4f}, would take it past "
            rf"FUSION_PRINCIPAL_MAX_COST_USD_PER_DAY=\$0\.035; use a cheaper preset or fewer models, or wait: "
            rf"({RESETS})",
            error["message"],
        ), error["message"]
    assert len(sim.requests_for(WRITER)) == 3
    # Each writer request carried the answer cap its worst case was counted with.
    assert {r.body["max_tokens"] for r in sim.requests_for(WRITER)} == {1000}
    assert spent_today(env) == pytest.approx(3 * DEFAULT_USAGE["cost"])


async def test_fused_turns_in_a_burst_never_pass_the_cap_together(sim: ProviderSim, store_env: dict[str, str]) -> None:
    """Turns that each take a writer request, a run and another writer request, all at once: writer and run
    reservations share one ledger, and what was recorded never passes the cap."""
    prices(sim)
    sim.scripts[WRITER] = writer.fusing(latency=0.3)
    cap = 0.25
    env = sim_env(sim, **store_env, FUSION_PRINCIPAL_MAX_COST_USD_PER_DAY=str(cap), FUSION_MAX_COMPLETION_TOKENS="2000")
    body = {**PLAIN, "max_tokens": 500, "plugins": [{"id": "fusion"}]}
    with servers.in_process(env) as base:
        replies = await burst(base, body, 8)
    assert {r.status_code for r in replies} <= {200, 402}
    ran = [r.json()["fusion"] for r in replies if r.status_code == 200]
    refused_runs = [f for f in ran if f["status"] == "error"]
    assert all(f["failure_reason"] == "cost_limit" for f in refused_runs)
    assert refused_runs  # the cap bit: not every run went out
    assert 0 < spent_today(env) <= cap


async def test_a_burst_across_two_workers_cannot_pass_the_cap(sim: ProviderSim, database_url: str) -> None:
    prices(sim)
    sim.script(WRITER, Reply(content="answered", latency=1.0))
    env = sim_env(sim, FUSION_DATABASE_URL=database_url, FUSION_PRINCIPAL_MAX_COST_USD_PER_DAY="0.035")
    with servers.http_server(env, "--workers", "2") as running:
        replies = await burst(running.base, PLAIN, 16)
    assert sorted(r.status_code for r in replies) == [200] * 3 + [402] * 13
    assert len(sim.requests_for(WRITER)) == 3


async def test_the_max_cost_bounds_a_writer_request(sim: ProviderSim) -> None:
    prices(sim)
    env = sim_env(sim, FUSION_MAX_COST_USD="0.005")
    with servers.in_process(env) as base, httpx2.Client(base_url=base, timeout=60) as http:
        refused = http.post("/v1/chat/completions", json=PLAIN)
        fits = http.post("/v1/chat/completions", json={**PLAIN, "max_tokens": 100})
    assert refused.status_code == 402
    assert refused.json()["error"] == {
        "message": f"cost limit: this chat turn has spent $0.0000 and its next writer request may cost up to "
        f"${worst_case(PLAIN, 1000):.4f} (1000 tokens of answer at most), past FUSION_MAX_COST_USD=$0.005; lower "
        "max_tokens, use a cheaper model, or raise the cap",
        "type": "insufficient_quota",
        "code": "cost_limit",
        "param": None,
    }
    assert fits.status_code == 200 and len(sim.requests) == 1


async def test_the_max_cost_bounds_writer_and_run_together(sim: ProviderSim) -> None:
    """The writer's first request fits; the run's worst case does not fit what is left of the turn's cap, so
    the writer reads a ``cost_limit`` refusal and answers without the panel."""
    prices(sim)
    sim.scripts[WRITER] = writer.fusing(final="No panel: over the cap.")
    env = sim_env(sim, FUSION_MAX_COST_USD="0.05")
    with servers.in_process(env) as base:
        data = httpx2.post(
            f"{base}/v1/chat/completions", json={**PLAIN, "max_tokens": 100, "plugins": [{"id": "fusion"}]}, timeout=60
        ).json()
    assert data["choices"][0]["message"]["content"] == "No panel: over the cap."
    assert data["fusion"]["failure_reason"] == "cost_limit"
    assert re.fullmatch(
        r"estimated worst-case cost \$\d+\.\d{4} exceeds the \$0\.04\d\d this chat turn has left of "
        r"FUSION_MAX_COST_USD=\$0\.05 \(3 members x 16000 tokens \+ analyst\); use a cheaper preset or fewer models, "
        r"or raise the cap",
        data["fusion"]["error"],
    ), data["fusion"]["error"]
    assert [r.model for r in sim.requests] == [WRITER, WRITER]  # nothing was asked of the panel
