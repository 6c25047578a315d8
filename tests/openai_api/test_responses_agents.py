"""The OpenAI Agents SDK (``openai-agents``, a test dependency only) running an agent whose model is the server:
its default Responses model (``OpenAIResponsesModel``) on an ``AsyncOpenAI`` client pointed at ``/v1``.
Tracing is off, so nothing leaves loopback.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from agents import Agent, ModelSettings, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled
from openai import AsyncOpenAI

from tests.conftest import PANEL
from tests.fakes import writer
from tests.fakes.provider_sim import ProviderSim, Reply

WRITER = "acme/writer"
QUESTION = "Which of A and B should we choose, given the weather in Oslo?"
FUSION = ModelSettings(extra_body={"plugins": [{"id": "fusion"}]})


@pytest.fixture
async def client(http_server: str) -> AsyncIterator[AsyncOpenAI]:
    set_tracing_disabled(True)
    sdk = AsyncOpenAI(base_url=f"{http_server}/v1", api_key="sk-unused-locally", max_retries=0, timeout=60)
    yield sdk
    await sdk.close()


def agent(client: AsyncOpenAI, **extra: Any) -> Agent[Any]:
    model = OpenAIResponsesModel(model=WRITER, openai_client=client)
    return Agent(name="Fusion", instructions="Answer the question.", model=model, model_settings=FUSION, **extra)


@pytest.mark.anyio
async def test_an_agent_whose_model_is_the_server_answers_through_fusion(sim: ProviderSim, client: AsyncOpenAI) -> None:
    sim.scripts[WRITER] = writer.fusing()
    result = await Runner.run(agent(client), QUESTION)
    assert result.final_output == writer.FINAL
    (response,) = result.raw_responses
    assert [item.type for item in response.output] == ["openrouter:fusion", "message"]
    assert response.usage.total_tokens == 900 and response.usage.requests == 1
    for model in PANEL:
        assert sim.requests_for(model), f"{model} was not asked"
    (deciding, _) = [r.body for r in sim.requests_for(WRITER) if writer.is_writer(r.body)]
    assert deciding["messages"][0] == {"role": "system", "content": "Answer the question."}


@pytest.mark.anyio
async def test_an_agent_runs_its_own_tool_after_fusion_and_sends_the_conversation_back(
    sim: ProviderSim, client: AsyncOpenAI
) -> None:
    ran: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        ran.append(city)
        return "12 C, sunny"

    def script(body: dict[str, Any]) -> Reply:
        results = {m.get("tool_call_id") for m in writer.tool_messages(body)}
        if "call_w" in results:
            return Reply(content="Choose A: it is sunny in Oslo.")
        if results:  # fusion's result is in: now the agent's own tool
            call = writer.call("get_weather", {"city": "Oslo"}, "call_w")
            return Reply(content="", tool_calls=[call], finish_reason="tool_calls")
        return Reply(content="", tool_calls=[writer.call(writer.FUSION, {"prompt": "A or B?"})])

    sim.scripts[WRITER] = script
    result = await Runner.run(agent(client, tools=[get_weather]), QUESTION)
    assert result.final_output == "Choose A: it is sunny in Oslo." and ran == ["Oslo"]
    first, second = result.raw_responses
    assert [item.type for item in first.output] == ["openrouter:fusion", "function_call"]
    assert [item.type for item in second.output] == ["message"]
    # The second request carries the conversation back: the fusion item is read past, the call and its output are
    # the chat turn the writer expects; fusion ran once, in the first request.
    last = [r.body for r in sim.requests_for(WRITER) if writer.is_writer(r.body)][-1]
    assert [m["role"] for m in last["messages"]] == ["system", "user", "assistant", "tool"]
    assert last["messages"][-1] == {"role": "tool", "tool_call_id": "call_w", "content": "12 C, sunny"}
    assert all(len(sim.requests_for(m)) == 1 for m in PANEL[1:])
