"""Settings: defaults, environment, TOML file, precedence, and one-line errors naming the setting."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fusion_mcp.config import QUALITY_PANEL, SETTING_NAMES, SHORT_NAMES, ConfigError, is_secret, load_settings
from tests.conftest import REPO

EXAMPLE = REPO / "fusion-mcp.example.toml"


def test_defaults() -> None:
    s = load_settings(environ={})
    assert s.api_key is None
    assert s.base_url == "https://openrouter.ai/api/v1" and s.is_openrouter
    assert s.analysis_models == QUALITY_PANEL
    assert s.model == "~anthropic/claude-opus-latest"
    assert (s.max_tool_calls, s.max_completion_tokens, s.enabled, s.temperature, s.depth) == (8, 16000, True, None, 0)


def test_environment_values_are_parsed() -> None:
    s = load_settings(
        environ={
            "OPENROUTER_API_KEY": "sk-x",
            "OPENROUTER_BASE_URL": "http://localhost:11434/v1/",
            "FUSION_ANALYSIS_MODELS": " llama3 , qwen2.5 ",
            "FUSION_MODEL": "llama3",
            "FUSION_MAX_TOOL_CALLS": "16",
            "FUSION_MAX_COMPLETION_TOKENS": "2048",
            "FUSION_ENABLED": "false",
            "FUSION_TEMPERATURE": "0.3",
            "FUSION_TEMPERATURE_UNRELATED": "ignored",
        }
    )
    assert s.api_key is not None and s.api_key.get_secret_value() == "sk-x"
    assert s.base_url == "http://localhost:11434/v1" and not s.is_openrouter
    assert s.analysis_models == ("llama3", "qwen2.5")
    assert (s.max_tool_calls, s.max_completion_tokens, s.enabled, s.temperature) == (16, 2048, False, 0.3)


def test_empty_variables_count_as_unset() -> None:
    s = load_settings(environ={"OPENROUTER_API_KEY": "", "FUSION_TEMPERATURE": " "})
    assert s.api_key is None and s.temperature is None


def test_toml_file_with_environment_winning(tmp_path: Path) -> None:
    path = tmp_path / "fusion.toml"
    path.write_text('fusion_model = "a/judge"\nFUSION_ANALYSIS_MODELS = ["a/x", "b/y"]\nfusion_max_tool_calls = 3\n')
    s = load_settings(environ={"FUSION_MAX_TOOL_CALLS": "5"}, config_path=path)
    assert s.model == "a/judge" and s.analysis_models == ("a/x", "b/y") and s.max_tool_calls == 5
    assert load_settings(environ={"FUSION_CONFIG": str(path)}).max_tool_calls == 3


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"FUSION_MAX_TOOL_CALLS": "0"},
            "invalid setting FUSION_MAX_TOOL_CALLS='0': must be a whole number from 1 to 16",
        ),
        ({"FUSION_MAX_TOOL_CALLS": "17"}, "invalid setting FUSION_MAX_TOOL_CALLS='17'"),
        ({"FUSION_MAX_TOOL_CALLS": "eight"}, "invalid setting FUSION_MAX_TOOL_CALLS='eight'"),
        (
            {"FUSION_ANALYSIS_MODELS": "a,b,c,d,e,f,g,h,i"},
            "invalid setting FUSION_ANALYSIS_MODELS='a,b,c,d,e,f,g,h,i': must be 1-8 unique panel entries, each a "
            "model id or model#lens (a model under a lens), comma-separated",
        ),
        ({"FUSION_ANALYSIS_MODELS": "a,a"}, "invalid setting FUSION_ANALYSIS_MODELS='a,a'"),
        ({"FUSION_ANALYSIS_MODELS": "a,,b"}, "invalid setting FUSION_ANALYSIS_MODELS='a,,b'"),
        ({"FUSION_MODEL": "two words"}, "invalid setting FUSION_MODEL='two words': must be one model id"),
        ({"FUSION_MAX_COMPLETION_TOKENS": "-1"}, "invalid setting FUSION_MAX_COMPLETION_TOKENS='-1'"),
        ({"FUSION_ENABLED": "maybe"}, "invalid setting FUSION_ENABLED='maybe': must be true or false"),
        ({"FUSION_TEMPERATURE": "3"}, "invalid setting FUSION_TEMPERATURE='3': must be a number from 0 to 2"),
        ({"FUSION_TEMPERATURE": "nan"}, "invalid setting FUSION_TEMPERATURE='nan'"),
        ({"OPENROUTER_BASE_URL": "openrouter.ai"}, "invalid setting OPENROUTER_BASE_URL='openrouter.ai'"),
        ({"FUSION_DEPTH": "-1"}, "invalid setting FUSION_DEPTH='-1'"),
        ({"FUSION_LOG_LEVEL": "loud"}, "invalid setting FUSION_LOG_LEVEL='loud'"),
    ],
)
def test_bad_values_name_the_setting_and_rule(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ=environ)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def file_error(path: Path, content: str) -> str:
    """The one-line error loading a config file of ``content`` gives."""
    path.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_settings(environ={}, config_path=path)
    return str(info.value)


def test_secret_values_are_never_echoed(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    assert file_error(path, 'openrouter_api_key = ["sk-secret-in-a-list"]\n') == (
        f"invalid setting OPENROUTER_API_KEY (config file {path}, key 'openrouter_api_key'): "
        "must be a non-empty API key (printable ASCII)"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not = [toml", "is not valid TOML"),
        ('fusion_modle = "x"', "unknown setting 'fusion_modle'; did you mean 'fusion_model'?"),
        ("[fusion]\nmax_tool_call = 3", "unknown setting 'fusion.max_tool_call'; did you mean 'max_tool_calls'?"),
        ("[fusion]\nnonsense = 3", r"unknown setting 'fusion.nonsense' \(fusion-mcp.example.toml lists every"),
        ('model = "a/x"\n[fusion]\nFUSION_MODEL = "b/y"', "FUSION_MODEL is set twice, as 'model' and 'fusion.FUSION"),
        ('model = "a/x"\nfusion_model = "b/y"', "FUSION_MODEL is set twice, as 'model' and 'fusion_model'"),
    ],
)
def test_bad_config_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_settings(environ={}, config_path=path)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(environ={"FUSION_CONFIG": str(tmp_path / "nope.toml")})


def test_short_lowercase_keys_and_a_fusion_table(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        'analysis_models = ["a/x", "b/y"]\nmodel = "a/judge"\n'
        '[fusion]\nmax_tool_calls = 3\nbase_url = "http://localhost:11434/v1"\nCACHE = "off"\n'
        '[fusion.http_tokens]\nalice = "alice-token-0123456789"\n'
    )
    s = load_settings(environ={}, config_path=path)
    assert (s.analysis_models, s.model, s.max_tool_calls) == (("a/x", "b/y"), "a/judge", 3)
    assert (
        s.base_url == "http://localhost:11434/v1"
        and s.cache is False
        and s.principals == {"alice-token-0123456789": "alice"}
    )


def test_a_bad_value_from_a_file_names_the_file_and_the_key(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    assert file_error(path, "[fusion]\nmax_tool_calls = 0\n") == (
        f"invalid setting FUSION_MAX_TOOL_CALLS='0' (config file {path}, key 'fusion.max_tool_calls'): "
        "must be a whole number from 1 to 16"
    )
    # The same value from the environment overrides the file, and is named as the environment's.
    with pytest.raises(ConfigError) as env_info:
        load_settings(environ={"FUSION_MAX_TOOL_CALLS": "99"}, config_path=path)
    assert str(env_info.value).startswith("invalid setting FUSION_MAX_TOOL_CALLS='99': must be")


@pytest.mark.parametrize(
    "key", ["sk-or-v1-...", "sk-or-v1-your-key-here", "<your key>", "${OPENROUTER_API_KEY}", "sk-or-v1-", "xxxx"]
)
def test_an_obvious_placeholder_key_is_refused_naming_the_setting(key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"OPENROUTER_API_KEY": key})
    assert str(info.value) == (
        "invalid setting OPENROUTER_API_KEY: this is a placeholder from an example, not a real secret "
        "(create one at https://openrouter.ai/keys, or set OPENROUTER_BASE_URL=http://localhost:11434/v1 for Ollama)"
    )
    with pytest.raises(ConfigError, match=r"^invalid setting FUSION_HTTP_TOKEN: this is a placeholder"):
        load_settings(environ={"FUSION_HTTP_TOKEN": "<a long token of yours here>"})
    assert load_settings(environ={"OPENROUTER_API_KEY": "sk-or-v1-" + "0a1b" * 16}).api_key is not None


def example_lines() -> dict[str, str]:
    """``key -> value`` of every ``# key = value`` line of the example file."""
    import re

    found: dict[str, str] = {}
    for line in EXAMPLE.read_text().splitlines():
        match = re.fullmatch(r"# ([a-z_]+) = (.+)", line)
        if match and match[1] in SHORT_NAMES:
            assert match[1] not in found, f"{match[1]} is in the example twice"
            found[match[1]] = match[2]
    return found


def test_the_example_file_lists_every_setting_with_its_default(tmp_path: Path) -> None:
    """Kept in step with the settings: a setting added without its line here fails this test."""
    lines = example_lines()
    assert set(lines) == set(SHORT_NAMES), f"missing: {set(SHORT_NAMES) - set(lines)}"
    defaults = load_settings(environ={})
    assert load_settings(environ={}, config_path=EXAMPLE) == defaults  # all commented out: the defaults
    for key, value in lines.items():
        name = SHORT_NAMES[key]
        field = next(f for f in type(defaults).model_fields.values() if f.alias == name)
        try:
            one = tmp_path / f"{key}.toml"
            one.write_text(f"[fusion]\n{key} = {value}\n")
            loaded = load_settings(environ={}, config_path=one)
        except ConfigError as exc:
            # Secrets are shown as placeholders, which is exactly what must never be used.
            assert is_secret(name) and "placeholder" in str(exc), f"{key} = {value}: {exc}"
            continue
        if field.default not in (None, {}, ()):
            attr = next(n for n, f in type(defaults).model_fields.items() if f.alias == name)
            assert getattr(loaded, attr) == getattr(defaults, attr), f"{key}: the example shows another default"


def test_home_in_a_file_may_start_with_a_tilde(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('home = "~/fusion-data"\n')
    assert load_settings(environ={}, config_path=path).home == Path.home() / "fusion-data"


DB_RULE = "must be a postgresql:// (or postgres://) URL, or empty for the SQLite file in FUSION_HOME"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"FUSION_DATABASE_URL": "mysql://fusion:s3cret-password@db/fusion"},
            f"invalid setting FUSION_DATABASE_URL: {DB_RULE}",
        ),
        (
            {"FUSION_DATABASE_URL": "postgresql://fusion:s3cret-password@db:port/fusion"},
            f"invalid setting FUSION_DATABASE_URL: {DB_RULE}",
        ),
        (
            {"FUSION_DATABASE_URL": "postgresql://fusion:<password>@db/fusion"},
            "invalid setting FUSION_DATABASE_URL: this is a placeholder from an example, not a real secret",
        ),
        (
            {"FUSION_DATABASE_POOL": "0"},
            "invalid setting FUSION_DATABASE_POOL='0': must be a whole number of connections from 1 to 100",
        ),
        (
            {"FUSION_PRINCIPAL_MAX_COST_USD_PER_DAY": "0"},
            "invalid setting FUSION_PRINCIPAL_MAX_COST_USD_PER_DAY='0': must be a number of US dollars > 0, or "
            "empty for no cap",
        ),
        (
            {"FUSION_PRINCIPAL_MAX_COST_USD_PER_DAY": "inf"},
            "invalid setting FUSION_PRINCIPAL_MAX_COST_USD_PER_DAY='inf': must be a number of US dollars > 0, or "
            "empty for no cap",
        ),
        (
            {"FUSION_MAX_COST_USD": "inf"},
            "invalid setting FUSION_MAX_COST_USD='inf': must be a number of US dollars > 0, or empty for no cap",
        ),
        (
            {"FUSION_USAGE_MAX_DAYS": "0.5"},
            "invalid setting FUSION_USAGE_MAX_DAYS='0.5': must be a number of days from 1 to 3,650",
        ),
    ],
)
def test_the_store_settings_name_their_rules_and_never_echo_the_url(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ=environ)
    assert str(info.value) == message
    assert "s3cret" not in str(info.value)


def test_the_database_password_is_a_secret_of_its_own() -> None:
    url = "postgresql://fusion:p%40ss-word-1234@db.internal:5432/fusion?sslmode=require"
    s = load_settings(environ={"FUSION_DATABASE_URL": url})
    assert s.database_url is not None and s.database_url.get_secret_value() == url
    assert set(s.secrets) >= {url, "p%40ss-word-1234", "p@ss-word-1234"}
    assert "p%40ss" not in repr(s) and s.short_secrets == ()
    short = load_settings(environ={"FUSION_DATABASE_URL": "postgres://fusion:short@db/fusion"})
    assert short.short_secrets == ("the password in FUSION_DATABASE_URL",)
    assert load_settings(environ={"FUSION_DATABASE_URL": "postgresql:///fusion?host=/run/postgresql"}).secrets == (
        "postgresql:///fusion?host=/run/postgresql",
    )


def test_a_database_url_without_the_postgres_extra_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if the [postgres] extra were not installed
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"FUSION_DATABASE_URL": "postgresql://fusion:a-long-password@db/fusion"})
    assert str(info.value) == (
        "FUSION_DATABASE_URL is set, but PostgreSQL support is not installed: pip install 'fusion-panel-mcp[postgres]'"
    )
    assert load_settings(environ={}).database_url is None  # without the URL nothing needs it


def test_unknown_fusion_and_misspelt_openrouter_variables_are_named_with_the_setting_meant() -> None:
    from fusion_mcp.config import unknown_variables

    ignored = "is not a setting of fusion-mcp and is ignored"
    assert unknown_variables(
        {
            "FUSION_ANALYSYS_MODELS": "a/x",
            "FUSION_API_KEY": "k",
            "FUSION_FROBNICATE": "1",
            "OPENROUTER_APIKEY": "k",
            # Settings, ours, and other programs' variables: nothing to say.
            "FUSION_MODEL": "a/x",
            "BRAVE_API_KEY": "k",
            "FUSION_CONFIG": "f.toml",
            "FUSION_TEST_DATABASE_URL": "postgresql://",
            "FUSION_TEST_ANYTHING": "1",
            "FUSION_SLOW": "1",
            "FUSION_INSPECTOR": "/bin/x",
            "OPENROUTER_MODEL": "x",
            "OPENROUTER_API_BASE": "x",
            "PATH": "/bin",
        }
    ) == [
        f"environment variable FUSION_ANALYSYS_MODELS {ignored}; did you mean 'FUSION_ANALYSIS_MODELS'?",
        f"environment variable FUSION_API_KEY {ignored}; did you mean 'OPENROUTER_API_KEY'?",
        f"environment variable FUSION_FROBNICATE {ignored} (fusion-mcp.example.toml lists every setting)",
        f"environment variable OPENROUTER_APIKEY {ignored}; did you mean 'OPENROUTER_API_KEY'?",
    ]


# Names that look like ours and are not variables: misspellings the warning tests use on purpose, and Python
# constants (the chat writer's function tool, the simulator's).
NOT_VARIABLES = {
    "FUSION_ANALYSYS_MODELS",
    "FUSION_API_KEY",
    "FUSION_FROBNICATE",
    "FUSION_TEMPERATURE_UNRELATED",
    "FUSION_FUNCTION",
    "FUSION_TOOL",
}


def test_every_fusion_variable_the_project_names_is_a_setting_or_known_to_the_warning() -> None:
    """A variable CI, the tests or the docs set that the unknown-variable warning does not know would be warned
    about on every start (FUSION_CLAUDE was, until it was added)."""
    from fusion_mcp.config.settings import OUR_VARIABLES

    places = [REPO / "README.md", REPO / ".ci" / "run", *REPO.glob(".ci/*.sh")]
    for folder in ("tests", "bench", "docs", "fusion_mcp", "bundle"):
        places += [p for p in (REPO / folder).rglob("*") if p.suffix in (".py", ".md", ".sh", ".json", ".toml")]
    unknown = {
        f"{name} ({place.relative_to(REPO)})"
        for place in places
        for name in re.findall(r"\bFUSION_[A-Z0-9_]+\b", place.read_text(errors="replace"))
        if name not in SETTING_NAMES
        and name not in OUR_VARIABLES
        and name not in NOT_VARIABLES
        and not name.startswith("FUSION_TEST_")
    }
    assert unknown == set()
