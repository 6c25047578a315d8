"""The one request path: a call becomes a :class:`FusionRequest`, or a refusal that says why, before
anything is spent.

Every front end (the MCP tool, ``fusion-mcp ask``, the HTTP chat-completions endpoint) hands its call
over as :class:`~fusion_mcp.core.models.FusionArgs` and gets the same rules in the same order:

1. :func:`prepare` (no I/O): each argument's rule, then the caller's fusion depth, then the API key;
2. :func:`~fusion_mcp.engine.catalogue_check.check_catalogue` (inside a run slot, as it may ask the
   provider): unknown model ids with the closest known ones, the cost cap, and which models cannot call
   tools.

A refusal is a :class:`FusionRefused`; front ends only translate it into their own shape.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..config import KEYS_PAGE, LOCAL_SERVER_HINT, PRESET_NAMES, Preset, Settings
from ..core.callers import DEPTH_HEADER
from ..core.lenses import PANEL_ENTRIES_RULE, SEPARATOR, check_panel, split_entry
from ..core.limits import (
    MAX_COMPLETION_TOKENS,
    MAX_DEADLINE_S,
    MAX_FILES,
    MAX_GUEST_CHARS,
    MAX_GUESTS,
    MAX_PANEL,
    MAX_TOOL_CALLS,
    MIN_DEADLINE_S,
    MIN_TOOL_CALLS,
)
from ..core.model_ids import MODEL_ID_RULE, check_model_id
from ..core.models import FailureReason, FusionArgs, FusionRequest, FusionResult, GuestAnswer
from ..core.strict_json import lone_surrogate
from ..core.text import number

log = logging.getLogger(__name__)
T = TypeVar("T")
REASONING_EFFORTS = ("max", "xhigh", "high", "medium", "low", "minimal", "none")
"""OpenRouter's ``reasoning.effort`` values."""

ARGUMENT_RULES: dict[str, str] = {
    "prompt": "a non-empty, self-contained question, at most FUSION_MAX_PROMPT_CHARS characters with the context",
    "context": "the material the panel needs, at most FUSION_MAX_PROMPT_CHARS characters with the prompt",
    "analysis_models": PANEL_ENTRIES_RULE,
    "model": f"{MODEL_ID_RULE} (the analyst takes no lens)",
    "max_tool_calls": f"a whole number from {MIN_TOOL_CALLS} to {MAX_TOOL_CALLS}",
    "preset": f"one of {', '.join(PRESET_NAMES)}",
    "deadline_s": f"a number of seconds from {number(MIN_DEADLINE_S)} to {number(MAX_DEADLINE_S)}",
    "answers": f"at most {MAX_GUESTS} answers, each a unique label (letters, digits, space, . _ -, up to 40 "
    f"characters) and non-empty content of at most {MAX_GUEST_CHARS:,} characters",
    "files": f"at most {MAX_FILES} paths of UTF-8 text files or PNG, JPEG, WebP or GIF images inside the allowed "
    "roots (the client's MCP roots, else FUSION_FILES_ROOTS), together within FUSION_FILES_MAX_BYTES",
    "temperature": "a number from 0 to 2: the panel's sampling temperature (the analyst always runs at 0)",
    "reasoning": f"an object with effort (one of {', '.join(REASONING_EFFORTS)}) and/or max_tokens (a whole number "
    "from 1 to 1,000,000): the panel's reasoning, and the analyst's where its catalogue entry lists reasoning",
    "tools": "[] for a panel without web tools (it answers from its own knowledge); any other list, or none, keeps "
    "the server's web tools",
    "max_completion_tokens": f"a whole number from 1 to {MAX_COMPLETION_TOKENS:,}: each answer's token cap, at most "
    "FUSION_MAX_COMPLETION_TOKENS (the default)",
}
"""What each call argument accepts, in the words every refusal and every schema description uses."""


class FusionRefused(Exception):
    """A call refused before anything was spent.

    ``argument`` names the call argument at fault (for ``invalid_arguments``), so a front end can say it in
    its own terms (``--models`` on the command line); ``message`` says it in the tool's terms.
    """

    def __init__(self, reason: FailureReason, message: str, *, argument: str | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.reason: FailureReason = reason
        self.message = message
        self.argument = argument
        self.detail = detail

    @classmethod
    def bad_argument(cls, name: str, detail: str = "") -> FusionRefused:
        return cls(
            "invalid_arguments",
            f"invalid argument {name}: must be {argument_rule(name, detail)}",
            argument=name,
            detail=detail,
        )

    def result(self, run_id: str) -> FusionResult:
        return FusionResult.failure(run_id, self.reason, self.message)


class ToolArguments(BaseModel):
    """The arguments of ``openrouter_fusion`` as a caller sends them (JSON), before the rules of :func:`prepare`.

    The types and bounds match the tool's published input schema; an argument not listed here is refused.
    """

    model_config = ConfigDict(extra="forbid", defer_build=True)  # built by the first call, not at start

    prompt: str = Field(min_length=1)
    context: str | None = None
    analysis_models: list[str] | None = Field(None, min_length=1, max_length=MAX_PANEL)
    model: str | None = None
    max_tool_calls: int | None = Field(None, ge=MIN_TOOL_CALLS, le=MAX_TOOL_CALLS)
    preset: Preset | None = None
    answers: list[GuestAnswer] | None = Field(None, max_length=MAX_GUESTS)
    files: list[str] | None = Field(None, max_length=MAX_FILES)
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    reasoning: dict[str, Any] | None = None
    tools: list[Any] | None = None
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_COMPLETION_TOKENS)

    @field_validator("max_tool_calls", "max_completion_tokens", "temperature", mode="before")
    @classmethod
    def _not_a_bool(cls, value: Any) -> Any:
        # JSON true is not a number of calls, whatever Python's bool-is-int says.
        if isinstance(value, bool):
            raise ValueError("a boolean")
        return value


def parse_arguments(raw: Any) -> FusionArgs:
    """``raw`` tool arguments as :class:`FusionArgs`, or :class:`FusionRefused` naming the first argument at fault.

    Every front end that takes the tool's arguments as JSON uses this, so a wrong type, a missing prompt and
    a misspelt argument name are refused in the same words as every other rule.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise FusionRefused("invalid_arguments", "invalid arguments: must be a JSON object of named arguments")
    try:
        parsed = ToolArguments.model_validate(raw)
    except ValidationError as exc:
        raise _refusal(exc.errors()[0], raw) from None
    return FusionArgs(**dict(parsed))


def _refusal(error: Any, raw: dict[str, Any]) -> FusionRefused:
    name = str(error["loc"][0]) if error["loc"] else "arguments"
    if error["type"] == "extra_forbidden":
        known = ", ".join(ToolArguments.model_fields)
        return FusionRefused(
            "invalid_arguments", f"unknown argument {name[:60]!r}: the arguments are {known}", argument=name
        )
    if error["type"] == "missing":
        return FusionRefused.bad_argument(name, "missing")
    if error["type"] == "string_unicode":  # pydantic's word for a lone surrogate
        return FusionRefused.bad_argument(name, NOT_TEXT)
    return FusionRefused.bad_argument(name, f"got {_shown(raw.get(name))}")


def _shown(value: Any) -> str:
    """A short description of a value a caller sent (never a long echo of it)."""
    if isinstance(value, str):
        return repr(value[:40] + ("..." if len(value) > 40 else ""))
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return "an object"
    return "null" if value is None else repr(value)[:40]


def argument_rule(name: str, detail: str = "") -> str:
    """``name``'s rule, with what was wrong with the value given (``detail``) when there is something to say."""
    return f"{ARGUMENT_RULES[name]} ({detail})" if detail else ARGUMENT_RULES[name]


def prepare(args: FusionArgs, settings: Settings, *, depth: int, lent: bool = False) -> FusionRequest:
    """Merge ``args`` over ``settings`` and apply every rule that needs no network; raise :class:`FusionRefused`.

    ``depth`` is the caller's fusion depth (the incoming ``x-openrouter-fusion-depth``, or ``FUSION_DEPTH``).
    ``lent``: the caller pays with its own key, and gets none of the server's own resources — the files
    under ``FUSION_FILES_ROOTS``, the local web tools (the server's search-API key, fetches from its network)
    — unless ``FUSION_PASS_THROUGH_SERVER_TOOLS`` allows them.
    """
    prompt = _question(args, settings)
    preset = next((name for name in PRESET_NAMES if name == args.preset), None)
    if args.preset is not None and preset is None:
        raise FusionRefused.bad_argument("preset")
    analyst = _checked(
        "model", lambda v: _routed(settings, (_analyst_id(v),))[0], args.model, settings.models_for(preset)[1]
    )
    lenses = settings.all_lenses
    panel = _checked(
        "analysis_models",
        lambda v: _routed(settings, check_panel(v, lenses)),
        args.analysis_models,
        settings.models_for(preset, analyst)[0],
    )
    given = {"panel_given": args.analysis_models is not None, "analyst_given": args.model is not None}
    origins = _preset_origins(settings, preset, analyst=analyst, **given)
    guests: tuple[GuestAnswer, ...] = _checked("answers", _guests, args.answers, ())
    files: tuple[str, ...] = _checked("files", _files, args.files, ())
    roots = tuple(args.file_roots) if args.file_roots else tuple(str(r) for r in settings.files_roots)
    if files and not roots:
        raise FusionRefused.bad_argument(
            "files", "no roots: the client declared no MCP roots and FUSION_FILES_ROOTS is not set"
        )
    server_tools = not lent or settings.pass_through_server_tools
    if files and not server_tools:
        raise FusionRefused.bad_argument("files", SERVER_FILES)
    tool_calls = settings.max_tool_calls if args.max_tool_calls is None else args.max_tool_calls
    if not MIN_TOOL_CALLS <= tool_calls <= MAX_TOOL_CALLS:
        raise FusionRefused.bad_argument("max_tool_calls", f"{tool_calls} given")
    deadline = args.deadline_s
    if deadline is not None and not (math.isfinite(deadline) and MIN_DEADLINE_S <= deadline <= MAX_DEADLINE_S):
        raise FusionRefused.bad_argument("deadline_s", f"{deadline:g} given")
    knobs = _knobs(args, settings)
    web = "off" if args.tools == [] else settings.web_mode
    if depth >= 1:
        raise FusionRefused(
            "fusion_invocation_capped",
            f"fusion was already invoked upstream (depth {depth}); nested fusion calls are refused",
        )
    ids = request_ids(panel, analyst)
    _who_pays(settings, ids, lent=lent)
    return FusionRequest(
        prompt=prompt,
        context=args.context if args.context and args.context.strip() else None,
        analysis_models=panel,
        model=analyst,
        max_tool_calls=tool_calls,
        **knobs,
        stream=settings.stream,
        deadline_s=deadline,
        # FUSION_ANALYST_RESERVE_S belongs to FUSION_DEADLINE_S; a call with a deadline of its own (ask --deadline)
        # gets the default share of it.
        analyst_reserve_s=settings.analyst_reserve_s if deadline == settings.deadline_s else None,
        final_answer=args.final_answer,
        # OpenRouter's server tools bill the lent key itself; ours would spend the server's search key and network.
        web_tools="off" if web == "local" and not server_tools else web,
        # OpenRouter's server tools exist on OpenRouter only: a member on another provider answers without them.
        no_tools=_off_openrouter(settings, ids) if web == "openrouter" else (),
        lenses={lens: lenses[lens] for entry in panel if (lens := split_entry(entry)[1]) is not None},
        guests=guests,
        min_answers=settings.min_answers,
        files=files,
        file_roots=roots if files else (),
        preset_origins={model: origin for model, origin in origins.items() if model in request_ids(panel, analyst)},
    )


def _preset_origins(
    settings: Settings, preset: Preset | None, *, panel_given: bool, analyst: str, analyst_given: bool
) -> dict[str, str]:
    """The model ids a preset chose for this call, each with a sentence saying which preset, where it was
    named, and how to choose models instead. As in ``Settings.models_for``: the call's preset, over
    ``FUSION_ANALYSIS_MODELS`` and ``FUSION_MODEL``, over ``FUSION_PRESET``; the self preset's panel is its
    analyst (``FUSION_MODEL``, else the quality preset's)."""
    chosen = preset or settings.preset
    if preset is not None:
        named = f"the call's preset {preset!r}"
    elif "preset" in settings.model_fields_set:
        named = f"the preset {chosen!r} (FUSION_PRESET, or preset in the config file)"
    else:
        named = f"the default preset {chosen!r} (FUSION_PRESET is not set)"
    fixed = preset is not None and preset != "self"
    lensed = preset == "self" or (preset is None and chosen == "self" and settings.configured_panel is None)
    origins: dict[str, str] = {}
    if not panel_given and not lensed and (fixed or settings.configured_panel is None):
        origins.update(
            (split_entry(entry)[0], f"it came from {named}: {PRESET_WAY_OUT}")
            for entry in settings.models_for(preset, analyst)[0]
        )
    if not analyst_given and (fixed or settings.configured_analyst is None):
        way_out = SELF_WAY_OUT if chosen == "self" else PRESET_WAY_OUT
        origins[analyst] = f"it came from {named}: {way_out}"
    return origins


PRESET_WAY_OUT = (
    "name the models this provider serves instead, with FUSION_ANALYSIS_MODELS and FUSION_MODEL (or the call's "
    "analysis_models and model), or use the self preset with FUSION_MODEL set to one of them"
)
"""How to choose models instead of a preset's, which a local server serves none of."""
SELF_WAY_OUT = (
    "the self preset takes its model from FUSION_MODEL (or the call's model), and the quality preset's analyst "
    "when neither is set: set FUSION_MODEL to a model this provider serves"
)


NOT_TEXT = "holds a lone surrogate (\\ud800-\\udfff), which is not text: it cannot be sent to any model"
SERVER_FILES = "this server reads its files only for callers that use its own key, see FUSION_PASS_THROUGH_SERVER_TOOLS"


def _question(args: FusionArgs, settings: Settings) -> str:
    """The prompt, stripped, once the prompt and context are text and fit ``FUSION_MAX_PROMPT_CHARS`` together."""
    prompt = args.prompt.strip()
    if not prompt:
        raise FusionRefused.bad_argument("prompt")
    for name, text in (("prompt", args.prompt), ("context", args.context or "")):
        if lone_surrogate(text):
            raise FusionRefused.bad_argument(name, NOT_TEXT)
    size = len(args.prompt) + len(args.context or "")
    if size > settings.max_prompt_chars:
        detail = f"{size:,} characters given, FUSION_MAX_PROMPT_CHARS is {settings.max_prompt_chars:,}"
        raise FusionRefused.bad_argument("context" if args.context else "prompt", detail)
    return prompt


def _knobs(args: FusionArgs, settings: Settings) -> dict[str, Any]:
    """The call's per-call knobs as request fields: ``temperature`` (the panel's), ``reasoning``, and
    ``max_completion_tokens`` at most ``FUSION_MAX_COMPLETION_TOKENS``; ``tools`` must be a list."""
    tokens = _checked("max_completion_tokens", _tokens, args.max_completion_tokens, settings.max_completion_tokens)
    if args.tools is not None and not isinstance(args.tools, list):
        raise FusionRefused.bad_argument("tools", f"got {_shown(args.tools)}")
    return {
        "temperature": _checked("temperature", _temperature, args.temperature, settings.temperature),
        "reasoning": _checked("reasoning", _reasoning, args.reasoning, None) or None,
        "max_completion_tokens": min(tokens, settings.max_completion_tokens),
    }


def _routed(settings: Settings, entries: tuple[str, ...]) -> tuple[str, ...]:
    """``entries`` (ids or ``model#lens``), once each one's model goes to a provider (``ValueError`` names the
    configured providers otherwise)."""
    for entry in entries if settings.providers else ():
        settings.route(split_entry(entry)[0])
    return entries


def _who_pays(settings: Settings, ids: tuple[str, ...], *, lent: bool) -> None:
    """Refuse a run nobody can pay for: OpenRouter without a key for a model on the default provider, or a caller
    who pays with a lent key asking for another provider (:func:`server_pays`)."""
    if lent:
        _default_only(settings, ids)
    if settings.api_key is None and settings.is_openrouter and any(not settings.route(m)[0].named for m in ids):
        raise FusionRefused(
            "missing_api_key",
            f"OPENROUTER_API_KEY is not set: create a key at {KEYS_PAGE} and add it to this server's environment "
            "(for a host, in the env of its MCP config entry; `fusion-mcp host-config HOST` prints one), or "
            f"point the server at a local OpenAI-compatible server, which needs no key: {LOCAL_SERVER_HINT}",
        )


def server_pays(settings: Settings, model: str) -> str | None:
    """Why a caller paying with a lent key may not use ``model`` (None: it may). A configured provider is paid
    by the server's key (or runs on its hardware), and lent callers are not under the daily cap: so no lent
    call reaches one, a panel member, an analyst or a chat writer alike, whatever else the server lends."""
    endpoint = settings.route(model)[0]
    if not endpoint.named:
        return None
    return (
        f"{model} is on provider {endpoint.name!r}, which this server pays for; a lent key pays for the default "
        "provider only"
    )


def _default_only(settings: Settings, ids: tuple[str, ...]) -> None:
    for model in ids:
        why = server_pays(settings, model)
        if why is not None:
            raise FusionRefused.bad_argument("model" if model == ids[-1] else "analysis_models", why)


def _off_openrouter(settings: Settings, ids: tuple[str, ...]) -> tuple[str, ...]:
    """The models on a configured provider other than OpenRouter (the default provider keeps what
    ``FUSION_WEB_TOOLS`` says: it may be a gateway that runs OpenRouter's server tools)."""
    if not settings.providers:
        return ()
    return tuple(m for m in ids if (endpoint := settings.route(m)[0]).named and not endpoint.is_openrouter)


def _temperature(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (0 <= value <= 2):
        raise ValueError(f"got {_shown(value)}")
    return float(value)


def _tokens(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_COMPLETION_TOKENS:
        raise ValueError(f"got {_shown(value)}")
    return value


def _reasoning(value: Any) -> dict[str, Any]:
    """OpenRouter's ``reasoning`` object: ``effort`` and/or ``max_tokens`` (``{}`` asks nothing); ``exclude`` and
    ``enabled`` pass through as they are."""
    if not isinstance(value, dict):
        raise ValueError(f"got {_shown(value)}")
    unknown = [k for k in value if k not in ("effort", "max_tokens", "exclude", "enabled", "summary")]
    if unknown:
        raise ValueError(f"unknown field {str(unknown[0])[:40]!r}")
    effort = value.get("effort")
    if effort is not None and effort not in REASONING_EFFORTS:
        raise ValueError(f"effort {_shown(effort)}")
    budget = value.get("max_tokens")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or not 1 <= budget <= 10**6):
        raise ValueError(f"max_tokens {_shown(budget)}")
    for flag in ("exclude", "enabled"):
        if flag in value and not isinstance(value[flag], bool):
            raise ValueError(f"{flag} {_shown(value[flag])}")
    return {k: v for k, v in value.items() if v is not None and k != "summary"}


def _analyst_id(value: Any) -> str:
    if isinstance(value, str) and SEPARATOR in value:
        raise ValueError(f"{value[:60]!r} names a lens")
    return check_model_id(value)


def _guests(value: Any) -> tuple[GuestAnswer, ...]:
    """The host's own answers: labelled, unique, within bounds; named ``guest:<label>`` from here on."""
    if not isinstance(value, list | tuple):
        raise ValueError("not a list of answers")
    if len(value) > MAX_GUESTS:
        raise ValueError(f"{len(value)} answers given")
    guests: list[GuestAnswer] = []
    for item in value:
        try:
            answer = item if isinstance(item, GuestAnswer) else GuestAnswer.model_validate(item)
        except ValueError:
            raise ValueError("each answer needs a label and content, both text") from None
        label = answer.label.strip()
        if lone_surrogate(answer.label) or lone_surrogate(answer.content):
            raise ValueError(f"the answer labelled {_shown(label)} {NOT_TEXT}")
        if not _GUEST_LABEL.fullmatch(label):
            raise ValueError(f"label {label[:40]!r} is empty, too long or has other characters")
        if not answer.content.strip() or len(answer.content) > MAX_GUEST_CHARS:
            raise ValueError(f"the answer labelled {label!r} is empty or too long ({len(answer.content):,} characters)")
        if any(g.label == label for g in guests):
            raise ValueError(f"label {label!r} appears more than once")
        guests.append(GuestAnswer(label=label, content=answer.content))
    return tuple(guests)


def _files(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError("not a list of paths")
    if len(value) > MAX_FILES:
        raise ValueError(f"{len(value)} files given")
    paths = tuple(v.strip() for v in value)
    for path in paths:
        # Refused here, as what they are, rather than as whatever the file system calls make of them.
        if "\x00" in path:
            raise ValueError(f"{_shown(path)}: contains a NUL character")
        if lone_surrogate(path):
            raise ValueError(f"{_shown(path)}: {NOT_TEXT}")
    if len(set(paths)) < len(paths):
        raise ValueError("a path appears more than once")
    return paths


_GUEST_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,39}")


def incoming_depth(headers: Mapping[str, str] | None, settings: Settings) -> int:
    """The caller's fusion depth: the ``x-openrouter-fusion-depth`` header when there is one, else
    ``FUSION_DEPTH`` (stdio).

    Every copy of the header counts and the highest wins (a proxy may add one, or merge them with commas);
    a value that is not a whole number counts as nested: refusing a confused caller is cheaper than letting
    a loop of servers fan out.
    """
    depth = settings.depth
    if headers is None:
        return depth
    getlist = getattr(headers, "getlist", None)
    values = getlist(DEPTH_HEADER) if callable(getlist) else [headers.get(DEPTH_HEADER)]
    for value in values:
        for part in str(value).split(",") if value is not None else ():
            try:
                depth = max(depth, int(part.strip()))
            except ValueError:
                depth = max(depth, 1)
    return depth


def _checked(name: str, check: Callable[[Any], T], given: Any, default: T) -> T:
    if given is None:
        return default
    try:
        return check(given)
    except ValueError as exc:
        raise FusionRefused.bad_argument(name, str(exc)) from None


def request_models(request: FusionRequest) -> tuple[str, ...]:
    """Every model id a run asks (panel entries' models, then the analyst), each once."""
    return request_ids(request.analysis_models, request.model)


def request_ids(panel: tuple[str, ...], analyst: str) -> tuple[str, ...]:
    """The model ids of a panel's entries, then the analyst's, each once."""
    return tuple(dict.fromkeys((*(split_entry(e)[0] for e in panel), analyst)))
