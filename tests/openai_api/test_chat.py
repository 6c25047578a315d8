"""The chat-completions endpoint over HTTP: ``fusion-mcp serve`` as the README starts it, a scripted writer
model on the provider simulator, and a plain HTTP client (the SDK and Node clients are in test_chat_clients).
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx2
import pytest

from fusion_mcp.core.models import FusionResult
from fusion_mcp.engine.admission import ARGUMENT_RULES
from fusion_mcp.openai_api.writer import ALREADY_RAN
from fusion_mcp.providers.client import DEPTH_HEADER
from tests.conftest import ANALYST, API_KEY, PANEL
from tests.fakes import writer
from tests.fakes.provider_sim import ProviderSim, Reply
from tests.helpers import ANALYSIS_KEYS, read_sse, recorded, wait_until

WRITER = "acme/writer"
USER = {"role": "user", "content": "Which of A and B should we choose?"}
PLUGIN = {"id": "fusion"}
FUSED_USAGE = {
    # Two writer requests, three members and the analyst: six requests of the simulator's default usage.
    "prompt_tokens": 600,
    "completion_tokens": 300,
    "total_tokens": 900,
    "completion_tokens_details": {"reasoning_tokens": 42},
    "cost": 0.009,
}
ONE_REQUEST = {
    "prompt_tokens": 100,
    "completion_tokens": 50,
    "total_tokens": 150,
    "completion_tokens_details": {"reasoning_tokens": 7},
    "cost": 0.0015,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def post(base: str, body: Any, path: str = "/v1/chat/completions", **headers: str) -> httpx2.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **headers}
    return httpx2.post(f"{base}{path}", content=content, headers=headers, timeout=60)


def stream(base: str, body: dict[str, Any], **headers: str) -> tuple[list[Any], list[str]]:
    with httpx2.stream("POST", f"{base}/v1/chat/completions", json=body, headers=headers, timeout=60) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        return read_sse(response.iter_lines())


def writer_requests(sim: ProviderSim, model: str = WRITER) -> list[dict[str, Any]]:
    """The bodies of the writer's own requests (not the analyst's or a member's under the same id)."""
    return [
        r.body for r in sim.requests_for(model) if "response_format" not in r.body and r.body["messages"][0] == USER
    ]


def error(status_type: str, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": status_type, "code": code, "param": param}}


# -- (1) the writer calls fusion ---------------------------------------------------------------------------


def test_the_writer_calls_fusion_and_answers_from_its_result(sim: ProviderSim, http_server: str) -> None:
    sim.scripts[WRITER] = writer.fusing(prompt="Compare A and B for a small team.")
    response = post(http_server, {"model": WRITER, "messages": [USER], "plugins": [PLUGIN]})
    assert response.status_code == 200
    data = response.json()
    assert list(data)[:4] == ["id", "object", "created", "model"] and data["id"].startswith("chatcmpl-")
    assert (data["object"], data["model"]) == ("chat.completion", WRITER)
    assert data["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": writer.FINAL}, "finish_reason": "stop"}
    ]
    fusion = FusionResult.model_validate(data["fusion"])
    assert fusion.status == "ok" and fusion.analyst_model == WRITER
    assert [r.model for r in fusion.responses] == list(PANEL) and fusion.analysis is not None
    assert data["usage"] == FUSED_USAGE

    decide, answer = writer_requests(sim)
    assert writer.offered(decide) == [writer.FUSION] and "tool_choice" not in decide
    assert answer["messages"][1]["tool_calls"][0]["function"]["name"] == writer.FUSION
    tool = answer["messages"][2]
    assert (tool["role"], tool["tool_call_id"]) == ("tool", "call_1")
    seen = json.loads(tool["content"])
    assert seen["status"] == "ok" and set(seen["analysis"]) == ANALYSIS_KEYS
    assert set(seen) == {"status", "analysis", "responses"}  # OpenRouter's shape; empty lists left out
    # The tool stays defined (the conversation holds a call to it) but is not offered again.
    assert writer.offered(answer) == [writer.FUSION] and answer["tool_choice"] == "none"
    for model in PANEL:
        (member,) = sim.requests_for(model)
        assert "Compare A and B for a small team." in json.dumps(member.body["messages"])
    assert {r.headers[DEPTH_HEADER] for r in sim.requests} == {"1"}
    assert API_KEY not in response.text

    record = recorded(fusion.run_id)
    assert record["principal"] == "local" and record["request"]["prompt"] == "Compare A and B for a small team."
    assert record["result"] == data["fusion"]


def test_streaming_sends_the_final_turn_progress_usage_and_done(sim: ProviderSim, http_server: str) -> None:
    sim.scripts[WRITER] = writer.fusing()
    body = {
        "model": WRITER,
        "messages": [USER],
        "plugins": [PLUGIN],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events, comments = stream(http_server, body)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {(c["object"], c["model"], c["id"]) for c in chunks} == {("chat.completion.chunk", WRITER, chunks[0]["id"])}
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == writer.FINAL
    *_, finish, tail = chunks
    assert finish["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert FusionResult.model_validate(finish["fusion"]).status == "ok"
    assert tail["choices"] == [] and tail["usage"] == FUSED_USAGE
    assert comments[0].startswith("fusion running: fusion started: panel of 3")
    assert "fusion running: analysis ready" in " ".join(comments)
    assert all(r["stream"] is True for r in writer_requests(sim))
    assert len(sim.requests) == 6 and {r.headers[DEPTH_HEADER] for r in sim.requests} == {"1"}


def test_without_include_usage_no_usage_chunk(sim: ProviderSim, http_server: str) -> None:
    sim.scripts[WRITER] = writer.direct()
    events, _ = stream(http_server, {"model": WRITER, "messages": [USER], "plugins": [PLUGIN], "stream": True})
    assert events[-1] == "[DONE]" and all("usage" not in e for e in events[:-1])
    assert events[-2]["choices"][0]["finish_reason"] == "stop" and "fusion" not in events[-2]


@pytest.mark.parametrize("streamed", [False, True])
def test_text_before_the_fusion_call_comes_first(sim: ProviderSim, http_server: str, streamed: bool) -> None:
    def script(body: dict[str, Any]) -> Reply:
        if writer.tool_messages(body):
            return Reply(content=writer.FINAL)
        return Reply(content="Let me ask the panel.", tool_calls=[writer.call(writer.FUSION, {"prompt": "q"})])

    sim.scripts[WRITER] = script
    body = {"model": WRITER, "messages": [USER], "plugins": [PLUGIN], "stream": streamed}
    if streamed:
        events, _ = stream(http_server, body)
        text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1])
    else:
        text = post(http_server, body).json()["choices"][0]["message"]["content"]
    assert text == f"Let me ask the panel.\n\n{writer.FINAL}"


# -- (2) a direct answer; (3) the caller's own tool ---------------------------------------------------------


def test_a_direct_answer_makes_no_panel_request(sim: ProviderSim, http_server: str) -> None:
    sim.scripts[WRITER] = writer.direct()
    # A client that also speaks MCP may send its session header everywhere: the chat routes ignore it.
    session = {"Mcp-Session-Id": "w1.not-a-session-of-this-server"}
    data = post(http_server, {"model": WRITER, "messages": [USER], "plugins": [PLUGIN]}, **session).json()
    assert data["choices"][0]["message"] == {"role": "assistant", "content": writer.DIRECT}
    assert "fusion" not in data and data["usage"] == ONE_REQUEST
    assert [r.model for r in sim.requests] == [WRITER]


@pytest.mark.parametrize("streamed", [False, True])
def test_a_call_of_the_callers_tool_goes_back_to_the_caller(sim: ProviderSim, http_server: str, streamed: bool) -> None:
    weather = writer.call("get_weather", {"city": "Oslo"}, "call_w")
    sim.script(WRITER, Reply(content="", tool_calls=[weather], finish_reason="tool_calls"), Reply(content="Sunny."))
    body = {"model": WRITER, "messages": [USER], "tools": [WEATHER], "plugins": [PLUGIN], "stream": streamed}
    if streamed:
        events, _ = stream(http_server, body)
        calls = [c for e in events[:-1] for c in e["choices"][0]["delta"].get("tool_calls", [])]
        assert calls == [weather | {"index": 0}]
        assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"
    else:
        choice = post(http_server, body).json()["choices"][0]
        assert choice == {
            "index": 0,
            "message": {"role": "assistant", "content": None, "tool_calls": [weather]},
            "finish_reason": "tool_calls",
        }
    (decide,) = writer_requests(sim)
    assert writer.offered(decide) == ["get_weather", writer.FUSION]
    # The caller runs the tool and sends the conversation on, as with any model.
    turn = [USER, {"role": "assistant", "content": None, "tool_calls": [weather]}]
    turn.append({"role": "tool", "tool_call_id": "call_w", "content": "12 C, sunny"})
    data = post(http_server, {**body, "messages": turn, "stream": False}).json()
    assert data["choices"][0]["message"]["content"] == "Sunny."
    assert sim.requests[-1].body["messages"] == turn
    assert {r.model for r in sim.requests} == {WRITER}


# -- (4) no fusion tool: enabled false, a nested call ------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "depth", "writer_id"),
    [
        ({"model": WRITER, "plugins": [{"id": "fusion", "enabled": False}]}, None, WRITER),
        ({"model": WRITER, "plugins": [PLUGIN]}, "1", WRITER),
        ({"model": WRITER, "tools": [{"type": "openrouter:fusion"}]}, "3", WRITER),
        ({"model": "openrouter/fusion"}, "1", ANALYST),
        ({"model": WRITER}, None, WRITER),
    ],
    ids=["enabled-false", "depth-1", "tool-entry-depth-3", "alias-depth-1", "no-entry-point"],
)
def test_no_fusion_tool_is_offered(
    sim: ProviderSim, http_server: str, body: dict[str, Any], depth: str | None, writer_id: str
) -> None:
    sim.scripts[writer_id] = writer.direct()
    headers = {DEPTH_HEADER: depth} if depth else {}
    data = post(http_server, {**body, "messages": [USER]}, **headers).json()
    assert data["model"] == writer_id and data["choices"][0]["message"]["content"] == writer.DIRECT
    (only,) = sim.requests
    assert only.model == writer_id and "tools" not in only.body and "plugins" not in only.body
    assert only.headers[DEPTH_HEADER] == str(int(depth or 0) + 1)


def test_other_fields_and_plugins_reach_the_writer_as_sent(sim: ProviderSim, http_server: str) -> None:
    sim.scripts[WRITER] = writer.direct()
    web = {"id": "web", "max_results": 3}
    body = {"model": WRITER, "messages": [USER], "plugins": [web, PLUGIN], "temperature": 0.2, "max_tokens": 99}
    post(http_server, body | {"provider": {"sort": "price"}})
    sent = sim.requests[0].body
    assert (sent["plugins"], sent["temperature"], sent["max_tokens"], sent["provider"]) == (
        [web],
        0.2,
        99,
        {"sort": "price"},
    )


# -- (7) the three entry points -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "writer_id", "analyst", "panel"),
    [
        ({"model": "openrouter/fusion", "plugins": [{"id": "fusion", "model": WRITER}]}, WRITER, WRITER, PANEL),
        ({"model": "fusion"}, ANALYST, ANALYST, PANEL),
        (
            {"model": WRITER, "plugins": [{"id": "fusion", "model": "acme/judge", "analysis_models": ["a/x", "b/y"]}]},
            WRITER,
            "acme/judge",
            ("a/x", "b/y"),
        ),
        (
            {"model": WRITER, "tools": [{"type": "openrouter:fusion", "parameters": {"analysis_models": ["a/x"]}}]},
            WRITER,
            WRITER,
            ("a/x",),
        ),
        ({"model": "openrouter/fusion", "plugins": [{"id": "fusion", "preset": "general-budget"}]}, None, None, None),
    ],
    ids=["alias-with-plugin-model", "alias-defaults", "plugin", "server-tool", "alias-openrouter-preset"],
)
def test_each_entry_point_spelling(
    sim: ProviderSim,
    http_server: str,
    body: dict[str, Any],
    writer_id: str | None,
    analyst: str | None,
    panel: tuple[str, ...] | None,
) -> None:
    if writer_id is None:  # OpenRouter's preset slug means ours: the budget panel, with its analyst writing
        writer_id = analyst = "~anthropic/claude-sonnet-latest"
        panel = ("~anthropic/claude-haiku-latest", "~openai/gpt-mini-latest", "~google/gemini-flash-latest")
    sim.scripts[writer_id] = writer.fusing()
    data = post(http_server, {**body, "messages": [USER]}).json()
    assert data["model"] == writer_id and data["choices"][0]["message"]["content"] == writer.FINAL
    assert data["fusion"]["analyst_model"] == analyst
    assert [r["model"] for r in data["fusion"]["responses"]] == list(panel or ())
    assert len(writer_requests(sim, writer_id)) == 2


def test_the_entry_points_run_settings_reach_the_panel(sim: ProviderSim, http_server: str) -> None:
    sim.scripts[WRITER] = writer.fusing()
    entry = {"id": "fusion", "temperature": 0.4, "max_completion_tokens": 900, "tools": [], "max_tool_calls": 3}
    data = post(http_server, {"model": WRITER, "messages": [USER], "plugins": [entry]}).json()
    assert data["fusion"]["status"] == "ok"
    for model in PANEL:
        (member,) = sim.requests_for(model)
        assert (member.body["temperature"], member.body["max_completion_tokens"]) == (0.4, 900)
        assert "tools" not in member.body  # "tools": [] turns the panel's web tools off
    (analyst,) = [r.body for r in sim.requests_for(WRITER) if "response_format" in r.body]
    assert analyst["max_completion_tokens"] == 900 and analyst["temperature"] == 0


# -- fusion's own outcomes inside a turn --------------------------------------------------------------------


def test_a_failed_fusion_is_a_tool_result_the_writer_answers_from(sim: ProviderSim, http_server: str) -> None:
    sim.scripts[WRITER] = writer.fusing(final="The panel failed; here is my own answer.")
    for model in PANEL:
        sim.script(model, Reply(status=500, error_message="model down"))
    response = post(http_server, {"model": WRITER, "messages": [USER], "plugins": [PLUGIN]})
    assert response.status_code == 200
    data = response.json()
    assert data["choices"][0]["message"]["content"] == "The panel failed; here is my own answer."
    assert (data["fusion"]["status"], data["fusion"]["failure_reason"]) == ("error", "all_panels_failed")
    seen = json.loads(writer_requests(sim)[1]["messages"][-1]["content"])
    assert seen["failure_reason"] == "all_panels_failed" and len(seen["failed_models"]) == 3


NOT_AN_ID = "{}: 'two words' has the character ' ', which no model id has"
FOREIGN_ORIGIN = "requests from that Origin are refused (see FUSION_ALLOWED_ORIGINS)"
PROMPT_RULE = f"invalid argument prompt: must be {ARGUMENT_RULES['prompt']}"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"context": "only context"}, f"{PROMPT_RULE} (missing)"),
        ({"prompt": "   "}, PROMPT_RULE),
        ("{not json", f"{PROMPT_RULE} (the tool call's arguments are not JSON)"),
        ("[1, 2]", f"{PROMPT_RULE} (the tool call's arguments are not a JSON object)"),
        ({"prompt": 42}, f"{PROMPT_RULE} (not a string)"),
    ],
    ids=["no-prompt", "blank-prompt", "not-json", "not-an-object", "not-a-string"],
)
def test_a_refused_fusion_call_is_a_tool_result_and_nothing_is_spent(
    sim: ProviderSim, http_server: str, arguments: Any, message: str
) -> None:
    sim.scripts[WRITER] = writer.fusing(arguments=arguments, final="Answered without the panel.")
    data = post(http_server, {"model": WRITER, "messages": [USER], "plugins": [PLUGIN]}).json()
    assert data["choices"][0]["message"]["content"] == "Answered without the panel."
    seen = json.loads(writer_requests(sim)[1]["messages"][-1]["content"])
    assert seen == {"status": "error", "error": message, "failure_reason": "invalid_arguments"}
    assert data["fusion"]["failure_reason"] == "invalid_arguments"
    assert {r.model for r in sim.requests} == {WRITER}


def test_fusion_runs_once_per_request(sim: ProviderSim, http_server: str) -> None:
    def script(body: dict[str, Any]) -> Reply:
        done = len(writer.tool_messages(body))
        if done < 2:
            return Reply(content="", tool_calls=[writer.call(writer.FUSION, {"prompt": "q"}, f"call_{done}")])
        return Reply(content=writer.FINAL)

    sim.scripts[WRITER] = script
    data = post(
        http_server, {"model": WRITER, "messages": [USER], "plugins": [PLUGIN], "tool_choice": "required"}
    ).json()
    assert data["choices"][0]["message"]["content"] == writer.FINAL and data["fusion"]["status"] == "ok"
    first, second, third = writer_requests(sim)
    assert [first["tool_choice"], second["tool_choice"], third["tool_choice"]] == ["required", "none", "none"]
    assert third["messages"][-1] == {"role": "tool", "tool_call_id": "call_1", "content": ALREADY_RAN}
    assert all(len(sim.requests_for(m)) == 1 for m in PANEL[1:])


# -- (5) errors in OpenAI's shape ---------------------------------------------------------------------------

BAD = "invalid_request_error"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"{not json", error(BAD, "invalid_json", "the request body is not JSON")),
        ([USER], error(BAD, "invalid_request", "the request body must be a JSON object")),
        ({"model": WRITER}, error(BAD, "invalid_request", "messages: field required", "messages")),
        (
            {"model": WRITER, "messages": []},
            error(
                BAD, "invalid_request", "messages: list should have at least 1 item after validation, not 0", "messages"
            ),
        ),
        (
            {"model": WRITER, "messages": [{"content": "no role"}]},
            error(BAD, "invalid_request", "messages[0].role: field required", "messages[0].role"),
        ),
        ({"messages": [USER]}, error(BAD, "invalid_request", "model: field required", "model")),
        (
            {"model": "two words", "messages": [USER]},
            error(BAD, "invalid_request", NOT_AN_ID.format("model"), "model"),
        ),
        (
            {"model": WRITER, "messages": [USER], "n": 2},
            error(BAD, "invalid_request", "n: only 1 choice per request is supported", "n"),
        ),
        (
            {"model": WRITER, "messages": [USER], "plugins": [{"id": "fusion", "analysis_models": list("abcdefghi")}]},
            error(
                BAD,
                "invalid_request",
                f"plugins[0].analysis_models: must be {ARGUMENT_RULES['analysis_models']} (9 entries given)",
                "plugins[0].analysis_models",
            ),
        ),
        (
            {"model": WRITER, "messages": [USER], "plugins": [{"id": "fusion", "panel": ["a/x"]}]},
            error(BAD, "invalid_request", "plugins[0].panel: extra inputs are not permitted", "plugins[0].panel"),
        ),
        (
            {"model": WRITER, "messages": [USER], "plugins": [{"id": "fusion", "preset": "best"}]},
            error(
                BAD,
                "invalid_request",
                "plugins[0].preset: must be one of quality, budget, fast "
                "(or OpenRouter's general-high, general-budget, general-fast)",
                "plugins[0].preset",
            ),
        ),
        (
            {"model": WRITER, "messages": [USER], "plugins": [{"id": "fusion", "temperature": 3}]},
            error(
                BAD,
                "invalid_request",
                "plugins[0].temperature: input should be less than or equal to 2",
                "plugins[0].temperature",
            ),
        ),
        (
            {
                "model": WRITER,
                "messages": [USER],
                "tools": [{"type": "openrouter:fusion", "parameters": {"max_tool_calls": 99}}],
            },
            error(
                BAD,
                "invalid_request",
                "tools[0].parameters.max_tool_calls: must be a whole number from 1 to 16 (99 given)",
                "tools[0].parameters.max_tool_calls",
            ),
        ),
        (
            {"model": "fusion", "messages": [USER], "plugins": [{"id": "fusion", "model": "two words"}]},
            error(BAD, "invalid_request", NOT_AN_ID.format("plugins[0].model"), "plugins[0].model"),
        ),
        (
            {"model": WRITER, "messages": [USER], "plugins": [PLUGIN], "tools": [{"type": "openrouter:fusion"}]},
            error(
                BAD,
                "invalid_request",
                "tools[0].parameters: fusion is configured twice (plugins[0] and tools[0].parameters); give it once",
                "tools[0].parameters",
            ),
        ),
        (
            {
                "model": WRITER,
                "messages": [USER],
                "plugins": [PLUGIN],
                "tools": [{"type": "function", "function": {"name": "openrouter_fusion"}}],
            },
            error(
                BAD,
                "invalid_request",
                "tools[0].function.name: openrouter_fusion is the fusion tool's name here; name your tool otherwise",
                "tools[0].function.name",
            ),
        ),
        (
            {"model": WRITER, "messages": [USER], "plugins": ["fusion"]},
            error(BAD, "invalid_request", "plugins[0]: must be an object with an id", "plugins[0]"),
        ),
    ],
    ids=[
        "not-json",
        "not-an-object",
        "no-messages",
        "empty-messages",
        "message-without-role",
        "no-model",
        "bad-model-id",
        "n-2",
        "nine-members",
        "unknown-plugin-field",
        "unknown-preset",
        "temperature-3",
        "tool-entry-budget",
        "bad-writer-id-in-plugin",
        "configured-twice",
        "tool-name-clash",
        "plugin-not-an-object",
    ],
)
def test_bad_requests_are_400_naming_the_field_and_nothing_is_sent(
    sim: ProviderSim, http_server: str, body: Any, expected: dict[str, Any]
) -> None:
    response = post(http_server, body)
    assert (response.status_code, response.json()) == (400, expected)
    assert sim.requests == []


@pytest.mark.parametrize(
    ("reply", "status", "expected"),
    [
        (
            Reply(status=404, error_message="No endpoints found for acme/writer"),
            404,
            error(
                "not_found_error",
                "model_not_found",
                "acme/writer: HTTP 404: No endpoints found for acme/writer",
                "model",
            ),
        ),
        (
            Reply(status=400, error_message="acme/writer is not a valid model ID"),
            404,
            error(
                "not_found_error",
                "model_not_found",
                "acme/writer: HTTP 400: acme/writer is not a valid model ID",
                "model",
            ),
        ),
        (
            Reply(status=400, error_message="max_tokens is too large"),
            400,
            error(BAD, "upstream_bad_request", "acme/writer: HTTP 400: max_tokens is too large"),
        ),
        (
            Reply(status=402, error_message="out of credits"),
            402,
            error(
                "insufficient_quota",
                "insufficient_credits",
                "acme/writer: HTTP 402: insufficient credits: out of credits",
            ),
        ),
        (
            Reply(status=429, error_message="slow down", retry_after="0"),
            429,
            error("rate_limit_error", "rate_limited", "acme/writer: HTTP 429: slow down"),
        ),
        (
            Reply(status=503, error_message="no provider available", retry_after="0"),
            503,
            error("service_unavailable", "provider_unavailable", "acme/writer: HTTP 503: no provider available"),
        ),
        (
            Reply(status=500, error_message="boom"),
            502,
            error("upstream_error", "upstream_error", "acme/writer: HTTP 500: boom"),
        ),
        (
            Reply(status=401, error_message="bad key", echo_auth=True),
            502,
            error("upstream_error", "upstream_error", "acme/writer: the provider rejected this server's API key"),
        ),
        (
            Reply(raw=b"<html>oops</html>", content_type="text/html"),
            502,
            error(
                "upstream_error",
                "upstream_error",
                "acme/writer: the provider answered with text/html that is not JSON: '<html>oops</html>'",
            ),
        ),
    ],
    ids=["404", "400-unknown-model", "400", "402", "429", "503", "500", "401-server-key", "not-json"],
)
@pytest.mark.parametrize("streamed", [False, True])
def test_writer_failures_get_their_status_before_anything_was_streamed(
    sim: ProviderSim, http_server: str, reply: Reply, status: int, expected: dict[str, Any], streamed: bool
) -> None:
    sim.script(WRITER, reply)
    response = post(http_server, {"model": WRITER, "messages": [USER], "plugins": [PLUGIN], "stream": streamed})
    assert (response.status_code, response.json()) == (status, expected)
    assert response.headers["content-type"] == "application/json"
    if status == 429:
        assert response.headers["retry-after"] == "0"
    assert API_KEY not in response.text


def test_an_error_after_streaming_began_is_a_last_chunk_then_done(sim: ProviderSim, http_server: str) -> None:
    sim.script(WRITER, Reply(content="The answer begins", stream_error="upstream crashed"))
    events, _ = stream(http_server, {"model": WRITER, "messages": [USER], "stream": True})
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-2]) == "The answer begins"
    last = events[-2]
    assert last["choices"] == [{"index": 0, "delta": {}, "finish_reason": "error"}]
    assert last["error"] == {
        "message": "acme/writer: the stream ended with an error: upstream crashed",
        "type": "upstream_error",
        "code": "upstream_error",
        "param": None,
    }
    assert events[-1] == "[DONE]"


def test_methods_and_paths(http_server: str) -> None:
    got = httpx2.get(f"{http_server}/v1/chat/completions")
    assert (got.status_code, got.headers["allow"]) == (405, "POST")
    assert got.json() == error(BAD, "method_not_allowed", "use POST for chat completions")
    posted = post(http_server, {}, path="/v1/models")
    assert (posted.status_code, posted.headers["allow"]) == (405, "GET")


def test_transport_checks_apply_to_the_chat_routes(sim: ProviderSim, http_server: str) -> None:
    body = {"model": WRITER, "messages": [USER]}
    big = post(http_server, {**body, "pad": "x" * (2 * 2**20)})
    assert (big.status_code, big.json()) == (413, error(BAD, "body_too_large", "request body over 1048576 bytes"))
    host = post(http_server, body, Host="evil.example")
    assert (host.status_code, host.json()) == (
        421,
        error(BAD, "host_not_allowed", "this server does not answer for that Host (see FUSION_ALLOWED_HOSTS)"),
    )
    origin = post(http_server, body, Origin="http://evil.example")
    assert (origin.status_code, origin.json()) == (
        403,
        error("permission_error", "origin_not_allowed", FOREIGN_ORIGIN),
    )
    form = post(http_server, body, **{"Content-Type": "application/x-www-form-urlencoded"})
    assert (form.status_code, form.json()) == (
        400,
        error(BAD, "invalid_content_type", "Content-Type must be application/json"),
    )
    for path in ("/v1/models", "/api/v1/models"):
        assert httpx2.get(f"{http_server}{path}", headers={"Host": "evil.example"}).status_code == 421
    assert sim.requests == []


# -- models ---------------------------------------------------------------------------------------------------


def test_models_without_a_catalogue_list_the_fusion_ids(http_server: str) -> None:
    for path in ("/v1/models", "/api/v1/models"):
        response = httpx2.get(f"{http_server}{path}")
        assert response.json() == {
            "object": "list",
            "data": [
                {"id": "openrouter/fusion", "object": "model", "created": 0, "owned_by": "fusion-mcp"},
                {"id": "fusion", "object": "model", "created": 0, "owned_by": "fusion-mcp"},
            ],
        }


# -- (6) a client that goes away -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_client_that_disconnects_mid_stream_cancels_the_run(sim: ProviderSim, http_server: str) -> None:
    sim.scripts[WRITER] = writer.fusing()
    for model in PANEL[1:]:
        sim.script(model, Reply(latency=30))
    # The first member's id is the analyst's too; it is not the writer here.
    sim.script(PANEL[0], Reply(latency=30))
    body = {"model": WRITER, "messages": [USER], "plugins": [PLUGIN], "stream": True}
    async with (
        httpx2.AsyncClient(timeout=30) as http,
        http.stream("POST", f"{http_server}/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        await wait_until(lambda: all(sim.requests_for(m) for m in PANEL))
    # The stream is closed here, with every member still "thinking".
    await wait_until(lambda: sorted(sim.disconnects) == sorted(PANEL), 15)


@pytest.mark.anyio
async def test_a_client_that_gives_up_on_a_plain_request_cancels_the_writer(sim: ProviderSim, http_server: str) -> None:
    sim.script(WRITER, Reply(latency=30))
    async with httpx2.AsyncClient(timeout=30) as http, anyio.create_task_group() as tg:

        async def ask() -> None:
            await http.post(f"{http_server}/v1/chat/completions", json={"model": WRITER, "messages": [USER]})

        tg.start_soon(ask)
        await wait_until(lambda: len(sim.requests) == 1)
        tg.cancel_scope.cancel()
    await wait_until(lambda: sim.disconnects == [WRITER], 15)
