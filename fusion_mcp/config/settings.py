"""Settings from the environment and an optional TOML file.

Every setting has one name, the environment variable's (``FUSION_MODEL``), and a short one for files
(``model``: the name without ``FUSION_`` or ``OPENROUTER_``, in lower case). A TOML file given by
``--config PATH`` or ``FUSION_CONFIG`` takes either, in any case, at the top level or in a ``[fusion]``
table (``fusion-mcp.example.toml`` lists them all). The environment wins over the file, the file over the
defaults. A bad value raises :class:`ConfigError` with one line that names the setting and its rule (and,
for a value from a file, the file and the key as written there), so the command line can print it and
exit non-zero. An obviously placeholder secret (``sk-or-v1-...``) is refused the same way.

Each setting is declared once, as a field: its type and bounds say the rule, and :func:`rule` turns them
into the sentence every error uses. Only rules no type can state (URLs, lists) are written as prose.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic.config import JsonDict
from pydantic.fields import FieldInfo

from ..core.about import HOMEPAGE
from ..core.callers import DEFAULT_PRINCIPAL, LOCAL_PRINCIPAL
from ..core.errors import MIN_SECRET_CHARS
from ..core.lenses import BUILTIN, LENSES_RULE, PANEL_ENTRIES_RULE, check_lenses, check_panel, model_of, self_panel
from ..core.limits import (
    MAX_COMPLETION_TOKENS,
    MAX_DEADLINE_S,
    MAX_PANEL,
    MAX_TOOL_CALLS,
    MIN_DEADLINE_S,
    MIN_TOKEN_CHARS,
    MIN_TOOL_CALLS,
)
from ..core.model_ids import DEFAULT_PROVIDER, MODEL_ID_RULE, check_model_id
from ..core.models import WebMode
from ..core.text import number
from .presets import PRESETS, Preset
from .providers import (
    OPENROUTER_ORIGIN,
    PROVIDERS_RULE,
    Endpoint,
    UnknownProvider,
    check_routes,
    parse_providers,
    url_passwords,
)
from .providers import route as route_model

OPENROUTER_BASE_URL = "https://openrouter.ai/api/v1"
OPENROUTER_KEY_PREFIX = "sk-or-"
"""How every OpenRouter key starts: with ``FUSION_PASS_THROUGH_KEY`` on OpenRouter, the bearers taken as keys."""
MIN_PREFIX_CHARS = 3
WebTools = Literal["auto", "openrouter", "local", "off"]
SearchBackend = Literal["auto", "searxng", "brave", "tavily", "ddgs"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
_PRINCIPAL_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_URL_RULE = "an http:// or https:// URL"
KEYS_PAGE = "https://openrouter.ai/keys"
"""Where an OpenRouter key is created (named in every message about a missing or placeholder key)."""
LOCAL_SERVER_HINT = "OPENROUTER_BASE_URL=http://localhost:11434/v1 for Ollama"
"""How to use a local OpenAI-compatible server instead, which needs no key."""
_PLACEHOLDER = re.compile(
    r"\.\.\.|\u2026|<[^>]*>|\$\{[^}]*\}|\byour[-_ ]|\b(change|replace)[-_ ]?me\b|^(sk-or-v1-|sk-|x+|\*+)$",
    re.IGNORECASE,
)


class ConfigError(ValueError):
    """A setting is missing or breaks its rule; ``str()`` is one line that names it."""


class Placeholder(ValueError):
    """A secret that is a placeholder from an example (``sk-or-v1-...``), not a real one."""


class Unmet(ValueError):
    """A rule between settings, broken: its message is the whole sentence the error shows."""


def is_placeholder(secret: str) -> bool:
    """True for the values examples and snippets show in place of a key: ``sk-or-v1-...``, ``<token>``,
    ``${OPENROUTER_API_KEY}`` left unexpanded, ``your-key-here``. Real keys and tokens never look like these."""
    return bool(_PLACEHOLDER.search(secret))


def setting(
    default: Any,
    name: str,
    *,
    rule: str | None = None,
    unit: str | None = None,
    empty: str | None = None,
    **bounds: Any,
) -> Any:
    """One setting: its environment name, default and bounds, plus what :func:`rule` needs that they do not say.

    ``rule`` replaces the derived sentence; ``unit`` names what a number counts ("seconds"); ``empty`` says
    what leaving an optional setting empty means.
    """
    extra: JsonDict = {k: v for k, v in (("rule", rule), ("unit", unit), ("empty", empty)) if v is not None}
    return Field(default, alias=name, json_schema_extra=extra or None, **bounds)


def _check_url(value: str) -> str:
    value = value.strip().rstrip("/")
    if not value.startswith(("http://", "https://")) or len(value) < 10:
        raise ValueError("not an http(s) URL")
    return value


class Settings(BaseModel):
    """The server's configuration. Field aliases are the environment variable names."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="forbid")

    api_key: SecretStr | None = setting(None, "OPENROUTER_API_KEY", rule="a non-empty API key (printable ASCII)")
    base_url: str = setting(OPENROUTER_BASE_URL, "OPENROUTER_BASE_URL", rule=f"{_URL_RULE} of an OpenAI-compatible API")
    preset: Preset = setting("quality", "FUSION_PRESET")
    # Before the panel and the analyst: their ids are routed to these.
    providers: dict[str, Endpoint] = setting({}, "FUSION_PROVIDERS", rule=PROVIDERS_RULE)
    # Before the panel: its entries may name these lenses.
    lenses: dict[str, str] = setting({}, "FUSION_LENSES", rule=LENSES_RULE)
    configured_panel: tuple[str, ...] | None = setting(
        None, "FUSION_ANALYSIS_MODELS", rule=f"{PANEL_ENTRIES_RULE}, comma-separated"
    )
    configured_analyst: str | None = setting(None, "FUSION_MODEL", rule=MODEL_ID_RULE)
    max_tool_calls: int = setting(8, "FUSION_MAX_TOOL_CALLS", ge=MIN_TOOL_CALLS, le=MAX_TOOL_CALLS)
    max_completion_tokens: int = setting(16000, "FUSION_MAX_COMPLETION_TOKENS", ge=1, le=MAX_COMPLETION_TOKENS)
    enabled: bool = setting(True, "FUSION_ENABLED")
    stream: bool = setting(True, "FUSION_STREAM")
    temperature: float | None = setting(None, "FUSION_TEMPERATURE", ge=0, le=2, empty="the provider's default")
    deadline_s: float = setting(55.0, "FUSION_DEADLINE_S", ge=MIN_DEADLINE_S, le=MAX_DEADLINE_S, unit="seconds")
    run_deadline_s: float | None = setting(
        None,
        "FUSION_RUN_DEADLINE_S",
        ge=MIN_DEADLINE_S,
        le=MAX_DEADLINE_S,
        rule=f"a number of seconds from FUSION_DEADLINE_S to {MAX_DEADLINE_S:,.0f}",
        empty="FUSION_DEADLINE_S (runs end with the call)",
    )
    min_answers: int = setting(2, "FUSION_MIN_ANSWERS", ge=1, le=MAX_PANEL, unit="panel answers")
    analyst_reserve_s: float | None = setting(
        None,
        "FUSION_ANALYST_RESERVE_S",
        ge=0,
        unit="seconds",
        rule="a number of seconds >= 0 and below FUSION_DEADLINE_S",
    )
    depth: int = setting(0, "FUSION_DEPTH", ge=0, rule="a whole number >= 0 (set by a parent fusion run)")
    home: Path | None = setting(None, "FUSION_HOME", rule="a directory for the cache and run history")
    cache: bool = setting(True, "FUSION_CACHE", rule="on or off")
    cache_ttl_s: float = setting(3600.0, "FUSION_CACHE_TTL_S", ge=0, le=604800, unit="seconds")
    history_max_runs: int = setting(1000, "FUSION_HISTORY_MAX_RUNS", ge=1, le=1_000_000, unit="runs")
    history_max_days: float = setting(30.0, "FUSION_HISTORY_MAX_DAYS", ge=0.01, le=3650, unit="days")
    history_max_mb: float = setting(500.0, "FUSION_HISTORY_MAX_MB", ge=1, le=1_000_000, unit="megabytes")
    database_url: SecretStr | None = setting(
        None,
        "FUSION_DATABASE_URL",
        rule="a postgresql:// (or postgres://) URL",
        empty="the SQLite file in FUSION_HOME",
    )
    database_pool: int = setting(8, "FUSION_DATABASE_POOL", ge=1, le=100, unit="connections")
    usage_max_days: float = setting(400.0, "FUSION_USAGE_MAX_DAYS", ge=1, le=3650, unit="days")
    max_prompt_chars: int = setting(
        200_000, "FUSION_MAX_PROMPT_CHARS", ge=1000, le=10_000_000, unit="characters (prompt and context together)"
    )
    max_output_chars: int = setting(24000, "FUSION_MAX_OUTPUT_CHARS", ge=2000, le=1_000_000, unit="characters")
    max_cost_usd: float | None = setting(None, "FUSION_MAX_COST_USD", gt=0, unit="US dollars", empty="no cap")
    principal_max_cost_usd_per_day: float | None = setting(
        None, "FUSION_PRINCIPAL_MAX_COST_USD_PER_DAY", gt=0, unit="US dollars", empty="no cap"
    )
    http_token: SecretStr | None = setting(None, "FUSION_HTTP_TOKEN", rule="a bearer token of at least 16 characters")
    http_tokens: dict[str, SecretStr] = setting(
        {},
        "FUSION_HTTP_TOKENS",
        rule="named bearer tokens, NAME:TOKEN[,NAME:TOKEN...] or @FILE with one NAME:TOKEN a line; names of "
        "letters, digits and . _ - (not 'local' or 'default'), unique; tokens of at least 16 characters, unique",
    )
    allowed_hosts: tuple[str, ...] = setting(
        tuple(f"{h}:*" for h in LOOPBACK_NAMES) + LOOPBACK_NAMES,
        "FUSION_ALLOWED_HOSTS",
        rule="comma-separated Host values (host or host:port, host:* for any port)",
    )
    allowed_origins: tuple[str, ...] = setting(
        tuple(f"{scheme}://{h}:*" for scheme in ("http", "https") for h in LOOPBACK_NAMES),
        "FUSION_ALLOWED_ORIGINS",
        rule="comma-separated origins (scheme://host:port, port may be *)",
    )
    lab_operators: tuple[str, ...] = setting(
        (),
        "FUSION_LAB_OPERATORS",
        rule="comma-separated principal names (letters, digits and . _ -)",
        empty="nobody",
    )
    pass_through_key: bool = setting(False, "FUSION_PASS_THROUGH_KEY")
    pass_through_key_prefix: str | None = setting(
        None,
        "FUSION_PASS_THROUGH_KEY_PREFIX",
        rule=f"the start every lent key has, such as sk-proj- ({MIN_PREFIX_CHARS} to 40 printable ASCII characters "
        "without spaces), which no server token may share; required with FUSION_PASS_THROUGH_KEY=true and a provider "
        "other than OpenRouter, which would otherwise take any bearer as a key",
        empty=f"{OPENROUTER_KEY_PREFIX} with OpenRouter",
        validate_default=True,
    )
    pass_through_server_tools: bool = setting(False, "FUSION_PASS_THROUGH_SERVER_TOOLS")
    pass_through_max_concurrent: int = setting(
        2, "FUSION_PASS_THROUGH_MAX_CONCURRENT", ge=1, le=256, unit="fusion runs (all lent keys together)"
    )
    keepalive_s: float = setting(5.0, "FUSION_KEEPALIVE_S", ge=0.1, le=10, unit="seconds")
    max_concurrent: int = setting(32, "FUSION_MAX_CONCURRENT", ge=1, le=256, unit="fusion runs")
    """Sized for I/O, not CPU: a run waits on the network for 10-120 s, so slots only protect memory, descriptors
    and the provider's rate limits. 32 (8 before) is what a team sharing one process does not queue behind
    (32 clients x 3 calls: added p50 715 -> 214 ms, no more CPU per call); measured per run in flight, 8
    members x 2,000 words: ~2.5 MiB of memory at peak (~80 MiB for 32) and up to ``MAX_PANEL + 1`` provider
    connections (7.8 seen; 288 descriptors held back from ``FUSION_MAX_CONNECTIONS`` for 32)."""
    max_connections: int = setting(1024, "FUSION_MAX_CONNECTIONS", ge=16, le=1_000_000, unit="HTTP connections")
    header_timeout_s: float = setting(10.0, "FUSION_HEADER_TIMEOUT_S", ge=0.5, le=600, unit="seconds")
    body_timeout_s: float = setting(30.0, "FUSION_BODY_TIMEOUT_S", ge=0.5, le=600, unit="seconds")
    send_timeout_s: float = setting(30.0, "FUSION_SEND_TIMEOUT_S", ge=1, le=600, unit="seconds")
    max_sessions: int = setting(256, "FUSION_MAX_SESSIONS", ge=1, le=100_000, unit="MCP sessions")
    max_sessions_per_principal: int | None = setting(
        None,
        "FUSION_MAX_SESSIONS_PER_PRINCIPAL",
        ge=1,
        le=100_000,
        unit="MCP sessions",
        empty="half of FUSION_MAX_SESSIONS",
    )
    session_idle_s: float = setting(600.0, "FUSION_SESSION_IDLE_S", ge=10, le=86_400, unit="seconds")
    replica: str | None = setting(
        None,
        "FUSION_REPLICA",
        pattern=r"^[A-Za-z0-9_-]{1,32}$",
        rule="a short name of this replica (letters, digits, _ and -, up to 32), unique among the replicas",
        empty="none (one server, or stateless replicas)",
    )
    max_chat_requests: int = setting(32, "FUSION_MAX_CHAT_REQUESTS", ge=1, le=4096, unit="requests")
    queue_timeout_s: float = setting(10.0, "FUSION_QUEUE_TIMEOUT_S", ge=0, le=600, unit="seconds")
    app_url: str = setting(HOMEPAGE, "FUSION_APP_URL", rule=f"{_URL_RULE} sent as HTTP-Referer")
    app_title: str = setting(
        "fusion-mcp", "FUSION_APP_TITLE", min_length=1, max_length=100, rule="a short name sent as X-OpenRouter-Title"
    )
    log_level: LogLevel = setting("INFO", "FUSION_LOG_LEVEL")
    web_tools: WebTools = setting("auto", "FUSION_WEB_TOOLS")
    searxng_url: str | None = setting(
        None,
        "FUSION_SEARXNG_URL",
        rule="the http:// or https:// base URL of a SearXNG instance with JSON output enabled",
    )
    brave_api_key: SecretStr | None = setting(None, "BRAVE_API_KEY", rule="a non-empty Brave Search API key")
    tavily_api_key: SecretStr | None = setting(None, "TAVILY_API_KEY", rule="a non-empty Tavily API key")
    brave_url: str = setting(
        "https://api.search.brave.com/res/v1/web/search", "FUSION_BRAVE_URL", rule=f"{_URL_RULE} of Brave's web search"
    )
    tavily_url: str = setting(
        "https://api.tavily.com/search", "FUSION_TAVILY_URL", rule=f"{_URL_RULE} of Tavily's search"
    )
    # After the backends: its check reads them.
    search: SearchBackend = setting(
        "auto", "FUSION_SEARCH", rule="one of auto, searxng, brave, tavily, ddgs (the chosen one must be configured)"
    )
    fetch_any_url: bool = setting(False, "FUSION_FETCH_ANY_URL")
    fetch_ports: tuple[int, ...] = setting(
        (80, 443), "FUSION_FETCH_PORTS", rule="comma-separated TCP ports from 1 to 65535"
    )
    fetch_max_chars: int = setting(20000, "FUSION_FETCH_MAX_CHARS", ge=1000, le=200_000, unit="characters")
    fetch_page_links: int = setting(4, "FUSION_FETCH_PAGE_LINKS", ge=0, le=100, unit="links per model and run")
    web_max_chars: int = setting(400_000, "FUSION_WEB_MAX_CHARS", ge=10_000, le=10_000_000, unit="characters")
    files_roots: tuple[Path, ...] = setting(
        (),
        "FUSION_FILES_ROOTS",
        rule="comma-separated absolute paths of existing directories",
    )
    files_max_bytes: int = setting(2_000_000, "FUSION_FILES_MAX_BYTES", ge=1000, le=50_000_000, unit="bytes")

    @field_validator("cache", mode="before")
    @classmethod
    def _on_off(cls, v: Any) -> Any:
        return {"on": True, "off": False}.get(v.strip().lower(), v) if isinstance(v, str) else v

    @field_validator("web_tools", "search", "preset", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.strip().upper() if isinstance(v, str) else v

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

    @field_validator("*", mode="before")
    @classmethod
    def _key(cls, v: Any, info: ValidationInfo) -> Any:
        if info.field_name not in SECRET_FIELDS:
            return v
        if isinstance(v, str) and not v.strip():
            raise ValueError("empty")
        if isinstance(v, str) and is_placeholder(v.strip()):
            raise Placeholder("a placeholder")
        if isinstance(v, str) and not all(" " < c < "\x7f" for c in v.strip()):
            # It travels in an HTTP header, which carries printable ASCII only: no real key has anything else.
            raise ValueError("not printable ASCII")
        return v.strip() if isinstance(v, str) else v

    @field_validator("http_token")
    @classmethod
    def _long_token(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < MIN_TOKEN_CHARS:
            raise ValueError("too short")
        return v

    @field_validator("http_tokens", mode="before")
    @classmethod
    def _named_tokens(cls, v: Any) -> dict[str, str]:
        return parse_tokens(v)

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

    @field_validator("lab_operators", mode="before")
    @classmethod
    def _names(cls, v: Any) -> tuple[str, ...]:
        items = v.split(",") if isinstance(v, str) else v
        if not isinstance(items, list | tuple):
            raise ValueError("not a list")
        out = tuple(str(i).strip() for i in items if str(i).strip())
        if any(not _PRINCIPAL_NAME.fullmatch(i) for i in out):
            raise ValueError("malformed")
        return out

    @field_validator("home")
    @classmethod
    def _expand_home(cls, v: Path | None) -> Path | None:
        return v.expanduser() if v is not None else None

    @field_validator("base_url", "app_url", "searxng_url", "brave_url", "tavily_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return _check_url(v) if v is not None else None

    @field_validator("lenses", mode="before")
    @classmethod
    def _lenses(cls, v: Any) -> dict[str, str]:
        return check_lenses(v)

    @field_validator("providers", mode="before")
    @classmethod
    def _providers(cls, v: Any, info: ValidationInfo) -> dict[str, Endpoint]:
        environ = (info.context or {}).get("environ") if isinstance(info.context, dict) else None
        try:
            return parse_providers(v, environ)
        except ValueError as exc:  # its own sentence: the value may hold a key, never echoed
            raise Unmet(str(exc)) from None

    @field_validator("configured_panel", mode="before")
    @classmethod
    def _panel(cls, v: Any, info: ValidationInfo) -> tuple[str, ...]:
        panel = check_panel(v, {**BUILTIN, **(info.data.get("lenses") or {})})
        _routed(info, tuple(model_of(entry) for entry in panel))
        return panel

    @field_validator("files_roots", mode="before")
    @classmethod
    def _roots(cls, v: Any) -> tuple[Path, ...]:
        items = v.split(",") if isinstance(v, str) else v
        if not isinstance(items, list | tuple):
            raise ValueError("not a list")
        roots = tuple(Path(str(i).strip()).expanduser() for i in items if str(i).strip())
        if not all(r.is_absolute() and r.is_dir() for r in roots):
            raise ValueError("not existing absolute directories")
        return roots

    @field_validator("configured_analyst", mode="before")
    @classmethod
    def _analyst(cls, v: Any, info: ValidationInfo) -> str:
        model = check_model_id(v)
        _routed(info, (model,))
        return model

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            parts = urlsplit(v.get_secret_value())
            if parts.scheme not in ("postgresql", "postgres"):
                raise ValueError("not a postgresql:// URL")
            _ = parts.port  # a port that is not a number raises ValueError
        return v

    @field_validator("temperature", "deadline_s", "analyst_reserve_s", "max_cost_usd", "principal_max_cost_usd_per_day")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("not finite")
        return v

    @field_validator("pass_through_key_prefix")
    @classmethod
    def _lent_key_prefix(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None:
            v = v.strip()
            if not MIN_PREFIX_CHARS <= len(v) <= 40 or not all(" " < c < "\x7f" for c in v):
                raise ValueError("not a prefix")
        if not info.data.get("pass_through_key"):
            return v
        openrouter = str(info.data.get("base_url", "")).startswith(OPENROUTER_ORIGIN)
        prefix = v or (OPENROUTER_KEY_PREFIX if openrouter else None)
        if prefix is None:
            raise Unmet(
                "must be set with FUSION_PASS_THROUGH_KEY=true and a provider other than OpenRouter: it says how the "
                "keys callers lend start (sk-proj-, say); without it any bearer would be sent on as a key, and a "
                "provider that checks no keys (Ollama, vLLM, a gateway) would serve anyone"
            )
        tokens = [*(info.data.get("http_tokens") or {}).values(), info.data.get("http_token")]
        if any(isinstance(t, SecretStr) and t.get_secret_value().startswith(prefix) for t in tokens):
            raise Unmet(
                f"a server token starts with the lent-key prefix {prefix!r}, so a mistyped token would be sent to the "
                "provider as a key: choose tokens (or a prefix) that differ"
            )
        return v

    @field_validator("run_deadline_s")
    @classmethod
    def _not_below_deadline(cls, v: float | None, info: ValidationInfo) -> float | None:
        deadline = info.data.get("deadline_s")
        if v is not None and (not math.isfinite(v) or (deadline is not None and v < deadline)):
            raise ValueError("below the call's deadline")
        return v

    @field_validator("analyst_reserve_s")
    @classmethod
    def _below_deadline(cls, v: float | None, info: ValidationInfo) -> float | None:
        deadline = info.data.get("deadline_s")
        if v is not None and deadline is not None and v >= deadline:
            raise ValueError("not below the deadline")
        return v

    def models_for(self, preset: Preset | None = None, analyst: str | None = None) -> tuple[tuple[str, ...], str]:
        """(panel, analyst): a call's preset, else FUSION_ANALYSIS_MODELS / FUSION_MODEL, else FUSION_PRESET.

        ``analyst`` is the call's own analyst: the ``self`` preset's panel is that model under three lenses.
        """
        if preset == "self" or (preset is None and self.preset == "self" and self.configured_panel is None):
            judge = analyst or self.configured_analyst or PRESETS["quality"][1]
            return self_panel(judge), judge
        if preset is not None:
            return PRESETS[preset]
        panel, judge = PRESETS[self.preset] if self.preset != "self" else PRESETS["quality"]
        return self.configured_panel or panel, self.configured_analyst or judge

    @property
    def analysis_models(self) -> tuple[str, ...]:
        return self.models_for()[0]

    @property
    def model(self) -> str:
        return self.models_for()[1]

    @property
    def run_deadline(self) -> float:
        """Seconds a run may take in all: ``FUSION_RUN_DEADLINE_S``, else the call's ``FUSION_DEADLINE_S``."""
        return self.run_deadline_s if self.run_deadline_s is not None else self.deadline_s

    @property
    def long_runs(self) -> bool:
        """Runs may outlive the call that started it (``running`` results, ``openrouter_fusion_result``)."""
        return self.run_deadline > self.deadline_s

    @property
    def caching(self) -> bool:
        """Identical calls are answered from the cache: ``FUSION_CACHE`` on and a TTL above 0 (at 0 no entry is
        ever fresh, so none is looked up or written)."""
        return self.cache and self.cache_ttl_s > 0

    @property
    def all_lenses(self) -> dict[str, str]:
        """Built-in lenses, then the configured ones (which may redefine a built-in)."""
        return {**BUILTIN, **self.lenses}

    @property
    def default_endpoint(self) -> Endpoint:
        """The provider ``OPENROUTER_BASE_URL`` and ``OPENROUTER_API_KEY`` describe (``default``)."""
        return _default_endpoint(self.base_url, self.api_key)

    @property
    def endpoints(self) -> dict[str, Endpoint]:
        """Every provider by name: the configured ones, then ``default``."""
        return {**self.providers, DEFAULT_PROVIDER: self.default_endpoint}

    def route(self, model: str) -> tuple[Endpoint, str]:
        """(provider, the id it is sent) for a model id without a lens; :class:`UnknownProvider` when an id names
        no configured provider (see :mod:`fusion_mcp.config.providers`)."""
        return route_model(self.providers, self.default_endpoint, model)

    def provider_name(self, model: str) -> str | None:
        """The name of the provider ``model`` (an id without a lens) goes to, for results and usage; None with no
        providers configured (results then say nothing of providers, as before) or for an id that routes nowhere."""
        if not self.providers:
            return None
        try:
            return self.route(model)[0].name
        except UnknownProvider:
            return None

    @property
    def is_openrouter(self) -> bool:
        """True when the provider is OpenRouter itself (its key is required, its extensions apply)."""
        return self.base_url.startswith(OPENROUTER_ORIGIN)

    @property
    def lent_key_prefix(self) -> str | None:
        """The start of a bearer that is a caller's own provider key (``FUSION_PASS_THROUGH_KEY``), or None when
        callers may not lend keys."""
        if not self.pass_through_key:
            return None
        return self.pass_through_key_prefix or OPENROUTER_KEY_PREFIX

    @property
    def web_mode(self) -> WebMode:
        """The web tools in force: ``auto`` is OpenRouter's server tools on OpenRouter, ours elsewhere."""
        if self.web_tools == "auto":
            return "openrouter" if self.is_openrouter else "local"
        return self.web_tools

    @property
    def search_backend(self) -> SearchBackend:
        """``FUSION_SEARCH``, or the first backend configured (SearXNG, Brave, Tavily), else ddgs."""
        if self.search != "auto":
            return self.search
        configured: tuple[tuple[SearchBackend, object], ...] = (
            ("searxng", self.searxng_url),
            ("brave", self.brave_api_key),
            ("tavily", self.tavily_api_key),
        )
        for name, value in configured:
            if value is not None:
                return name
        return "ddgs"

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every secret value in force, for redaction."""
        found: list[str] = []
        for name in SECRET_FIELDS:
            value = getattr(self, name)
            for secret in value.values() if isinstance(value, dict) else (value,):
                if isinstance(secret, SecretStr):
                    found.append(secret.get_secret_value())
        for endpoint in self.providers.values():
            found.extend(endpoint.secrets)
        # The whole URL is one secret; its password is another, wherever it turns up on its own. A gateway's
        # base URL may carry one too (https://user:password@gateway/v1), which an error may quote.
        return (*found, *self.database_password, *url_passwords(self.base_url))

    @property
    def database_password(self) -> tuple[str, ...]:
        """The password in ``FUSION_DATABASE_URL``, as written (percent-encoded) and as sent."""
        return () if self.database_url is None else url_passwords(self.database_url.get_secret_value())

    @property
    def short_secrets(self) -> tuple[str, ...]:
        """Names of the secret settings whose value is too short to be a real secret (and to redact)."""
        short = []
        for name, field in Settings.model_fields.items():
            value = getattr(self, name)
            values = value.values() if isinstance(value, dict) else (value,)
            if name in SECRET_FIELDS and any(isinstance(v, SecretStr) and len(v) < MIN_SECRET_CHARS for v in values):
                short.append(str(field.alias))
        if any(len(p) < MIN_SECRET_CHARS for p in self.database_password):
            short.append("the password in FUSION_DATABASE_URL")
        if any(len(p) < MIN_SECRET_CHARS for p in url_passwords(self.base_url)):
            short.append("the password in OPENROUTER_BASE_URL")
        return tuple(short)

    @property
    def sessions_per_principal(self) -> int:
        return self.max_sessions_per_principal or max(1, self.max_sessions // 2)

    @property
    def principals(self) -> dict[str, str]:
        """Bearer token -> principal name, for every token in force (empty: the HTTP server takes no token)."""
        tokens = {t.get_secret_value(): name for name, t in self.http_tokens.items()}
        if self.http_token is not None:
            tokens[self.http_token.get_secret_value()] = DEFAULT_PRINCIPAL
        return tokens


def _default_endpoint(base_url: str, api_key: SecretStr | None) -> Endpoint:
    return Endpoint(name=DEFAULT_PROVIDER, base_url=base_url, api_key=api_key, named=False)


def _routed(info: ValidationInfo, models: tuple[str, ...]) -> None:
    """Every one of ``models`` goes to a provider (``Unmet`` names the configured ones otherwise)."""
    providers = info.data.get("providers") or {}
    if not providers:
        return
    default = _default_endpoint(info.data.get("base_url", OPENROUTER_BASE_URL), info.data.get("api_key"))
    try:
        check_routes(providers, default, models)
    except UnknownProvider as exc:
        raise Unmet(str(exc)) from None


def parse_tokens(value: Any) -> dict[str, str]:
    """``FUSION_HTTP_TOKENS``: ``alice:TOKEN1,bob:TOKEN2``, a TOML table, or ``@PATH`` to a file of such lines.

    Raises ``ValueError`` without ever quoting a token.
    """
    if isinstance(value, dict):
        pairs = [(str(k), str(v)) for k, v in value.items()]
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("@"):
            try:
                text = Path(text[1:]).expanduser().read_text(encoding="utf-8")
            except OSError as exc:
                raise ValueError(f"cannot read {text[1:]!r} ({type(exc).__name__})") from None
        entries = [e.strip() for e in re.split(r"[,\n]", text) if e.strip() and not e.strip().startswith("#")]
        pairs = [(e.partition(":")[0].strip(), e.partition(":")[2].strip()) for e in entries]
    else:
        raise ValueError("not a list of NAME:TOKEN")
    tokens: dict[str, str] = {}
    for name, token in pairs:
        if not _PRINCIPAL_NAME.fullmatch(name) or name in (LOCAL_PRINCIPAL, DEFAULT_PRINCIPAL) or name in tokens:
            raise ValueError(f"bad or repeated principal name {name[:64]!r}")
        if len(token) < MIN_TOKEN_CHARS or token in tokens.values():
            raise ValueError(f"the token of {name!r} is shorter than {MIN_TOKEN_CHARS} characters or repeated")
        tokens[name] = token
    return tokens


def _is_secret(field: FieldInfo) -> bool:
    return SecretStr in (field.annotation, *get_args(field.annotation))


SECRET_FIELDS = frozenset(name for name, f in Settings.model_fields.items() if _is_secret(f))
"""Settings whose values are secrets: never echoed in an error, redacted from every log, result and record."""
_BY_NAME: dict[str, tuple[str, FieldInfo]] = {str(f.alias): (n, f) for n, f in Settings.model_fields.items()}
SETTING_NAMES: tuple[str, ...] = tuple(_BY_NAME)
"""Every setting's name (its environment variable), in declaration order."""


def short_name(name: str) -> str:
    """A setting's key in a config file: ``FUSION_MAX_TOOL_CALLS`` -> ``max_tool_calls``, ``OPENROUTER_API_KEY`` ->
    ``api_key``, ``BRAVE_API_KEY`` -> ``brave_api_key``."""
    return re.sub(r"^(FUSION_|OPENROUTER_)", "", name).lower()


SHORT_NAMES: dict[str, str] = {short_name(name): name for name in SETTING_NAMES}
"""Short config-file key -> the setting's name."""
assert len(SHORT_NAMES) == len(SETTING_NAMES), "two settings share a short name"


def is_secret(name: str) -> bool:
    return _BY_NAME[name][0] in SECRET_FIELDS


def rule(name: str) -> str:
    """The sentence that says what ``name`` (an environment variable) accepts, from its field's metadata."""
    field = _BY_NAME[name][1]
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    text = str(extra["rule"]) if "rule" in extra else _derived(field, extra.get("unit"))
    return f"{text}, or empty for {extra['empty']}" if "empty" in extra else text


def _bound(field: FieldInfo, kind: type, name: str) -> float | None:
    """A numeric bound of the setting (``Ge``'s ``ge``, ...), if it has one."""
    for meta in field.metadata:
        value = getattr(meta, name, None) if isinstance(meta, kind) else None
        if isinstance(value, int | float):
            return value
    return None


def _derived(field: FieldInfo, unit: object) -> str:
    kinds = [a for a in (get_args(field.annotation) or (field.annotation,)) if a is not type(None)]
    if typing.get_origin(field.annotation) is Literal:
        kinds = [field.annotation]
    kind = kinds[0] if len(kinds) == 1 else None
    if typing.get_origin(kind) is Literal:
        return f"one of {', '.join(map(str, get_args(kind)))}"
    if kind is bool:
        return "true or false"
    if kind in (int, float):
        noun = "a whole number" if kind is int else "a number"
        noun += f" of {unit}" if unit else ""
        low = _bound(field, annotated_types.Ge, "ge")
        high = _bound(field, annotated_types.Le, "le")
        above = _bound(field, annotated_types.Gt, "gt")
        if low is not None and high is not None:
            return f"{noun} from {number(low)} to {number(high)}"
        if above is not None:
            return f"{noun} > {number(above)}"
        return f"{noun} >= {number(low)}" if low is not None else noun
    raise TypeError(f"setting {field.alias} needs a rule: its type {field.annotation} says none")  # pragma: no cover


def load_settings(
    environ: Mapping[str, str] | None = None, config_path: str | os.PathLike[str] | None = None
) -> Settings:
    """Build :class:`Settings` from a TOML file (optional) and the environment; raise :class:`ConfigError`."""
    environ = os.environ if environ is None else environ
    path = config_path if config_path is not None else environ.get("FUSION_CONFIG") or None
    values, origins = _read_toml(Path(path)) if path else ({}, {})
    for name in SETTING_NAMES:
        raw = environ.get(name)
        # An empty variable means "not set", as a host config often writes "" for an unused key.
        if raw is not None and raw.strip() != "":
            values[name] = raw
            origins.pop(name, None)
    try:
        settings = Settings.model_validate(values, context={"environ": environ})
    except ValidationError as exc:
        raise ConfigError(_first_error(exc, values, origins)) from None
    if settings.database_url is not None and not postgres_installed():
        raise ConfigError(POSTGRES_EXTRA)
    return settings


POSTGRES_EXTRA = (
    "FUSION_DATABASE_URL is set, but PostgreSQL support is not installed: pip install 'fusion-panel-mcp[postgres]'"
)


def postgres_installed() -> bool:
    """psycopg and its pool are importable (the ``[postgres]`` extra)."""
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        return False
    return True


def file_settings(path: Path) -> frozenset[str]:
    """The names of the settings a config file gives (``OPENROUTER_API_KEY``, ...), whether or not they are valid
    on their own; raises :class:`ConfigError` for a file that cannot be read as a config file at all."""
    return frozenset(_read_toml(path)[0])


def _read_toml(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The file's settings by name, and where each came from (``file, key 'fusion.model'``)."""
    import tomllib  # loaded when there is a config file, not at every start

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist (from --config or FUSION_CONFIG)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.__class__.__name__}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    table = data.pop("fusion", None) if isinstance(data.get("fusion"), dict) else None
    entries = [(key, key, value) for key, value in data.items()]
    entries += [(key, f"fusion.{key}", value) for key, value in (table or {}).items()]
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for key, written, value in entries:
        name = key.upper() if key.upper() in _BY_NAME else SHORT_NAMES.get(key.lower())
        if name is None:
            raise ConfigError(f"config file {path}: unknown setting {written!r}{did_you_mean(key)}")
        if name in origins:
            raise ConfigError(f"config file {path}: {name} is set twice, as {origins[name]!r} and {written!r}")
        values[name], origins[name] = value, written
    return values, {name: f"config file {path}, key {written!r}" for name, written in origins.items()}


OUR_VARIABLES = frozenset(
    {
        "FUSION_CONFIG",
        "FUSION_SLOW",
        "FUSION_NGINX",
        "FUSION_NODE",
        "FUSION_AI_SDK",
        "FUSION_MCPB",
        "FUSION_CONFORMANCE",
        "FUSION_INSPECTOR",
        "FUSION_CLAUDE",
        "FUSION_CODEX",
        "FUSION_OPENCODE",
        "FUSION_CHROMIUM",
        "FUSION_LAB_SCREENSHOTS",
    }
)
"""Environment variables of ours that are not settings: the config file's path, and the tools the test suite
and CI are told where to find (with every ``FUSION_TEST_*``). Never warned about."""
_SETTING_PREFIX = re.compile(r"(?i)(FUSION|OPENROUTER)_")


def closest_setting(written: str, among: Sequence[str] = SETTING_NAMES, cutoff: float = 0.6) -> str | None:
    """The setting of ``among`` a name that is none most likely meant, or ``None``: compared by short names
    (``analysys_models`` with ``analysis_models``), given in the style it was written (with or without the
    prefix; in lower case if it was). The one rule for config-file keys and environment variables."""
    shorts = {short_name(name): name for name in among}
    import difflib  # loaded for a suggestion, not at start

    close = difflib.get_close_matches(short_name(written.upper()), list(shorts), n=1, cutoff=cutoff)
    if not close:
        return None
    name = shorts[close[0]] if _SETTING_PREFIX.match(written) else close[0]
    return name.lower() if written.islower() else name.upper()


def did_you_mean(written: str) -> str:
    """What follows "``written`` is not a setting": the setting it most likely meant, or where they are listed."""
    close = closest_setting(written)
    return f"; did you mean {close!r}?" if close else " (fusion-mcp.example.toml lists every setting)"


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A warning for each ``FUSION_*`` environment variable that is neither a setting nor ours, and for each
    ``OPENROUTER_*`` one that is a misspelt setting (other programs have ``OPENROUTER_*`` variables of their
    own, such as ``OPENROUTER_MODEL``: those are left alone)."""
    found = []
    openrouter = [name for name in SETTING_NAMES if name.startswith("OPENROUTER_")]
    for name in sorted(environ):
        if name in _BY_NAME or name in OUR_VARIABLES or name.startswith("FUSION_TEST_"):
            continue
        if name.startswith("FUSION_"):
            found.append(
                f"environment variable {name} is not a setting of fusion-mcp and is ignored{did_you_mean(name)}"
            )
        elif name.startswith("OPENROUTER_") and (close := closest_setting(name, openrouter, cutoff=0.8)):
            found.append(
                f"environment variable {name} is not a setting of fusion-mcp and is ignored; did you mean {close!r}?"
            )
    return found


def _first_error(exc: ValidationError, values: Mapping[str, Any], origins: Mapping[str, str]) -> str:
    error = exc.errors()[0]
    name = str(error["loc"][0]) if error["loc"] else "configuration"
    if name in Settings.model_fields:  # a default that failed its check is named by its field, not its alias
        name = str(Settings.model_fields[name].alias)
    if name not in _BY_NAME:
        return f"invalid configuration: {error['msg']}"
    shown = "" if is_secret(name) else f"={str(values.get(name))[:80]!r}"
    where = f" ({origins[name]})" if name in origins else ""
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, Unmet):
        return f"invalid setting {name}{where}: {cause}"
    if isinstance(cause, Placeholder):
        get = f" (create one at {KEYS_PAGE}, or set {LOCAL_SERVER_HINT})" if name == "OPENROUTER_API_KEY" else ""
        return f"invalid setting {name}{where}: this is a placeholder from an example, not a real secret{get}"
    return f"invalid setting {name}{shown}{where}: must be {rule(name)}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(settings: Settings, host: str) -> None:
    """Refuse to listen beyond this machine without a token: anyone reaching the port could spend the key."""
    if not is_loopback(host) and not settings.principals:
        raise ConfigError(
            f"refusing to listen on {host} without FUSION_HTTP_TOKEN: anyone who can reach this port could run "
            "fusions on your API key. Set FUSION_HTTP_TOKEN or FUSION_HTTP_TOKENS (clients send "
            "'Authorization: Bearer <token>') or bind 127.0.0.1"
        )
