"""Real clients of the Responses API: the official ``openai`` package's ``responses.create``, streamed and not,
parsing the server's events with its own types; and the Vercel AI SDK's default ``openai(...)`` provider under
Node (``generateText`` and ``streamText``), which ``.ci/run`` installs (``FUSION_AI_SDK``); elsewhere it skips
without it, except under CI, where that is a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseTextDeltaEvent,
)

from tests.conftest import ANALYST, PANEL, REPO, child_env
from tests.fakes import writer
from tests.fakes.provider_sim import ProviderSim, Reply
from tests.helpers import ANALYSIS_KEYS
from tests.openai_api.test_chat_clients import node

WRITER = "acme/writer"
QUESTION = "Which of A and B should we choose?"
FUSION: Any = {"plugins": [{"id": "fusion"}]}


@pytest.fixture
def client(http_server: str) -> Iterator[OpenAI]:
    with OpenAI(base_url=f"{http_server}/v1", api_key="sk-unused-locally", max_retries=0, timeout=60) as sdk:
        yield sdk


def test_openai_sdk_responses_create(sim: ProviderSim, client: OpenAI) -> None:
    sim.scripts[WRITER] = writer.fusing()
    response = client.responses.create(model=WRITER, input=QUESTION, extra_body=FUSION)
    assert isinstance(response, Response)
    assert (response.status, response.model, response.output_text) == ("completed", WRITER, writer.FINAL)
    assert response.usage is not None and (response.usage.input_tokens, response.usage.total_tokens) == (600, 900)
    assert response.usage.model_extra == {"cost": 0.009}
    fused, answer = response.output
    assert isinstance(answer, ResponseOutputMessage) and answer.content[0].type == "output_text"
    extra = fused.model_dump()
    assert extra["type"] == "openrouter:fusion" and extra["status"] == "ok"
    assert set(extra["analysis"]) == ANALYSIS_KEYS and [r["model"] for r in extra["responses"]] == list(PANEL)


def test_openai_sdk_responses_stream(sim: ProviderSim, client: OpenAI) -> None:
    sim.scripts[WRITER] = writer.fusing()
    found = list(client.responses.create(model=WRITER, input=QUESTION, stream=True, extra_body=FUSION))
    kinds = [e.type for e in found]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    text = "".join(e.delta for e in found if isinstance(e, ResponseTextDeltaEvent))
    assert text == writer.FINAL
    # The fusion events are no type of the package's, yet come through whole, in order.
    fusion = [e.model_dump() for e in found if e.type.startswith("response.fusion_call.")]
    assert fusion[0]["type"] == "response.fusion_call.in_progress"
    assert fusion[-1]["type"] == "response.fusion_call.completed"
    completed = [e["model"] for e in fusion if e["type"] == "response.fusion_call.panel.completed"]
    assert sorted(completed) == sorted(PANEL)
    deltas = [e for e in fusion if e["type"] == "response.fusion_call.panel.delta"]
    assert {e["model"] for e in deltas} == set(PANEL)
    last = found[-1]
    assert isinstance(last, ResponseCompletedEvent) and last.response.output_text == writer.FINAL
    assert [e.sequence_number for e in found] == list(range(len(found)))


def test_openai_sdk_responses_stream_helper(sim: ProviderSim, client: OpenAI) -> None:
    """``responses.stream`` accumulates the events into the final response itself."""
    sim.scripts[WRITER] = writer.fusing()
    with client.responses.stream(model=WRITER, input=QUESTION, extra_body=FUSION) as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    assert final.output_text == writer.FINAL and final.output[0].type == "openrouter:fusion"


def test_openai_sdk_function_call_round_trip(sim: ProviderSim, client: OpenAI) -> None:
    weather = writer.call("get_weather", {"city": "Oslo"}, "call_w")
    sim.script(WRITER, Reply(content="", tool_calls=[weather], finish_reason="tool_calls"), Reply(content="Sunny."))
    tools: Any = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}, "strict": False}]
    first = client.responses.create(model=WRITER, input=QUESTION, tools=tools, extra_body=FUSION)
    (call,) = first.output
    assert isinstance(call, ResponseFunctionToolCall)
    assert (call.call_id, call.name, json.loads(call.arguments)) == ("call_w", "get_weather", {"city": "Oslo"})
    follow: Any = [
        {"role": "user", "content": QUESTION},
        *[item.model_dump(exclude_none=True) for item in first.output],
        {"type": "function_call_output", "call_id": call.call_id, "output": "12 C, sunny"},
    ]
    second = client.responses.create(model=WRITER, input=follow, tools=tools, extra_body=FUSION)
    assert second.output_text == "Sunny."
    assert sim.requests[-1].body["messages"][-1] == {"role": "tool", "tool_call_id": "call_w", "content": "12 C, sunny"}


def test_openai_sdk_errors(sim: ProviderSim, client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as stateless:
        client.responses.create(model=WRITER, input=QUESTION, previous_response_id="resp_1")
    assert stateless.value.param == "previous_response_id" and "stateless" in stateless.value.message
    sim.script(WRITER, Reply(status=404, error_message="No endpoints found"))
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.create(model=WRITER, input=QUESTION)
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as unknown:
        client.responses.retrieve("resp_1")
    assert unknown.value.code == "unknown_route"


# -- the Vercel AI SDK under Node ------------------------------------------------------------------------------

AI_SDK_SCRIPT = REPO / "tests" / "clients" / "ai_sdk_responses.mjs"


def ai_sdk() -> Path | None:
    """The ``node_modules`` holding ``ai`` and ``@ai-sdk/openai`` (``FUSION_AI_SDK``; ``.ci/run`` installs them)."""
    found = os.environ.get("FUSION_AI_SDK")
    if not found or not (Path(found) / "ai").is_dir() or not (Path(found) / "@ai-sdk" / "openai").is_dir():
        return None
    return Path(found)


def test_vercel_ai_sdk_generate_and_stream_text(sim: ProviderSim, http_server: str) -> None:
    binary, modules = node(), ai_sdk()
    if binary is None or modules is None:
        missing = "Node 18+ (FUSION_NODE)" if binary is None else "node_modules with the AI SDK (FUSION_AI_SDK)"
        if os.environ.get("CI"):
            pytest.fail(f"no {missing}: .ci/run installs ai and @ai-sdk/openai and sets both")
        pytest.skip(f"no {missing}: install ai and @ai-sdk/openai with npm and set FUSION_AI_SDK to its node_modules")
    # The alias writes with the configured analyst, which is also the first panel member here.
    sim.scripts[ANALYST] = writer.fusing()
    out = subprocess.run(
        [binary, "--input-type=module", "-"],
        input=AI_SDK_SCRIPT.read_text(),
        cwd=modules.parent,  # a script read from stdin resolves its imports from the working directory
        env=child_env(SERVER_BASE_URL=f"{http_server}/v1", SERVER_MODEL="openrouter/fusion"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    said = json.loads(out.stdout)
    assert said["generated"] == {"text": writer.FINAL, "finishReason": "stop", "totalTokens": 900}
    streamed = said["streamed"]
    assert (streamed["text"], streamed["finishReason"]) == (writer.FINAL, "stop")
    assert streamed["parts"][:3] == ["start", "start-step", "text-start"] and streamed["parts"][-1] == "finish"
    raw = streamed["raw"]
    assert raw[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.fusion_call.in_progress",
    ]
    assert raw.count("response.fusion_call.panel.completed") == len(PANEL) and raw[-1] == "response.completed"
    # Both calls went through fusion: each ran the panel once.
    assert all(len(sim.requests_for(model)) >= 2 for model in PANEL[1:])
