"""One panel across several providers, over the wire: three loopback simulators act as two vendor APIs with
keys of their own and one keyless local server (Ollama-like), beside the session's simulator as the default
provider (the analyst's). Each test starts its own simulators, so a stopped one or a changed key is its own."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from fusion_mcp.config import ConfigError, Settings, load_settings
from fusion_mcp.core.callers import LOCAL_PRINCIPAL
from fusion_mcp.core.models import FusionArgs, FusionResult
from fusion_mcp.engine.admission import FusionRefused
from fusion_mcp.engine.service import FusionService
from tests.conftest import ANALYST, API_KEY, child_env, console_script, sim_env
from tests.fakes.provider_sim import ProviderSim, Reply, priced

pytestmark = pytest.mark.anyio
KEY_A = "sk-proj-VENDOR-A-0123456789abcdef-do-not-leak"
KEY_B = "sk-ant-VENDOR-B-0123456789abcdef-do-not-leak"
PANEL = ["work-openai:gpt-5", "work-claude:claude-sonnet-4-5", "qwen3:8b"]
NO_COST = {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150}
"""Usage as a vendor's API reports it: tokens, no cost."""


@dataclass
class Three:
    a: ProviderSim
    """``work-openai``: the openai template, its key from OPENAI_API_KEY."""
    b: ProviderSim
    """``work-claude``: the anthropic template, its key from WORK_CLAUDE_KEY."""
    local: ProviderSim
    """``local``: the ollama template, no key, serves ``qwen3:*`` by pattern."""
    default: ProviderSim
    """The default provider (OPENROUTER_BASE_URL), where the analyst is."""

    def providers(self, **changes: dict[str, Any]) -> dict[str, Any]:
        table: dict[str, Any] = {
            "work-openai": {"template": "openai", "base_url": self.a.base_url, "prices": {"gpt-5": [2.0, 8.0]}},
            "work-claude": {"template": "anthropic", "base_url": self.b.base_url, "api_key_env": "WORK_CLAUDE_KEY"},
            "local": {"template": "ollama", "base_url": self.local.base_url, "models": ["qwen3:*"]},
        }
        for name, entry in changes.items():
            table[name] = {**table.get(name, {}), **entry}
        return table

    def env(self, providers: dict[str, Any] | None = None, **extra: str) -> dict[str, str]:
        env = {
            "FUSION_PROVIDERS": json.dumps(providers or self.providers()),
            "OPENAI_API_KEY": KEY_A,
            "WORK_CLAUDE_KEY": KEY_B,
            "FUSION_ANALYSIS_MODELS": ",".join(PANEL),
            "FUSION_MODEL": ANALYST,
            "FUSION_WEB_TOOLS": "off",
        }
        return sim_env(self.default, **{**env, **extra})

    def settings(self, providers: dict[str, Any] | None = None, **extra: str) -> Settings:
        return load_settings(environ=self.env(providers, **extra))


@pytest.fixture
def three(sim: ProviderSim) -> Iterator[Three]:
    sims = [ProviderSim().start() for _ in range(3)]
    sims[0].valid_key, sims[1].valid_key = KEY_A, KEY_B
    try:
        yield Three(*sims, default=sim)
    finally:
        for one in sims:
            one.stop()


async def fuse(settings: Settings, **args: Any) -> FusionResult:
    async with FusionService.open(settings) as service:
        request = service.prepare(FusionArgs(prompt="Which of A and B?", **args), depth=0)
        return await service.run(request)


def everything(sim: ProviderSim) -> str:
    return json.dumps([(r.headers, r.body) for r in sim.requests])


async def test_one_panel_spans_three_providers_each_receiving_only_its_own_members_with_its_own_key(
    three: Three,
) -> None:
    result = await fuse(three.settings())
    assert result.status == "ok" and result.analysis is not None, result.error
    assert {r.model: r.provider for r in result.responses} == {
        "work-openai:gpt-5": "work-openai",
        "work-claude:claude-sonnet-4-5": "work-claude",
        "qwen3:8b": "local",
    }
    # Each provider got its own member's requests only, under the id it knows, with its own key.
    assert [r.model for r in three.a.requests] == ["gpt-5"]
    assert [r.model for r in three.b.requests] == ["claude-sonnet-4-5"]
    assert [r.model for r in three.local.requests] == ["qwen3:8b"]
    assert {r.model for r in three.default.requests} == {ANALYST}
    assert three.a.requests[0].headers["authorization"] == f"Bearer {KEY_A}"
    assert three.b.requests[0].headers["authorization"] == f"Bearer {KEY_B}"
    assert "authorization" not in three.local.requests[0].headers  # a keyless local server gets no key at all
    assert all(r.headers["authorization"] == f"Bearer {API_KEY}" for r in three.default.requests)
    # No key ever reaches another provider.
    for sim, own in ((three.a, KEY_A), (three.b, KEY_B), (three.local, None), (three.default, API_KEY)):
        seen = everything(sim)
        assert all(key not in seen for key in (KEY_A, KEY_B, API_KEY) if key != own)
    # Attribution and depth headers go to OpenRouter-like and local endpoints, not to the vendors' APIs.
    assert "x-openrouter-fusion-depth" not in three.a.requests[0].headers
    assert "http-referer" not in three.b.requests[0].headers
    assert three.local.requests[0].headers["x-openrouter-fusion-depth"] == "1"
    assert three.default.requests[0].headers["x-openrouter-fusion-depth"] == "1"
    assert {u.model: u.provider for u in result.usage.models} == {
        **{m: p for m, p in zip(PANEL, ("work-openai", "work-claude", "local"), strict=True)},
        ANALYST: "default",
    }


@pytest.mark.parametrize("how", ["stopped", "401"])
async def test_a_provider_down_fails_its_members_naming_it_and_the_run_goes_on(three: Three, how: str) -> None:
    panel = [*PANEL, "local:llama3:8b#skeptic"]
    if how == "stopped":
        three.local.stop()
        down, members = "local", {"qwen3:8b", "local:llama3:8b#skeptic"}
    else:
        three.b.valid_key = "sk-ant-another-account-key-0123456789"
        down, members = "work-claude", {"work-claude:claude-sonnet-4-5"}
    result = await fuse(three.settings(), analysis_models=panel)
    assert result.status == "ok" and result.analysis is not None and not result.degraded
    assert {f.model for f in result.failed_models} == members
    assert {r.model for r in result.responses} == set(panel) - members
    for failed in result.failed_models:
        assert failed.provider == down
        assert failed.error.startswith(f"provider {down!r}: ")
        if how == "401":
            assert failed.status_code == 401
            assert (
                failed.error == "provider 'work-claude': HTTP 401: the API key was rejected: Incorrect API key provided"
            )
        else:
            assert f"could not connect to the provider at {three.local.base_url}/chat/completions" in failed.error
    assert KEY_B not in result.model_dump_json()


async def test_every_provider_down_is_all_panels_failed_naming_each(three: Three) -> None:
    three.local.stop()
    three.a.valid_key = three.b.valid_key = "sk-some-other-account-0123456789"
    result = await fuse(three.settings())
    assert result.status == "error" and result.failure_reason == "all_panels_failed"
    for name in ("work-openai", "work-claude", "local"):
        assert f"provider {name!r}: " in (result.error or "")


async def test_cost_and_usage_are_counted_per_provider(three: Three, store_env: dict[str, str]) -> None:
    three.a.script("gpt-5", Reply(usage=dict(NO_COST)))
    three.b.script("claude-sonnet-4-5", Reply(usage=dict(NO_COST)))
    three.local.script("qwen3:8b", Reply(usage=dict(NO_COST)))
    three.default.catalogue = [priced(ANALYST, prompt=3e-6, completion=15e-6)]
    settings = three.settings(three.providers(**{"work-claude": {"prices": {"claude-*": [3.0, 15.0]}}}), **store_env)
    async with FusionService.open(settings) as service:
        request = service.prepare(FusionArgs(prompt="q", max_completion_tokens=1000), depth=0)
        result = await service.run(request)
        assert result.status == "ok", result.error
        rows = {u.model: u for u in result.usage.models}
        # The vendors reported no cost: their configured prices count it; a local model costs nothing.
        assert rows["work-openai:gpt-5"].cost == pytest.approx(100 * 2e-6 + 50 * 8e-6)
        assert rows["work-claude:claude-sonnet-4-5"].cost == pytest.approx(100 * 3e-6 + 50 * 15e-6)
        assert rows["qwen3:8b"].cost == 0.0
        assert rows[ANALYST].cost == 0.0015  # the default provider reported its own
        # The caller has its answer a moment before the record (and its usage rows) is written.
        await service.record_written(result.run_id, LOCAL_PRINCIPAL)
        by_model = {t.key: t for t in await service.store.usage(0, "model")}  # type: ignore[union-attr]
        assert set(by_model) == {
            "work-openai:gpt-5",
            "work-claude:claude-sonnet-4-5",
            "local:qwen3:8b",
            f"default:{ANALYST}",
        }
        assert by_model["work-openai:gpt-5"].cost == pytest.approx(0.0006)
        by_provider = {t.key: (t.runs, t.requests, t.cost) for t in await service.store.usage(0, "provider")}  # type: ignore[union-attr]
        assert by_provider == {
            "work-openai": (1, 1, pytest.approx(0.0006)),
            "work-claude": (1, 1, pytest.approx(0.00105)),
            "local": (1, 1, 0.0),
            "default": (1, 1, pytest.approx(0.0015)),
        }
        # The estimate prices every member at its own provider: under a cap it would pass, refused below it.
        capped = service.prepare(FusionArgs(prompt="q", max_completion_tokens=1000), depth=0)
        refused = await service.run(capped, max_cost_usd=0.01)
        assert refused.failure_reason == "cost_limit" and "estimated worst-case cost $0.0" in (refused.error or "")
    # Without a price for a vendor (no catalogue, none configured) the cost cannot be estimated.
    assert (await fuse(three.settings(), analysis_models=PANEL[:1])).status == "ok"


async def test_the_cache_serves_a_member_only_from_the_same_provider_and_account(three: Three, tmp_path: Path) -> None:
    home = {"FUSION_HOME": str(tmp_path), "FUSION_CACHE": "on"}
    first = await fuse(three.settings(**home))
    assert first.status == "ok" and not first.cached
    again = await fuse(three.settings(**home))
    assert again.cached and len(three.local.requests) == 1  # the same providers: answered from the cache
    other = ProviderSim().start()
    try:
        moved = await fuse(three.settings(three.providers(local={"base_url": other.base_url}), **home))
        assert not moved.cached and [r.model for r in other.requests] == ["qwen3:8b"]  # another server: a new run
    finally:
        other.stop()
    three.a.valid_key = "sk-proj-another-account-0123456789abcdef"
    before = len(three.a.requests)
    rekeyed = await fuse(three.settings(**home, OPENAI_API_KEY=three.a.valid_key))
    assert not rekeyed.cached and len(three.a.requests) == before + 1  # another account there: a new run


async def test_model_id_spellings_never_clash(three: Three) -> None:
    settings = three.settings(
        three.providers(**{"work-openai": {"models": ["*gpt*"]}, "work-claude": {"models": ["*gpt-5*"]}})
    )
    route = settings.route
    assert route("openai/gpt-5:free")[0].name == "work-openai"  # a pattern claims it (the first in the file)
    assert route("work-claude:gpt-5")[0].name == "work-claude"  # the explicit prefix wins over any pattern
    assert route("work-claude:gpt-5")[1] == "gpt-5"
    plain = three.settings()
    assert plain.route("openai/gpt-5:free") == (plain.default_endpoint, "openai/gpt-5:free")  # vendor/model:tag
    assert plain.route("~anthropic/claude-opus-latest")[0].name == "default"
    assert plain.route("local:qwen3:8b")[1] == "qwen3:8b"  # the prefix goes; the Ollama tag's colon stays
    assert plain.route("qwen3:8b")[0].name == "local"  # by pattern
    assert plain.route("default:llama3:8b") == (plain.default_endpoint, "llama3:8b")
    with pytest.raises(ValueError) as unknown:
        plain.route("llama3:8b")  # an Ollama id no pattern claims: it could be a misspelt provider
    assert "names no configured provider 'llama3'" in str(unknown.value)
    assert "(the providers are work-openai, work-claude, local, default;" in str(unknown.value)


async def test_an_unknown_provider_prefix_is_refused_naming_the_configured_ones(three: Three) -> None:
    with pytest.raises(ConfigError) as at_start:
        three.settings(FUSION_ANALYSIS_MODELS="wrok-openai:gpt-5,qwen3:8b")
    assert str(at_start.value).startswith("invalid setting FUSION_ANALYSIS_MODELS: 'wrok-openai:gpt-5' names no ")
    assert "the providers are work-openai, work-claude, local, default" in str(at_start.value)
    async with FusionService.open(three.settings()) as service:
        with pytest.raises(FusionRefused) as refused:
            service.prepare(FusionArgs(prompt="q", model="wrok:gpt-5"), depth=0)
    assert refused.value.argument == "model" and "names no configured provider 'wrok'" in refused.value.message
    assert not three.a.requests and not three.default.requests


async def test_a_lens_panel_works_on_any_provider(three: Three) -> None:
    panel = ["local:qwen3:8b#skeptic", "qwen3:8b#pragmatist", "work-openai:gpt-5#researcher"]
    result = await fuse(three.settings(), analysis_models=panel)
    assert result.status == "ok" and [r.provider for r in result.responses] == ["local", "local", "work-openai"]
    systems = sorted(r.body["messages"][0]["content"] for r in three.local.requests)
    assert [r.model for r in three.local.requests] == ["qwen3:8b", "qwen3:8b"]
    assert "Lens for this answer (pragmatist)" in systems[0] and "Lens for this answer (skeptic)" in systems[1]


async def test_a_key_a_model_echoes_is_redacted_whatever_provider_it_came_from(three: Three) -> None:
    three.a.script("gpt-5", Reply(echo_auth=True))
    three.b.script("claude-sonnet-4-5", Reply(status=400, echo_auth=True))
    result = await fuse(three.settings())
    dumped = result.model_dump_json()
    assert "the request said: Bearer [redacted]" in dumped and "you sent Bearer [redacted]" in dumped
    assert KEY_A not in dumped and KEY_B not in dumped


def test_a_template_is_one_line_and_a_bad_entry_names_the_provider(tmp_path: Path) -> None:
    config = tmp_path / "fusion.toml"
    config.write_text('[providers.work-openai]\ntemplate = "openai"\n\n[providers.local]\ntemplate = "ollama"\n')
    settings = load_settings(environ={"OPENAI_API_KEY": KEY_A}, config_path=config)
    openai, local = settings.providers["work-openai"], settings.providers["local"]
    assert (openai.base_url, openai.api_key_env, openai.attribution) == (
        "https://api.openai.com/v1",
        "OPENAI_API_KEY",
        False,
    )
    assert openai.api_key is not None and openai.api_key.get_secret_value() == KEY_A
    assert (local.base_url, local.api_key, local.price("anything:7b")) == (
        "http://localhost:11434/v1",
        None,
        (0.0, 0.0),
    )
    assert KEY_A in settings.secrets
    without = load_settings(environ={}, config_path=config)
    assert without.providers["work-openai"].key_missing  # reported by doctor; not a start-up failure
    for body, words in (
        ('[providers.x]\ntemplate = "azure"\n', "provider 'x': unknown template 'azure' (one of openrouter, openai"),
        ("[providers.x]\nmodels = []\n", "provider 'x' needs a base_url, an http:// or https:// URL (or a template)"),
        ('[providers.default]\ntemplate = "openai"\n', "bad provider name 'default'"),
        ('[providers.x]\ntemplate = "openai"\napi_key = "sk-..."\n', "the key of provider 'x' is a placeholder"),
        ('[providers.x]\ntemplate = "openai"\nbase = "http://a"\n', "provider 'x' has the unknown key 'base'"),
        ('[providers.x]\ntemplate = "vllm"\nprices = { "*" = [1] }\n', "provider 'x': the price of '*' must be"),
    ):
        config.write_text(body)
        with pytest.raises(ConfigError) as bad:
            load_settings(environ={}, config_path=config)
        assert f"invalid setting FUSION_PROVIDERS (config file {config}, key 'providers'): {words}" in str(bad.value)
    with pytest.raises(ConfigError) as not_json:
        load_settings(environ={"FUSION_PROVIDERS": "{local: ollama}"})
    assert str(not_json.value) == "invalid setting FUSION_PROVIDERS: not a JSON object"


def test_doctor_reports_each_provider_and_each_model_at_its_own(three: Three) -> None:
    three.a.catalogue = [priced("gpt-5"), priced("gpt-5-mini")]
    three.b.valid_key = "sk-ant-another-account-key-0123456789"
    three.local.stop()
    panel = "work-openai:gpt-5,work-openai:gtp-5-mini,work-claude:claude-sonnet-4-5,qwen3:8b"
    env = three.env(FUSION_ANALYSIS_MODELS=panel, WORK_CLAUDE_KEY=KEY_B)
    out = subprocess.run([console_script(), "doctor"], env=child_env(**env), capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stdout
    lines = out.stdout.splitlines()
    assert f"ok   provider work-openai: {three.a.base_url} answers (HTTP 200 for /models), key sent" in lines
    assert (
        f"FAIL provider work-claude: {three.b.base_url}: the key was rejected (HTTP 401) -> fix: check WORK_CLAUDE_KEY"
    ) in lines
    port = three.local.port
    assert any(
        line.startswith(
            f"FAIL provider local: cannot reach {three.local.base_url}: connection refused: nothing "
            f"listens on 127.0.0.1:{port}"
        )
        for line in lines
    ), out.stdout
    assert "ok   model work-openai:gpt-5: known (panel, provider work-openai)" in lines
    assert (
        "FAIL model work-openai:gtp-5-mini: not in the catalogue of provider 'work-openai' (panel) -> fix: did you "
        "mean work-openai:gpt-5-mini? (FUSION_ANALYSIS_MODELS)"
    ) in lines
    assert any(line.startswith("FAIL model qwen3:8b: not checked (panel, provider local): ") for line in lines)
    assert KEY_A not in out.stdout + out.stderr and KEY_B not in out.stdout + out.stderr
    missing = {k: v for k, v in env.items() if k != "OPENAI_API_KEY"}
    unset = subprocess.run(
        [console_script(), "doctor"], env=child_env(**missing), capture_output=True, text=True, timeout=60
    )
    assert (
        "FAIL provider work-openai: no key: OPENAI_API_KEY is not set -> fix: set OPENAI_API_KEY in the server's "
        "environment (or the entry's api_key_env)"
    ) in unset.stdout.splitlines()


def test_host_config_carries_the_providers_and_their_keys_as_references(three: Three, tmp_path: Path) -> None:
    from tests.cli.test_host_config import entry_of, env_of, host_config

    config = tmp_path / "fusion.toml"
    config.write_text(
        '[providers.work-openai]\ntemplate = "openai"\n\n'
        '[providers.work-claude]\ntemplate = "anthropic"\napi_key_env = "WORK_CLAUDE_KEY"\n\n'
        '[providers.local]\ntemplate = "ollama"\n'
    )
    keys = {"OPENROUTER_API_KEY": API_KEY, "OPENAI_API_KEY": KEY_A, "WORK_CLAUDE_KEY": KEY_B}
    out = host_config("claude-code", "--config", str(config), **keys)
    assert out.returncode == 0, out.stderr
    assert env_of("claude-code", entry_of("claude-code", out.stdout)) == {
        "OPENROUTER_API_KEY": "${OPENROUTER_API_KEY}",
        "OPENAI_API_KEY": "${OPENAI_API_KEY}",
        "WORK_CLAUDE_KEY": "${WORK_CLAUDE_KEY}",
        "FUSION_CONFIG": str(config),
    }
    assert all(key not in out.stdout + out.stderr for key in keys.values())
    # Providers set in the environment travel too: in clear when they hold no key, as a reference when they do.
    providers = {"local": {"template": "ollama"}}
    plain = host_config("opencode", FUSION_PROVIDERS=json.dumps(providers), OPENROUTER_API_KEY=API_KEY)
    assert env_of("opencode", entry_of("opencode", plain.stdout))["FUSION_PROVIDERS"] == json.dumps(providers)
    keyed = {"gw": {"base_url": "https://gateway.example/v1", "api_key": KEY_A}}
    hidden = host_config("opencode", FUSION_PROVIDERS=json.dumps(keyed), OPENROUTER_API_KEY=API_KEY)
    assert env_of("opencode", entry_of("opencode", hidden.stdout))["FUSION_PROVIDERS"] == "{env:FUSION_PROVIDERS}"
    assert KEY_A not in hidden.stdout + hidden.stderr


async def test_an_unknown_id_is_refused_naming_its_providers_catalogue_with_ids_spelt_as_called(three: Three) -> None:
    three.a.catalogue = [priced("gpt-5"), priced("gpt-5-mini")]
    result = await fuse(three.settings(), analysis_models=["work-openai:gpt-5-mnii", "qwen3:8b"])
    assert (result.failure_reason, result.error) == (
        "invalid_model",
        "unknown model id 'work-openai:gpt-5-mnii': the catalogue of provider 'work-openai' does not list it; "
        "closest known ids: work-openai:gpt-5-mini",
    )
    assert not three.a.requests_for("gpt-5-mnii") and not three.local.requests  # refused before anything was sent


async def test_openrouters_server_tools_go_to_openrouter_members_only(three: Three) -> None:
    """``FUSION_WEB_TOOLS=openrouter``: the server tools exist on OpenRouter; a member elsewhere answers without."""
    settings = three.settings(
        three.providers(**{"or": {"template": "openrouter", "base_url": "https://openrouter.ai/api/v1"}}),
        FUSION_WEB_TOOLS="openrouter",
    )
    assert settings.route("or:openai/gpt-5")[0].is_openrouter
    async with FusionService.open(settings) as service:
        request = service.prepare(FusionArgs(prompt="q", analysis_models=[*PANEL, "or:openai/gpt-5"]), depth=0)
    # The configured providers that are not OpenRouter answer without; OpenRouter's and the default provider's
    # members keep what FUSION_WEB_TOOLS says (the default may be a gateway that runs the server tools).
    assert set(request.no_tools) == set(PANEL)
    result = await fuse(three.settings(FUSION_WEB_TOOLS="openrouter"))
    assert result.status == "ok"
    for sim in (three.a, three.b, three.local):
        assert all("tools" not in r.body for r in sim.requests)
    (judge,) = [r.body for r in three.default.requests if "response_format" in r.body]
    assert [t["type"] for t in judge["tools"]] == ["openrouter:web_search", "openrouter:web_fetch"]


async def test_a_lent_key_pays_for_the_default_provider_only(three: Three) -> None:
    from pydantic import SecretStr

    lent = SecretStr("sk-or-v1-lent-key-of-a-caller-0123456789")
    lending = {"FUSION_PASS_THROUGH_KEY": "true", "FUSION_PASS_THROUGH_KEY_PREFIX": "sk-or-"}
    settings = three.settings(**lending)
    async with FusionService.open(settings) as service:
        with pytest.raises(FusionRefused) as refused:
            service.prepare(FusionArgs(prompt="q"), depth=0, api_key=lent)
        own = service.prepare(FusionArgs(prompt="q", analysis_models=[ANALYST, "openai/gpt-5"]), depth=0, api_key=lent)
    assert refused.value.argument == "analysis_models"
    assert refused.value.message == (
        "invalid argument analysis_models: must be 1-8 unique panel entries, each a model id or model#lens (a model "
        "under a lens) (work-openai:gpt-5 is on provider 'work-openai', which this server pays for; a lent key pays "
        "for the default provider only)"
    )
    assert own.analysis_models == (ANALYST, "openai/gpt-5")
    # Lending the server's own tools and files does not lend its providers: nothing caps a lent caller.
    lends_more = three.settings(**lending, FUSION_PASS_THROUGH_SERVER_TOOLS="true")
    async with FusionService.open(lends_more) as service:
        with pytest.raises(FusionRefused) as still:
            service.prepare(FusionArgs(prompt="q"), depth=0, api_key=lent)
    assert still.value.message == refused.value.message and three.a.requests == []


def test_a_lent_key_cannot_make_a_writer_on_a_configured_provider_spend_the_servers_key(three: Three) -> None:
    """Chat and Responses: a writer id on a configured provider is a 400 naming the field for a caller lending a
    key (any string with the prefix: the lent key is never sent there to be checked), and nothing goes out."""
    import httpx2

    from tests import servers

    env = three.env(
        FUSION_PASS_THROUGH_KEY="true", FUSION_PASS_THROUGH_KEY_PREFIX="sk-or-", FUSION_PASS_THROUGH_SERVER_TOOLS="true"
    )
    headers = {"Authorization": "Bearer sk-or-made-up-0123456789abcdef"}
    with servers.in_process(env) as base:
        chat = httpx2.post(
            f"{base}/v1/chat/completions",
            json={"model": "work-openai:gpt-5", "messages": [{"role": "user", "content": "hi"}]},
            headers=headers,
            timeout=30,
        )
        responses = httpx2.post(
            f"{base}/v1/responses", json={"model": "work-openai:gpt-5", "input": "hi"}, headers=headers, timeout=30
        )
    for answer in (chat, responses):
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["param"] == "model"
        assert (
            "is on provider 'work-openai', which this server pays for; a lent key pays for the default"
            in error["message"]
        )
    assert three.a.requests == [] and three.default.requests == []


def test_the_models_endpoint_lists_each_providers_models_as_a_call_names_them(three: Three) -> None:
    import httpx2

    from tests import servers

    three.default.catalogue = [priced("openai/gpt-5")]
    three.a.catalogue = [priced("gpt-5")]
    three.local.catalogue = [priced("qwen3:8b")]
    with servers.in_process(three.env()) as base:
        listed = httpx2.get(f"{base}/v1/models", timeout=30).json()["data"]
    ids = {m["id"]: m["owned_by"] for m in listed}
    assert ids["openai/gpt-5"] == "openai"
    assert (ids["work-openai:gpt-5"], ids["local:qwen3:8b"]) == ("work-openai", "local")
    assert not any(i.startswith("work-claude:") for i in ids)  # it lists none


def test_a_chat_writer_naming_no_provider_is_a_400_naming_the_field(three: Three) -> None:
    from tests import servers
    from tests.openai_api.test_chat import USER, post

    with servers.in_process(three.env()) as base:
        reply = post(base, {"model": "wrok:gpt-5", "messages": [USER], "plugins": [{"id": "fusion"}]})
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["param"] == "model" and "names no configured provider 'wrok'" in error["message"]
    assert not three.default.requests and not three.a.requests


async def test_retry_after_is_honoured_per_provider_and_the_others_do_not_wait_for_it(three: Three) -> None:
    three.a.script("gpt-5", Reply(status=429, retry_after="0", error_message="slow down"), Reply())
    result = await fuse(three.settings())
    assert result.status == "ok" and not result.failed_models
    assert [r.model for r in three.a.requests] == ["gpt-5", "gpt-5"]  # retried once, at its own provider
    assert len(three.b.requests) == len(three.local.requests) == 1


async def test_tool_support_is_read_from_each_providers_own_catalogue(three: Three) -> None:
    three.a.catalogue = [priced("gpt-5", tools=False)]
    three.local.catalogue = [priced("qwen3:8b", tools=True)]
    result = await fuse(three.settings(FUSION_WEB_TOOLS="local"))
    assert result.status == "ok"
    assert "tools" not in three.a.requests[0].body  # its catalogue says it cannot call tools
    assert [t["function"]["name"] for t in three.local.requests[0].body["tools"]] == ["web_search", "web_fetch"]
    assert "tools" in three.b.requests[0].body  # no catalogue: nothing said, the tools are offered


async def test_the_analyst_may_be_on_any_provider(three: Three) -> None:
    result = await fuse(three.settings(), model="local:qwen3:14b", analysis_models=PANEL[:2])
    assert result.status == "ok" and result.analysis is not None
    assert result.analyst_model == "local:qwen3:14b"
    (judge,) = three.local.requests
    assert judge.model == "qwen3:14b" and "response_format" in judge.body and judge.body["temperature"] == 0
    assert {u.model: u.provider for u in result.usage.models}["local:qwen3:14b"] == "local"
    assert not three.default.requests


async def test_no_key_reaches_the_served_output_the_log_or_the_store(three: Three, tmp_path: Path) -> None:
    """Over MCP on HTTP, with the providers echoing the key they were sent (in an answer and in an error)."""
    from fusion_mcp.store import open_store
    from tests import servers
    from tests.helpers import TOOL, dump, over_http, structured, text

    three.a.script("gpt-5", Reply(echo_auth=True))
    three.b.script("claude-sonnet-4-5", Reply(status=401, echo_auth=True))
    env = three.env(FUSION_HOME=str(tmp_path), FUSION_LOG_LEVEL="DEBUG")
    with servers.http_server(env) as server:
        async with over_http(server.base) as client:
            result = await client.call_tool(TOOL, {"prompt": "q"})
        seen = dump(result)
        run_id = structured(result)["run_id"]
        logged = server.stderr
    assert "the request said: Bearer [redacted]" in seen and "you sent Bearer [redacted]" in seen
    # Each answer says which provider served it, in the text block as in the structured result.
    assert "\n## work-openai:gpt-5 (via work-openai, " in text(result)
    assert "\n## qwen3:8b (via local, " in text(result)
    store = open_store(load_settings(environ=env))
    await store.open()
    try:
        record = await store.run(run_id)
    finally:
        await store.aclose()
    stored = json.dumps(record)
    assert "Bearer [redacted]" in stored  # the transcripts were recorded, redacted
    for key in (KEY_A, KEY_B, API_KEY):
        assert key not in seen and key not in logged and key not in stored


async def test_extra_headers_go_to_their_own_provider_only_and_a_key_in_one_is_a_secret(three: Three) -> None:
    header_key = "gw-HEADER-KEY-0123456789abcdef-do-not-leak"
    providers = three.providers(local={"headers": {"X-Api-Key": header_key, "X-Team": "research"}})
    three.local.script("qwen3:8b", Reply(status=400, echo_auth=True, error_message=f"bad header {header_key}"))
    settings = three.settings(providers)
    assert header_key in settings.secrets and "research" not in settings.secrets
    assert header_key not in repr(settings) and KEY_A not in repr(settings)
    result = await fuse(settings)
    (local,) = three.local.requests
    assert (local.headers["x-api-key"], local.headers["x-team"]) == (header_key, "research")
    for sim in (three.a, three.b, three.default):
        assert all("x-api-key" not in r.headers and "x-team" not in r.headers for r in sim.requests)
    (failed,) = result.failed_models
    assert failed.error == "provider 'local': HTTP 400: bad header [redacted] (you sent None)"
    assert header_key not in result.model_dump_json()


async def test_a_provider_keyed_by_a_header_has_its_catalogue_read_with_it(three: Three) -> None:
    """An Azure-style provider (its key in ``api-key``, no bearer): the catalogue read carries the header, so an
    id it does not serve is refused before any request is paid for."""
    header_key = "azure-KEY-0123456789abcdef-do-not-leak"
    providers = three.providers(local={"headers": {"api-key": header_key}})
    three.local.catalogue = [priced("qwen3:8b")]
    settings = three.settings(providers)
    async with FusionService.open(settings) as service:
        request = service.prepare(FusionArgs(prompt="q", analysis_models=["local:qwen3:9b"]), depth=0)
        result = await service.run(request)
    assert result.failure_reason == "invalid_model" and "qwen3:9b" in (result.error or "")
    assert three.local.catalogue_headers and all(h.get("api-key") == header_key for h in three.local.catalogue_headers)
    assert three.local.requests == []


@pytest.mark.parametrize("where", ["provider", "default"])
async def test_a_password_in_a_base_url_is_a_secret(sim: ProviderSim, where: str) -> None:
    """A gateway behind basic auth takes ``https://user:password@gateway/v1``; an error quoting the URL (nothing
    listens there) must not hand the password to the caller or the log (``ask -v``, the log's redaction being
    the process's), on a configured provider or the default."""
    secret = "GatewayPassw0rd-do-not-leak"
    url = f"http://gwuser:{secret}@127.0.0.1:9/v1"
    if where == "provider":
        env = sim_env(sim, FUSION_PROVIDERS=json.dumps({"gw": {"base_url": url}}), FUSION_WEB_TOOLS="off")
        panel = ["gw:m1", "acme/m2"]
    else:
        env = sim_env(sim, OPENROUTER_BASE_URL=url, FUSION_WEB_TOOLS="off")
        panel = ["acme/m1", "acme/m2"]
    settings = load_settings(environ=env)
    assert secret in settings.secrets
    async with FusionService.open(settings) as service:
        request = service.prepare(FusionArgs(prompt="q", analysis_models=panel, model=ANALYST), depth=0)
        result = await service.run(request)
    assert result.failed_models and secret not in result.model_dump_json()
    command = [console_script(), "ask", "q", "--models", ",".join(panel), "--model", ANALYST, "-v", "--json"]
    done = await anyio.run_process(command, env=child_env(**env), check=False)
    out, err = done.stdout.decode(), done.stderr.decode()
    assert "could not connect" in out + err and "[redacted]" in out + err and secret not in out + err
