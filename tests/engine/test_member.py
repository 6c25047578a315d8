"""The member loop: tool budget, answering when it is spent, and never a dangling tool call."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fusion_mcp.config import Settings
from fusion_mcp.core.errors import EmptyAnswer
from fusion_mcp.engine.member import BUDGET_SPENT, run_member
from fusion_mcp.providers.client import Provider, new_http_client
from tests.fakes.provider_sim import ProviderSim, Reply

pytestmark = pytest.mark.anyio
M = "x/tool-addict"


class Echo:
    """A trivial tool box; the web tools plug in through the same two methods."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def specs(self) -> list[dict[str, Any]]:
        return [{"type": "function", "function": {"name": "echo", "parameters": {"type": "object"}}}]

    async def call(self, name: str, arguments: str) -> str:
        self.calls.append((name, arguments))
        return f"echo {arguments}"


def calls(n: int) -> list[dict[str, Any]]:
    return [
        {"id": f"c{i}", "type": "function", "function": {"name": "echo", "arguments": json.dumps({"i": i})}}
        for i in range(n)
    ]


async def run(settings: Settings, toolbox: Echo, budget: int, stream: bool = True):
    messages: list[dict[str, Any]] = [{"role": "user", "content": "q"}]
    async with new_http_client() as http:
        outcome = await run_member(
            Provider(http, settings),
            M,
            messages,
            max_tool_calls=budget,
            max_completion_tokens=50,
            toolbox=toolbox,
            stream=stream,
        )
    return outcome, messages


@pytest.mark.parametrize("stream", [True, False])
async def test_a_model_that_calls_tools_forever_stops_at_the_budget_and_answers(
    sim: ProviderSim, settings: Settings, stream: bool
) -> None:
    sim.scripts[M] = lambda body: (
        Reply(content="final answer") if body.get("tool_choice") == "none" else Reply(content="", tool_calls=calls(2))
    )
    toolbox = Echo()
    outcome, messages = await run(settings, toolbox, budget=5, stream=stream)
    assert outcome.error is None and outcome.content == "final answer"
    assert len(toolbox.calls) == outcome.tool_calls == 5
    assert outcome.requests == 4  # 2 + 2 + (1 run, 1 refused) + the answer
    # Every tool call the model made got a tool result, the refused one included.
    asked = [c["id"] for m in messages if m["role"] == "assistant" for c in m.get("tool_calls") or []]
    answered = [m["tool_call_id"] for m in messages if m["role"] == "tool"]
    assert asked == answered and len(asked) == 6
    assert messages[-3]["content"] == "not run: the tool budget is spent"
    assert messages[-2] == {"role": "user", "content": BUDGET_SPENT}
    assert [r.body["tool_choice"] for r in sim.requests] == ["auto", "auto", "auto", "none"]


async def test_a_model_that_ignores_tool_choice_none_is_asked_without_tools(
    sim: ProviderSim, settings: Settings
) -> None:
    sim.scripts[M] = lambda body: (
        Reply(content="forced answer") if "tools" not in body else Reply(content="", tool_calls=calls(1))
    )
    outcome, _ = await run(settings, Echo(), budget=1)
    assert outcome.content == "forced answer" and outcome.tool_calls == 1
    assert ["tools" in r.body for r in sim.requests] == [True, True, False]


async def test_an_empty_answer_is_a_failure_not_a_blank_response(sim: ProviderSim, settings: Settings) -> None:
    sim.script(M, Reply(content=""))
    outcome, _ = await run(settings, Echo(), budget=2)
    assert isinstance(outcome.error, EmptyAnswer)
    assert outcome.error.message == "the model returned an empty answer (finish_reason stop)"
    assert outcome.usage.prompt_tokens == 100  # what it cost is still counted
