"""A chat-completions request: its shape, and which of Fusion's three entry points it uses.

As on OpenRouter, a request reaches fusion in one of three spellings:

- the model alias ``openrouter/fusion`` (or ``fusion``): the writer is the plugin's ``model``, else the
  configured analyst, which then also analyses (the analyst writes the final answer);
- a ``fusion`` plugin, ``plugins: [{"id": "fusion", ...}]``, on any other model;
- an ``openrouter:fusion`` tool entry, ``tools: [{"type": "openrouter:fusion", "parameters": {...}}]``,
  on any other model. In both, that model writes, and the analyst defaults to it.

:func:`plan_turn` reads a body once and says who writes, what the writer's requests carry (the caller's
messages, tools and other fields) and how fusion is set up, or that the writer is not offered fusion
(``enabled: false``, a nested call, no entry point). Every bad input is a :class:`ChatError` that names
the field, raised before anything is sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..config import PRESETS, Settings
from ..core.limits import MAX_COMPLETION_TOKENS
from ..core.model_ids import check_model_id
from ..core.models import FusionArgs
from ..core.tool_text import TOOL_NAME
from ..engine.admission import FusionRefused, argument_rule, prepare, server_pays

ALIASES = ("openrouter/fusion", "fusion")
"""Model ids that mean "a writer with fusion", as OpenRouter's alias does."""
PLUGIN_ID = "fusion"
TOOL_TYPE = "openrouter:fusion"
OPENROUTER_PRESETS = {"general-high": "quality", "general-budget": "budget", "general-fast": "fast"}
"""OpenRouter's preset slugs, and the preset of ours each one means."""
PRESET_RULE = f"one of {', '.join(PRESETS)} (or OpenRouter's {', '.join(OPENROUTER_PRESETS)})"
OWN_FIELDS = frozenset({"model", "messages", "tools", "tool_choice", "stream", "stream_options", "plugins", "n"})
"""Fields the server sets on the writer's requests itself; every other field of the caller's goes along as is."""

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    421: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


class ChatError(Exception):
    """A request answered with an HTTP error in OpenAI's shape: ``{"error": {"message", "type", "code", "param"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}

    @classmethod
    def bad_field(cls, param: str, detail: str) -> ChatError:
        return cls(400, f"{param}: {detail}", code="invalid_request", param=param)

    def body(self) -> dict[str, Any]:
        kind = ERROR_TYPES.get(self.status, "server_error" if self.status < 502 else "upstream_error")
        return {"error": {"message": self.message, "type": kind, "code": self.code, "param": self.param}}


class Open(BaseModel):
    """A request object that may carry fields the server does not read (they go to the writer as sent)."""

    model_config = ConfigDict(extra="allow")


class Message(Open):
    role: str = Field(min_length=1)


class StreamOptions(Open):
    include_usage: bool = False
    include_fusion_events: bool = False
    """Ours: the fusion run's events (the Responses API's ``response.fusion_call.*``) as SSE comments."""


class ChatBody(Open):
    """The fields the server reads; any other field is the writer's (temperature, max_tokens, provider...)."""

    model: str
    messages: list[Message] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    plugins: list[Any] | None = None
    n: int | None = None
    max_tokens: int | None = Field(None, ge=1, strict=True)
    max_completion_tokens: int | None = Field(None, ge=1, strict=True)

    @field_validator("model")
    @classmethod
    def _model_id(cls, value: str) -> str:
        return check_model_id(value)

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int | None) -> int | None:
        if value not in (None, 1):
            raise ValueError("only 1 choice per request is supported")
        return value


class FusionConfig(BaseModel):
    """What a plugin or tool entry may set, with OpenRouter's names; the run's knobs (temperature, reasoning,
    tools, max_completion_tokens) are checked by the same argument rules as the MCP tool's and ``ask``'s."""

    model_config = ConfigDict(extra="forbid")

    analysis_models: list[str] | None = None
    model: str | None = None
    max_tool_calls: int | None = None
    preset: str | None = None
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_COMPLETION_TOKENS)
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    reasoning: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    """The panel's tools: ``[]`` turns web tools off for the run; any other list keeps the server's web tools."""


class FusionPlugin(FusionConfig):
    id: Literal["fusion"]
    enabled: bool = True


@dataclass(frozen=True)
class FusionSetup:
    """How fusion runs when the writer calls it: the entry point's settings, checked."""

    analysis_models: list[str] | None
    analyst: str
    max_tool_calls: int | None
    preset: str | None
    overrides: dict[str, Any]
    """Fields of the run's :class:`FusionRequest` the entry point sets (temperature, token cap, web tools off),
    as the caller wrote them: they reach the run as the call's arguments (:meth:`args`)."""
    knobs: dict[str, Any] = field(default_factory=dict)
    """The entry point's per-call knobs under their argument names (temperature, reasoning, tools,
    max_completion_tokens), for :func:`~fusion_mcp.engine.admission.prepare` to check and apply."""

    def args(self, prompt: str, context: str | None, deadline_s: float) -> FusionArgs:
        return FusionArgs(
            prompt=prompt,
            context=context,
            analysis_models=self.analysis_models,
            model=self.analyst,
            max_tool_calls=self.max_tool_calls,
            preset=self.preset,
            deadline_s=deadline_s,
            **self.knobs,
        )


@dataclass
class Plan:
    """One request, read: who writes, what the writer's requests carry, and fusion's set-up (None: not offered)."""

    writer: str
    messages: list[dict[str, Any]]
    fields: dict[str, Any]
    """The caller's other fields, sent along on every writer request."""
    tools: list[dict[str, Any]]
    """The caller's tools (function tools and other server tools), without fusion's entry."""
    tool_choice: str | dict[str, Any] | None
    stream: bool
    include_usage: bool
    fusion_events: bool = False
    """A streamed chat reply carries the fusion events as comments (``stream_options.include_fusion_events``)."""
    max_tokens: int = MAX_COMPLETION_TOKENS
    """The most a writer request may answer: the caller's ``max_tokens`` (or ``max_completion_tokens``), at most
    ``FUSION_MAX_COMPLETION_TOKENS``, which is the default; it is what each request's worst-case cost counts."""
    fusion: FusionSetup | None = None


def plan_turn(raw: Any, settings: Settings, *, depth: int, lent: bool = False) -> Plan:
    """Read a request body; raise :class:`ChatError` (400, naming the field) for anything malformed.

    ``depth`` is the incoming ``x-openrouter-fusion-depth``: from 1 on, fusion is not offered at all (nor
    with ``FUSION_ENABLED=false``).
    """
    if not isinstance(raw, dict):
        raise ChatError(400, "the request body must be a JSON object", code="invalid_request")
    body = validated(ChatBody, raw, "")
    plugins, tools, entries = _sort_entries(body)
    if len(entries) > 1:
        where = " and ".join(w for w, _ in entries)
        raise ChatError.bad_field(entries[1][0], f"fusion is configured twice ({where}); give it once")
    where, config = entries[0] if entries else ("plugins[0]", FusionConfig() if body.model in ALIASES else None)
    preset = _preset(where, config)
    writer = body.model
    if body.model in ALIASES:
        own = config.model if config is not None else None
        writer = _model_id(f"{where}.model", own) if own else settings.models_for(preset)[1]
    writer_field = "model" if writer == body.model else f"{where}.model"
    try:
        settings.route(writer)
    except ValueError as exc:  # an id that names no configured provider: said now, not by a failed request
        raise ChatError.bad_field(writer_field, str(exc)) from None
    why = server_pays(settings, writer) if lent else None
    if why is not None:  # the writer's requests would go out on the server's key, and nothing caps a lent caller
        raise ChatError.bad_field(writer_field, why)
    switched_off = isinstance(config, FusionPlugin) and not config.enabled
    enabled = config is not None and settings.enabled and depth < 1 and not switched_off
    fields = {k: v for k, v in raw.items() if k not in OWN_FIELDS}
    if plugins:
        fields["plugins"] = plugins
    max_tokens = _clamped(body, fields, settings.max_completion_tokens)
    plan = Plan(
        writer=writer,
        messages=[m.model_dump() for m in body.messages],
        fields=fields,
        tools=tools,
        tool_choice=body.tool_choice,
        stream=body.stream,
        include_usage=bool(body.stream_options and body.stream_options.include_usage),
        fusion_events=bool(body.stream_options and body.stream_options.include_fusion_events),
        max_tokens=max_tokens,
    )
    if enabled and config is not None:
        _no_clash(tools)
        plan.fusion = _setup(where, config, preset, writer, settings)
    return plan


def _clamped(body: ChatBody, fields: dict[str, Any], cap: int) -> int:
    """The writer's answer cap: the caller's, at most ``cap`` (``FUSION_MAX_COMPLETION_TOKENS``), and the default.

    It is written into ``fields`` under the names the caller used (``max_completion_tokens`` when it used
    neither), so every writer request carries it: the worst case the spending caps count is then a bound.
    """
    caps = (("max_tokens", body.max_tokens), ("max_completion_tokens", body.max_completion_tokens))
    given = {name: value for name, value in caps if value is not None}
    limit = min([cap, *given.values()])
    for name in list(given) or ["max_completion_tokens"]:
        fields[name] = limit
    return limit


def _sort_entries(body: ChatBody) -> tuple[list[Any], list[dict[str, Any]], list[tuple[str, FusionConfig]]]:
    """(other plugins, the caller's tools, fusion's entries with where each was found)."""
    plugins: list[Any] = []
    entries: list[tuple[str, FusionConfig]] = []
    for i, plugin in enumerate(body.plugins or []):
        if not isinstance(plugin, dict) or not isinstance(plugin.get("id"), str):
            raise ChatError.bad_field(f"plugins[{i}]", "must be an object with an id")
        if plugin["id"] == PLUGIN_ID:
            entries.append((f"plugins[{i}]", validated(FusionPlugin, plugin, f"plugins[{i}]")))
        else:
            plugins.append(plugin)
    tools: list[dict[str, Any]] = []
    for i, tool in enumerate(body.tools or []):
        if tool.get("type") == TOOL_TYPE:
            where = f"tools[{i}].parameters"
            parameters = tool.get("parameters") or {}
            if not isinstance(parameters, dict):
                raise ChatError.bad_field(where, "must be an object")
            entries.append((where, validated(FusionConfig, parameters, where)))
        else:
            tools.append(tool)
    return plugins, tools, entries


def _preset(where: str, config: FusionConfig | None) -> Any:
    if config is None or config.preset is None:
        return None
    preset = OPENROUTER_PRESETS.get(config.preset, config.preset)
    if preset not in PRESETS:
        raise ChatError.bad_field(f"{where}.preset", f"must be {PRESET_RULE}")
    return preset


def _no_clash(tools: list[dict[str, Any]]) -> None:
    for i, tool in enumerate(tools):
        function = tool.get("function")
        if isinstance(function, dict) and function.get("name") == TOOL_NAME:
            raise ChatError.bad_field(
                f"tools[{i}].function.name", f"{TOOL_NAME} is the fusion tool's name here; name your tool otherwise"
            )


def _setup(where: str, config: FusionConfig, preset: str | None, writer: str, settings: Settings) -> FusionSetup:
    """The fusion set-up, with every argument rule applied now so a bad one is a 400, not a failed run later."""
    overrides: dict[str, Any] = {}
    if config.temperature is not None:
        overrides["temperature"] = config.temperature
    if config.max_completion_tokens is not None:
        overrides["max_completion_tokens"] = config.max_completion_tokens
    if config.tools == []:
        overrides["web_tools"] = "off"
    knobs = {
        name: value
        for name in ("temperature", "reasoning", "tools", "max_completion_tokens")
        if (value := getattr(config, name)) is not None
    }
    setup = FusionSetup(
        analysis_models=config.analysis_models,
        analyst=config.model or writer,
        max_tool_calls=config.max_tool_calls,
        preset=preset,
        overrides=overrides,
        knobs=knobs,
    )
    try:
        # A stand-in prompt: only the entry point's own arguments are being checked here.
        prepare(setup.args("-", None, settings.deadline_s), settings, depth=0)
    except FusionRefused as refused:
        if refused.argument is not None:
            detail = argument_rule(refused.argument, refused.detail)
            raise ChatError.bad_field(f"{where}.{refused.argument}", f"must be {detail}") from None
    return setup


def _model_id(param: str, value: str) -> str:
    try:
        return check_model_id(value)
    except ValueError as exc:
        raise ChatError.bad_field(param, str(exc)) from None


def validated(model: type[BaseModel], data: dict[str, Any], where: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        path = where
        for part in error["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        message = str(error["msg"]).removeprefix("Value error, ")
        raise ChatError.bad_field(path or "body", message[:1].lower() + message[1:]) from None
