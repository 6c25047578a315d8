"""The tool through the MCP SDK's own client, in memory, against the loopback provider simulator."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from mcp import Client

from fusion_mcp.config import load_settings
from fusion_mcp.core.lenses import PANEL_ENTRIES_RULE
from fusion_mcp.engine.admission import ToolArguments
from fusion_mcp.mcp_server.server import create_server
from fusion_mcp.providers.client import DEPTH_HEADER
from tests.conftest import ANALYST, API_KEY, PANEL, sim_env
from tests.fakes.provider_sim import DEFAULT_USAGE, GHOST_LABEL, ProviderSim, Reply
from tests.helpers import (
    ANALYSIS_KEYS,
    TOOL,
    call_then_cancel,
    dump,
    fenced_answers,
    shown_labels,
    structured,
    text,
    wait_until,
)

pytestmark = pytest.mark.anyio
A, B, C = PANEL


async def call(sim: ProviderSim, args: dict[str, Any], mode: str = "auto", **env: str):
    server = create_server(load_settings(environ=sim_env(sim, **env)))
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append((p, total, message))

    async with Client(server, mode=mode) as client:  # type: ignore[arg-type]
        result = await client.call_tool(TOOL, args, progress_callback=on_progress)
    return result, progress


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_full_result_shape_in_both_protocol_eras(sim: ProviderSim, mode: str) -> None:
    result, progress = await call(sim, {"prompt": "What is 6*7?", "context": "arithmetic"}, mode=mode)
    assert not result.is_error
    data = structured(result)
    assert data["status"] == "ok"
    assert set(data) >= {"run_id", "analysis", "responses", "failed_models", "analyst_model", "usage", "timings"}
    assert "analysis_error" not in data and "error" not in data and "failure_reason" not in data
    analysis = data["analysis"]
    assert set(analysis) == ANALYSIS_KEYS
    assert analysis["consensus"] == ["All answers agree on the core point."]
    # Labels are mapped back to panel ids (the answers are shown in a shuffled order, labelled in that order);
    # the label naming nobody is dropped everywhere.
    model_of = shown_labels(sim)
    assert sorted(model_of.values()) == sorted(PANEL)
    assert [s["model"] for s in analysis["contradictions"][0]["stances"]] == [model_of[x] for x in sorted(model_of)]
    assert analysis["partial_coverage"] == [{"models": [model_of["Model A"]], "point": "edge cases"}]
    assert analysis["unique_insights"] == [
        {"model": model_of["Model C"], "insight": "a point only the last model made"}
    ]
    assert GHOST_LABEL not in json.dumps(data)
    assert [r["model"] for r in data["responses"]] == list(PANEL)
    assert data["responses"][1]["content"] == f"Answer from {B}: the answer is 42."
    assert data["failed_models"] == []
    assert data["analyst_model"] == ANALYST
    usage = data["usage"]
    assert [(m["model"], m["role"]) for m in usage["models"]] == [(m, "panel") for m in PANEL] + [(ANALYST, "analyst")]
    assert usage["total"]["prompt_tokens"] == 4 * DEFAULT_USAGE["prompt_tokens"]
    assert usage["total"]["reasoning_tokens"] == 4 * 7
    assert usage["total"]["cost"] == pytest.approx(4 * DEFAULT_USAGE["cost"])
    assert set(data["timings"]["members"]) == set(PANEL)
    assert data["timings"]["analyst"] is not None and data["timings"]["total"] > 0
    # The text block renders the analysis first, then every answer.
    rendered = text(result)
    assert rendered.index("## Consensus") < rendered.index("# Panel answers") < rendered.index(f"## {C}")
    assert "$0.0060" in rendered
    # Progress: start, each member, analyst start and end; strictly rising to the total.
    values = [p for p, _, _ in progress]
    assert values == sorted(set(values)) and values[-1] == progress[-1][1] == len(PANEL) + 2
    messages = [m for _, _, m in progress]
    assert messages[0].startswith("fusion started: panel of 3")
    assert any(m.startswith("3/3 answered: ") for m in messages)
    assert messages[-2].startswith(f"analyst {ANALYST} is comparing 3 answers")
    assert messages[-1].startswith("analysis ready")


async def test_requests_carry_depth_tokens_attribution_and_temperature_rules(sim: ProviderSim) -> None:
    await call(sim, {"prompt": "q"}, FUSION_TEMPERATURE="0.7", FUSION_MAX_COMPLETION_TOKENS="1234")
    assert len(sim.requests) == 4
    for req in sim.requests:
        assert req.headers[DEPTH_HEADER] == "1"
        assert req.headers["authorization"] == f"Bearer {API_KEY}"
        assert req.headers["http-referer"] and req.headers["x-openrouter-title"] == "fusion-mcp"
        assert req.body["max_completion_tokens"] == 1234
        # Panel and analyst get the web tools (local mode against a non-OpenRouter URL), never fusion.
        assert [t["function"]["name"] for t in req.body["tools"]] == ["web_search", "web_fetch"]
    panel = [r for r in sim.requests if "response_format" not in r.body]
    analyst = [r for r in sim.requests if "response_format" in r.body]
    assert {r.model for r in panel} == set(PANEL) and all(r.body["temperature"] == 0.7 for r in panel)
    assert all(r.body["stream"] is True for r in panel)
    assert len(analyst) == 1 and analyst[0].body["temperature"] == 0
    fmt = analyst[0].body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    # The analyst sees anonymous labels, never the panel's ids, each answer fenced with this run's nonce.
    system, user = (m["content"] for m in analyst[0].body["messages"])
    shown = fenced_answers(user)
    assert [label for label, _, _ in shown] == ["Model A", "Model B", "Model C"]
    assert sorted(text for _, _, text in shown) == sorted(f"Answer from {m}: the answer is 42." for m in PANEL)
    tag = re.search(r"<(answer-[0-9a-f]{16}) model=", user).group(1)  # type: ignore[union-attr]
    assert f"<{tag} model=" in system and 'model="~' not in user
    # Members never see each other's answers.
    for r in panel:
        assert "Answer from" not in json.dumps(r.body["messages"])


async def test_overrides_replace_panel_analyst_and_budget(sim: ProviderSim) -> None:
    result, _ = await call(sim, {"prompt": "q", "analysis_models": ["x/one", "y/two"], "model": "z/judge"})
    data = structured(result)
    assert [r["model"] for r in data["responses"]] == ["x/one", "y/two"]
    assert data["analyst_model"] == "z/judge"
    assert {r.model for r in sim.requests} == {"x/one", "y/two", "z/judge"}


async def test_one_member_failing_is_named_and_the_run_goes_on(sim: ProviderSim) -> None:
    sim.script(B, Reply(status=500, error_message="internal trouble"))
    result, progress = await call(sim, {"prompt": "q"})
    data = structured(result)
    assert data["status"] == "ok" and not result.is_error
    assert data["failed_models"] == [{"model": B, "error": "HTTP 500: internal trouble", "status_code": 500}]
    assert [r["model"] for r in data["responses"]] == [A, C]
    assert "analysis" in data
    assert any(m and m.startswith(f"{B} failed") for _, _, m in progress)
    assert f"{B}: HTTP 500: internal trouble" in text(result) and "(HTTP 500)" not in text(result)


async def test_all_members_failing_is_all_panels_failed(sim: ProviderSim) -> None:
    for model in PANEL:
        sim.script(model, Reply(status=500, error_message=f"{model} is down"))
    result, _ = await call(sim, {"prompt": "q"})
    assert result.is_error
    data = structured(result)
    assert data["status"] == "error" and data["failure_reason"] == "all_panels_failed"
    assert data["error"].startswith("all panel models failed: HTTP 500:")
    assert len(data["failed_models"]) == 3 and "analysis" not in data and data["responses"] == []
    assert all("response_format" not in r.body for r in sim.requests)  # no analyst without answers
    assert text(result).startswith("**Fusion failed** (all_panels_failed)")


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (Reply(status=402, error_message="Insufficient credits"), "insufficient_credits"),
        (Reply(status=429, error_message="slow down"), "rate_limited"),
        (
            Reply(status=400, error_message="x is not a valid model ID", error_metadata={"code": "model_not_found"}),
            "invalid_model",
        ),
    ],
)
async def test_whole_panel_failing_for_one_cause_names_it(sim: ProviderSim, reply: Reply, reason: str) -> None:
    for model in PANEL:
        sim.script(model, reply)
    result, _ = await call(sim, {"prompt": "q"})
    data = structured(result)
    assert result.is_error and data["status"] == "error" and data["failure_reason"] == reason
    assert [f["status_code"] for f in data["failed_models"]] == [reply.status] * 3


def _analyst_script(sim: ProviderSim, *replies: Reply) -> None:
    """Script the analyst's model only for its analysis requests (it is also on the panel)."""
    queue = list(replies)

    def pick(body: dict[str, Any]) -> Reply:
        if "response_format" not in body:
            return Reply()
        return queue.pop(0) if len(queue) > 1 else queue[0]

    sim.scripts[ANALYST] = pick


async def test_broken_analyst_json_twice_keeps_responses_without_analysis(sim: ProviderSim) -> None:
    _analyst_script(sim, Reply(content="{not json"), Reply(content="still {not json"))
    result, _ = await call(sim, {"prompt": "q"})
    data = structured(result)
    assert data["status"] == "ok" and not result.is_error
    assert "analysis" not in data
    assert data["analysis_error"]["reason"] == "judge_not_valid_json"
    assert data["analysis_error"]["message"].startswith("the analyst's reply is not valid JSON")
    assert len(data["responses"]) == 3
    analyst_requests = [r for r in sim.requests_for(ANALYST) if "response_format" in r.body]
    assert len(analyst_requests) == 2
    # The repair request quotes what was wrong.
    assert "not valid JSON" in analyst_requests[1].body["messages"][-1]["content"]
    assert "**No analysis** (judge_not_valid_json)" in text(result)
    assert data["usage"]["models"][-1]["requests"] == 2


async def test_one_repair_fixes_the_analysis(sim: ProviderSim) -> None:
    good = json.dumps(
        {"consensus": ["c"], "contradictions": [], "partial_coverage": [], "unique_insights": [], "blind_spots": []}
    )
    _analyst_script(sim, Reply(content='```json\n{"consensus": 1}\n```'), Reply(content=f"```json\n{good}\n```"))
    data = structured((await call(sim, {"prompt": "q"}))[0])
    assert data["analysis"]["consensus"] == ["c"] and "analysis_error" not in data
    repair = [r for r in sim.requests_for(ANALYST) if "response_format" in r.body][1]
    assert "does not match the schema" in repair.body["messages"][-1]["content"]


@pytest.mark.parametrize(
    ("replies", "reason", "message"),
    [
        (
            (Reply(content='{"consensus": []}'),),
            "judge_schema_mismatch",
            "the analyst's JSON does not match the schema",
        ),
        ((Reply(content="   "),), "judge_empty_completion", "the analyst returned an empty completion"),
        (
            (Reply(status=503, error_message="no provider"),),
            "judge_upstream_error",
            "the analyst request failed: HTTP 503",
        ),
    ],
)
async def test_analyst_failures_keep_the_panel(
    sim: ProviderSim, replies: tuple[Reply, ...], reason: str, message: str
) -> None:
    _analyst_script(sim, *replies)
    data = structured((await call(sim, {"prompt": "q"}))[0])
    assert data["status"] == "ok" and "analysis" not in data
    assert data["analysis_error"]["reason"] == reason
    assert data["analysis_error"]["message"].startswith(message)
    assert len(data["responses"]) == 3


async def test_nested_call_is_refused_without_any_upstream_request(sim: ProviderSim) -> None:
    result, _ = await call(sim, {"prompt": "q"}, FUSION_DEPTH="1")
    data = structured(result)
    assert result.is_error
    assert data["status"] == "error" and data["failure_reason"] == "fusion_invocation_capped"
    assert sim.requests == []


async def test_missing_key_is_a_clear_error_and_the_tool_is_still_listed(sim: ProviderSim) -> None:
    env = sim_env(sim, OPENROUTER_BASE_URL="https://openrouter.ai/api/v1")
    del env["OPENROUTER_API_KEY"]
    server = create_server(load_settings(environ=env))
    async with Client(server) as client:
        assert [t.name for t in (await client.list_tools()).tools] == [TOOL]
        result = await client.call_tool(TOOL, {"prompt": "q"})
    data = structured(result)
    assert result.is_error and data["failure_reason"] == "missing_api_key"
    assert "OPENROUTER_API_KEY" in data["error"]


async def test_disabled_server_lists_no_tool(sim: ProviderSim) -> None:
    server = create_server(load_settings(environ=sim_env(sim, FUSION_ENABLED="false")))
    async with Client(server) as client:
        assert (await client.list_tools()).tools == []


async def test_tool_metadata_tells_the_host_when_to_use_it(sim: ProviderSim) -> None:
    server = create_server(load_settings(environ=sim_env(sim)))
    async with Client(server) as client:
        (tool,) = (await client.list_tools()).tools
    assert tool.title and "self-contained" in tool.description and "Do not use it" in tool.description
    assert tool.annotations.read_only_hint is True and tool.annotations.open_world_hint is True
    props = tool.input_schema["properties"]
    assert tool.input_schema["required"] == ["prompt"]
    assert set(props) == {
        "prompt",
        "context",
        "analysis_models",
        "model",
        "max_tool_calls",
        "preset",
        "answers",
        "files",
        "temperature",
        "reasoning",
        "tools",
        "max_completion_tokens",
    }
    assert tool.output_schema is not None and "analysis" in tool.output_schema["properties"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({}, "invalid argument prompt: must be a non-empty, self-contained question, at most"),
        ({"prompt": ""}, "invalid argument prompt: must be a non-empty"),
        ({"prompt": "   "}, "invalid argument prompt: must be a non-empty"),
        (
            {"prompt": "q", "max_tool_calls": 0},
            "invalid argument max_tool_calls: must be a whole number from 1 to 16 (got 0)",
        ),
        (
            {"prompt": "q", "max_tool_calls": 17},
            "invalid argument max_tool_calls: must be a whole number from 1 to 16 (got 17)",
        ),
        (
            {"prompt": "q", "max_tool_calls": "many"},
            "invalid argument max_tool_calls: must be a whole number from 1 to 16 (got 'many')",
        ),
        (
            {"prompt": "q", "analysis_models": []},
            f"invalid argument analysis_models: must be {PANEL_ENTRIES_RULE} (got a list of 0)",
        ),
        (
            {"prompt": "q", "analysis_models": [f"m/{i}" for i in range(9)]},
            f"invalid argument analysis_models: must be {PANEL_ENTRIES_RULE} (got a list of 9)",
        ),
        (
            {"prompt": "q", "analysis_models": ["a/b", "a/b"]},
            f"invalid argument analysis_models: must be {PANEL_ENTRIES_RULE} (a/b appears more than once)",
        ),
        (
            {"prompt": "q", "analysis_models": ["a/b", " "]},
            f"invalid argument analysis_models: must be {PANEL_ENTRIES_RULE}",
        ),
        ({"prompt": "q", "model": ""}, "invalid argument model: must be one model id: up to 200 letters"),
        ({"prompt": "q", "model": "two words"}, "invalid argument model: must be one model id: up to 200 letters"),
        (
            {"prompt": "q", "preset": "cheap"},
            "invalid argument preset: must be one of quality, budget, fast, self (got 'cheap')",
        ),
        (
            {"prompt": "q", "analysis_model": ["a/b"]},
            "unknown argument 'analysis_model': the arguments are prompt, context, analysis_models, model, "
            "max_tool_calls, preset",
        ),
    ],
)
async def test_invalid_arguments_are_error_results_naming_the_argument_and_its_rule(
    sim: ProviderSim, args: Any, message: str
) -> None:
    result, _ = await call(sim, args)
    data = structured(result)
    assert result.is_error and data["status"] == "error" and data["failure_reason"] == "invalid_arguments"
    assert data["error"].startswith(message), data["error"]
    assert text(result).startswith(f"**Fusion failed** (invalid_arguments): {data['error']}")
    assert sim.requests == []


async def test_the_input_schema_refuses_unknown_arguments(sim: ProviderSim) -> None:
    async with Client(create_server(load_settings(environ=sim_env(sim)))) as client:
        (tool,) = (await client.list_tools()).tools
    assert tool.input_schema["additionalProperties"] is False
    assert set(tool.input_schema["properties"]) == set(ToolArguments.model_fields)


async def test_the_key_never_reaches_a_result_even_when_upstream_echoes_it(sim: ProviderSim) -> None:
    for model in PANEL:
        sim.script(model, Reply(status=401, error_message="bad key", echo_auth=True))
    result, _ = await call(sim, {"prompt": "q"})
    data = structured(result)
    assert data["failure_reason"] == "all_panels_failed"
    assert "the API key was rejected" in data["error"]
    assert "[redacted]" in data["error"]
    assert API_KEY not in dump(result)


async def test_cancelling_the_call_closes_every_upstream_request(sim: ProviderSim) -> None:

    for model in PANEL:
        sim.script(model, Reply(latency=30))
    server = create_server(load_settings(environ=sim_env(sim)))
    async with Client(server) as client:
        await call_then_cancel(client, lambda: len(sim.requests) == 3)
        await wait_until(lambda: len(sim.disconnects) == 3)
    assert sorted(sim.disconnects) == sorted(PANEL)
    assert len(sim.requests) == 3  # nothing new started after the cancel


async def test_streaming_can_be_turned_off(sim: ProviderSim) -> None:
    result, _ = await call(sim, {"prompt": "q"}, FUSION_STREAM="false")
    assert structured(result)["status"] == "ok"
    assert all("stream" not in r.body for r in sim.requests)


@pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")
@pytest.mark.parametrize(
    ("level", "expected"), [(None, []), ("info", ["info"] * 5 + ["warning"]), ("warning", ["warning"])]
)
async def test_older_clients_get_run_events_as_log_messages_at_their_level(
    sim: ProviderSim, level: str | None, expected: list[str]
) -> None:
    sim.script(B, Reply(status=500))
    got: list[tuple[str, str]] = []

    async def on_log(params: Any) -> None:
        got.append((params.level, params.data))

    server = create_server(load_settings(environ=sim_env(sim)))
    async with Client(server, mode="legacy", logging_callback=on_log) as client:
        assert client.server_capabilities.logging is not None
        if level:
            await client.set_logging_level(level)  # type: ignore[arg-type]
        await client.call_tool(TOOL, {"prompt": "q"})
    assert sorted(lv for lv, _ in got) == sorted(expected)
    assert all(data.startswith("run fus_") for _, data in got)


def test_the_one_reach_into_the_sdk_finds_its_low_level_server_or_says_so(sim: ProviderSim) -> None:
    """If an mcp release moves MCPServer's low-level server, this fails here, not silently in production."""
    from mcp.server.lowlevel.server import Server

    from fusion_mcp.mcp_server.log_levels import lowlevel_server

    server = create_server(load_settings(environ=sim_env(sim)))
    inner = lowlevel_server(server)
    assert isinstance(inner, Server) and inner.get_request_handler("logging/setLevel") is not None
    with pytest.raises(RuntimeError, match="cannot serve logging/setLevel"):
        lowlevel_server(object())  # type: ignore[arg-type]
