"""Fault injection: named scenarios against the loopback simulator, each asserting the exact result shape.

Every scenario states what each panel member and the analyst do, and what the result must say about it:
which answers are kept (whole or truncated), which models failed with what, whether there is an analysis
or which analysis error, and the status. Deadlines are short (2 s) so the suite stays quick.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from mcp import Client

from fusion_mcp.config import load_settings
from fusion_mcp.mcp_server.server import create_server
from tests.conftest import ANALYST, PANEL, sim_env
from tests.fakes.provider_sim import ProviderSim, Reply
from tests.helpers import ANALYSIS_KEYS, TOOL, call_then_cancel, fenced_answers, structured, wait_until

pytestmark = pytest.mark.anyio
A, B, C = PANEL
DEADLINE = 2.0
LONG = "word " * 400
NULL_CONTENT = json.dumps(
    {
        "model": "x",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": None}, "finish_reason": "stop"}],
    }
).encode()


def analyst(*replies: Reply) -> Callable[[dict[str, Any]], Reply]:
    """A script for the analyst's model that answers panel requests normally (it is also on the panel)."""
    queue = list(replies)

    def pick(body: dict[str, Any]) -> Reply:
        if "response_format" not in body:
            return Reply()
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return pick


@dataclass
class Scenario:
    name: str
    scripts: dict[str, Any]
    ok: list[str] = field(default_factory=list)
    """Models whose whole answer is in ``responses``."""
    truncated: dict[str, str] = field(default_factory=dict)
    """Model -> start of ``truncated_reason``."""
    failed: dict[str, tuple[int | None, str]] = field(default_factory=dict)
    """Model -> (status_code, start of the error)."""
    analysis_error: str | None = None
    failure_reason: str | None = None
    deadline: float | None = None
    env: dict[str, str] = field(default_factory=dict)


S = Scenario
SCENARIOS = [
    S("member_500", {B: [Reply(status=500, error_message="boom")]}, ok=[A, C], failed={B: (500, "HTTP 500: boom")}),
    S(
        "member_400_bad_request",
        {B: [Reply(status=400, error_message="bad param")]},
        ok=[A, C],
        failed={B: (400, "HTTP 400: bad param")},
    ),
    S(
        "member_invalid_model",
        {B: [Reply(status=400, error_message="b is not a valid model ID")]},
        ok=[A, C],
        failed={B: (400, "HTTP 400: b is not a valid model ID")},
    ),
    S(
        "member_403_moderation",
        {C: [Reply(status=403, error_message="flagged")]},
        ok=[A, B],
        failed={C: (403, "HTTP 403: flagged")},
    ),
    S(
        "member_not_json",
        {B: [Reply(raw=b"<html>gateway</html>", content_type="text/html")]},
        ok=[A, C],
        failed={B: (None, "the provider answered with text/html that is not JSON")},
    ),
    S(
        "member_json_without_choices",
        {B: [Reply(raw=b'{"id": "gen-1", "usage": {}}')]},
        ok=[A, C],
        failed={B: (None, "the provider's answer has no choices")},
    ),
    S(
        "member_null_answer",
        {B: [Reply(raw=NULL_CONTENT)]},
        ok=[A, C],
        failed={B: (None, "the model returned an empty answer")},
    ),
    S(
        "member_empty_stream",
        {B: [Reply(content="")]},
        ok=[A, C],
        failed={B: (None, "the model returned an empty answer")},
    ),
    S(
        "member_broken_tool_call_only",
        {
            B: [
                Reply(
                    content="",
                    tool_calls=[
                        {"id": "c", "type": "function", "function": {"name": "web_search", "arguments": "{not json"}}
                    ],
                )
            ]
        },
        ok=[A, C],
        failed={B: (None, "the model returned an empty answer (finish_reason tool_calls)")},
    ),
    S(
        "member_huge_response",
        {B: [Reply(raw=b"x" * (9 * 2**20))]},
        ok=[A, C],
        failed={B: (None, "the response was larger than 8 MiB")},
    ),
    S(
        "member_mid_stream_error",
        {B: [Reply(content="half of an answer", stream_error="provider crashed")]},
        ok=[A, C],
        truncated={B: "the stream ended with an error: provider crashed"},
    ),
    S(
        "member_stream_cut_without_end",
        {B: [Reply(raw=b'data: {"choices":[{"delta":{"content":"so far"}}]}\n\n', content_type="text/event-stream")]},
        ok=[A, C],
        truncated={B: "the stream ended before the answer was complete"},
    ),
    S(
        "member_hangs_past_deadline",
        {C: [Reply(latency=30)]},
        ok=[A, B],
        failed={C: (None, "no answer within the deadline")},
        deadline=DEADLINE,
    ),
    S(
        "member_drips_past_deadline",
        {C: [Reply(content=LONG, chunk_delay=0.05)]},
        ok=[A, B],
        truncated={C: "cut off at the deadline"},
        deadline=DEADLINE,
    ),
    S(
        "two_members_fail_differently",
        {B: [Reply(status=502)], C: [Reply(raw=b"nope", content_type="text/plain")]},
        ok=[A],
        failed={B: (502, "HTTP 502"), C: (None, "the provider answered with text/plain that is not JSON")},
        analysis_error="too_few_answers",
    ),
    S(
        "retries_recover_after_two_503s",
        {
            B: [
                Reply(status=503, retry_after="1"),
                Reply(status=503, retry_after="1"),
                Reply(content="third time lucky"),
            ]
        },
        ok=[A, B, C],
    ),
    S("retries_recover_after_timeout_status", {B: [Reply(status=408, retry_after="0"), Reply()]}, ok=[A, B, C]),
    S(
        "retries_run_out",
        {B: [Reply(status=503, retry_after="0", error_message="no provider")]},
        ok=[A, C],
        failed={B: (503, "HTTP 503: no provider")},
    ),
    S(
        "retry_after_past_deadline_gives_up",
        {B: [Reply(status=429, retry_after="10", error_message="wait")]},
        ok=[A, C],
        failed={B: (429, "HTTP 429: wait")},
        deadline=DEADLINE,
    ),
    S(
        "mixed_429_503_storm",
        {
            A: [Reply(status=429, retry_after="0"), Reply(status=503, retry_after="0"), Reply()],
            B: [
                Reply(status=503, retry_after="0"),
                Reply(status=429, retry_after="0"),
                Reply(status=529, retry_after="0"),
            ],
            C: [Reply(status=429, retry_after="0", error_message="rate limited")],
        },
        ok=[A],
        failed={B: (529, "HTTP 529"), C: (429, "HTTP 429: rate limited")},
        analysis_error="too_few_answers",
    ),
    S(
        "all_429_is_rate_limited",
        {m: [Reply(status=429, retry_after="0")] for m in PANEL},
        failed={m: (429, "HTTP 429") for m in PANEL},
        failure_reason="rate_limited",
    ),
    S(
        "all_402_is_insufficient_credits",
        {m: [Reply(status=402, error_message="top up")] for m in PANEL},
        failed={m: (402, "HTTP 402: insufficient credits: top up") for m in PANEL},
        failure_reason="insufficient_credits",
    ),
    S(
        "all_401_is_all_panels_failed",
        {m: [Reply(status=401, error_message="no auth")] for m in PANEL},
        failed={m: (401, "HTTP 401: the API key was rejected") for m in PANEL},
        failure_reason="all_panels_failed",
    ),
    S(
        "all_hang_is_all_panels_failed",
        {m: [Reply(latency=30)] for m in PANEL},
        failed={m: (None, "no answer within the deadline") for m in PANEL},
        failure_reason="all_panels_failed",
        deadline=DEADLINE,
    ),
    S(
        "analyst_broken_json_twice",
        {ANALYST: analyst(Reply(content="{oops"))},
        ok=list(PANEL),
        analysis_error="judge_not_valid_json",
    ),
    S(
        "analyst_schema_mismatch_twice",
        {ANALYST: analyst(Reply(content='{"consensus": "yes"}'))},
        ok=list(PANEL),
        analysis_error="judge_schema_mismatch",
    ),
    S(
        "analyst_empty_twice",
        {ANALYST: analyst(Reply(content=""))},
        ok=list(PANEL),
        analysis_error="judge_empty_completion",
    ),
    S(
        "analyst_upstream_500",
        {ANALYST: analyst(Reply(status=500))},
        ok=list(PANEL),
        analysis_error="judge_upstream_error",
    ),
    S("analyst_402", {ANALYST: analyst(Reply(status=402))}, ok=list(PANEL), analysis_error="judge_upstream_error"),
    S(
        "analyst_not_json_body",
        {ANALYST: analyst(Reply(raw=b"<html/>", content_type="text/html"))},
        ok=list(PANEL),
        analysis_error="judge_upstream_error",
    ),
    S(
        "analyst_hangs_past_deadline",
        {ANALYST: analyst(Reply(latency=30))},
        ok=list(PANEL),
        analysis_error="deadline",
        deadline=DEADLINE,
    ),
    S("analyst_recovers_after_503", {ANALYST: analyst(Reply(status=503, retry_after="0"), Reply())}, ok=list(PANEL)),
    S(
        "member_fails_and_analyst_fails",
        {B: [Reply(status=502)], ANALYST: analyst(Reply(content="[]"))},
        ok=[A, C],
        failed={B: (502, "HTTP 502")},
        analysis_error="judge_schema_mismatch",
    ),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
async def test_fault_scenario(sim: ProviderSim, scenario: Scenario) -> None:
    for model, script in scenario.scripts.items():
        sim.scripts[model] = list(script) if isinstance(script, list) else script
    env = dict(scenario.env)
    env["FUSION_DEADLINE_S"] = str(scenario.deadline or 60)
    server = create_server(load_settings(environ=sim_env(sim, **env)))
    with anyio.fail_after((scenario.deadline or 60) + 5):  # never a hang, whatever the scenario
        async with Client(server) as client:
            result = await client.call_tool(TOOL, {"prompt": "q"})
    data = structured(result)

    if scenario.failure_reason:
        assert result.is_error and data["status"] == "error"
        assert data["failure_reason"] == scenario.failure_reason
        assert data["responses"] == [] and "analysis" not in data
    else:
        assert not result.is_error and data["status"] == "ok"
        assert "failure_reason" not in data and "error" not in data
    whole = [r["model"] for r in data["responses"] if not r.get("truncated")]
    assert whole == scenario.ok
    cut = {r["model"]: r for r in data["responses"] if r.get("truncated")}
    assert set(cut) == set(scenario.truncated)
    for model, reason in scenario.truncated.items():
        assert cut[model]["truncated_reason"].startswith(reason), cut[model]
        assert cut[model]["content"].strip()
    assert all(set(r) == {"model", "content"} for r in data["responses"] if not r.get("truncated"))
    failed = {f["model"]: f for f in data["failed_models"]}
    assert set(failed) == set(scenario.failed), data["failed_models"]
    for model, (status, message) in scenario.failed.items():
        assert failed[model]["status_code"] == status, failed[model]
        assert failed[model]["error"].startswith(message), failed[model]
    # Every panel model is accounted for exactly once.
    assert sorted(whole + list(cut) + list(failed)) == sorted(PANEL)
    if scenario.failure_reason:
        return
    # Below the quorum (FUSION_MIN_ANSWERS=2) the run is degraded and the analyst is never asked.
    assert data["degraded"] is (scenario.analysis_error == "too_few_answers")
    if scenario.analysis_error == "too_few_answers":
        assert not any("response_format" in r.body for r in sim.requests)
    if scenario.analysis_error:
        assert "analysis" not in data and data["analysis_error"]["reason"] == scenario.analysis_error
    else:
        assert "analysis_error" not in data
        assert set(data["analysis"]) == ANALYSIS_KEYS
    if scenario.deadline:
        assert data["timings"]["total"] < scenario.deadline + 1


def test_there_are_at_least_25_named_scenarios() -> None:
    assert len({s.name for s in SCENARIOS}) == len(SCENARIOS) >= 25


async def test_truncated_answers_reach_the_analyst_marked_and_the_text_names_them(sim: ProviderSim) -> None:
    sim.script(C, Reply(content=LONG, chunk_delay=0.05))
    server = create_server(load_settings(environ=sim_env(sim, FUSION_DEADLINE_S=str(DEADLINE))))
    async with Client(server) as client:
        result = await client.call_tool(TOOL, {"prompt": "q"})
    analysis_request = next(r for r in sim.requests if "response_format" in r.body)
    shown = fenced_answers(analysis_request.body["messages"][1]["content"])
    assert sorted((cut, text.startswith(LONG[:40])) for _, cut, text in shown) == [
        (False, False),
        (False, False),
        (True, True),
    ]
    rendered = result.content[0].text
    assert f"## {C} (" in rendered and "TRUNCATED: cut off at the deadline" in rendered


async def test_short_deadline_still_analyses_fast_members(sim: ProviderSim) -> None:
    """With FUSION_DEADLINE_S=3 (the panel gets 2 s), members answering within a second reach the analysis."""
    sim.script(A, Reply(latency=0.5))
    sim.script(B, Reply(latency=1.0))
    sim.script(C, Reply(latency=30))
    server = create_server(load_settings(environ=sim_env(sim, FUSION_DEADLINE_S="3")))
    async with Client(server) as client:
        data = structured(await client.call_tool(TOOL, {"prompt": "q"}))
    assert [r["model"] for r in data["responses"]] == [A, B]
    assert "analysis" in data and data["failed_models"][0]["model"] == C


async def test_cancelling_mid_analyst_closes_its_request(sim: ProviderSim) -> None:
    sim.scripts[ANALYST] = analyst(Reply(latency=30))
    server = create_server(load_settings(environ=sim_env(sim)))
    async with Client(server) as client:
        await call_then_cancel(client, lambda: any("response_format" in r.body for r in sim.requests))
        await wait_until(lambda: sim.disconnects == [ANALYST])
    assert len(sim.requests) == 4
