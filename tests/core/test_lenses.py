"""Lenses: ``model#lens`` entries, configured lenses, and the ``self`` preset on a one-model endpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from fusion_mcp.config import ConfigError, load_settings
from fusion_mcp.core.lenses import BUILTIN, LENS_NOTE, PANEL_ENTRIES_RULE, check_panel, model_of, split_entry
from fusion_mcp.engine.admission import ARGUMENT_RULES
from fusion_mcp.mcp_server.server import create_server
from tests.conftest import sim_env
from tests.fakes.provider_sim import ProviderSim, priced
from tests.helpers import TOOL, structured

pytestmark = pytest.mark.anyio


async def call(sim: ProviderSim, args: dict[str, Any], **env: str) -> dict[str, Any]:
    server = create_server(load_settings(environ=sim_env(sim, **env)))
    async with Client(server) as client:
        return structured(await client.call_tool(TOOL, args))


def system_prompts(sim: ProviderSim) -> dict[str, str]:
    """Each panel request's system prompt, by the lens named in it (or "none")."""
    found = {}
    for request in sim.requests:
        if "response_format" in request.body:
            continue
        system = request.body["messages"][0]["content"]
        lens = next((name for name in BUILTIN if f"Lens for this answer ({name})" in system), "none")
        found[lens] = system
    return found


def test_entries_split_at_the_last_hash() -> None:
    assert split_entry("~openai/gpt-latest#skeptic") == ("~openai/gpt-latest", "skeptic")
    assert split_entry("llama3") == ("llama3", None)
    assert model_of("a#b#skeptic") == "a#b"
    assert check_panel("llama3#skeptic, llama3#pragmatist,llama3", BUILTIN) == (
        "llama3#skeptic",
        "llama3#pragmatist",
        "llama3",
    )


@pytest.mark.parametrize(
    ("panel", "detail"),
    [
        (["llama3#skeptic", "llama3#skeptic"], "llama3#skeptic appears more than once"),
        (["llama3#sceptic"], "unknown lens 'sceptic' in 'llama3#sceptic' (known lenses: architect, contrarian, "),
        (["#skeptic"], "'#skeptic' has no model id before '#'"),
        (["llama3#"], "unknown lens '' in 'llama3#'"),
    ],
)
async def test_bad_entries_are_refused_naming_what_is_wrong(sim: ProviderSim, panel: list[str], detail: str) -> None:
    data = await call(sim, {"prompt": "q", "analysis_models": panel})
    assert data["failure_reason"] == "invalid_arguments"
    assert data["error"].startswith(f"invalid argument analysis_models: must be {PANEL_ENTRIES_RULE} ({detail}")
    assert sim.requests == []


async def test_the_analyst_takes_no_lens(sim: ProviderSim) -> None:
    data = await call(sim, {"prompt": "q", "model": "llama3#skeptic"})
    assert data["error"] == f"invalid argument model: must be {ARGUMENT_RULES['model']} ('llama3#skeptic' names a lens)"


async def test_one_model_under_lenses_sends_different_system_prompts_and_is_named_by_entry(sim: ProviderSim) -> None:
    panel = ["x/one#skeptic", "x/one#contrarian", "x/one", "y/two#skeptic"]
    data = await call(sim, {"prompt": "q", "analysis_models": panel, "model": "z/judge"})
    members = [r for r in sim.requests if "response_format" not in r.body]
    # The provider is asked for the model; the lens lives in the system prompt only.
    assert sorted(r.body["model"] for r in members) == ["x/one", "x/one", "x/one", "y/two"]
    prompts = [r.body["messages"][0]["content"] for r in members]
    assert len(set(prompts)) == 3  # x/one#skeptic and y/two#skeptic share their lens's prompt
    skeptic = LENS_NOTE.format(name="skeptic", text=BUILTIN["skeptic"])
    assert sum(skeptic in p for p in prompts) == 2
    assert sum(BUILTIN["contrarian"] in p for p in prompts) == 1
    assert sum("Lens for this answer" not in p for p in prompts) == 1
    # Results name each entry wherever a model id would appear.
    assert [r["model"] for r in data["responses"]] == panel
    assert set(data["timings"]["members"]) == set(panel)
    assert [u["model"] for u in data["usage"]["models"]] == [*panel, "z/judge"]
    # (the analyst sees the answers in a shuffled order, so which entry holds which stance varies by run)
    assert sorted(s["model"] for s in data["analysis"]["contradictions"][0]["stances"]) == sorted(panel)
    assert data["analysis"]["unique_insights"][0]["model"] in panel
    analyst = next(r for r in sim.requests if "response_format" in r.body)
    assert "#skeptic" not in json.dumps(analyst.body)  # the analyst sees anonymous labels only


async def test_the_self_preset_runs_the_only_model_of_an_endpoint_under_three_lenses(sim: ProviderSim) -> None:
    sim.catalogue = [priced("llama3")]  # an endpoint that serves one model
    data = await call(sim, {"prompt": "q", "preset": "self"}, FUSION_MODEL="llama3")
    assert data["status"] == "ok" and "analysis" in data
    assert [r["model"] for r in data["responses"]] == ["llama3#skeptic", "llama3#pragmatist", "llama3#researcher"]
    assert data["analyst_model"] == "llama3"
    assert {r.model for r in sim.requests} == {"llama3"} and len(sim.requests) == 4
    assert set(system_prompts(sim)) == {"skeptic", "pragmatist", "researcher"}


async def test_the_self_preset_follows_the_calls_analyst_and_the_configured_preset(sim: ProviderSim) -> None:
    data = await call(sim, {"prompt": "q", "preset": "self", "model": "qwen"})
    assert [r["model"] for r in data["responses"]] == ["qwen#skeptic", "qwen#pragmatist", "qwen#researcher"]
    sim.reset()
    env = {"FUSION_PRESET": "self", "FUSION_ANALYSIS_MODELS": "", "FUSION_MODEL": "mistral"}
    data = await call(sim, {"prompt": "q"}, **env)
    assert [r["model"] for r in data["responses"]] == ["mistral#skeptic", "mistral#pragmatist", "mistral#researcher"]


async def test_configured_lenses_join_the_built_in_ones(sim: ProviderSim, tmp_path: Path) -> None:
    config = tmp_path / "fusion.toml"
    config.write_text(
        'fusion_analysis_models = "m/a#lawyer, m/a#skeptic"\n'
        "[fusion_lenses]\n"
        'lawyer = "Look for legal exposure: contracts, liability, regulation and what must be in writing."\n'
        'skeptic = "Doubt every number."\n',
        encoding="utf-8",
    )
    settings = load_settings(environ=sim_env(sim, FUSION_ANALYSIS_MODELS="", FUSION_CONFIG=str(config)))
    assert settings.analysis_models == ("m/a#lawyer", "m/a#skeptic")
    async with Client(create_server(settings)) as client:
        data = structured(await client.call_tool(TOOL, {"prompt": "q"}))
    assert data["status"] == "ok"
    prompts = [r.body["messages"][0]["content"] for r in sim.requests if "response_format" not in r.body]
    assert any("Lens for this answer (lawyer): Look for legal exposure" in p for p in prompts)
    assert any("Lens for this answer (skeptic): Doubt every number." in p for p in prompts)  # redefined


@pytest.mark.parametrize("lenses", ['{"Bad Name": "x"}', '{"ok": ""}', "not json", '["skeptic"]'])
def test_bad_lenses_stop_the_process_with_the_rule(lenses: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"FUSION_LENSES": lenses})
    assert str(info.value).startswith("invalid setting FUSION_LENSES=")
    assert "must be a table of lens name -> instructions" in str(info.value)


def test_a_configured_panel_may_only_name_known_lenses() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"FUSION_ANALYSIS_MODELS": "a#nope"})
    assert str(info.value).startswith(f"invalid setting FUSION_ANALYSIS_MODELS='a#nope': must be {PANEL_ENTRIES_RULE}")
