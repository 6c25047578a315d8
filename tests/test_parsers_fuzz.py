"""Property-based tests of the parsers that take outside input: chat request bodies (over real HTTP) and the
fusion tool's arguments (through the MCP SDK's client, and the writer's tool call). Whatever arrives, the
answer is a result or a refusal that names what was wrong — never a server error, a lost connection or a
traceback in the log.

Hypothesis draws JSON of every shape, with the values that have broken parsers before: ``NaN``, infinities,
huge numbers, lone surrogates, NUL, deep nesting. Bounded examples by default; more under ``CI`` (the
profiles are in ``conftest.py``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mcp import Client

from fusion_mcp.config import load_settings
from fusion_mcp.core.models import FusionArgs, FusionResult
from fusion_mcp.engine.admission import FusionRefused, prepare
from fusion_mcp.mcp_server.server import create_server
from fusion_mcp.openai_api.writer import fusion_arguments
from tests import servers
from tests.conftest import shared_env
from tests.fakes.provider_sim import ProviderSim
from tests.helpers import TOOL

ODD = ["\x00", "\u202e", "é", "💡", "\n", '"', "\\"]
SURROGATES = ["\ud800", "\udfff"]


def texts(odd: list[str], *, surrogates: bool) -> st.SearchStrategy[str]:
    any_character = st.characters(exclude_categories=() if surrogates else ("Cs",))
    return st.lists(st.one_of(any_character, st.sampled_from(odd)), max_size=12).map("".join)


def json_values(text: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    leaf = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**80), max_value=2**80),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([1e400, -1e400, 1e308, 5e-324]),
        text,
    )
    return st.recursive(
        leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4), max_leaves=10
    )


text = texts(ODD + SURROGATES, surrogates=True)
values = json_values(text)
MODELS = ["acme/writer", "fusion", "openrouter/fusion", "a", "bad id!", "", "x" * 300]
message = st.fixed_dictionaries(
    {}, optional={"role": st.sampled_from(["user", "system", "assistant", "tool", ""]) | values, "content": values}
)
plugin = st.fixed_dictionaries({"id": st.sampled_from(["fusion", "web"]) | values}, optional={
    "enabled": values, "analysis_models": values, "model": values, "temperature": values, "preset": values,
    "max_tool_calls": values, "tools": values, "reasoning": values,
})  # fmt: skip
CHAT_FIELDS = {
    "model": st.sampled_from(MODELS) | values,
    "messages": st.lists(message, max_size=3) | values,
    "stream": st.booleans() | values,
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": values}) | values,
    "plugins": st.lists(plugin, max_size=2) | values,
    "tools": st.lists(st.fixed_dictionaries({"type": st.sampled_from(["function", "openrouter:fusion"]) | values},
                                            optional={"function": values, "parameters": values}), max_size=2),
    "tool_choice": values,
    "temperature": values,
    "max_tokens": values,
    "n": values,
}  # fmt: skip
# Mostly well-formed requests with one odd value somewhere (what reaches deepest), then anything at all.
well_formed = st.fixed_dictionaries(
    {
        "model": st.sampled_from(MODELS[:3]),
        "messages": st.lists(st.fixed_dictionaries({"role": st.just("user"), "content": text}), min_size=1, max_size=2),
    },
    optional={k: v for k, v in CHAT_FIELDS.items() if k not in ("model", "messages")},
)
body = well_formed | st.fixed_dictionaries({}, optional=CHAT_FIELDS) | values
ERROR_KEYS = {"message", "type", "code", "param"}


class Errors(logging.Handler):
    """Every ERROR the server logs (an unexpected failure, with its traceback)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def chat_server(_sim: ProviderSim) -> Iterator[str]:
    with servers.in_process(shared_env(_sim)) as base:
        yield base


@pytest.fixture(scope="module")
def errors() -> Iterator[Errors]:
    handler = Errors()
    logging.getLogger().addHandler(handler)
    try:
        yield handler
    finally:
        logging.getLogger().removeHandler(handler)


def check_answer(response: httpx2.Response) -> None:
    assert response.status_code < 500, response.text
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        for line in response.text.splitlines():
            if line.startswith("data: {"):
                error = json.loads(line[6:]).get("error")
                assert error is None or error["code"] != "unexpected_error", error
        return
    data = response.json()
    if response.status_code >= 400:
        assert set(data) == {"error"} and set(data["error"]) == ERROR_KEYS, data
        assert isinstance(data["error"]["message"], str) and data["error"]["message"]
    else:
        assert data["object"] == "chat.completion" and data["choices"], data


@given(payload=body)
def test_any_chat_body_gets_an_answer_or_a_named_refusal(chat_server: str, errors: Errors, payload: Any) -> None:
    raw = json.dumps(payload, allow_nan=True).encode()
    response = httpx2.post(
        f"{chat_server}/v1/chat/completions", content=raw, headers={"Content-Type": "application/json"}, timeout=60
    )
    check_answer(response)
    assert errors.records == [], [r.getMessage() for r in errors.records]


@given(raw=st.binary(max_size=64) | text.map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_any_bytes_get_a_named_refusal(chat_server: str, errors: Errors, raw: bytes) -> None:
    response = httpx2.post(
        f"{chat_server}/v1/chat/completions", content=raw, headers={"Content-Type": "application/json"}, timeout=60
    )
    check_answer(response)
    assert errors.records == []


# The SDK's client cannot send a lone surrogate at all (it fails to encode its own request), so the tool's
# arguments are drawn without them; the server's refusal of one sent as raw JSON is in test_bad_values.
sendable = texts(ODD, surrogates=False)
sendable_values = json_values(sendable)
TOOL_FIELDS = {
    "prompt": sendable | sendable_values,
    "context": sendable | sendable_values,
    "analysis_models": st.lists(st.sampled_from(["a/b", "a/b#skeptic", "~x/y-latest", "bad id", ""]) | sendable)
    | sendable_values,
    "model": st.sampled_from(["a/b", "x"]) | sendable_values,
    "max_tool_calls": st.integers(-3, 20) | sendable_values,
    "preset": st.sampled_from(["quality", "budget", "fast", "self", "none"]) | sendable_values,
    "answers": st.lists(
        st.fixed_dictionaries({}, optional={"label": sendable | sendable_values, "content": sendable | sendable_values})
    )
    | sendable_values,
    "files": st.lists(sendable, max_size=3) | sendable_values,
}
arguments = st.fixed_dictionaries({}, optional=TOOL_FIELDS) | st.dictionaries(sendable, sendable_values, max_size=3)


@pytest.fixture(scope="module")
def tool_server(_sim: ProviderSim) -> Any:
    return create_server(load_settings(environ=shared_env(_sim, FUSION_DEADLINE_S="10")))


@given(args=arguments)
@pytest.mark.anyio
async def test_any_tool_arguments_get_a_result_or_a_named_refusal(
    tool_server: Any, errors: Errors, args: dict[str, Any]
) -> None:
    async with Client(tool_server) as client:
        result = await client.call_tool(TOOL, args)
    if result.structured_content is None:  # the SDK's own refusal of what its schema rules out
        assert result.is_error and result.content
        return
    found = FusionResult.model_validate(result.structured_content)
    assert found.failure_reason != "unexpected_error", found.error
    if found.status == "error":
        assert found.error
    assert errors.records == [], [r.getMessage() for r in errors.records]


SETTINGS = load_settings(environ={"OPENROUTER_BASE_URL": "http://127.0.0.1:9/v1"})


@given(raw=text | values.map(lambda v: json.dumps(v, allow_nan=True)))
def test_the_writers_tool_call_is_read_or_refused_by_name(raw: str) -> None:
    try:
        prompt, context = fusion_arguments(raw)
        prepare(FusionArgs(prompt=prompt, context=context), SETTINGS, depth=0)
    except FusionRefused as refused:
        assert refused.reason == "invalid_arguments" and refused.argument in ("prompt", "context")
