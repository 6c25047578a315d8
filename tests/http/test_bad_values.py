"""Values JSON allows but nothing downstream can carry — ``NaN``, ``Infinity``, ``1e400``, lone surrogates —
are refused where the body is read, with a 400 naming the field, on the chat routes and ``/mcp`` alike (they
were an HTTP 500 or ``unexpected_error`` with a traceback in the log). Raw bytes over real HTTP against
``fusion-mcp serve``; the ``http_server`` fixture checks its log for tracebacks after each test.
"""

from __future__ import annotations

from typing import Any

import httpx2
import pytest
from mcp import Client

from fusion_mcp.config import load_settings
from fusion_mcp.mcp_server.server import create_server
from tests.conftest import sim_env
from tests.fakes.provider_sim import ProviderSim
from tests.helpers import MCP_HEADERS, TOOL, structured

WRITER = "acme/writer"
MESSAGES = '[{"role": "user", "content": "q"}]'


def post_raw(base: str, path: str, body: str, headers: dict[str, str] | None = None) -> httpx2.Response:
    sent = {"Content-Type": "application/json", **(headers or {})}
    return httpx2.post(f"{base}{path}", content=body.encode(), headers=sent, timeout=30)


def refused(field: str, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "code": "invalid_value", "param": field}}


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        (
            f'{{"model": "{WRITER}", "messages": {MESSAGES}, "temperature": NaN}}',
            "temperature",
            "temperature: NaN is not a finite number",
        ),
        (
            f'{{"model": "{WRITER}", "messages": {MESSAGES}, "top_p": Infinity}}',
            "top_p",
            "top_p: Infinity is not a finite number",
        ),
        (
            f'{{"model": "{WRITER}", "messages": {MESSAGES}, "plugins": [{{"id": "fusion", "temperature": 1e400}}]}}',
            "plugins[0].temperature",
            "plugins[0].temperature: 1e400 is not a finite number",
        ),
        (
            f'{{"model": "{WRITER}", "messages": [{{"role": "user", "content": "a \\ud800 b"}}]}}',
            "messages[0].content",
            "messages[0].content: the string holds a lone surrogate (\\ud800-\\udfff), which is not a character",
        ),
        (
            f'{{"model": "{WRITER}", "messages": {MESSAGES}, "tools": [{{"type": "function", "function": '
            f'{{"name": "f\\udc00"}}}}]}}',
            "tools[0].function.name",
            "tools[0].function.name: the string holds a lone surrogate (\\ud800-\\udfff), which is not a character",
        ),
        (
            f'{{"model": "{WRITER}", "messages": {MESSAGES}, "metadata": {{"\\ud83d": 1}}}}',
            "metadata",
            "metadata: a key holds a lone surrogate (\\ud800-\\udfff), which is not a character",
        ),
    ],
    ids=[
        "nan",
        "infinity",
        "overflow-in-a-plugin",
        "surrogate-in-content",
        "surrogate-in-a-tool-name",
        "surrogate-key",
    ],
)
def test_the_chat_routes_refuse_values_nothing_can_carry(
    sim: ProviderSim, http_server: str, body: str, field: str, message: str
) -> None:
    for path in ("/v1/chat/completions", "/api/v1/chat/completions"):
        response = post_raw(http_server, path, body)
        assert (response.status_code, response.json()) == (400, refused(field, message))
    assert sim.requests == []


def test_mcp_refuses_them_alike(sim: ProviderSim, http_server: str) -> None:
    call = (
        '{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "openrouter_fusion", '
        '"arguments": {"prompt": "q", "max_tool_calls": NaN}}}'
    )
    response = post_raw(http_server, "/mcp", call, MCP_HEADERS)
    assert (response.status_code, response.json()) == (
        400,
        {"error": "params.arguments.max_tool_calls: NaN is not a finite number"},
    )
    surrogate = call.replace('"max_tool_calls": NaN', '"context": "\\udfff"')
    response = post_raw(http_server, "/mcp", surrogate, MCP_HEADERS)
    assert (response.status_code, response.json()) == (
        400,
        {
            "error": "params.arguments.context: the string holds a lone surrogate (\\ud800-\\udfff), which is not a "
            "character"
        },
    )
    assert sim.requests == []


@pytest.mark.anyio
async def test_text_arguments_that_are_not_text_are_invalid_arguments(sim: ProviderSim) -> None:
    """Where no JSON text is parsed (an in-memory client; ``ask``, whose argv decodes stray bytes as lone
    surrogates), the argument rules refuse them, naming the argument."""
    async with Client(create_server(load_settings(environ=sim_env(sim)))) as client:
        prompt = structured(await client.call_tool(TOOL, {"prompt": "a\ud800b"}))
        answers = structured(
            await client.call_tool(TOOL, {"prompt": "q", "answers": [{"label": "draft", "content": "x\udcff"}]})
        )
    assert (prompt["failure_reason"], prompt["error"]) == (
        "invalid_arguments",
        "invalid argument prompt: must be a non-empty, self-contained question, at most FUSION_MAX_PROMPT_CHARS "
        "characters with the context (holds a lone surrogate (\\ud800-\\udfff), which is not text: it cannot be sent "
        "to any model)",
    )
    assert answers["failure_reason"] == "invalid_arguments"
    assert answers["error"].endswith(
        "(the answer labelled 'draft' holds a lone surrogate (\\ud800-\\udfff), which is not text: it cannot be sent "
        "to any model)"
    )
    assert sim.requests == []
