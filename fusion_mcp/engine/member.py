"""One panel member (or the analyst): chat turns and tool calls, bounded by ``max_tool_calls``.

The loop is independent of which tools exist: a :class:`ToolBox` offers function specs and runs calls.
Each call counts against the budget; once it is spent the next turn offers ``tool_choice: "none"`` and
asks for the answer, so a member always ends with text, never with a dangling tool call.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..core.errors import BadResponse, EmptyAnswer, UpstreamError
from ..core.models import TokenUsage
from ..core.text import one_line
from ..providers.client import Completion, Provider, RetryListener

ToolReporter = Callable[[str, int, int, str], Awaitable[None]]
"""Told of each tool call as it starts: (tool name, calls used including this one, the budget, what it asks for:
the URL or query as the model wrote it, or "")."""
TARGET_CHARS = 300
"""How much of a tool call's URL or query its progress event carries."""

BUDGET_SPENT = (
    "The tool budget for this answer is spent. Do not call any more tools: answer now, completely, "
    "with what you already have."
)


class ToolBox(Protocol):
    """Tools a member may call. ``call`` never raises for a bad call: it returns text the model reads."""

    def specs(self) -> list[dict[str, Any]]: ...

    async def call(self, name: str, arguments: str) -> str: ...


@dataclass
class MemberOutcome:
    """What one member produced: an answer, or the error that ended it (usage is counted either way)."""

    model: str
    content: str = ""
    error: UpstreamError | None = None
    usage: TokenUsage = field(default_factory=TokenUsage)
    requests: int = 0
    tool_calls: int = 0
    seconds: float = 0.0
    served_by: str = ""
    """The concrete model the provider reports (``~openai/gpt-latest`` resolves to a dated id)."""
    streamed: list[str] = field(default_factory=list)
    """Text of the turn in progress, as it streams in: what is left if the member is cut off."""
    finished: bool = False
    annotations: list[dict[str, Any]] = field(default_factory=list)
    """Every annotation of every turn (OpenRouter's server tools cite pages as ``url_citation``)."""

    @property
    def partial(self) -> str:
        return "".join(self.streamed)


async def run_member(
    provider: Provider,
    model: str,
    messages: list[dict[str, Any]],
    *,
    max_tool_calls: int,
    max_completion_tokens: int,
    temperature: float | None = None,
    toolbox: ToolBox | None = None,
    stream: bool = True,
    extra: dict[str, Any] | None = None,
    on_tool: ToolReporter | None = None,
    outcome: MemberOutcome | None = None,
    deadline: float | None = None,
    on_retry: RetryListener | None = None,
    on_delta: Callable[[str, bool], None] | None = None,
) -> MemberOutcome:
    """Run the turn loop to a final answer. ``messages`` is extended in place with the transcript.

    Pass ``outcome`` to watch the member from outside: if the caller cancels it (a deadline), the
    object still holds the usage so far and the text streamed in the unfinished turn. ``on_delta`` sees each
    streamed piece as it arrives: (piece, whether it is reasoning).
    """
    started = time.monotonic()
    outcome = outcome if outcome is not None else MemberOutcome(model=model)
    specs = toolbox.specs() if toolbox is not None else []
    told_to_answer = False
    on_text, on_reasoning = _sinks(outcome, on_delta)
    try:
        # Each turn either spends at least one tool call or ends the loop; two spare turns cover the
        # "budget spent, answer now" request and one model that ignores it.
        for _ in range(max_tool_calls + 2):
            budget_left = max_tool_calls - outcome.tool_calls
            body = _body(model, messages, max_completion_tokens, temperature, stream, extra, specs, budget_left)
            outcome.streamed.clear()
            completion = await provider.complete(
                body, on_text=on_text, deadline=deadline, on_retry=on_retry, on_reasoning=on_reasoning
            )
            _count(outcome, completion)
            if completion.tool_calls and specs and budget_left > 0 and toolbox is not None:
                messages.append(assistant_turn(completion))
                await _call_tools(toolbox, completion, outcome, messages, max_tool_calls, on_tool)
                if outcome.tool_calls >= max_tool_calls:
                    told_to_answer = _tell_to_answer(messages, told_to_answer)
                continue
            if completion.content.strip():
                outcome.content = completion.content
                outcome.finished = True
                messages.append({"role": "assistant", "content": completion.content})
                return outcome
            if completion.tool_calls and specs:
                # The model asked for tools it may no longer use; drop the offer entirely next turn.
                specs = []
                told_to_answer = _tell_to_answer(messages, told_to_answer)
                continue
            reason = f" (finish_reason {completion.finish_reason})" if completion.finish_reason else ""
            raise EmptyAnswer(f"the model returned an empty answer{reason}")
        raise BadResponse("the model kept calling tools and never answered")
    except UpstreamError as exc:
        outcome.error = exc
        outcome.content = exc.partial
        outcome.finished = True
        return outcome
    finally:
        outcome.seconds = round(time.monotonic() - started, 3)


def _sinks(
    outcome: MemberOutcome, on_delta: Callable[[str, bool], None] | None
) -> tuple[Callable[[str], None], Callable[[str], None] | None]:
    """The provider's text and reasoning sinks: the outcome keeps the text; ``on_delta`` (if any) sees both."""
    if on_delta is None:
        return outcome.streamed.append, None

    def text(piece: str) -> None:
        outcome.streamed.append(piece)
        on_delta(piece, False)

    return text, lambda piece: on_delta(piece, True)


def _body(
    model: str,
    messages: list[dict[str, Any]],
    max_completion_tokens: int,
    temperature: float | None,
    stream: bool,
    extra: dict[str, Any] | None,
    specs: list[dict[str, Any]],
    budget_left: int,
) -> dict[str, Any]:
    """One turn's request: tools offered while the budget lasts, then shown but refused (``tool_choice: none``)."""
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_completion_tokens": max_completion_tokens,
        **(extra or {}),
    }
    if temperature is not None:
        body["temperature"] = temperature
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if specs:
        body["tools"] = specs
        body["tool_choice"] = "auto" if budget_left > 0 else "none"
    return body


async def _call_tools(
    toolbox: ToolBox,
    completion: Completion,
    outcome: MemberOutcome,
    messages: list[dict[str, Any]],
    max_tool_calls: int,
    on_tool: ToolReporter | None,
) -> None:
    """Run a turn's tool calls in order, each against the budget; calls past it get a result saying so."""
    for call in completion.tool_calls:
        if outcome.tool_calls >= max_tool_calls:
            result = "not run: the tool budget is spent"
        else:
            outcome.tool_calls += 1
            if on_tool is not None:
                await on_tool(call.name, outcome.tool_calls, max_tool_calls, _target(call.arguments))
            result = await toolbox.call(call.name, call.arguments)
        messages.append({"role": "tool", "tool_call_id": call.id, "content": result})


def _target(arguments: str) -> str:
    """What a tool call asks for (its ``url`` or ``query``), on one line: shown as the call happens. Arguments
    that are not JSON, or name neither, say nothing (the tool itself refuses them, in its own words)."""
    try:
        parsed = json.loads(arguments)
    except ValueError:
        return ""
    value = parsed.get("url") or parsed.get("query") if isinstance(parsed, dict) else None
    return one_line(value, TARGET_CHARS) if isinstance(value, str) else ""


def _tell_to_answer(messages: list[dict[str, Any]], told: bool) -> bool:
    """Ask once for the answer now that the budget is spent; returns that it has been asked."""
    if not told:
        messages.append({"role": "user", "content": BUDGET_SPENT})
    return True


def _count(outcome: MemberOutcome, completion: Completion) -> None:
    outcome.requests += 1
    outcome.usage = outcome.usage + completion.usage
    outcome.served_by = completion.model or outcome.served_by
    outcome.annotations.extend(completion.annotations)


def assistant_turn(completion: Completion) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": completion.content or None,
        "tool_calls": [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in completion.tool_calls
        ],
    }
