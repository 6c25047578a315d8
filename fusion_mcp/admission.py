"""The one request path: a call becomes a :class:`FusionRequest`, or a refusal that says why, before
anything is spent.

Every front end (the MCP tool, ``fusion-mcp ask``, the HTTP chat-completions endpoint) hands its call
over as :class:`~fusion_mcp.models.FusionArgs` and gets the same rules in the same order:

1. :func:`prepare` (no I/O): each argument's rule, then the caller's fusion depth, then the API key;
2. :func:`check_catalogue` (inside a run slot, as it may ask the provider): unknown model ids with the
   closest known ones, the cost cap, and which models cannot call tools.

A refusal is a :class:`FusionRefused`; front ends only translate it into their own shape.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from .catalogue import CatalogueClient, ModelInfo, estimate_cost, without_tools
from .config import PRESETS, Settings
from .limits import MAX_DEADLINE_S, MAX_TOOL_CALLS, MIN_DEADLINE_S, MIN_TOOL_CALLS
from .model_ids import MODEL_ID_RULE, PANEL_RULE, check_model_id, check_model_ids
from .models import FailureReason, FusionArgs, FusionRequest, FusionResult
from .provider import DEPTH_HEADER
from .text import number

log = logging.getLogger(__name__)
T = TypeVar("T")

ARGUMENT_RULES: dict[str, str] = {
    "prompt": "a non-empty, self-contained question",
    "analysis_models": PANEL_RULE,
    "model": MODEL_ID_RULE,
    "max_tool_calls": f"a whole number from {MIN_TOOL_CALLS} to {MAX_TOOL_CALLS}",
    "preset": f"one of {', '.join(PRESETS)}",
    "deadline_s": f"a number of seconds from {number(MIN_DEADLINE_S)} to {number(MAX_DEADLINE_S)}",
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


def argument_rule(name: str, detail: str = "") -> str:
    """``name``'s rule, with what was wrong with the value given (``detail``) when there is something to say."""
    return f"{ARGUMENT_RULES[name]} ({detail})" if detail else ARGUMENT_RULES[name]


def prepare(args: FusionArgs, settings: Settings, *, depth: int) -> FusionRequest:
    """Merge ``args`` over ``settings`` and apply every rule that needs no network; raise :class:`FusionRefused`.

    ``depth`` is the caller's fusion depth (the incoming ``x-openrouter-fusion-depth``, or ``FUSION_DEPTH``).
    """
    prompt = args.prompt.strip()
    if not prompt:
        raise FusionRefused.bad_argument("prompt")
    preset = next((name for name in PRESETS if name == args.preset), None)
    if args.preset is not None and preset is None:
        raise FusionRefused.bad_argument("preset")
    default_panel, default_analyst = settings.models_for(preset)
    panel = _checked("analysis_models", check_model_ids, args.analysis_models, default_panel)
    analyst = _checked("model", check_model_id, args.model, default_analyst)
    tool_calls = settings.max_tool_calls if args.max_tool_calls is None else args.max_tool_calls
    if not MIN_TOOL_CALLS <= tool_calls <= MAX_TOOL_CALLS:
        raise FusionRefused.bad_argument("max_tool_calls", f"{tool_calls} given")
    deadline = args.deadline_s
    if deadline is not None and not (math.isfinite(deadline) and MIN_DEADLINE_S <= deadline <= MAX_DEADLINE_S):
        raise FusionRefused.bad_argument("deadline_s", f"{deadline:g} given")
    if depth >= 1:
        raise FusionRefused(
            "fusion_invocation_capped",
            f"fusion was already invoked upstream (depth {depth}); nested fusion calls are refused",
        )
    if settings.api_key is None and settings.is_openrouter:
        raise FusionRefused(
            "missing_api_key",
            "OPENROUTER_API_KEY is not set: add it to this server's environment (for a host, in the env of its "
            "MCP config entry)",
        )
    return FusionRequest(
        prompt=prompt,
        context=args.context if args.context and args.context.strip() else None,
        analysis_models=panel,
        model=analyst,
        max_tool_calls=tool_calls,
        max_completion_tokens=settings.max_completion_tokens,
        temperature=settings.temperature,
        stream=settings.stream,
        deadline_s=deadline,
        # FUSION_ANALYST_RESERVE_S belongs to FUSION_DEADLINE_S; a call with a deadline of its own (ask --deadline)
        # gets the default share of it.
        analyst_reserve_s=settings.analyst_reserve_s if deadline == settings.deadline_s else None,
        final_answer=args.final_answer,
        web_tools=settings.web_mode,
    )


def incoming_depth(headers: Mapping[str, str] | None, settings: Settings) -> int:
    """The caller's fusion depth: the ``x-openrouter-fusion-depth`` header when there is one, else
    ``FUSION_DEPTH`` (stdio).

    A header that is not a whole number counts as nested: refusing a confused caller is cheaper than
    letting a loop of servers fan out.
    """
    depth = settings.depth
    raw = headers.get(DEPTH_HEADER) if headers is not None else None
    if raw is not None:
        try:
            depth = max(depth, int(raw.strip()))
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


async def check_catalogue(
    catalogue: CatalogueClient, request: FusionRequest, max_cost_usd: float | None
) -> FusionRequest:
    """Refuse unknown model ids and runs over the cost cap; mark the models that cannot call tools.

    A provider without a catalogue blocks nothing (its ids are checked by the first request instead), and
    a cap without catalogue prices cannot be estimated, so it is not enforced (logged).
    """
    infos: dict[str, ModelInfo] = {}
    for model in dict.fromkeys((*request.analysis_models, request.model)):
        known, info, catalogue_now = await catalogue.lookup(model)
        if not known:
            close = catalogue_now.closest(model)
            hint = f"; closest known ids: {', '.join(close)}" if close else ""
            raise FusionRefused(
                "invalid_model", f"unknown model id {model!r}: the provider's catalogue does not list it{hint}"
            )
        if info is not None:
            infos[model] = info
    if max_cost_usd is not None:
        _check_cost(request, infos, max_cost_usd)
    return await _mark_tool_support(catalogue, request)


def _check_cost(request: FusionRequest, infos: dict[str, ModelInfo], max_cost_usd: float) -> None:
    estimate = estimate_cost(request, infos)
    if estimate is None:
        log.warning("FUSION_MAX_COST_USD is set but the catalogue has no prices for this panel: not enforced")
    elif estimate > max_cost_usd:
        raise FusionRefused(
            "cost_limit",
            f"estimated worst-case cost ${estimate:.4f} exceeds FUSION_MAX_COST_USD=${max_cost_usd:g} "
            f"({len(request.analysis_models)} members x {request.max_completion_tokens} tokens + analyst); "
            "use a cheaper preset or fewer models, or raise the cap",
        )


async def _mark_tool_support(catalogue: CatalogueClient, request: FusionRequest) -> FusionRequest:
    """``request`` with ``no_tools`` filled in when web tools are on.

    Sending ``tools`` to a model without tool support fails the request (OpenRouter finds no endpoint for
    it), so those members, or the analyst, answer without web tools instead.
    """
    if request.web_tools == "off":
        return request
    no_tools = await without_tools(catalogue, (*request.analysis_models, request.model))
    if not no_tools:
        return request
    log.info("%s cannot call tools and will answer without the web", ", ".join(no_tools))
    return request.model_copy(update={"no_tools": no_tools})
