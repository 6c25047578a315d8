"""The Responses API (``POST /v1/responses``) over HTTP: ``fusion-mcp serve`` against the provider simulator,
with a scripted writer, driven by a plain HTTP client (the SDKs and agent hosts are in test_responses_clients).
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx2
import pytest

from fusion_mcp.core.models import FusionResult
from fusion_mcp.openai_api.routes import SERVED
from tests.conftest import ANALYST, API_KEY, PANEL
from tests.fakes import writer
from tests.fakes.provider_sim import ProviderSim, Reply
from tests.helpers import ANALYSIS_KEYS, wait_until

WRITER = "acme/writer"
QUESTION = "Which of A and B should we choose?"
USER = {"role": "user", "content": QUESTION}
PLUGIN = {"id": "fusion"}
FUSED_USAGE = {
    # Two writer requests, three members and the analyst: six requests of the simulator's default usage.
    "input_tokens": 600,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 300,
    "output_tokens_details": {"reasoning_tokens": 42},
    "total_tokens": 900,
    "cost": 0.009,
}
ONE_REQUEST = {
    "input_tokens": 100,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 50,
    "output_tokens_details": {"reasoning_tokens": 7},
    "total_tokens": 150,
    "cost": 0.0015,
}
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
BAD = "invalid_request_error"
GAMMA = "Gamma says B, " + "because B scales further and costs less to run over the years. " * 3
THOUGHT = "Thinking about B: " + "weighing the cost of running it against how far it scales. " * 3


def post(base: str, body: Any, path: str = "/v1/responses", **headers: str) -> httpx2.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx2.post(
        f"{base}{path}", content=content, headers={"Content-Type": "application/json", **headers}, timeout=60
    )


def events(base: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Every event of a streamed response, checked for the SSE framing: ``event: <type>`` then its data."""
    found: list[dict[str, Any]] = []
    name = None
    with httpx2.stream("POST", f"{base}/v1/responses", json=body, timeout=60) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data = json.loads(line[len("data: ") :])
                assert data["type"] == name
                found.append(data)
    assert [e["sequence_number"] for e in found] == list(range(len(found)))
    return found


def error(kind: str, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": code, "param": param}}


def writer_requests(sim: ProviderSim, model: str = WRITER) -> list[dict[str, Any]]:
    return [r.body for r in sim.requests_for(model) if "response_format" not in r.body and writer.is_writer(r.body)]


def message(text: str) -> dict[str, Any]:
    """A finished assistant message item (its id aside)."""
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
    return {"type": "message", "status": "completed", "role": "assistant", "content": [part]}


def without_id(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k != "id"}


# -- the writer calls fusion -----------------------------------------------------------------------------------


def test_a_fused_response_has_the_fusion_item_then_the_answer(sim: ProviderSim, http_server: str) -> None:
    sim.scripts[WRITER] = writer.fusing(prompt="Compare A and B for a small team.")
    response = post(http_server, {"model": WRITER, "input": QUESTION, "plugins": [PLUGIN], "metadata": {"k": "v"}})
    assert response.status_code == 200
    data = response.json()
    assert data["id"].startswith("resp_") and data["object"] == "response"
    assert (data["status"], data["model"], data["error"], data["usage"]) == ("completed", WRITER, None, FUSED_USAGE)
    assert (data["metadata"], data["store"], data["previous_response_id"]) == ({"k": "v"}, False, None)
    fused, answer = data["output"]
    assert without_id(answer) == message(writer.FINAL) and answer["id"].startswith("msg_")
    assert fused["type"] == "openrouter:fusion" and fused["id"].startswith("fus_")
    assert set(fused) == {
        *("type", "id", "role", "content", "status"),
        *("analysis", "responses", "failed_models", "sources", "analyst_model"),
    }
    assert (fused["role"], fused["content"]) == ("assistant", [])
    assert (fused["status"], fused["failed_models"], fused["analyst_model"]) == ("ok", [], WRITER)
    assert set(fused["analysis"]) == ANALYSIS_KEYS
    assert [r["model"] for r in fused["responses"]] == list(PANEL)
    assert fused["responses"][1]["content"] == f"Answer from {PANEL[1]}: the answer is 42."
    decide, final = writer_requests(sim)
    assert decide["messages"] == [USER] and writer.offered(decide) == [writer.FUSION]
    assert final["messages"][-1]["role"] == "tool" and final["tool_choice"] == "none"
    for model in PANEL:
        assert "Compare A and B for a small team." in json.dumps(sim.requests_for(model)[0].body["messages"])
    assert API_KEY not in response.text


def test_a_streamed_fused_response_sends_every_fusion_event_in_order(sim: ProviderSim, http_server: str) -> None:
    sim.scripts[WRITER] = writer.fusing()
    sim.script(PANEL[1], Reply(content=GAMMA, reasoning=THOUGHT))
    sim.script(PANEL[2], Reply(status=400, error_message="context too long"))
    found = events(http_server, {"model": WRITER, "input": QUESTION, "plugins": [PLUGIN], "stream": True})
    kinds = [e["type"] for e in found]
    fusion = [e for e in found if e["type"].startswith("response.fusion_call.")]
    item = found[2]["item"]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.fusion_call.in_progress",
    ]
    assert found[0]["response"]["status"] == "in_progress" and found[0]["response"]["output"] == []
    assert (item["type"], item["status"]) == ("openrouter:fusion", "in_progress")
    assert {(e["item_id"], e["output_index"]) for e in fusion} == {(item["id"], 0)}
    # Each member's events in order: added, its streamed text as it came (reasoning first), then its end. Text
    # goes through the redactor, which holds back as much as a secret's length, so pieces arrive in a few deltas.
    one = [(e["type"].removeprefix("response.fusion_call."), _fields(e)) for e in fusion if e.get("model") == PANEL[1]]
    kinds_one = [kind for kind, _ in one]
    thoughts, said = kinds_one.count("panel.reasoning.delta"), kinds_one.count("panel.delta")
    assert thoughts > 1 and said > 1
    assert kinds_one == [
        "panel.added",
        *["panel.reasoning.delta"] * thoughts,
        *["panel.delta"] * said,
        "panel.completed",
    ]
    assert "".join(f["delta"] for k, f in one if k == "panel.reasoning.delta") == THOUGHT
    assert "".join(f["delta"] for k, f in one if k == "panel.delta") == GAMMA
    assert one[-1] == ("panel.completed", {"content": GAMMA})
    first = [e for e in fusion if e.get("model") == PANEL[0]]
    assert "".join(e["delta"] for e in first if e["type"].endswith("panel.delta")) == first[-1]["content"]
    failed = [e for e in fusion if e.get("model") == PANEL[2]]
    assert [e["type"] for e in failed] == ["response.fusion_call.panel.added", "response.fusion_call.panel.failed"]
    assert _fields(failed[-1]) == {"message": "HTTP 400: context too long", "status_code": 400}
    added = [e["model"] for e in fusion if e["type"].endswith("panel.added")]
    assert added == list(PANEL)
    tail = [e["type"].removeprefix("response.fusion_call.") for e in fusion if "model" not in e]
    assert tail == ["in_progress", "analysis.in_progress", "analysis.completed", "completed"]
    (analysing,) = [e for e in fusion if e["type"].endswith("analysis.in_progress")]
    (analysed,) = [e for e in fusion if e["type"].endswith("analysis.completed")]
    assert analysing["analyst_model"] == WRITER and set(analysed["analysis"]) == ANALYSIS_KEYS
    ends = [i for i, e in enumerate(found) if e["type"].endswith(("panel.completed", "panel.failed"))]
    assert max(ends) < kinds.index("response.fusion_call.analysis.in_progress")
    # Then the item with the result, and the answer as a message of its own.
    after = found[kinds.index("response.fusion_call.completed") + 1 :]
    assert [e["type"] for e in after] == [
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * sum(e["type"] == "response.output_text.delta" for e in after),
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    done = after[0]["item"]
    assert (done["id"], done["status"]) == (item["id"], "ok")
    assert [r["model"] for r in done["responses"]] == list(PANEL[:2])
    assert done["failed_models"] == [{"model": PANEL[2], "error": "HTTP 400: context too long", "status_code": 400}]
    text = [e for e in after if e["type"] == "response.output_text.delta"]
    assert "".join(e["delta"] for e in text) == writer.FINAL
    assert {(e["output_index"], e["content_index"]) for e in text} == {(1, 0)}
    assert after[-4]["text"] == writer.FINAL
    final = after[-1]["response"]
    assert final["status"] == "completed" and final["output"] == [done, after[-2]["item"]]
    assert without_id(after[-2]["item"]) == message(writer.FINAL)
    assert final["usage"]["total_tokens"] == 750  # five requests: the failed member reported no usage


def _fields(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k not in ("type", "sequence_number", "item_id", "output_index", "model")}


@pytest.mark.parametrize("streamed", [False, True])
def test_text_before_the_fusion_call_is_a_message_of_its_own(
    sim: ProviderSim, http_server: str, streamed: bool
) -> None:
    def script(body: dict[str, Any]) -> Reply:
        if writer.tool_messages(body):
            return Reply(content=writer.FINAL)
        return Reply(content="Let me ask the panel.", tool_calls=[writer.call(writer.FUSION, {"prompt": "q"})])

    sim.scripts[WRITER] = script
    body = {"model": WRITER, "input": QUESTION, "plugins": [PLUGIN], "stream": streamed}
    if streamed:
        output = events(http_server, body)[-1]["response"]["output"]
    else:
        output = post(http_server, body).json()["output"]
    first, fused, answer = output
    assert without_id(first) == message("Let me ask the panel.") and without_id(answer) == message(writer.FINAL)
    assert (fused["type"], fused["status"]) == ("openrouter:fusion", "ok")


# -- a direct answer; the caller's own tool ----------------------------------------------------------------------


@pytest.mark.parametrize("streamed", [False, True])
def test_a_direct_answer_makes_no_panel_request(sim: ProviderSim, http_server: str, streamed: bool) -> None:
    sim.scripts[WRITER] = writer.direct()
    body = {"model": WRITER, "input": QUESTION, "plugins": [PLUGIN], "instructions": "Be brief.", "stream": streamed}
    if streamed:
        found = events(http_server, body)
        assert [e["type"] for e in found] == [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            *["response.output_text.delta"] * sum(e["type"] == "response.output_text.delta" for e in found),
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
        data = found[-1]["response"]
    else:
        data = post(http_server, body).json()
    assert [without_id(i) for i in data["output"]] == [message(writer.DIRECT)]
    assert (data["usage"], data["instructions"]) == (ONE_REQUEST, "Be brief.")
    (only,) = sim.requests
    assert only.model == WRITER and only.body["messages"] == [{"role": "system", "content": "Be brief."}, USER]


@pytest.mark.parametrize("streamed", [False, True])
def test_a_call_of_the_callers_tool_is_a_function_call_item(sim: ProviderSim, http_server: str, streamed: bool) -> None:
    weather = writer.call("get_weather", {"city": "Oslo"}, "call_w")
    sim.script(WRITER, Reply(content="", tool_calls=[weather], finish_reason="tool_calls"), Reply(content="Sunny."))
    body = {"model": WRITER, "input": QUESTION, "tools": [WEATHER], "plugins": [PLUGIN], "stream": streamed}
    if streamed:
        found = events(http_server, body)
        assert [e["type"] for e in found][2:] == [
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
        assert found[2]["item"]["arguments"] == "" and found[3]["delta"] == '{"city": "Oslo"}'
        output = found[-1]["response"]["output"]
    else:
        output = post(http_server, body).json()["output"]
    (call,) = output
    assert call["id"].startswith("fc_") and without_id(call) == {
        "type": "function_call",
        "call_id": "call_w",
        "name": "get_weather",
        "arguments": '{"city": "Oslo"}',
        "status": "completed",
    }
    (decide,) = writer_requests(sim)
    assert decide["tools"][0] == {
        "type": "function",
        "function": {k: v for k, v in WEATHER.items() if k != "type"},
    }
    # The caller runs the tool and sends the whole conversation back: its call and the call's output.
    follow = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": QUESTION}]},
        call,
        {"type": "function_call_output", "call_id": "call_w", "output": "12 C, sunny"},
    ]
    data = post(http_server, {**body, "input": follow, "stream": False}).json()
    assert [without_id(i) for i in data["output"]] == [message("Sunny.")]
    assert sim.requests[-1].body["messages"] == [
        USER,
        {"role": "assistant", "content": None, "tool_calls": [weather]},
        {"role": "tool", "tool_call_id": "call_w", "content": "12 C, sunny"},
    ]
    assert {r.model for r in sim.requests} == {WRITER}


def test_the_conversation_sent_back_reads_as_chat_messages(sim: ProviderSim, http_server: str) -> None:
    sim.scripts[WRITER] = writer.direct()
    earlier = post(http_server, {"model": WRITER, "input": QUESTION, "plugins": [PLUGIN]}).json()["output"]
    conversation = [
        {"role": "developer", "content": "Answer in one line."},
        {"role": "user", "content": QUESTION},
        *earlier,
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "openrouter:fusion", "id": "fus_0", "status": "ok"},
        {"role": "user", "content": [{"type": "input_text", "text": "And "}, {"type": "input_text", "text": "C?"}]},
    ]
    post(http_server, {"model": WRITER, "input": conversation, "plugins": [PLUGIN], "max_output_tokens": 64})
    sent = sim.requests[-1].body
    assert sent["messages"] == [
        {"role": "system", "content": "Answer in one line."},
        USER,
        {"role": "assistant", "content": writer.DIRECT},
        {"role": "user", "content": "And C?"},
    ]
    assert sent["max_completion_tokens"] == 64 and "max_output_tokens" not in sent


def test_fields_reach_the_writer_in_chat_terms(sim: ProviderSim, http_server: str) -> None:
    sim.script(WRITER, Reply(content='{"a": "x"}'))
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    body = {
        "model": WRITER,
        "input": QUESTION,
        "temperature": 0.2,
        "top_p": 0.9,
        "reasoning": {"effort": "low", "summary": "auto"},
        "text": {"format": {"type": "json_schema", "name": "a", "schema": schema, "strict": True}},
        "tool_choice": {"type": "function", "name": "get_weather"},
        "tools": [WEATHER],
        "store": True,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "k",
        "provider": {"sort": "price"},
    }
    data = post(http_server, body).json()
    assert (data["store"], data["temperature"], data["reasoning"]) == (False, 0.2, {"effort": "low", "summary": None})
    sent = sim.requests[0].body
    assert (sent["temperature"], sent["top_p"], sent["reasoning"], sent["provider"]) == (
        0.2,
        0.9,
        {"effort": "low"},
        {"sort": "price"},
    )
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "a", "schema": schema, "strict": True},
    }
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert not {"store", "include", "prompt_cache_key", "text", "input", "instructions"} & set(sent)


# -- the three entry points ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "writer_id", "analyst", "panel"),
    [
        ({"model": "openrouter/fusion"}, ANALYST, ANALYST, PANEL),
        ({"model": "fusion", "plugins": [{"id": "fusion", "model": WRITER}]}, WRITER, WRITER, PANEL),
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
    ],
    ids=["alias-openrouter-fusion", "alias-fusion-with-writer", "plugin", "server-tool"],
)
def test_each_entry_point_spelling(
    sim: ProviderSim,
    http_server: str,
    body: dict[str, Any],
    writer_id: str,
    analyst: str,
    panel: tuple[str, ...],
) -> None:
    sim.scripts[writer_id] = writer.fusing()
    data = post(http_server, {**body, "input": QUESTION}).json()
    fused, answer = data["output"]
    assert data["model"] == writer_id and without_id(answer) == message(writer.FINAL)
    assert fused["analyst_model"] == analyst and [r["model"] for r in fused["responses"]] == list(panel)
    assert len(writer_requests(sim, writer_id)) == 2


@pytest.mark.parametrize(
    "body",
    [
        {"model": WRITER, "plugins": [{"id": "fusion", "enabled": False}]},
        {"model": WRITER},
    ],
    ids=["enabled-false", "no-entry-point"],
)
def test_no_fusion_tool_is_offered(sim: ProviderSim, http_server: str, body: dict[str, Any]) -> None:
    sim.scripts[WRITER] = writer.direct()
    data = post(http_server, {**body, "input": QUESTION}).json()
    assert [without_id(i) for i in data["output"]] == [message(writer.DIRECT)]
    (only,) = sim.requests
    assert "tools" not in only.body and "plugins" not in only.body


def test_a_failed_fusion_is_an_error_item_and_the_writer_answers(sim: ProviderSim, http_server: str) -> None:
    sim.scripts[WRITER] = writer.fusing(final="The panel failed; my own answer.")
    for model in PANEL:
        sim.script(model, Reply(status=500, error_message="model down"))
    found = events(http_server, {"model": WRITER, "input": QUESTION, "plugins": [PLUGIN], "stream": True})
    fused, answer = found[-1]["response"]["output"]
    assert (fused["status"], fused["failure_reason"]) == ("error", "all_panels_failed")
    assert without_id(answer) == message("The panel failed; my own answer.")
    failed = [e["model"] for e in found if e["type"] == "response.fusion_call.panel.failed"]
    assert sorted(failed) == sorted(PANEL)
    assert "response.fusion_call.analysis.in_progress" not in [e["type"] for e in found]


# -- errors in OpenAI's shape ----------------------------------------------------------------------------------

STATELESS = (
    "not supported: this server is stateless and keeps no responses: send the whole conversation in input "
    "(earlier output items included) instead"
)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"{not json", error(BAD, "invalid_json", "the request body is not JSON")),
        ([QUESTION], error(BAD, "invalid_request", "the request body must be a JSON object")),
        ({"model": WRITER}, error(BAD, "invalid_request", "input: field required", "input")),
        ({"input": QUESTION}, error(BAD, "invalid_request", "model: field required", "model")),
        ({"model": WRITER, "input": []}, error(BAD, "invalid_request", "input: must hold at least one item", "input")),
        (
            {"model": WRITER, "input": QUESTION, "previous_response_id": "resp_1"},
            error(BAD, "invalid_request", f"previous_response_id: {STATELESS}", "previous_response_id"),
        ),
        (
            {"model": WRITER, "input": [{"type": "item_reference", "id": "msg_1"}]},
            error(
                BAD,
                "invalid_request",
                "input[0].type: item references are not supported: this server is stateless and keeps no responses: "
                "send the whole conversation in input (earlier output items included) instead",
                "input[0].type",
            ),
        ),
        (
            {"model": WRITER, "input": [{"type": "web_search_call"}]},
            error(
                BAD,
                "invalid_request",
                "input[0].type: 'web_search_call' is not an input item this server reads; send message, function_call "
                "or function_call_output items",
                "input[0].type",
            ),
        ),
        (
            {"model": WRITER, "input": [{"role": "robot", "content": "hi"}]},
            error(
                BAD,
                "invalid_request",
                "input[0].role: must be one of user, assistant, system, developer",
                "input[0].role",
            ),
        ),
        (
            {"model": WRITER, "input": [{"type": "function_call_output", "output": "x"}]},
            error(BAD, "invalid_request", "input[0].call_id: field required", "input[0].call_id"),
        ),
        (
            {"model": WRITER, "input": QUESTION, "tools": [{"type": "custom", "name": "apply"}]},
            error(
                BAD,
                "invalid_request",
                "tools[0].type: 'custom' is not served here; use function, namespace, openrouter:fusion, or one of "
                "OpenRouter's server tools (openrouter:...)",
                "tools[0].type",
            ),
        ),
        (
            {"model": WRITER, "input": QUESTION, "max_output_tokens": 0},
            error(
                BAD,
                "invalid_request",
                "max_output_tokens: input should be greater than or equal to 1",
                "max_output_tokens",
            ),
        ),
        (
            {"model": WRITER, "input": QUESTION, "plugins": [{"id": "fusion", "max_tool_calls": 99}]},
            error(
                BAD,
                "invalid_request",
                "plugins[0].max_tool_calls: must be a whole number from 1 to 16 (99 given)",
                "plugins[0].max_tool_calls",
            ),
        ),
        (
            {
                "model": WRITER,
                "input": QUESTION,
                "plugins": [PLUGIN],
                "tools": [{"type": "function", "name": "openrouter_fusion"}],
            },
            error(
                BAD,
                "invalid_request",
                "tools[0].name: openrouter_fusion is the fusion tool's name here; name your tool otherwise",
                "tools[0].name",
            ),
        ),
        (
            {
                "model": WRITER,
                "input": QUESTION,
                "plugins": [PLUGIN],
                "tools": [
                    {"type": "web_search"},
                    {"type": "namespace", "name": "ns", "tools": [{"type": "function", "name": "openrouter_fusion"}]},
                ],
            },
            error(
                BAD,
                "invalid_request",
                "tools[1].tools[0].name: openrouter_fusion is the fusion tool's name here; name your tool otherwise",
                "tools[1].tools[0].name",
            ),
        ),
    ],
    ids=[
        "not-json",
        "not-an-object",
        "no-input",
        "no-model",
        "empty-input",
        "previous-response-id",
        "item-reference",
        "unknown-item",
        "bad-role",
        "output-without-call-id",
        "custom-tool",
        "max-output-tokens-0",
        "plugin-budget",
        "tool-name-clash",
        "tool-name-clash-in-a-namespace",
    ],
)
def test_bad_requests_are_400_naming_the_field_and_nothing_is_sent(
    sim: ProviderSim, http_server: str, body: Any, expected: dict[str, Any]
) -> None:
    response = post(http_server, body)
    assert (response.status_code, response.json()) == (400, expected)
    assert sim.requests == []


@pytest.mark.parametrize("streamed", [False, True])
def test_a_writer_failure_keeps_its_status_before_anything_was_sent(
    sim: ProviderSim, http_server: str, streamed: bool
) -> None:
    sim.script(WRITER, Reply(status=429, error_message="slow down", retry_after="0"))
    response = post(http_server, {"model": WRITER, "input": QUESTION, "stream": streamed})
    assert (response.status_code, response.json()) == (
        429,
        error("rate_limit_error", "rate_limited", "acme/writer: HTTP 429: slow down"),
    )
    assert response.headers["retry-after"] == "0"


def test_an_error_after_the_stream_began_is_response_failed(sim: ProviderSim, http_server: str) -> None:
    sim.script(WRITER, Reply(content="The answer begins", stream_error="upstream crashed"))
    found = events(http_server, {"model": WRITER, "input": QUESTION, "stream": True})
    text = "".join(e["delta"] for e in found if e["type"] == "response.output_text.delta")
    assert text == "The answer begins"
    last = found[-1]
    assert last["type"] == "response.failed" and last["response"]["status"] == "failed"
    assert last["response"]["error"] == {
        "code": "upstream_error",
        "message": "acme/writer: the stream ended with an error: upstream crashed",
    }


def test_methods(http_server: str) -> None:
    got = httpx2.get(f"{http_server}/v1/responses")
    assert (got.status_code, got.headers["allow"]) == (405, "POST")
    assert got.json() == error(BAD, "method_not_allowed", "use POST for responses")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/responses/resp_123"),
        ("POST", "/v1/embeddings"),
        ("GET", "/v1"),
        ("GET", "/api/v1/completions"),
        ("DELETE", "/api/v1/responses/resp_123"),
    ],
)
def test_unknown_paths_under_v1_are_openai_shaped_404s(http_server: str, method: str, path: str) -> None:
    response = httpx2.request(method, f"{http_server}{path}", json={})
    assert (response.status_code, response.json()) == (
        404,
        error("not_found_error", "unknown_route", f"no route {path}: this server serves {SERVED}"),
    )
    assert SERVED == "POST /v1/chat/completions, POST /v1/responses, GET /v1/models (and the same under /api/v1)"


def test_the_api_v1_spelling_serves_responses_too(sim: ProviderSim, http_server: str) -> None:
    sim.scripts[WRITER] = writer.direct()
    data = post(http_server, {"model": WRITER, "input": QUESTION}, path="/api/v1/responses").json()
    assert [without_id(i) for i in data["output"]] == [message(writer.DIRECT)]


# -- a client that goes away -------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_client_that_disconnects_mid_stream_closes_every_upstream_request(
    sim: ProviderSim, http_server: str
) -> None:
    sim.scripts[WRITER] = writer.fusing()
    for model in PANEL:
        sim.script(model, Reply(latency=30))
    body = {"model": WRITER, "input": QUESTION, "plugins": [PLUGIN], "stream": True}
    async with (
        httpx2.AsyncClient(timeout=30) as http,
        http.stream("POST", f"{http_server}/v1/responses", json=body) as response,
    ):
        assert response.status_code == 200
        await wait_until(lambda: all(sim.requests_for(m) for m in PANEL))
    await wait_until(lambda: sorted(sim.disconnects) == sorted(PANEL), 15)


@pytest.mark.anyio
async def test_a_client_that_disconnects_mid_answer_closes_the_writer_request(
    sim: ProviderSim, http_server: str
) -> None:
    sim.script(WRITER, Reply(content="A long answer that is still being written. " * 4, linger=30))
    body = {"model": WRITER, "input": QUESTION, "stream": True}
    async with (
        httpx2.AsyncClient(timeout=30) as http,
        http.stream("POST", f"{http_server}/v1/responses", json=body) as response,
    ):
        async for line in response.aiter_lines():
            if line == "event: response.output_text.delta":
                break  # the answer is coming, and the writer's request is still open
    await wait_until(lambda: sim.disconnects == [WRITER], 15)


@pytest.mark.anyio
async def test_a_client_that_gives_up_on_a_plain_request_cancels_the_writer(sim: ProviderSim, http_server: str) -> None:
    sim.script(WRITER, Reply(latency=30))
    async with httpx2.AsyncClient(timeout=30) as http, anyio.create_task_group() as tg:

        async def ask() -> None:
            await http.post(f"{http_server}/v1/responses", json={"model": WRITER, "input": QUESTION})

        tg.start_soon(ask)
        await wait_until(lambda: len(sim.requests) == 1)
        tg.cancel_scope.cancel()
    await wait_until(lambda: sim.disconnects == [WRITER], 15)


def test_the_fusion_result_parses_as_ours(sim: ProviderSim, http_server: str) -> None:
    sim.scripts[WRITER] = writer.fusing()
    fused = post(http_server, {"model": WRITER, "input": QUESTION, "plugins": [PLUGIN]}).json()["output"][0]
    result = FusionResult.model_validate(
        {k: v for k, v in fused.items() if k not in ("type", "id", "role", "content")} | {"run_id": fused["id"]}
    )
    assert result.status == "ok" and result.analysis is not None


# -- X-Fusion-Items: standard ------------------------------------------------------------------------------------


@pytest.mark.parametrize("streamed", [False, True])
def test_standard_items_leave_the_fusion_item_out_of_the_output(
    sim: ProviderSim, http_server: str, streamed: bool
) -> None:
    sim.scripts[WRITER] = writer.fusing()
    body = {"model": WRITER, "input": QUESTION, "plugins": [PLUGIN], "stream": streamed}
    headers = {"X-Fusion-Items": "standard"}
    if streamed:
        with httpx2.stream("POST", f"{http_server}/v1/responses", json=body, headers=headers, timeout=60) as response:
            found = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
        items = [e["item"]["type"] for e in found if e["type"].startswith("response.output_item.")]
        assert items == ["message", "message"]  # added, done: the answer only
        fusion = [e for e in found if e["type"].startswith("response.fusion_call.")]
        assert fusion[0]["type"] == "response.fusion_call.in_progress" and "output_index" not in fusion[0]
        assert fusion[-1]["type"] == "response.fusion_call.completed"
        data = found[-1]["response"]
    else:
        data = post(http_server, body, **headers).json()
    assert [without_id(i) for i in data["output"]] == [message(writer.FINAL)]
    assert data["usage"] == FUSED_USAGE  # the run happened, and is counted
    bad = post(http_server, body, **{"X-Fusion-Items": "all"})
    assert (bad.status_code, bad.json()) == (
        400,
        error(BAD, "invalid_request", "x-fusion-items: must be standard (or left out)"),
    )


def test_hosted_tools_are_left_out_and_a_namespaces_functions_offered(sim: ProviderSim, http_server: str) -> None:
    spawn = writer.call("spawn_agent", {"task": "look"}, "call_s")
    sim.script(WRITER, Reply(content="", tool_calls=[spawn], finish_reason="tool_calls"))
    namespace = {
        "type": "namespace",
        "name": "agents_v1",
        "description": "Sub-agents",
        "tools": [{**WEATHER, "name": "spawn_agent"}],
    }
    tools = [{"type": "web_search", "external_web_access": False}, WEATHER, namespace, {"type": "file_search"}]
    data = post(http_server, {"model": WRITER, "input": QUESTION, "plugins": [PLUGIN], "tools": tools}).json()
    (call,) = data["output"]
    assert (call["name"], call["namespace"], call["call_id"]) == ("spawn_agent", "agents_v1", "call_s")
    assert writer.offered(sim.requests[0].body) == ["get_weather", "spawn_agent", writer.FUSION]
    assert data["tools"] == tools  # the response repeats what was asked
