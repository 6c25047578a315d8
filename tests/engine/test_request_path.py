"""One request path: the MCP tool and ``fusion-mcp ask`` apply the same rules, in the same words, before
anything is spent; and ``prepare``'s rules one by one."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from typing import Any

import pytest
from mcp import Client

from fusion_mcp.config import PRESETS, Settings, load_settings
from fusion_mcp.core.lenses import PANEL_ENTRIES_RULE
from fusion_mcp.core.models import FusionArgs
from fusion_mcp.engine.admission import ARGUMENT_RULES, FusionRefused, prepare
from fusion_mcp.mcp_server.server import create_server
from tests.cli.test_cli_ask import ask
from tests.conftest import ANALYST, PANEL, child_env, sim_env
from tests.fakes.provider_sim import ProviderSim, priced
from tests.helpers import TOOL, structured

pytestmark = pytest.mark.anyio
TOKEN_COUNTS = ("prompt_tokens", "completion_tokens", "reasoning_tokens", "total_tokens")


async def tool(sim: ProviderSim, args: dict[str, Any], **env: str) -> dict[str, Any]:
    async with Client(create_server(load_settings(environ=sim_env(sim, **env)))) as client:
        result = await client.call_tool(TOOL, args)
    assert result.is_error
    return structured(result)


def catalogue(sim: ProviderSim) -> None:
    sim.catalogue = [priced(m.lstrip("~"), prompt=3e-6, completion=15e-6) for m in PANEL]
    sim.catalogue += [priced("sim/fast"), priced("openai/gpt-5"), priced("openai/gpt-5-mini")]
    sim.aliases = {m: priced(m.lstrip("~"), prompt=3e-6, completion=15e-6) for m in PANEL}


async def test_ask_refuses_an_unknown_model_before_spending_exactly_as_the_tool_does(sim: ProviderSim) -> None:
    catalogue(sim)
    out = ask(sim, "q", "--models", "sim/fast,openai/gpt-5-typo", "--json")
    assert out.returncode == 1, out.stderr
    by_ask = json.loads(out.stdout)
    assert by_ask["failure_reason"] == "invalid_model"
    assert by_ask["error"] == (
        "unknown model id 'openai/gpt-5-typo': the provider's catalogue does not list it; "
        "closest known ids: openai/gpt-5, openai/gpt-5-mini"
    )
    assert sim.requests == []  # not one completion reached the provider
    by_tool = await tool(sim, {"prompt": "q", "analysis_models": ["sim/fast", "openai/gpt-5-typo"]})
    assert (by_tool["failure_reason"], by_tool["error"]) == (by_ask["failure_reason"], by_ask["error"])
    assert sim.requests == []


async def test_ask_refuses_a_run_over_the_cost_cap_exactly_as_the_tool_does(sim: ProviderSim) -> None:
    catalogue(sim)
    out = ask(sim, "q", "--json", FUSION_MAX_COST_USD="0.000001")
    assert out.returncode == 1, out.stderr
    by_ask = json.loads(out.stdout)
    assert by_ask["failure_reason"] == "cost_limit"
    assert by_ask["error"].startswith("estimated worst-case cost $")
    assert "exceeds FUSION_MAX_COST_USD=$1e-06" in by_ask["error"]
    assert sim.requests == []
    # ask has the analyst write a final answer, which the estimate counts: the tool's worst case is smaller.
    by_tool = await tool(sim, {"prompt": "q"}, FUSION_MAX_COST_USD="0.000001")
    assert by_tool["failure_reason"] == "cost_limit" and by_tool["error"].startswith("estimated worst-case cost $")
    assert sim.requests == []


@pytest.mark.parametrize(
    ("env", "reason", "message"),
    [
        (
            {"FUSION_DEPTH": "1"},
            "fusion_invocation_capped",
            "fusion was already invoked upstream (depth 1); nested fusion calls are refused",
        ),
        (
            {"OPENROUTER_API_KEY": "", "OPENROUTER_BASE_URL": "https://openrouter.ai/api/v1"},
            "missing_api_key",
            "OPENROUTER_API_KEY is not set: create a key at https://openrouter.ai/keys and add it to this server's "
            "environment (for a host, in the env of its MCP config entry; `fusion-mcp host-config HOST` prints one), "
            "or point the server at a local OpenAI-compatible server, which needs no key: "
            "OPENROUTER_BASE_URL=http://localhost:11434/v1 for Ollama",
        ),
    ],
)
async def test_depth_and_key_refusals_are_worded_alike(
    sim: ProviderSim, env: dict[str, str], reason: str, message: str
) -> None:
    out = ask(sim, "q", "--json", **env)
    assert out.returncode == 1 and json.loads(out.stdout) | {"run_id": "-"} == {
        "status": "error",
        "run_id": "-",
        "error": message,
        "failure_reason": reason,
        "responses": [],
        "failed_models": [],
        "sources": [],
        "usage": {"models": [], "total": dict.fromkeys(TOKEN_COUNTS, 0) | {"cost": None}},
        "timings": {"members": {}, "analyst": None, "total": 0.0, "queued": 0.0},
        "cached": False,
        "degraded": False,
    }
    by_tool = await tool(sim, {"prompt": "q"}, **env)
    assert (by_tool["failure_reason"], by_tool["error"]) == (reason, message)
    assert sim.requests == []


def test_ask_never_imports_the_mcp_sdk_nor_psycopg_without_a_database_url(sim: ProviderSim) -> None:
    script = (
        "import sys\n"
        "from fusion_mcp.cli.main import main\n"
        "try:\n"
        "    main(['ask', 'q', '--json'])\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "loaded = sorted(m for m in sys.modules if m == 'mcp' or m.startswith(('mcp.', 'mcp_types')))\n"
        "print('EXIT', code, 'MCP', loaded, file=sys.stderr)\n"
        "print('PG', sorted(m for m in sys.modules if m.startswith('psycopg')), file=sys.stderr)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env=child_env(**sim_env(sim)), capture_output=True, text=True, timeout=60
    )
    assert "EXIT 0 MCP []" in out.stderr, out.stderr
    assert "PG []" in out.stderr  # the SQLite store: the core install needs no psycopg
    assert json.loads(out.stdout)["status"] == "ok"


# --- prepare: every rule, in order, without I/O ----------------------------------------------------------


@pytest.fixture
def plain(sim: ProviderSim) -> Settings:
    return load_settings(environ=sim_env(sim))


def refused(settings: Settings, depth: int = 0, **args: Any) -> FusionRefused:
    with pytest.raises(FusionRefused) as info:
        prepare(FusionArgs(**{"prompt": "q", **args}), settings, depth=depth)
    return info.value


@pytest.mark.parametrize(
    ("args", "argument", "message"),
    [
        ({"prompt": "  \n"}, "prompt", "invalid argument prompt: must be a non-empty, self-contained question"),
        ({"preset": "cheap"}, "preset", "invalid argument preset: must be one of quality, budget, fast, self"),
        (
            {"analysis_models": ["a/x", "a/x"]},
            "analysis_models",
            f"invalid argument analysis_models: must be {PANEL_ENTRIES_RULE} (a/x appears more than once)",
        ),
        (
            {"analysis_models": [f"m/{i}" for i in range(9)]},
            "analysis_models",
            f"invalid argument analysis_models: must be {PANEL_ENTRIES_RULE} (9 entries given)",
        ),
        (
            {"analysis_models": []},
            "analysis_models",
            f"invalid argument analysis_models: must be {PANEL_ENTRIES_RULE}",
        ),
        (
            {"model": "two words"},
            "model",
            "invalid argument model: must be one model id: up to 200 letters, digits and ~ / . _ - : @ + (no empty, "
            ". or .. part between slashes) (the analyst takes no lens) ('two words' has the character ' ', which no "
            "model id has)",
        ),
        (
            {"model": "~x/../../internal/admin?dump=1#"},
            "model",
            "invalid argument model: must be one model id: up to 200 letters",
        ),
        ({"model": "a/../b"}, "model", "invalid argument model: must be one model id"),
        (
            {"max_tool_calls": 17},
            "max_tool_calls",
            "invalid argument max_tool_calls: must be a whole number from 1 to 16 (17 given)",
        ),
        (
            {"deadline_s": 0.5},
            "deadline_s",
            "invalid argument deadline_s: must be a number of seconds from 1 to 3,600 (0.5 given)",
        ),
        ({"deadline_s": math.inf}, "deadline_s", "invalid argument deadline_s: must be a number of seconds from 1"),
    ],
)
def test_each_argument_rule_names_the_argument(
    plain: Settings, args: dict[str, Any], argument: str, message: str
) -> None:
    error = refused(plain, **args)
    assert error.reason == "invalid_arguments" and error.argument == argument
    assert error.message.startswith(message)
    assert error.message.startswith(f"invalid argument {argument}: must be {ARGUMENT_RULES[argument]}")


def test_arguments_are_checked_before_depth_and_depth_before_the_key(sim: ProviderSim) -> None:
    keyless = load_settings(
        environ=sim_env(sim, OPENROUTER_API_KEY="", OPENROUTER_BASE_URL="https://openrouter.ai/api/v1")
    )
    assert refused(keyless, depth=2, prompt=" ").reason == "invalid_arguments"
    assert refused(keyless, depth=2).reason == "fusion_invocation_capped"
    assert refused(keyless).reason == "missing_api_key"


def test_a_local_provider_needs_no_key(sim: ProviderSim) -> None:
    keyless = load_settings(environ=sim_env(sim, OPENROUTER_API_KEY=""))
    assert prepare(FusionArgs(prompt="q"), keyless, depth=0).analysis_models == PANEL


def test_arguments_merge_over_settings_and_presets(sim: ProviderSim) -> None:
    settings = load_settings(
        environ=sim_env(sim, FUSION_DEADLINE_S="30", FUSION_ANALYST_RESERVE_S="5", FUSION_MAX_TOOL_CALLS="4")
    )
    request = prepare(FusionArgs(prompt="  q  ", context=" \n", deadline_s=30), settings, depth=0)
    assert (request.prompt, request.context, request.analysis_models, request.model) == ("q", None, PANEL, ANALYST)
    assert (request.max_tool_calls, request.deadline_s, request.analyst_reserve_s) == (4, 30, 5)
    assert request.web_tools == "local" and not request.final_answer
    own = prepare(
        FusionArgs(prompt="q", preset="fast", max_tool_calls=2, deadline_s=12, final_answer=True), settings, depth=0
    )
    assert (own.analysis_models, own.model) == PRESETS["fast"]
    # A deadline of the call's own gets the default share for the analyst, not the configured reserve.
    assert (own.max_tool_calls, own.deadline_s, own.analyst_reserve_s, own.final_answer) == (2, 12, None, True)
    explicit = prepare(FusionArgs(prompt="q", preset="fast", analysis_models=[" x/a "], model="x/j"), settings, depth=0)
    assert (explicit.analysis_models, explicit.model, explicit.deadline_s) == (("x/a",), "x/j", None)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("q", "invalid arguments: must be a JSON object of named arguments"),
        ({"prompt": "q", "deadline_s": 3}, "unknown argument 'deadline_s': the arguments are prompt, context,"),
        ({"prompt": ["q"]}, "invalid argument prompt: must be a non-empty, self-contained question, at most"),
        ({"prompt": "q", "context": 3}, "invalid argument context: must be the material the panel needs"),
        ({"prompt": "q", "max_tool_calls": True}, "invalid argument max_tool_calls: must be a whole number"),
    ],
)
def test_raw_tool_arguments_are_checked_before_anything_else(raw: Any, message: str) -> None:
    from fusion_mcp.engine.admission import parse_arguments

    with pytest.raises(FusionRefused) as info:
        parse_arguments(raw)
    assert info.value.reason == "invalid_arguments" and info.value.message.startswith(message), info.value.message


def test_prompt_and_context_are_bounded_together(sim: ProviderSim) -> None:
    settings = load_settings(environ=sim_env(sim, FUSION_MAX_PROMPT_CHARS="1000"))
    assert prepare(FusionArgs(prompt="q" * 600, context="c" * 400), settings, depth=0).context == "c" * 400
    error = refused(settings, prompt="q" * 600, context="c" * 401)
    assert error.argument == "context" and error.message == (
        "invalid argument context: must be the material the panel needs, at most FUSION_MAX_PROMPT_CHARS characters "
        "with the prompt (1,001 characters given, FUSION_MAX_PROMPT_CHARS is 1,000)"
    )
    assert refused(settings, prompt="q" * 1001).argument == "prompt"
