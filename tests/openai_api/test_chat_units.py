"""Pure pieces of the chat front end: reading a request, the writer's tool result, error mapping, keys."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fusion_mcp.config import Settings, load_settings
from fusion_mcp.core.callers import LENT_KEY_RULE, bearer, key_principal, lent_key
from fusion_mcp.core.errors import BadResponse, ConnectionFailed, HTTPStatusError
from fusion_mcp.core.models import FusionResult, PanelResponse
from fusion_mcp.core.tool_text import DESCRIPTION, TOOL_NAME
from fusion_mcp.engine.admission import FusionRefused, incoming_depth
from fusion_mcp.openai_api.request import ChatError, plan_turn
from fusion_mcp.openai_api.routes import upstream_error
from fusion_mcp.openai_api.writer import FUSION_FUNCTION, fusion_arguments, tool_result

USER = {"role": "user", "content": "q"}
SETTINGS = load_settings(environ={"FUSION_MODEL": "acme/analyst", "FUSION_ANALYSIS_MODELS": "a/x,b/y"})


def plan(body: dict[str, Any], settings: Settings = SETTINGS, depth: int = 0) -> Any:
    return plan_turn({"messages": [USER], **body}, settings, depth=depth)


def test_the_alias_writes_with_the_analyst_and_the_analyst_is_the_writer() -> None:
    alias = plan({"model": "openrouter/fusion"})
    assert alias.writer == "acme/analyst" and alias.fusion is not None and alias.fusion.analyst == "acme/analyst"
    named = plan({"model": "fusion", "plugins": [{"id": "fusion", "model": "w/x"}]})
    assert named.writer == "w/x" and named.fusion.analyst == "w/x"
    preset = plan({"model": "fusion", "plugins": [{"id": "fusion", "preset": "fast"}]})
    assert preset.writer == "~anthropic/claude-sonnet-latest" and preset.fusion.preset == "fast"


def test_a_plugin_or_tool_entry_keeps_the_callers_model_as_writer_and_default_analyst() -> None:
    plugin = plan({"model": "w/x", "plugins": [{"id": "fusion", "analysis_models": ["p/1"], "max_tool_calls": 2}]})
    assert plugin.writer == "w/x" and plugin.fusion.analyst == "w/x"
    assert (plugin.fusion.analysis_models, plugin.fusion.max_tool_calls) == (["p/1"], 2)
    tool = plan({"model": "w/x", "tools": [{"type": "openrouter:fusion", "parameters": {"model": "j/y"}}]})
    assert tool.writer == "w/x" and tool.fusion.analyst == "j/y" and tool.tools == []


def test_entry_point_overrides_of_the_run() -> None:
    entry = {"id": "fusion", "temperature": 0.4, "max_completion_tokens": 900, "tools": [], "reasoning": {}}
    setup = plan({"model": "w/x", "plugins": [entry]}).fusion
    assert setup.overrides == {"temperature": 0.4, "max_completion_tokens": 900, "web_tools": "off"}
    assert plan({"model": "w/x", "plugins": [{"id": "fusion", "tools": [{"type": "x"}]}]}).fusion.overrides == {}


@pytest.mark.parametrize(
    ("body", "depth"),
    [
        ({"model": "w/x"}, 0),
        ({"model": "w/x", "plugins": [{"id": "fusion", "enabled": False}]}, 0),
        ({"model": "w/x", "plugins": [{"id": "fusion"}]}, 1),
        ({"model": "openrouter/fusion"}, 2),
    ],
)
def test_fusion_is_not_offered(body: dict[str, Any], depth: int) -> None:
    assert plan(body, depth=depth).fusion is None


def test_fusion_switched_off_for_the_server_is_never_offered() -> None:
    off = load_settings(environ={"FUSION_ENABLED": "false"})
    assert plan({"model": "openrouter/fusion"}, off).fusion is None
    assert plan({"model": "w/x", "plugins": [{"id": "fusion"}]}, off).fusion is None


def test_the_callers_fields_go_to_the_writer_without_the_servers_own() -> None:
    read = plan(
        {
            "model": "w/x",
            "stream": True,
            "stream_options": {"include_usage": True},
            "tool_choice": "auto",
            "plugins": [{"id": "web"}, {"id": "fusion"}],
            "tools": [{"type": "function", "function": {"name": "f"}}, {"type": "openrouter:web_search"}],
            "temperature": 0.1,
            "n": 1,
        }
    )
    # The answer cap goes on every writer request: FUSION_MAX_COMPLETION_TOKENS when the caller set none.
    assert read.fields == {"temperature": 0.1, "plugins": [{"id": "web"}], "max_completion_tokens": 16000}
    assert read.tools == [{"type": "function", "function": {"name": "f"}}, {"type": "openrouter:web_search"}]
    assert read.tool_choice == "auto" and read.fusion is not None
    assert (read.stream, read.include_usage) == (True, True)


def test_the_writers_answer_cap_is_the_callers_within_the_servers() -> None:
    """What the spending caps count for a writer request is a bound only if the request carries it."""
    assert plan({"model": "w/x", "max_tokens": 500}).fields == {"max_tokens": 500}
    both = plan({"model": "w/x", "max_tokens": 10**9, "max_completion_tokens": 20000})
    assert both.fields == {"max_tokens": 16000, "max_completion_tokens": 16000} and both.max_tokens == 16000
    for bad, detail in ((0, "greater than or equal to 1"), ("100", "valid integer"), (True, "valid integer")):
        with pytest.raises(ChatError) as refused:
            plan({"model": "w/x", "max_tokens": bad})
        assert refused.value.param == "max_tokens" and detail in refused.value.message


def test_the_writers_function_tool_is_the_mcp_tools_name_and_words() -> None:
    assert FUSION_FUNCTION["function"]["name"] == TOOL_NAME == "openrouter_fusion"
    assert FUSION_FUNCTION["function"]["description"] == DESCRIPTION
    assert FUSION_FUNCTION["function"]["parameters"]["required"] == ["prompt"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('{"prompt": "p"}', ("p", None)),
        ('{"prompt": "p", "context": "c", "analysis_models": ["x"]}', ("p", "c")),
        ('{"prompt": "p", "context": {"code": 1}}', ("p", '{"code": 1}')),
        ("", None),
        ('"p"', None),
    ],
)
def test_fusion_arguments(raw: str, expected: tuple[str, str | None] | None) -> None:
    if expected is None:
        with pytest.raises(FusionRefused) as refused:
            fusion_arguments(raw)
        assert refused.value.argument == "prompt"
    else:
        assert fusion_arguments(raw) == expected


def test_the_tool_result_fits_the_budget_with_every_answer_trimmed_evenly() -> None:
    long = [PanelResponse(model=f"m/{i}", content="word " * 4000) for i in range(3)]
    result = FusionResult(status="ok", run_id="fus_1", responses=long)
    text = tool_result(result, 6000)
    data = json.loads(text)
    assert len(text) <= 6000 and set(data) == {"status", "responses"}
    contents = [r["content"] for r in data["responses"]]
    assert len({len(c) for c in contents}) == 1
    assert contents[0].endswith("more characters trimmed to fit; the caller has the whole answer]")
    short = FusionResult(status="ok", run_id="fus_2", responses=[PanelResponse(model="m/1", content="short")])
    assert json.loads(tool_result(short, 6000)) == {"status": "ok", "responses": [{"model": "m/1", "content": "short"}]}


@pytest.mark.parametrize(
    ("exc", "own_key", "status", "code"),
    [
        (HTTPStatusError("HTTP 404: gone", status_code=404), False, 404, "model_not_found"),
        (HTTPStatusError("HTTP 400: bad", status_code=400, code="model_not_found"), False, 404, "model_not_found"),
        (HTTPStatusError("HTTP 401: no", status_code=401), True, 401, "invalid_api_key"),
        (HTTPStatusError("HTTP 401: no", status_code=401), False, 502, "upstream_error"),
        (HTTPStatusError("HTTP 429: slow", status_code=429, retry_after=2.5), False, 429, "rate_limited"),
        (HTTPStatusError("HTTP 529: busy", status_code=529), False, 503, "provider_unavailable"),
        (HTTPStatusError("HTTP 500: boom", status_code=500), False, 502, "upstream_error"),
        (ConnectionFailed("could not connect"), False, 502, "upstream_error"),
        (BadResponse("not JSON"), False, 502, "upstream_error"),
    ],
)
def test_upstream_errors_map_to_the_callers_status(exc: Any, own_key: bool, status: int, code: str) -> None:
    error = upstream_error(exc, "w/x", own_key=own_key)
    assert (error.status, error.code) == (status, code)
    assert error.body()["error"]["message"].startswith("w/x: ")
    assert error.headers == ({"Retry-After": "3"} if status == 429 else {})


def test_error_types_follow_the_status() -> None:
    kinds = {s: ChatError(s, "m", code="c").body()["error"]["type"] for s in (400, 401, 404, 429, 500, 502, 503)}
    assert kinds == {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "not_found_error",
        429: "rate_limit_error",
        500: "server_error",
        502: "upstream_error",
        503: "service_unavailable",
    }


def test_keys_a_caller_may_lend() -> None:
    assert bearer(b"Bearer abc") == "abc" and bearer(b"bearer  abc ") == "abc"
    assert bearer(b"Basic abc") is None and bearer(b"Bearer ") is None and bearer(b"") is None
    key = "sk-or-v1-0123456789abcdef"
    assert lent_key(key, "sk-or-") == key
    # Any other bearer must be a server token: never sent on as a key, whatever the provider.
    assert lent_key("my-token-of-the-server", "sk-or-") is None and lent_key("anything", "sk-proj-") is None
    assert lent_key(key, None) is None and lent_key(None, "sk-or-") is None
    for bad in ("sk-or-short", "sk-or-" + "x" * 600, "sk-or-v1-caf\u00e9-0123456789", "sk-or-v1 with spaces 0123"):
        with pytest.raises(ValueError, match="printable ASCII"):
            lent_key(bad, "sk-or-")
    assert LENT_KEY_RULE == "printable ASCII without spaces, 16 to 512 characters"
    assert key_principal("sk-or-v1-x") == key_principal("sk-or-v1-x") != key_principal("sk-or-v1-y")
    assert key_principal("sk-or-v1-x").startswith("key:") and len(key_principal("sk-or-v1-x")) == 20


@pytest.mark.parametrize(
    ("headers", "env_depth", "expected"),
    [({}, 0, 0), ({"x-openrouter-fusion-depth": "2"}, 0, 2), ({"x-openrouter-fusion-depth": "x"}, 0, 1), ({}, 1, 1)],
)
def test_incoming_depth(headers: dict[str, str], env_depth: int, expected: int) -> None:
    settings = load_settings(environ={"FUSION_DEPTH": str(env_depth)})
    assert incoming_depth(headers, settings) == expected
