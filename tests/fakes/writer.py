"""Scripted writer models for the chat-completions endpoint, on the provider simulator.

A writer is told apart from the panel and the analyst by its request (they may share its id, as with the
``openrouter/fusion`` alias): it is offered the ``openrouter_fusion`` function, or it is the one model of
a plain request. Each script is a function of the request body, as ``sim.scripts[model]`` takes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tests.fakes.provider_sim import FUSION_TOOL, Reply

FUSION = FUSION_TOOL
FINAL = "Final answer, written from the panel's analysis."
DIRECT = "A direct answer: no deliberation needed."


def offered(body: dict[str, Any]) -> list[str]:
    """The names of the function tools a request offers."""
    return [t["function"]["name"] for t in body.get("tools") or [] if t.get("type") == "function"]


def tool_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in body["messages"] if m.get("role") == "tool"]


def is_writer(body: dict[str, Any]) -> bool:
    return FUSION in offered(body)


def call(name: str, arguments: dict[str, Any] | str, call_id: str = "call_1") -> dict[str, Any]:
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": raw}}


def fusing(
    prompt: str = "Compare A and B, self-contained.",
    final: str = FINAL,
    *,
    arguments: dict[str, Any] | str | None = None,
    latency: float = 0.0,
) -> Callable[[dict[str, Any]], Reply]:
    """A writer that calls fusion, then answers once it has read the tool result; other bodies (the same id on
    the panel or as analyst) get the simulator's default answer."""
    args = arguments if arguments is not None else {"prompt": prompt}

    def script(body: dict[str, Any]) -> Reply:
        if not is_writer(body):
            return Reply()
        if tool_messages(body):
            return Reply(content=final, latency=latency)
        return Reply(content="", tool_calls=[call(FUSION, args)], finish_reason="tool_calls", latency=latency)

    return script


def direct(text: str = DIRECT, latency: float = 0.0) -> Callable[[dict[str, Any]], Reply]:
    """A writer that answers at once, whatever it is offered."""

    def script(body: dict[str, Any]) -> Reply:
        return Reply(content=text, latency=latency) if is_writer(body) or "response_format" not in body else Reply()

    return script
