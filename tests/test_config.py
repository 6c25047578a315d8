"""Settings: defaults, environment, TOML file, precedence, and one-line errors naming the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from fusion_mcp.config import QUALITY_PANEL, ConfigError, load_settings


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


def test_secret_values_are_never_echoed(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('openrouter_api_key = ["sk-secret-in-a-list"]\n')
    with pytest.raises(ConfigError) as info:
        load_settings(environ={}, config_path=path)
    assert str(info.value) == "invalid setting OPENROUTER_API_KEY: must be a non-empty API key"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not = [toml", "is not valid TOML"),
        ('fusion_modle = "x"', "unknown setting 'fusion_modle'"),
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
