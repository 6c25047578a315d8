"""Presets, model checks against the provider's catalogue, the cost cap, and ``fusion-mcp doctor``."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client

from fusion_mcp.config import PRESETS, load_settings
from fusion_mcp.mcp_server.server import create_server
from tests.conftest import API_KEY, PANEL, child_env, console_script, sim_env
from tests.fakes.provider_sim import ProviderSim, priced
from tests.helpers import TOOL, structured, wait_until

pytestmark = pytest.mark.anyio

NAMED_BUDGET = "the preset 'budget' (FUSION_PRESET, or preset in the config file)"


async def call(sim: ProviderSim, args: dict[str, Any], **env: str):
    server = create_server(load_settings(environ=sim_env(sim, **env)))
    async with Client(server) as client:
        return await client.call_tool(TOOL, args)


def no_panel_env() -> dict[str, str]:
    """Settings that leave the panel to the preset (sim_env pins one)."""
    return {"FUSION_ANALYSIS_MODELS": "", "FUSION_MODEL": ""}


@pytest.mark.parametrize("preset", sorted(PRESETS))
async def test_presets_choose_panel_and_analyst(sim: ProviderSim, preset: str) -> None:
    data = structured(await call(sim, {"prompt": "q", "preset": preset}))
    panel, analyst = PRESETS[preset]
    assert [r["model"] for r in data["responses"]] == list(panel) and data["analyst_model"] == analyst


async def test_explicit_models_override_a_preset_and_settings_pick_the_default(sim: ProviderSim) -> None:
    data = structured(await call(sim, {"prompt": "q", "preset": "fast", "analysis_models": ["x/one"]}))
    assert [r["model"] for r in data["responses"]] == ["x/one"] and data["analyst_model"] == PRESETS["fast"][1]
    data = structured(await call(sim, {"prompt": "q"}, FUSION_PRESET="budget", **no_panel_env()))
    assert [r["model"] for r in data["responses"]] == list(PRESETS["budget"][0])
    before = len(sim.requests)
    bad = await call(sim, {"prompt": "q", "preset": "cheap"})
    assert bad.is_error and "preset" in bad.content[0].text and len(sim.requests) == before


async def test_an_unknown_model_is_refused_with_the_closest_ids_before_spending(sim: ProviderSim) -> None:
    sim.catalogue = [priced(m.lstrip("~")) for m in PANEL] + [priced("openai/gpt-5.2"), priced("openai/gpt-5.2-mini")]
    sim.aliases = {m: priced(m.lstrip("~")) for m in PANEL}
    result = await call(sim, {"prompt": "q", "analysis_models": [PANEL[0], "openai/gpt-5.3"]})
    data = structured(result)
    assert result.is_error and data["failure_reason"] == "invalid_model"
    assert data["error"].startswith("unknown model id 'openai/gpt-5.3': the provider's catalogue does not list it")
    assert "closest known ids: openai/gpt-5.2" in data["error"]
    assert sim.requests == []  # no completion was requested


PRESET_WAY_OUT = (
    "name the models this provider serves instead, with FUSION_ANALYSIS_MODELS and FUSION_MODEL (or the call's "
    "analysis_models and model), or use the self preset with FUSION_MODEL set to one of them"
)


async def test_a_refused_id_a_preset_chose_names_the_preset_and_how_to_choose_instead(sim: ProviderSim) -> None:
    sim.catalogue = [priced("llama3")]  # a local server: no preset's model is there
    unknown = "unknown model id {!r}: the provider's catalogue does not list it; it came from {}: "

    async def error(args: dict[str, Any], **env: str) -> str:
        result = await call(sim, {"prompt": "q", **args}, **env)
        data = structured(result)
        assert result.is_error and data["failure_reason"] == "invalid_model"
        return str(data["error"])

    default = await error({}, **no_panel_env())
    origin = "the default preset 'quality' (FUSION_PRESET is not set)"
    assert default == unknown.format(PRESETS["quality"][0][0], origin) + PRESET_WAY_OUT
    named = await error({}, FUSION_PRESET="budget", **no_panel_env())
    assert named == unknown.format(PRESETS["budget"][0][0], NAMED_BUDGET) + PRESET_WAY_OUT
    # The call's preset wins over FUSION_ANALYSIS_MODELS and FUSION_MODEL, and is named as the call's.
    called = await error({"preset": "fast"}, FUSION_ANALYSIS_MODELS="llama3", FUSION_MODEL="llama3")
    assert called == unknown.format(PRESETS["fast"][0][0], "the call's preset 'fast'") + PRESET_WAY_OUT
    # Models the call chose are its own, whatever preset it named; the preset's analyst is still the preset's.
    analyst = await error({"preset": "fast", "analysis_models": ["llama3"]})
    assert analyst == unknown.format(PRESETS["fast"][1], "the call's preset 'fast'") + PRESET_WAY_OUT
    lensed = await error({"preset": "self"}, **no_panel_env())
    assert lensed == unknown.format(PRESETS["quality"][1], "the call's preset 'self'") + (
        "the self preset takes its model from FUSION_MODEL (or the call's model), and the quality preset's analyst "
        "when neither is set: set FUSION_MODEL to a model this provider serves"
    )
    # Ids named in settings or by the call: nothing about presets.
    for args, env in (
        ({}, {"FUSION_ANALYSIS_MODELS": "llama3,qwen9", "FUSION_MODEL": "llama3"}),
        ({"model": "qwen9"}, {}),
    ):
        mine = await error({"analysis_models": ["llama3"], **args} if args else args, **env)
        assert mine.startswith("unknown model id 'qwen9'") and "preset" not in mine, mine
    assert sim.requests == []


async def test_aliases_resolve_and_providers_without_a_catalogue_are_not_blocked(sim: ProviderSim) -> None:
    sim.catalogue = [priced("openai/gpt-5.2")]
    sim.aliases = {m: priced(m.lstrip("~")) for m in PANEL}
    assert structured(await call(sim, {"prompt": "q"}))["status"] == "ok"
    sim.catalogue = None
    assert structured(await call(sim, {"prompt": "q", "analysis_models": ["never/heard-of"]}))["status"] == "ok"


async def test_the_cost_cap_refuses_a_run_whose_worst_case_exceeds_it(sim: ProviderSim) -> None:
    sim.catalogue = [priced(m, prompt=3e-6, completion=15e-6) for m in PANEL]
    # 3 members x 16000 tokens x $15/M = $0.72 before the analyst: far over a 10 cent cap.
    result = await call(sim, {"prompt": "q"}, FUSION_MAX_COST_USD="0.10")
    data = structured(result)
    assert result.is_error and data["failure_reason"] == "cost_limit"
    assert (
        data["error"].startswith("estimated worst-case cost $") and "exceeds FUSION_MAX_COST_USD=$0.1" in data["error"]
    )
    assert sim.requests == []
    ok = await call(sim, {"prompt": "q"}, FUSION_MAX_COST_USD="5", FUSION_MAX_COMPLETION_TOKENS="1000")
    assert structured(ok)["status"] == "ok"


async def test_results_carry_usage_and_cost_from_the_providers_usage_objects(sim: ProviderSim) -> None:
    data = structured(await call(sim, {"prompt": "q"}))
    rows = {(row["model"], row["role"]): row for row in data["usage"]["models"]}
    assert rows[(PANEL[1], "panel")]["cost"] == 0.0015 and rows[(PANEL[1], "panel")]["reasoning_tokens"] == 7
    assert data["usage"]["total"]["cost"] == pytest.approx(0.006)


async def test_a_provider_unreachable_at_start_is_logged_as_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from tests.helpers import wait_until

    settings = load_settings(environ={"OPENROUTER_API_KEY": API_KEY, "OPENROUTER_BASE_URL": "http://127.0.0.1:9/v1"})
    caplog.set_level(logging.INFO, logger="fusion_mcp")
    async with Client(create_server(settings)):
        await wait_until(lambda: "model ids not checked" in caplog.text)
    record = next(r for r in caplog.records if "model ids not checked" in r.getMessage())
    assert record.levelno == logging.WARNING
    assert (
        record.getMessage()
        == "model ids not checked: the provider at http://127.0.0.1:9/v1 is unreachable (ConnectError)"
    )


def doctor(sim: ProviderSim, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [console_script(), "doctor", *args],
        env=child_env(**sim_env(sim, **env)),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_doctor_names_why_the_provider_cannot_be_reached(sim: ProviderSim) -> None:
    import socket

    refused = doctor(sim, OPENROUTER_BASE_URL="http://127.0.0.1:9/v1")
    assert (
        "FAIL reach: cannot reach http://127.0.0.1:9/v1: connection refused: nothing listens on 127.0.0.1:9 "
        "-> fix: start the local server, or check the port in OPENROUTER_BASE_URL\n"
    ) in refused.stdout
    assert "FAIL key: could not ask http://127.0.0.1:9/v1/key: connection refused: nothing listens" in refused.stdout
    unresolved = doctor(sim, OPENROUTER_BASE_URL="http://provider.invalid/v1")
    assert (
        "FAIL reach: cannot reach http://provider.invalid/v1: the name provider.invalid does not resolve "
        "-> fix: check the host name in OPENROUTER_BASE_URL, and DNS\n"
    ) in unresolved.stdout
    plain = sim.base_url.replace("http://", "https://")  # TLS spoken to a plain-HTTP server
    tls = doctor(sim, OPENROUTER_BASE_URL=plain)
    assert (
        f"FAIL reach: cannot reach {plain}: TLS failed (WRONG_VERSION_NUMBER) "
        "-> fix: a server that speaks plain HTTP needs http:// in OPENROUTER_BASE_URL\n"
    ) in tls.stdout
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        hung = doctor(sim, "--timeout", "0.5", OPENROUTER_BASE_URL=f"http://127.0.0.1:{port}/v1")
    assert (
        f"FAIL reach: cannot reach http://127.0.0.1:{port}/v1: no answer within 0.5 s -> fix: check that the server "
        f"at 127.0.0.1:{port} is up and not overloaded, and that no firewall drops the connection; doctor --timeout "
        "waits longer\n"
    ) in hung.stdout
    for out in (refused, unresolved, tls, hung):
        assert out.returncode == 1 and "Traceback" not in out.stderr


@pytest.mark.parametrize("value", ["0", "301", "soon", "nan"])
def test_doctor_timeout_is_checked_by_the_parser(sim: ProviderSim, value: str) -> None:
    out = doctor(sim, "--timeout", value)
    assert out.returncode == 2
    assert f"argument --timeout: must be a number of seconds from 0.1 to 300 (got '{value}')" in out.stderr


def test_doctor_passes_on_a_good_setup(sim: ProviderSim) -> None:
    sim.valid_key = API_KEY
    sim.catalogue = [priced(m) for m in PANEL]
    out = doctor(sim)
    assert out.returncode == 0, out.stdout
    assert "ok   key: accepted, used $1.25 of a $10 limit" in out.stdout
    assert f"ok   model {PANEL[1]}: known (panel)" in out.stdout and "0 failed" in out.stdout
    assert "ok   web tools: local: search via ddgs, best effort" in out.stdout
    assert "ok   files: only inside the client's MCP roots" in out.stdout
    assert "ok   runs: end with their call (55 s, FUSION_DEADLINE_S)" in out.stdout
    assert API_KEY not in out.stdout + out.stderr


def test_doctor_checks_a_lens_panel_once_per_model_and_names_roots_and_long_runs(
    sim: ProviderSim, tmp_path: Path
) -> None:
    sim.catalogue = [priced("llama3")]
    out = doctor(
        sim,
        FUSION_PRESET="self",
        FUSION_ANALYSIS_MODELS="",
        FUSION_MODEL="llama3",
        FUSION_FILES_ROOTS=str(tmp_path),
        FUSION_RUN_DEADLINE_S="600",
    )
    assert out.returncode == 0, out.stdout
    assert out.stdout.count("ok   model llama3: known") == 2  # once as the panel's model, once as the analyst
    assert "#skeptic" not in out.stdout
    assert f"ok   files: roots {tmp_path}; 2,000,000 bytes a call (FUSION_FILES_MAX_BYTES)" in out.stdout
    assert "ok   runs: may outlive their call: 55 s a call, 600 s a run (FUSION_RUN_DEADLINE_S)" in out.stdout


def test_doctor_reports_the_web_tools_and_models_that_cannot_use_them(sim: ProviderSim) -> None:
    sim.catalogue = [priced(m, tools=m != PANEL[2]) for m in PANEL]
    out = doctor(sim, FUSION_SEARXNG_URL="http://admin:hunter2@127.0.0.1:9/searx", FUSION_FETCH_PORTS="80,443,8080")
    assert out.returncode == 1
    assert (
        "ok   web tools: local: search via SearXNG at http://***@127.0.0.1:9/searx; guarded fetch on ports 80, 443, "
        "8080, URLs from the question or earlier results only"
    ) in out.stdout
    assert "hunter2" not in out.stdout + out.stderr
    assert f"FAIL tools {PANEL[2]}: the catalogue lists no tool support" in out.stdout
    off = doctor(sim, FUSION_WEB_TOOLS="off")
    assert "ok   web tools: off (FUSION_WEB_TOOLS)" in off.stdout and "FAIL tools" not in off.stdout


def test_doctor_names_a_misspelt_model_and_exits_non_zero(sim: ProviderSim) -> None:
    sim.catalogue = [priced(m) for m in PANEL]
    out = doctor(sim, FUSION_ANALYSIS_MODELS=f"{PANEL[0]},~openai/gtp-latest")
    assert out.returncode == 1
    assert "FAIL model ~openai/gtp-latest: not in the provider's catalogue (panel)" in out.stdout
    assert "did you mean ~openai/gpt-latest?" in out.stdout and "1 failed" in out.stdout


def test_doctor_fails_on_a_rejected_key_and_an_unreachable_provider(sim: ProviderSim) -> None:
    sim.valid_key = "sk-other"
    out = doctor(sim)
    assert out.returncode == 1 and "FAIL key: the key was rejected (HTTP 401)" in out.stdout
    down = doctor(sim, OPENROUTER_BASE_URL="http://127.0.0.1:9/v1")
    assert down.returncode == 1 and "FAIL reach: cannot reach http://127.0.0.1:9/v1" in down.stdout
    # Unreachable is not "no catalogue": the model check fails too, pointing at the reach line.
    assert (
        "FAIL models: model ids not checked: the provider at http://127.0.0.1:9/v1 is unreachable (ConnectError) "
        "-> fix: see 'reach' above"
    ) in down.stdout
    assert "publishes no catalogue" not in down.stdout


def test_doctor_tells_a_provider_without_a_catalogue_from_one_that_is_down(sim: ProviderSim) -> None:
    out = doctor(sim)  # the simulator answers /models with 404 unless given a catalogue
    assert "ok   models: the provider publishes no catalogue: model ids are checked on the first call" in out.stdout


def test_doctor_says_where_to_get_a_key_and_how_to_go_without_one(sim: ProviderSim) -> None:
    out = doctor(sim, OPENROUTER_API_KEY="", OPENROUTER_BASE_URL="https://openrouter.ai/api/v1")
    assert (
        "FAIL key: OPENROUTER_API_KEY is not set -> fix: create a key at https://openrouter.ai/keys and put it in "
        "the server's environment (or a host entry's env), or use a local server instead: "
        "OPENROUTER_BASE_URL=http://localhost:11434/v1 for Ollama"
    ) in out.stdout


def test_the_worst_case_estimate_counts_every_member_the_analyst_and_its_repair() -> None:
    from fusion_mcp.core.models import FusionRequest
    from fusion_mcp.providers.catalogue import ModelInfo, estimate_cost

    request = FusionRequest(
        prompt="p" * 2000, analysis_models=("a/x", "b/y"), model="j/z", max_tool_calls=1, max_completion_tokens=1000
    )
    infos = {
        "a/x": ModelInfo("a/x", prompt_price=1e-6, completion_price=2e-6),
        "b/y": ModelInfo("b/y", prompt_price=3e-6, completion_price=4e-6),
        "j/z": ModelInfo("j/z", prompt_price=5e-6, completion_price=6e-6),
    }
    question = (2000 + 1500) / 3.5  # prompt and system text at 3.5 characters a token
    members = question * 1e-6 + 1000 * 2e-6 + question * 3e-6 + 1000 * 4e-6
    analyst = question + 2 * 1000  # it reads the question and both full answers
    assert estimate_cost(request, infos) == pytest.approx(members + 2 * (analyst * 5e-6 + 1000 * 6e-6))
    with_answer = request.model_copy(update={"final_answer": True})
    assert estimate_cost(with_answer, infos) == pytest.approx(members + 3 * (analyst * 5e-6 + 1000 * 6e-6))
    assert estimate_cost(request, {k: v for k, v in infos.items() if k != "b/y"}) is None
    assert estimate_cost(request, infos | {"j/z": ModelInfo("j/z")}) is None


def test_a_refusal_from_every_address_of_a_name_is_named_too() -> None:
    """``localhost`` may resolve to ::1 and 127.0.0.1: anyio then raises one OSError from a group of the
    attempts. The reason is inside the group, as a provider client would receive it."""
    from fusion_mcp.cli.doctor import unreachable

    attempts = [ConnectionRefusedError(111, "Connection refused"), ConnectionRefusedError(111, "Connection refused")]
    try:
        try:
            raise OSError("All connection attempts failed") from ExceptionGroup("", attempts)
        except OSError as inner:
            raise httpx2.ConnectError("All connection attempts failed") from inner
    except httpx2.ConnectError as exc:
        why, fix = unreachable(exc, "http://localhost:11434/v1", 15)
    assert why == "connection refused: nothing listens on localhost:11434"
    assert fix == "start the local server, or check the port in OPENROUTER_BASE_URL"


@pytest.mark.anyio
async def test_the_server_names_a_misspelt_configured_model_after_start(
    sim: ProviderSim, caplog: pytest.LogCaptureFixture
) -> None:
    """The check runs off the start-up path: no catalogue request before the tools are listed, then a warning
    naming the model and the closest id the provider knows."""
    sim.catalogue = [priced(m) for m in PANEL]
    env = sim_env(sim, FUSION_ANALYSIS_MODELS=f"{PANEL[0]},~openai/gtp-latest")
    caplog.set_level("WARNING", logger="fusion_mcp")
    async with Client(create_server(load_settings(environ=env))) as client:
        await client.list_tools()
        assert sim.catalogue_reads == 0 and not caplog.records
        await wait_until(lambda: any("gtp" in r.getMessage() for r in caplog.records), limit_s=10)
        assert sim.catalogue_reads == 1
    (record,) = [r for r in caplog.records if "gtp" in r.getMessage()]
    assert record.getMessage() == (
        "configured model '~openai/gtp-latest' is not in the provider's catalogue (closest: ~openai/gpt-latest)"
    )


async def test_a_fresh_catalogue_is_read_without_yielding_to_the_event_loop(sim: ProviderSim) -> None:
    """Every run looks each of its models up: once the catalogue is fetched, a look-up must not wait a turn of
    a busy event loop (an anyio lock yields even when free; under 32 callers that cost each run ~50 ms). Inside
    a scope already cancelled, anything that yields raises; a look-up in a fresh catalogue completes."""
    from fusion_mcp.providers.catalogue import CatalogueClient

    sim.catalogue = [priced("openai/gpt-5.2"), priced("openai/gpt-5.2-mini")]
    async with httpx2.AsyncClient() as http:
        catalogue = CatalogueClient(http, load_settings(environ=sim_env(sim)))
        assert (await catalogue.lookup("openai/gpt-5.2"))[0]  # the first look-up fetches it (and yields)
        with anyio.CancelScope() as scope:
            scope.cancel()
            found = [await catalogue.lookup(m) for m in ("openai/gpt-5.2", "openai/gpt-5.2-mini")]
        assert not scope.cancelled_caught
        assert [(known, info.id if info else None) for known, info, _ in found] == [
            (True, "openai/gpt-5.2"),
            (True, "openai/gpt-5.2-mini"),
        ]
