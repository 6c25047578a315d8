"""Providers: the named OpenAI-compatible endpoints a panel, an analyst or a chat writer may be on.

A config file names them in ``[providers.NAME]`` tables (``FUSION_PROVIDERS``, a JSON object, in the
environment); each has a base URL, where its key comes from, extra headers, the model ids it serves
(patterns) and prices for those its catalogue does not price. A built-in template fills in the rest, so
``[providers.work-openai]`` with ``template = "openai"`` is a whole entry (its key from ``OPENAI_API_KEY``).

Which provider a model id goes to (:func:`route`), in this order:

1. ``NAME:id`` where ``NAME`` is a configured provider (or ``default``): that provider, sent ``id``;
2. the first provider, in the file's order, with a pattern (``models``) the id matches as written: that
   provider, sent the id as written;
3. an id whose head before its first ``:`` could be a provider's name but is none (``wrok:gpt-5``, or an
   Ollama id such as ``qwen3:8b`` no pattern claims): refused, naming the configured providers;
4. anything else (every OpenRouter id: ``vendor/model``, ``vendor/model:free``, ``~vendor/model-latest``):
   the default provider, ``OPENROUTER_BASE_URL`` with ``OPENROUTER_API_KEY``.

So the explicit prefix wins over a pattern, and a lens (``model#skeptic``) is split off first. With no
providers configured none of this applies: every id goes to the one base URL, as before.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from ..core.errors import MIN_SECRET_CHARS
from ..core.model_ids import DEFAULT_PROVIDER, PROVIDER_NAME, PROVIDER_NAME_RULE, check_model_id, provider_prefix

OPENROUTER_ORIGIN = "https://openrouter.ai/"
TemplateName = Literal["openrouter", "openai", "anthropic", "gemini", "ollama", "lmstudio", "vllm"]
FREE = (0.0, 0.0)

TEMPLATES: dict[str, dict[str, Any]] = {
    "openrouter": {"base_url": "https://openrouter.ai/api/v1", "api_key_env": "OPENROUTER_API_KEY"},
    "openai": {"base_url": "https://api.openai.com/v1", "api_key_env": "OPENAI_API_KEY", "attribution": False},
    # Anthropic's OpenAI SDK compatibility endpoint.
    "anthropic": {"base_url": "https://api.anthropic.com/v1", "api_key_env": "ANTHROPIC_API_KEY", "attribution": False},
    # Gemini's OpenAI-compatible endpoint.
    "gemini": {
        "base_url": "https://generativelanguage.googleapis.com/v1beta/openai",
        "api_key_env": "GEMINI_API_KEY",
        "attribution": False,
    },
    # Local servers: no key, and a model on your own hardware costs no US dollars.
    "ollama": {"base_url": "http://localhost:11434/v1", "prices": {"*": FREE}},
    "lmstudio": {"base_url": "http://localhost:1234/v1", "prices": {"*": FREE}},
    "vllm": {"base_url": "http://localhost:8000/v1", "prices": {"*": FREE}},
}
"""Each built-in template's defaults; an entry's own keys override them."""

PROVIDER_KEYS = ("template", "base_url", "api_key_env", "api_key", "headers", "models", "prices", "attribution")
PROVIDERS_RULE = (
    "a table of providers, [providers.NAME] with NAME of "
    f"{PROVIDER_NAME_RULE} (not {DEFAULT_PROVIDER!r}), each with template (one of {', '.join(TEMPLATES)}) and/or "
    "base_url, and optionally api_key_env, api_key, headers, models (patterns), prices "
    "({pattern = [prompt, completion]} in USD per million tokens) and attribution; a JSON object in the environment"
)
_SECRET_HEADER_WORDS = ("key", "token", "auth", "secret")


class Endpoint(BaseModel):
    """One provider, resolved: where its requests go, with which key and headers, and what it charges."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    base_url: str
    api_key: SecretStr | None = None
    api_key_env: str | None = None
    """The environment variable the key is read from (what ``host-config`` writes as a reference)."""
    key_missing: bool = False
    """The entry names a variable for its key and the variable is not set."""
    template: str | None = None
    headers: dict[str, str] = Field(default_factory=dict, repr=False)
    """Extra request headers; left out of ``repr``, as a header may carry a key."""
    models: tuple[str, ...] = ()
    prices: dict[str, tuple[float, float]] = {}
    """Pattern -> (prompt, completion) USD per *token* (written per million tokens in the config file)."""
    attribution: bool = True
    """Send ``HTTP-Referer``, ``X-Title`` and ``x-openrouter-fusion-depth`` (OpenRouter and custom endpoints,
    which may be another fusion server; the vendors' APIs do not want them)."""
    named: bool = True
    """A configured provider (False: the default one, ``OPENROUTER_BASE_URL``)."""

    @property
    def is_openrouter(self) -> bool:
        return self.base_url.startswith(OPENROUTER_ORIGIN)

    @property
    def secrets(self) -> tuple[str, ...]:
        """This provider's key, and header values that carry one (``api-key``, ``x-goog-api-key``...)."""
        found = [self.api_key.get_secret_value()] if self.api_key is not None else []
        found += [v for k, v in self.headers.items() if any(w in k.lower() for w in _SECRET_HEADER_WORDS)]
        return (*found, *url_passwords(self.base_url))

    def price(self, model: str) -> tuple[float, float] | None:
        """The configured (prompt, completion) USD per token of ``model`` (as sent), or None."""
        if model in self.prices:
            return self.prices[model]
        return next((p for pattern, p in self.prices.items() if fnmatch.fnmatchcase(model, pattern)), None)

    def serves(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)

    def identity(self) -> str:
        """Which provider and account answer: its name, base URL and a fingerprint of its key (never the key)."""
        key = self.api_key.get_secret_value() if self.api_key is not None else ""
        return f"{self.name} {self.base_url} {hashlib.sha256(key.encode()).hexdigest()[:32]}"


def url_passwords(url: str) -> tuple[str, ...]:
    """The password in a URL's userinfo (``https://user:PASSWORD@host/``) or its ``password`` query parameter, as
    written (percent-encoded) and as sent: a secret wherever it turns up on its own (an error quoting the URL)."""
    try:
        parts = urlsplit(url)
        written = [parts.password or "", *(v for k, v in parse_qsl(parts.query) if k == "password")]
    except ValueError:  # not a URL one could connect to: nothing in it is sent anywhere
        return ()
    return tuple(dict.fromkeys(p for w in written if w for p in (w, unquote(w))))


def shown_url(url: str) -> str:
    """``url`` as messages show it: a password in it (:func:`url_passwords`) replaced by ``[redacted]``."""
    for password in url_passwords(url):
        url = url.replace(password, "[redacted]")
    return url


class UnknownProvider(ValueError):
    """A model id that names no configured provider; its message names those there are."""


def route(providers: Mapping[str, Endpoint], default: Endpoint, model: str) -> tuple[Endpoint, str]:
    """(provider, the id it is sent) for a model id (no lens), by the rule in this module's docstring."""
    if not providers:
        return default, model
    prefixed = provider_prefix(model)
    if prefixed is not None:
        name, rest = prefixed
        if name == DEFAULT_PROVIDER:
            return default, rest
        if name in providers:
            return providers[name], rest
    for endpoint in providers.values():
        if endpoint.serves(model):
            return endpoint, model
    if prefixed is not None:
        names = ", ".join([*providers, DEFAULT_PROVIDER])
        raise UnknownProvider(
            f"{model[:60]!r} names no configured provider {prefixed[0]!r} (the providers are {names}; an id with a "
            f"colon such as an Ollama tag is written PROVIDER:{model[:40]}, or matched by a provider's models patterns)"
        )
    return default, model


def parse_providers(value: Any, environ: Mapping[str, str] | None = None) -> dict[str, Endpoint]:
    """``FUSION_PROVIDERS``: a table of named providers, resolved (templates applied, keys read from
    ``environ``); ``ValueError`` names the provider and what is wrong, never a key."""
    if isinstance(value, str):
        import json

        try:
            value = json.loads(value) if value.strip() else {}
        except ValueError:
            raise ValueError("not a JSON object") from None
    if not isinstance(value, dict):
        raise ValueError("not a table of providers")
    environ = os.environ if environ is None else environ
    return {str(name): _endpoint(str(name), entry, environ) for name, entry in value.items()}


def _endpoint(name: str, entry: Any, environ: Mapping[str, str]) -> Endpoint:
    if not PROVIDER_NAME.fullmatch(name) or name == DEFAULT_PROVIDER:
        raise ValueError(f"bad provider name {name[:40]!r}: {PROVIDER_NAME_RULE}, not {DEFAULT_PROVIDER!r}")
    if not isinstance(entry, dict):
        raise ValueError(f"provider {name!r} is not a table")
    unknown = [k for k in entry if k not in PROVIDER_KEYS]
    if unknown:
        raise ValueError(f"provider {name!r} has the unknown key {str(unknown[0])[:40]!r} ({', '.join(PROVIDER_KEYS)})")
    template = entry.get("template")
    if template is not None and template not in TEMPLATES:
        raise ValueError(f"provider {name!r}: unknown template {str(template)[:40]!r} (one of {', '.join(TEMPLATES)})")
    merged = {**(TEMPLATES[template] if template else {}), **entry}
    base_url = merged.get("base_url")
    if not isinstance(base_url, str) or not base_url.strip().startswith(("http://", "https://")):
        raise ValueError(f"provider {name!r} needs a base_url, an http:// or https:// URL (or a template)")
    key_env = merged.get("api_key_env")
    if key_env is not None and (not isinstance(key_env, str) or not key_env.strip()):
        key_env = None
    key = entry.get("api_key")
    if key is not None:
        key_env = None  # the entry's own key wins over its template's variable
    elif key_env is not None:
        key = environ.get(key_env, "").strip() or None
    if key is not None:
        key = _checked_key(name, key)
    return Endpoint(
        name=name,
        base_url=base_url.strip().rstrip("/"),
        api_key=SecretStr(key) if key is not None else None,
        api_key_env=key_env,
        key_missing=key is None and key_env is not None,
        template=template,
        headers=_headers(name, merged.get("headers") or {}),
        models=_patterns(name, merged.get("models") or []),
        prices=_prices(name, merged.get("prices") or {}),
        attribution=_flag(name, "attribution", merged.get("attribution", True)),
    )


def _checked_key(name: str, key: object) -> str:
    from .settings import is_placeholder  # the one placeholder rule; settings imports this module

    if not isinstance(key, str) or not key.strip():
        raise ValueError(f"the key of provider {name!r} is empty")
    text: str = key.strip()
    if is_placeholder(text):
        raise ValueError(f"the key of provider {name!r} is a placeholder from an example, not a real key")
    if not all(" " < c < "\x7f" for c in text):
        raise ValueError(f"the key of provider {name!r} is not printable ASCII")
    if len(text) < MIN_SECRET_CHARS:
        raise ValueError(f"the key of provider {name!r} is shorter than {MIN_SECRET_CHARS} characters")
    return text


def _headers(name: str, value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError(f"the headers of provider {name!r} are not a table of text values")
    for header, text in value.items():
        if not header.strip() or not all(" " < c < "\x7f" for c in header) or not all(" " <= c < "\x7f" for c in text):
            raise ValueError(f"provider {name!r}: header {header[:40]!r} is not printable ASCII")
        if header.lower() in ("authorization", "content-type", "content-length", "host"):
            raise ValueError(f"provider {name!r}: header {header!r} is set by fusion-mcp (the key goes in api_key)")
    return dict(value)


def _patterns(name: str, value: Any) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(p, str) and p.strip() for p in items):
        raise ValueError(f"the models of provider {name!r} are not a list of id patterns")
    for pattern in items:
        if "#" in pattern:
            raise ValueError(f"provider {name!r}: pattern {pattern[:40]!r} has '#', which no model id has")
    return tuple(p.strip() for p in items)


def _prices(name: str, value: Any) -> dict[str, tuple[float, float]]:
    if not isinstance(value, dict):
        raise ValueError(f"the prices of provider {name!r} are not a table")
    prices: dict[str, tuple[float, float]] = {}
    for pattern, pair in value.items():
        ok = isinstance(pair, list | tuple) and len(pair) == 2
        ok = ok and all(isinstance(p, int | float) and not isinstance(p, bool) and 0 <= p < 1e6 for p in pair)
        if not ok:
            raise ValueError(
                f"provider {name!r}: the price of {str(pattern)[:40]!r} must be [prompt, completion] in USD per "
                "million tokens, two numbers >= 0"
            )
        prices[str(pattern)] = (pair[0] / 1e6, pair[1] / 1e6)
    return prices


def _flag(name: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"provider {name!r}: {key} must be true or false")
    return value


def check_routes(providers: Mapping[str, Endpoint], default: Endpoint, models: tuple[str, ...]) -> None:
    """Raise :class:`UnknownProvider` for the first of ``models`` (ids, no lens) that routes nowhere."""
    for model in models:
        route(providers, default, check_model_id(model))
