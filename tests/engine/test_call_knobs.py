"""The per-call knobs OpenRouter's Fusion takes — ``reasoning``, ``temperature`` (the panel's), ``tools: []`` and
``max_completion_tokens`` — from the MCP tool, ``fusion-mcp ask`` and the chat endpoint (plugin and server
tool), asserted on what the simulators received. A member on a provider other than OpenRouter gets
``reasoning_effort`` instead of OpenRouter's ``reasoning`` object."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from mcp import Client

from fusion_mcp.config import load_settings
from fusion_mcp.mcp_server.server import create_server
from tests import servers
from tests.cli.test_cli_ask import ask
from tests.conftest import ANALYST, PANEL, sim_env
from tests.fakes import writer
from tests.fakes.provider_sim import ProviderSim, priced
from tests.helpers import TOOL, structured
from tests.openai_api.test_chat import USER, post

pytestmark = pytest.mark.anyio
LOCAL = "local:qwen3:8b"
MEMBERS = [PANEL[1], PANEL[2], LOCAL]
REASONING = {"effort": "high", "max_tokens": 2000}


@pytest.fixture
def local() -> Iterator[ProviderSim]:
    one = ProviderSim().start()
    yield one
    one.stop()


def env(sim: ProviderSim, local: ProviderSim, *, analyst_reasons: bool = True, **extra: str) -> dict[str, str]:
    """The default simulator with a catalogue (the analyst listing ``reasoning`` or not), and an Ollama-like one."""
    entry = priced(ANALYST.lstrip("~"))
    if analyst_reasons:
        entry["supported_parameters"] = [*entry["supported_parameters"], "reasoning"]
    sim.catalogue = [priced(m.lstrip("~")) for m in PANEL[1:]]
    sim.aliases = {ANALYST: entry, **{m: priced(m.lstrip("~")) for m in PANEL[1:]}}
    providers = {"local": {"template": "ollama", "base_url": local.base_url}}
    return sim_env(sim, FUSION_PROVIDERS=json.dumps(providers), FUSION_ANALYSIS_MODELS=",".join(MEMBERS), **extra)


def members(sim: ProviderSim, local: ProviderSim) -> list[dict[str, Any]]:
    bodies = [r.body for m in MEMBERS[:2] for r in sim.requests_for(m)]
    return bodies + [r.body for r in local.requests_for("qwen3:8b")]


def analyst(sim: ProviderSim) -> dict[str, Any]:
    (body,) = [r.body for r in sim.requests_for(ANALYST) if "response_format" in r.body]
    return body


def check_knobs(sim: ProviderSim, local: ProviderSim, *, tokens: int = 700, analyst_reasons: bool = True) -> None:
    found = members(sim, local)
    assert len(found) == 3
    for body in found:
        assert (body["temperature"], body["max_completion_tokens"]) == (0.3, tokens)
        assert "tools" not in body  # tools: [] / --no-web: no web tools offered
    openrouter, local_body = found[:2], found[2]
    assert all(b["reasoning"] == REASONING for b in openrouter)
    assert "reasoning" not in local_body and local_body["reasoning_effort"] == "high"
    judge = analyst(sim)
    assert judge["temperature"] == 0 and judge["max_completion_tokens"] == tokens and "tools" not in judge
    assert ("reasoning" in judge) is analyst_reasons and judge.get("reasoning", REASONING) == REASONING


async def test_the_mcp_tool_sends_each_knob_to_the_right_requests(sim: ProviderSim, local: ProviderSim) -> None:
    knobs = {"temperature": 0.3, "reasoning": REASONING, "tools": [], "max_completion_tokens": 700}
    async with Client(create_server(load_settings(environ=env(sim, local)))) as client:
        result = structured(await client.call_tool(TOOL, {"prompt": "q", **knobs}))
        assert result["status"] == "ok", result
        check_knobs(sim, local)
        sim.reset()
        local.requests.clear()
        env(sim, local, analyst_reasons=False)
        plain = structured(await client.call_tool(TOOL, {"prompt": "again"}))
    assert plain["status"] == "ok"
    # Without the knobs: the server's web tools are offered, no reasoning is sent, the server's token cap.
    for body in members(sim, local):
        assert "tools" in body and "reasoning" not in body and "reasoning_effort" not in body
        assert body["max_completion_tokens"] == 16000 and "temperature" not in body


async def test_the_analyst_gets_no_reasoning_its_catalogue_does_not_list(sim: ProviderSim, local: ProviderSim) -> None:
    knobs = {"temperature": 0.3, "reasoning": REASONING, "tools": [], "max_completion_tokens": 700}
    async with Client(create_server(load_settings(environ=env(sim, local, analyst_reasons=False)))) as client:
        result = structured(await client.call_tool(TOOL, {"prompt": "q", **knobs}))
    assert result["status"] == "ok"
    check_knobs(sim, local, analyst_reasons=False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            {"reasoning": {"effort": "extreme"}},
            "invalid argument reasoning: must be an object with effort (one of max, xhigh, high, medium, low, "
            "minimal, none) and/or max_tokens (a whole number from 1 to 1,000,000): the panel's reasoning, and the "
            "analyst's where its catalogue entry lists reasoning (effort 'extreme')",
        ),
        ({"reasoning": {"budget": 5}}, "invalid argument reasoning: must be an object with effort"),
        ({"temperature": 2.5}, "invalid argument temperature: must be a number from 0 to 2"),
        ({"tools": "none"}, "invalid argument tools: must be [] for a panel without web tools"),
        ({"max_completion_tokens": 0}, "invalid argument max_completion_tokens: must be a whole number from 1 to"),
    ],
)
async def test_a_bad_knob_is_refused_naming_it_before_anything_is_sent(
    sim: ProviderSim, local: ProviderSim, args: dict[str, Any], message: str
) -> None:
    async with Client(create_server(load_settings(environ=env(sim, local)))) as client:
        result = await client.call_tool(TOOL, {"prompt": "q", **args})
    assert result.is_error
    found = structured(result)
    assert found["failure_reason"] == "invalid_arguments" and found["error"].startswith(message), found["error"]
    assert sim.requests == [] and local.requests == []


def test_ask_flags_send_each_knob_to_the_right_requests(sim: ProviderSim, local: ProviderSim) -> None:
    flags = ["--temperature", "0.3", "--reasoning-effort", "high", "--reasoning-tokens", "2000", "--no-web"]
    out = ask(sim, "q", "--json", "--analysis-only", *flags, "--max-completion-tokens", "700", **env(sim, local))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"] == "ok"
    check_knobs(sim, local)
    bad = ask(sim, "q", "--reasoning-effort", "extreme", **env(sim, local))
    assert bad.returncode == 2
    assert "fusion-mcp: --reasoning-effort: must be an object with effort (one of max, xhigh" in bad.stderr
    assert "(effort 'extreme')" in bad.stderr


@pytest.mark.parametrize("entry", ["plugin", "server-tool", "responses-plugin", "responses-server-tool"])
def test_the_chat_endpoint_sends_each_knob_to_the_right_requests(
    sim: ProviderSim, local: ProviderSim, entry: str
) -> None:
    knobs = {"model": ANALYST, "temperature": 0.3, "reasoning": REASONING, "tools": [], "max_completion_tokens": 700}
    body: dict[str, Any] = {"model": "acme/writer"}
    if entry.endswith("plugin"):
        body["plugins"] = [{"id": "fusion", **knobs}]
    else:
        body["tools"] = [{"type": "openrouter:fusion", "parameters": knobs}]
    with servers.in_process(env(sim, local)) as base:
        sim.scripts["acme/writer"] = writer.fusing()
        if entry.startswith("responses"):  # the Responses API: the same entry points, read as a chat request
            data = post(base, {**body, "input": USER["content"]}, path="/v1/responses").json()
            (fused,) = [item for item in data["output"] if item["type"] == "openrouter:fusion"]
            assert fused["status"] == "ok", data
        else:
            data = post(base, {**body, "messages": [USER]}).json()
            assert data["fusion"]["status"] == "ok", data
    check_knobs(sim, local)


def test_a_chat_writer_on_another_provider(sim: ProviderSim, local: ProviderSim) -> None:
    """The writer, like a panel member or the analyst, may be on any provider: its requests go there."""
    with servers.in_process(env(sim, local)) as base:
        local.scripts["qwen3:8b"] = writer.fusing()
        data = post(base, {"model": LOCAL, "messages": [USER], "plugins": [{"id": "fusion", "model": ANALYST}]}).json()
    assert data["choices"][0]["message"]["content"] == writer.FINAL, data
    writes = [r for r in local.requests_for("qwen3:8b") if r.body["messages"][0] == USER]
    assert len(writes) == 2 and all("authorization" not in r.headers for r in writes)
    assert data["fusion"]["analyst_model"] == ANALYST
