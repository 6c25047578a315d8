"""Settings from the environment and an optional TOML file.

Every setting has one name, the environment variable's (``FUSION_MODEL``); a TOML file given by
``--config PATH`` or ``FUSION_CONFIG`` uses the same keys, in any case. The environment wins over the
file, the file over the defaults. A bad value raises :class:`ConfigError` with one line that names the
setting and its rule, so the command line can print it and exit non-zero.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, ValidationInfo, field_validator

OPENROUTER_BASE_URL = "https://openrouter.ai/api/v1"
QUALITY_PANEL = ("~anthropic/claude-opus-latest", "~openai/gpt-latest", "~google/gemini-pro-latest")
PRESETS: dict[str, tuple[tuple[str, ...], str]] = {
    # OpenRouter's Quality panel: three frontier families, the strongest analyst.
    "quality": (QUALITY_PANEL, "~anthropic/claude-opus-latest"),
    # Small models of the same three families cost a fraction; a frontier analyst still does the comparing,
    # which is where a weak model would miss contradictions.
    "budget": (
        ("~anthropic/claude-haiku-latest", "~openai/gpt-mini-latest", "~google/gemini-flash-latest"),
        "~anthropic/claude-sonnet-latest",
    ),
    # Latency-homogeneous: two fast models (a run waits for its slowest member) and a fast strong analyst.
    "fast": (("~google/gemini-flash-latest", "~anthropic/claude-haiku-latest"), "~anthropic/claude-sonnet-latest"),
}
MAX_PANEL = 8
MAX_TOOL_CALLS = 16

# One rule per setting, said the same way wherever a value is refused.
RULES: dict[str, str] = {
    "OPENROUTER_API_KEY": "a non-empty API key",
    "OPENROUTER_BASE_URL": "an http:// or https:// URL of an OpenAI-compatible API",
    "FUSION_PRESET": f"one of {', '.join(PRESETS)}",
    "FUSION_ANALYSIS_MODELS": f"1-{MAX_PANEL} unique model ids, comma-separated",
    "FUSION_MODEL": "one model id",
    "FUSION_MAX_TOOL_CALLS": f"a whole number from 1 to {MAX_TOOL_CALLS}",
    "FUSION_MAX_COMPLETION_TOKENS": "a whole number from 1 to 1000000",
    "FUSION_ENABLED": "true or false",
    "FUSION_STREAM": "true or false",
    "FUSION_TEMPERATURE": "a number from 0 to 2, or empty for the provider's default",
    "FUSION_DEADLINE_S": "a number of seconds from 1 to 3600",
    "FUSION_ANALYST_RESERVE_S": "a number of seconds >= 0 and below FUSION_DEADLINE_S, or empty for the default",
    "FUSION_DEPTH": "a whole number >= 0 (set by a parent fusion run)",
    "FUSION_HOME": "a directory for the cache and run history",
    "FUSION_CACHE": "on or off",
    "FUSION_CACHE_TTL_S": "a number of seconds from 0 to 604800",
    "FUSION_HISTORY_MAX_RUNS": "a whole number of runs from 1 to 1000000",
    "FUSION_HISTORY_MAX_DAYS": "a number of days from 0.01 to 3650",
    "FUSION_MAX_OUTPUT_CHARS": "a whole number of characters from 2000 to 1000000",
    "FUSION_MAX_COST_USD": "a number of US dollars > 0, or empty for no cap",
    "FUSION_HTTP_TOKEN": "a bearer token of at least 16 characters",
    "FUSION_ALLOWED_HOSTS": "comma-separated Host values (host or host:port, host:* for any port)",
    "FUSION_ALLOWED_ORIGINS": "comma-separated origins (scheme://host:port, port may be *)",
    "FUSION_MAX_CONCURRENT": "a whole number of fusion runs from 1 to 256",
    "FUSION_QUEUE_TIMEOUT_S": "a number of seconds from 0 to 600",
    "FUSION_APP_URL": "an http:// or https:// URL sent as HTTP-Referer",
    "FUSION_APP_TITLE": "a short name sent as X-OpenRouter-Title",
    "FUSION_LOG_LEVEL": "one of DEBUG, INFO, WARNING, ERROR",
    "FUSION_WEB_TOOLS": "one of auto, openrouter, local, off",
    "FUSION_SEARCH": "one of auto, searxng, brave, tavily, ddgs (the chosen one must be configured)",
    "FUSION_SEARXNG_URL": "the http:// or https:// base URL of a SearXNG instance with JSON output enabled",
    "BRAVE_API_KEY": "a non-empty Brave Search API key",
    "TAVILY_API_KEY": "a non-empty Tavily API key",
    "FUSION_BRAVE_URL": "the http:// or https:// URL of Brave's web search endpoint",
    "FUSION_TAVILY_URL": "the http:// or https:// URL of Tavily's search endpoint",
    "FUSION_FETCH_ANY_URL": "true or false",
    "FUSION_FETCH_PORTS": "comma-separated TCP ports from 1 to 65535",
    "FUSION_FETCH_MAX_CHARS": "a whole number of characters from 1000 to 200000",
    "FUSION_WEB_MAX_CHARS": "a whole number of characters from 10000 to 10000000",
}
SECRET_SETTINGS = frozenset({"OPENROUTER_API_KEY", "FUSION_HTTP_TOKEN", "BRAVE_API_KEY", "TAVILY_API_KEY"})
WEB_MODES = ("auto", "openrouter", "local", "off")
SEARCH_BACKENDS = ("auto", "searxng", "brave", "tavily", "ddgs")
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


class ConfigError(ValueError):
    """A setting is missing or breaks its rule; ``str()`` is one line that names it."""


def check_model_ids(value: Any) -> tuple[str, ...]:
    """Validate a panel: 1-8 unique, non-blank model ids, from a list or a comma-separated string."""
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list | tuple):
        raise ValueError("not a list of model ids")
    ids = tuple(check_model_id(v) for v in value)
    if not 1 <= len(ids) <= MAX_PANEL:
        raise ValueError(f"{len(ids)} model ids given")
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"{', '.join(duplicates)} appears more than once")
    return ids


def check_model_id(value: Any) -> str:
    """A model id is one non-blank token: ``author/slug``, an alias like ``~openai/gpt-latest``, a local name."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("a model id is empty")
    value = value.strip()
    if any(c.isspace() for c in value) or len(value) > 200:
        raise ValueError(f"{value[:60]!r} is not a model id")
    return value


def _check_url(value: str) -> str:
    value = value.strip().rstrip("/")
    if not value.startswith(("http://", "https://")) or len(value) < 10:
        raise ValueError("not an http(s) URL")
    return value


class Settings(BaseModel):
    """The server's configuration. Field aliases are the environment variable names."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="forbid")

    api_key: SecretStr | None = Field(None, alias="OPENROUTER_API_KEY")
    base_url: str = Field(OPENROUTER_BASE_URL, alias="OPENROUTER_BASE_URL")
    preset: str = Field("quality", alias="FUSION_PRESET")
    configured_panel: tuple[str, ...] | None = Field(None, alias="FUSION_ANALYSIS_MODELS")
    configured_analyst: str | None = Field(None, alias="FUSION_MODEL")
    max_tool_calls: int = Field(8, ge=1, le=MAX_TOOL_CALLS, alias="FUSION_MAX_TOOL_CALLS", strict=False)
    max_completion_tokens: int = Field(16000, ge=1, le=1_000_000, alias="FUSION_MAX_COMPLETION_TOKENS")
    enabled: bool = Field(True, alias="FUSION_ENABLED")
    stream: bool = Field(True, alias="FUSION_STREAM")
    temperature: float | None = Field(None, ge=0, le=2, alias="FUSION_TEMPERATURE")
    deadline_s: float = Field(55.0, ge=1, le=3600, alias="FUSION_DEADLINE_S")
    analyst_reserve_s: float | None = Field(None, ge=0, alias="FUSION_ANALYST_RESERVE_S")
    depth: int = Field(0, ge=0, alias="FUSION_DEPTH")
    home: Path | None = Field(None, alias="FUSION_HOME")
    cache: bool = Field(True, alias="FUSION_CACHE")
    cache_ttl_s: float = Field(3600.0, ge=0, le=604800, alias="FUSION_CACHE_TTL_S")
    history_max_runs: int = Field(1000, ge=1, le=1_000_000, alias="FUSION_HISTORY_MAX_RUNS")
    history_max_days: float = Field(30.0, ge=0.01, le=3650, alias="FUSION_HISTORY_MAX_DAYS")
    max_output_chars: int = Field(24000, ge=2000, le=1_000_000, alias="FUSION_MAX_OUTPUT_CHARS")
    max_cost_usd: float | None = Field(None, gt=0, alias="FUSION_MAX_COST_USD")
    http_token: SecretStr | None = Field(None, alias="FUSION_HTTP_TOKEN")
    allowed_hosts: tuple[str, ...] = Field(
        tuple(f"{h}:*" for h in LOOPBACK_NAMES) + LOOPBACK_NAMES, alias="FUSION_ALLOWED_HOSTS"
    )
    allowed_origins: tuple[str, ...] = Field(
        tuple(f"{scheme}://{h}:*" for scheme in ("http", "https") for h in LOOPBACK_NAMES),
        alias="FUSION_ALLOWED_ORIGINS",
    )
    max_concurrent: int = Field(8, ge=1, le=256, alias="FUSION_MAX_CONCURRENT")
    queue_timeout_s: float = Field(10.0, ge=0, le=600, alias="FUSION_QUEUE_TIMEOUT_S")
    app_url: str = Field("https://pypi.org/project/fusion-mcp/", alias="FUSION_APP_URL")
    app_title: str = Field("fusion-mcp", min_length=1, max_length=100, alias="FUSION_APP_TITLE")
    log_level: str = Field("INFO", alias="FUSION_LOG_LEVEL")
    web_tools: str = Field("auto", alias="FUSION_WEB_TOOLS")
    searxng_url: str | None = Field(None, alias="FUSION_SEARXNG_URL")
    brave_api_key: SecretStr | None = Field(None, alias="BRAVE_API_KEY")
    tavily_api_key: SecretStr | None = Field(None, alias="TAVILY_API_KEY")
    brave_url: str = Field("https://api.search.brave.com/res/v1/web/search", alias="FUSION_BRAVE_URL")
    tavily_url: str = Field("https://api.tavily.com/search", alias="FUSION_TAVILY_URL")
    search: str = Field("auto", alias="FUSION_SEARCH")  # after the backends: its check reads them
    fetch_any_url: bool = Field(False, alias="FUSION_FETCH_ANY_URL")
    fetch_ports: tuple[int, ...] = Field((80, 443), alias="FUSION_FETCH_PORTS")
    fetch_max_chars: int = Field(20000, ge=1000, le=200_000, alias="FUSION_FETCH_MAX_CHARS")
    web_max_chars: int = Field(400_000, ge=10_000, le=10_000_000, alias="FUSION_WEB_MAX_CHARS")

    @field_validator("cache", mode="before")
    @classmethod
    def _on_off(cls, v: Any) -> Any:
        return {"on": True, "off": False}.get(v.strip().lower(), v) if isinstance(v, str) else v

    @field_validator("web_tools", "search", mode="before")
    @classmethod
    def _choice(cls, v: Any, info: ValidationInfo) -> str:
        name = str(v).strip().lower()
        if name not in (WEB_MODES if info.field_name == "web_tools" else SEARCH_BACKENDS):
            raise ValueError("unknown choice")
        return name

    @field_validator("fetch_ports", mode="before")
    @classmethod
    def _ports(cls, v: Any) -> tuple[int, ...]:
        items = v.split(",") if isinstance(v, str) else v
        if not isinstance(items, list | tuple):
            raise ValueError("not a list")
        ports = tuple(int(str(i).strip()) for i in items if str(i).strip())
        if not ports or not all(1 <= p <= 65535 for p in ports):
            raise ValueError("not ports")
        return ports

    @field_validator("search")
    @classmethod
    def _search_configured(cls, v: str, info: ValidationInfo) -> str:
        needs = {"searxng": "searxng_url", "brave": "brave_api_key", "tavily": "tavily_api_key"}
        if v in needs and info.data.get(needs[v]) is None:
            raise ValueError("not configured")
        return v

    @field_validator("api_key", "http_token", "brave_api_key", "tavily_api_key", mode="before")
    @classmethod
    def _key(cls, v: Any) -> Any:
        if isinstance(v, str) and not v.strip():
            raise ValueError("empty")
        return v.strip() if isinstance(v, str) else v

    @field_validator("http_token")
    @classmethod
    def _long_token(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < 16:
            raise ValueError("too short")
        return v

    @field_validator("allowed_hosts", "allowed_origins", mode="before")
    @classmethod
    def _list(cls, v: Any) -> tuple[str, ...]:
        items = v.split(",") if isinstance(v, str) else v
        if not isinstance(items, list | tuple):
            raise ValueError("not a list")
        out = tuple(str(i).strip() for i in items if str(i).strip())
        if not out or any(c.isspace() for i in out for c in i):
            raise ValueError("empty or malformed")
        return out

    @field_validator("base_url", "app_url", "searxng_url", "brave_url", "tavily_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return _check_url(v) if v is not None else None

    @field_validator("configured_panel", mode="before")
    @classmethod
    def _panel(cls, v: Any) -> tuple[str, ...]:
        return check_model_ids(v)

    @field_validator("configured_analyst", mode="before")
    @classmethod
    def _analyst(cls, v: Any) -> str:
        return check_model_id(v)

    @field_validator("preset", mode="before")
    @classmethod
    def _preset(cls, v: Any) -> str:
        name = str(v).strip().lower()
        if name not in PRESETS:
            raise ValueError("unknown preset")
        return name

    def models_for(self, preset: str | None = None) -> tuple[tuple[str, ...], str]:
        """(panel, analyst): a call's preset, else FUSION_ANALYSIS_MODELS / FUSION_MODEL, else FUSION_PRESET."""
        if preset is not None:
            return PRESETS[preset]
        panel, analyst = PRESETS[self.preset]
        return self.configured_panel or panel, self.configured_analyst or analyst

    @property
    def analysis_models(self) -> tuple[str, ...]:
        return self.models_for()[0]

    @property
    def model(self) -> str:
        return self.models_for()[1]

    @field_validator("temperature", "deadline_s", "analyst_reserve_s")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("not finite")
        return v

    @field_validator("analyst_reserve_s")
    @classmethod
    def _below_deadline(cls, v: float | None, info: ValidationInfo) -> float | None:
        deadline = info.data.get("deadline_s")
        if v is not None and deadline is not None and v >= deadline:
            raise ValueError("not below the deadline")
        return v

    @field_validator("log_level", mode="before")
    @classmethod
    def _level(cls, v: Any) -> str:
        level = str(v).strip().upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("unknown level")
        return level

    @property
    def is_openrouter(self) -> bool:
        """True when the provider is OpenRouter itself (its key is required, its extensions apply)."""
        return self.base_url.startswith("https://openrouter.ai/")

    @property
    def web_mode(self) -> str:
        """The web tools in force: ``auto`` is OpenRouter's server tools on OpenRouter, ours elsewhere."""
        if self.web_tools == "auto":
            return "openrouter" if self.is_openrouter else "local"
        return self.web_tools

    @property
    def search_backend(self) -> str:
        """``FUSION_SEARCH``, or the first backend configured (SearXNG, Brave, Tavily), else ddgs."""
        if self.search != "auto":
            return self.search
        configured = (("searxng", self.searxng_url), ("brave", self.brave_api_key), ("tavily", self.tavily_api_key))
        for name, value in configured:
            if value is not None:
                return name
        return "ddgs"

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every secret value in force, for redaction."""
        values = (self.api_key, self.http_token, self.brave_api_key, self.tavily_api_key)
        return tuple(s.get_secret_value() for s in values if s is not None)


def load_settings(
    environ: Mapping[str, str] | None = None, config_path: str | os.PathLike[str] | None = None
) -> Settings:
    """Build :class:`Settings` from a TOML file (optional) and the environment; raise :class:`ConfigError`."""
    environ = os.environ if environ is None else environ
    path = config_path if config_path is not None else environ.get("FUSION_CONFIG") or None
    values: dict[str, Any] = _read_toml(Path(path)) if path else {}
    for name in RULES:
        raw = environ.get(name)
        # An empty variable means "not set", as a host config often writes "" for an unused key.
        if raw is not None and raw.strip() != "":
            values[name] = raw
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(_first_error(exc, values)) from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist (from --config or FUSION_CONFIG)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.__class__.__name__}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = key.upper()
        if name not in RULES:
            raise ConfigError(f"config file {path}: unknown setting {key!r} (known: {', '.join(RULES)})")
        values[name] = value
    return values


def _first_error(exc: ValidationError, values: Mapping[str, Any]) -> str:
    error = exc.errors()[0]
    name = str(error["loc"][0]) if error["loc"] else "configuration"
    if name not in RULES:
        return f"invalid configuration: {error['msg']}"
    shown = "" if name in SECRET_SETTINGS else f"={str(values.get(name))[:80]!r}"
    return f"invalid setting {name}{shown}: must be {RULES[name]}"
